"""A barrier job (the definitions log's sync, ``shardmq.broker.defsync``): when its file
fails to sync, no store job of that round or of a later round completes as durable
until a retry syncs it; both committers."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from shardmq.store.commit import CommitJob, InlineCommitter, ThreadCommitter


class Owner:
    def __init__(self) -> None:
        self.done: list[tuple[Any, OSError | None]] = []

    def _committed(self, job: CommitJob, exc: OSError | None) -> None:
        self.done.append((job.tokens[0], exc))


class FailingSync:
    """os.fdatasync that fails with EIO for one file while ``failing``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, bad: Path) -> None:
        self.real = os.fdatasync
        self.bad = str(bad)
        self.failing = True
        monkeypatch.setattr(os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        if self.failing and os.readlink(f"/proc/self/fd/{fd}") == self.bad:
            raise OSError(errno.EIO, "Input/output error")
        self.real(fd)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    log, seg = tmp_path / "definitions.1.log", tmp_path / "q.seg"
    log.write_bytes(b"record")
    seg.write_bytes(b"message")
    return log, seg


def test_inline_barrier_failure_fails_later_jobs_until_it_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, seg = _files(tmp_path)
    sync = FailingSync(monkeypatch, log)
    c, owner = InlineCommitter(), Owner()
    c.submit(CommitJob(owner, ["log"], [str(log)], [], [], [], barrier=True))
    c.submit(CommitJob(owner, ["msg1"], [str(seg)], [], [], []))
    assert [(t, e is not None) for t, e in owner.done] == [("log", True), ("msg1", True)]
    sync.failing = False
    c.submit(CommitJob(owner, ["msg2"], [str(seg)], [], [], []))
    c.submit(CommitJob(owner, ["msg3"], [str(seg)], [], [], []))
    assert owner.done[2:] == [("msg2", None), ("msg3", None)]


def test_inline_job_without_barrier_is_unaffected_by_another_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, seg = _files(tmp_path)
    FailingSync(monkeypatch, log)
    c, owner = InlineCommitter(), Owner()
    c.submit(CommitJob(owner, ["log"], [str(log)], [], [], []))  # not a barrier
    c.submit(CommitJob(owner, ["msg"], [str(seg)], [], [], []))
    assert [(t, e is not None) for t, e in owner.done] == [("log", True), ("msg", False)]


def test_thread_barrier_failure_fails_its_round_and_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, seg = _files(tmp_path)
    sync = FailingSync(monkeypatch, log)

    async def main() -> list[tuple[Any, OSError | None]]:
        c, owner = ThreadCommitter(policy="always", index_sync_ms=60_000), Owner()
        # one round: the log's sync and a store's job
        c.submit(CommitJob(owner, ["log"], [str(log)], [], [], [], barrier=True))
        c.submit(CommitJob(owner, ["msg1"], [str(seg)], [], [], []))
        await c.wait_idle()
        # a later round, the log still failing: its job fails too
        c.submit(CommitJob(owner, ["msg2"], [str(seg)], [], [], []))
        await c.wait_idle()
        sync.failing = False
        c.submit(CommitJob(owner, ["msg3"], [str(seg)], [], [], []))
        await c.wait_idle()
        c.submit(CommitJob(owner, ["msg4"], [str(seg)], [], [], []))
        await c.wait_idle()
        c.close()
        return owner.done

    done = asyncio.run(main())
    assert [(t, e is not None) for t, e in done] == [
        ("log", True),
        ("msg1", True),
        ("msg2", True),
        ("msg3", False),
        ("msg4", False),
    ]
    assert isinstance(done[1][1], OSError) and done[1][1].errno == errno.EIO
