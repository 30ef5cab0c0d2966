"""Free-disk alarm and the classification of storage write errors.

Owns: ``DiskMonitor`` (free space under data_dir against ``disk_free_limit``; alarm
on/off, optionally polled on an event loop) and ``write_error_kind``.

How the broker uses it:
- ``monitor.start(loop)`` polls every ``interval`` seconds; ``on_change(True)`` means
  block publishers (connection.blocked "low on disk"), ``on_change(False)`` unblock.
- A store reports failed writes through ``on_failed(tokens, exc)``: nack those publishes,
  log once, and call ``monitor.note_write_error(exc)``, which raises the alarm at once
  for ENOSPC / EDQUOT without waiting for the next poll.

Invariants:
- ``alarm`` is True iff the last check saw less than ``limit`` bytes free, or a
  disk-full write error was noted and free space has not grown by ``recovery_margin``
  (and reached ``limit``) since: a full disk is never declared fine just because a
  filesystem reports a few free blocks it will not give us.
- ``on_change`` is called only on transitions, and never raises out of ``check``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
from collections.abc import Callable
from typing import Literal, Protocol

log = logging.getLogger("shardmq.store")

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

WriteErrorKind = Literal["full", "io"]


def write_error_kind(exc: OSError) -> WriteErrorKind:
    """ "full" (no space / quota: blocks publishers until space returns) or "io"
    (EIO and anything else: the affected publishes are nacked, the disk is suspect)."""
    return "full" if exc.errno in DISK_FULL_ERRNOS else "io"


class DiskUsage(Protocol):
    """What ``shutil.disk_usage`` returns, as far as the monitor reads it."""

    @property
    def free(self) -> int: ...


class DiskMonitor:
    def __init__(
        self,
        path: str,
        limit: int,
        *,
        on_change: Callable[[bool], None] | None = None,
        usage: Callable[[str], DiskUsage] = shutil.disk_usage,
        recovery_margin: int = 16 * 1024 * 1024,
    ) -> None:
        self.path = path
        self.limit = limit
        self.on_change = on_change
        self._usage = usage
        self.recovery_margin = recovery_margin
        self.alarm = False
        self.free = -1
        self._full_at: int | None = None  # free bytes when a disk-full error was noted
        self._handle: asyncio.TimerHandle | None = None

    def check(self) -> bool:
        """Look at the free space now; returns the alarm state."""
        try:
            free = int(self._usage(self.path).free)
        except OSError as exc:
            log.error("cannot stat free disk space of %s: %s", self.path, exc)
            return self.alarm
        self.free = free
        low = free < self.limit
        if self._full_at is not None:
            if not low and free >= self._full_at + self.recovery_margin:
                self._full_at = None
            else:
                low = True
        self._set(low, f"{free} bytes free, limit {self.limit}")
        return self.alarm

    def note_write_error(self, exc: OSError) -> WriteErrorKind:
        """A store write failed: log it; raise the alarm now if the disk is full."""
        kind = write_error_kind(exc)
        if kind == "full":
            try:
                free = int(self._usage(self.path).free)
            except OSError:
                free = 0
            self.free = free
            self._full_at = free
            self._set(True, f"write failed: {exc}")
        else:
            log.error("storage write error under %s: %s", self.path, exc)
        return kind

    def _set(self, on: bool, why: str) -> None:
        if on == self.alarm:
            return
        self.alarm = on
        if on:
            log.warning("disk alarm set for %s: %s; blocking publishers", self.path, why)
        else:
            log.warning("disk alarm cleared for %s: %s", self.path, why)
        if self.on_change is not None:
            try:
                self.on_change(on)
            except Exception:
                log.exception("disk alarm callback failed")

    def start(self, loop: asyncio.AbstractEventLoop, interval: float = 1.0) -> None:
        """Check now and then every ``interval`` seconds on ``loop``."""

        def tick() -> None:
            self.check()
            self._handle = loop.call_later(interval, tick)

        self.stop()
        tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
