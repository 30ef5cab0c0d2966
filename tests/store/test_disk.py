"""Free-disk alarm transitions and write-error classification."""

from __future__ import annotations

import asyncio
import errno
from types import SimpleNamespace

from shardmq.store.disk import DiskMonitor, write_error_kind


class FakeDisk:
    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, path: str) -> SimpleNamespace:
        return SimpleNamespace(free=self.free, total=10**12, used=0)


def test_alarm_on_below_limit_and_off_above() -> None:
    disk = FakeDisk(10**9)
    changes: list[bool] = []
    m = DiskMonitor("/data", 50_000_000, on_change=changes.append, usage=disk)
    assert m.check() is False and changes == []
    disk.free = 49_999_999
    assert m.check() is True
    assert m.check() is True
    disk.free = 50_000_000
    assert m.check() is False
    assert changes == [True, False]  # transitions only


def test_disk_full_error_raises_alarm_until_space_really_returns() -> None:
    disk = FakeDisk(60_000_000)  # reports space above the limit, yet writes fail
    changes: list[bool] = []
    m = DiskMonitor("/d", 50_000_000, on_change=changes.append, usage=disk, recovery_margin=1000)
    assert m.note_write_error(OSError(errno.ENOSPC, "No space left on device")) == "full"
    assert m.alarm and changes == [True]
    assert m.check() is True  # nothing freed since the error
    disk.free = 60_000_999
    assert m.check() is True
    disk.free = 60_001_000
    assert m.check() is False
    assert changes == [True, False]


def test_io_errors_do_not_block_publishers() -> None:
    m = DiskMonitor("/d", 0, usage=FakeDisk(10**9))
    assert m.note_write_error(OSError(errno.EIO, "Input/output error")) == "io"
    assert not m.alarm
    assert write_error_kind(OSError(errno.EDQUOT, "quota")) == "full"
    assert write_error_kind(OSError(errno.EROFS, "read-only")) == "io"


def test_callback_errors_are_contained_and_stat_errors_keep_state() -> None:
    def boom(on: bool) -> None:
        raise RuntimeError("callback bug")

    disk = FakeDisk(0)
    m = DiskMonitor("/d", 10, on_change=boom, usage=disk)
    assert m.check() is True

    def failing(path: str):
        raise OSError(errno.EIO, "stat failed")

    m._usage = failing
    assert m.check() is True


def test_real_disk_and_polling_on_a_loop(tmp_path) -> None:
    async def main() -> list[bool]:
        changes: list[bool] = []
        m = DiskMonitor(str(tmp_path), 1 << 62, on_change=changes.append)  # huge limit
        m.start(asyncio.get_running_loop(), interval=0.01)
        assert m.alarm and m.free > 0
        m.limit = 0
        await asyncio.sleep(0.05)
        m.stop()
        return changes

    assert asyncio.run(main()) == [True, False]
