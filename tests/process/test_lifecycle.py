"""Steps of a broker process's life (``workers.lifecycle``) in one process."""

from __future__ import annotations

import asyncio
import logging

from workers.lifecycle import MemoryWatch, memory_limit, rss_bytes, set_log_level


class AlarmSpy:
    def __init__(self) -> None:
        self.memory_alarm = False
        self.calls: list[bool] = []

    def set_memory_alarm(self, on: bool) -> None:
        self.memory_alarm = on
        self.calls.append(on)


def test_memory_watch_sets_and_clears_the_alarm() -> None:
    async def main() -> list[bool]:
        spy = AlarmSpy()
        watch = MemoryWatch(spy, asyncio.get_running_loop(), limit=1)  # type: ignore[arg-type]
        watch.start()  # RSS above one byte: alarm set at once
        watch.limit = 1 << 60
        watch.check()  # far under: cleared
        watch.check()  # unchanged: no call
        watch.stop()
        assert watch._handle is None
        return spy.calls

    assert asyncio.run(main()) == [True, False]


def test_rss_and_limit() -> None:
    assert rss_bytes() > 0
    assert 0 < memory_limit(0.1) < memory_limit(0.5)


def test_set_log_level() -> None:
    root = logging.getLogger()
    before = root.level
    try:
        set_log_level("warning")
        assert root.level == logging.WARNING
    finally:
        root.setLevel(before)
