"""Give memory back to the system once many connections have gone (a flood is over).

Owns: ``MemoryTrimmer`` (one per broker process: a timer that watches this process's
open-connection count and, after a large drop, shrinks the containers that held
per-connection objects, collects garbage and calls glibc's ``malloc_trim(0)``),
``malloc_trim`` (ctypes, None where libc has no such function) and ``rss_bytes``.

Why: CPython frees its small-object arenas only when they are completely empty and
glibc keeps freed heap pages, so after 20,000 idle connections closed the memory was
reused by the next flood but never returned; hash tables (sets, dicts) keep the size
of their largest population after mass deletion.

Invariants:
- Never on the message path: a check every ``CHECK_INTERVAL`` seconds reads one
  integer (the count); the trim itself (gc, the shrinks, ``malloc_trim``) runs only
  after the count dropped by ``DROP_ABS`` or to ``DROP_FRACTION`` of its peak since
  the last trim (and by at least ``DROP_MIN``), so at most once per drop; a steady
  or growing broker never trims.
- The trim runs on the event loop: a full ``gc.collect()`` (its cost grows with the
  number of live objects, e.g. messages held in memory) and ``malloc_trim``; it pauses
  this process's traffic for that long, which is why it happens only after such drops.
- A shrink callback rebuilds a container in place (same object: nobody's reference
  goes stale), e.g. ``shrink_set`` / ``shrink_dict``.
- One INFO log line per trim (connections, RSS before and after); a missing
  ``malloc_trim`` (non-glibc) only skips that step.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable, Hashable, Iterable
from typing import Any

log = logging.getLogger("shardmq.net")

CHECK_INTERVAL = 2.0
DROP_ABS = 1000  # connections closed since the peak that warrant a trim
DROP_FRACTION = 0.5  # or: the count fell to this fraction of the peak ...
DROP_MIN = 200  # ... and by at least this many

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name)
        fn = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


malloc_trim = _load_malloc_trim()


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def shrink_set(s: set[Any]) -> None:
    """Rebuild ``s`` in place so its hash table fits its population."""
    keep = list(s)
    s.clear()
    s.update(keep)


def shrink_dict(d: dict[Hashable, Any]) -> None:
    """Rebuild ``d`` in place (same order) so its table fits its population."""
    keep = list(d.items())
    d.clear()
    d.update(keep)


def trim_now(shrinks: Iterable[Callable[[], None]] = ()) -> None:
    """Shrink, collect, and give free heap pages back to the system."""
    for shrink in shrinks:
        try:
            shrink()
        except Exception:
            log.exception("shrinking a container failed")
    gc.collect()
    if malloc_trim is not None:
        malloc_trim(0)


class MemoryTrimmer:
    """Trim once the open-connection count has dropped a lot (see the module doc)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        count: Callable[[], int],
        shrinks: Iterable[Callable[[], None]] = (),
        *,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.loop = loop
        self.count = count
        self.shrinks = list(shrinks)
        self.interval = interval
        self.peak = 0
        self.trims = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.peak = self.count()
        self._handle = self.loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def due(self, n: int) -> bool:
        """Record ``n`` (the count now); True when a trim is warranted."""
        if n > self.peak:
            self.peak = n
            return False
        drop = self.peak - n
        return drop >= DROP_ABS or (drop >= DROP_MIN and n <= self.peak * DROP_FRACTION)

    def _tick(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._tick)
        n = self.count()
        if not self.due(n):
            return
        before = rss_bytes()
        trim_now(self.shrinks)
        self.trims += 1
        log.info(
            "memory trimmed: %d connection(s) now (peak %d); RSS %.1f -> %.1f MiB",
            n,
            self.peak,
            before / 2**20,
            rss_bytes() / 2**20,
        )
        self.peak = n
