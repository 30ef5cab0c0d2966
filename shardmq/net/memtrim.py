"""Give memory back to the system once a burst is over: a connection flood, a backlog.

Owns: ``MemoryTrimmer`` (one per broker process: a timer that watches this process's
open-connection count and the free memory in glibc's heap; after a large drop of the
first it shrinks the containers that held per-connection objects, collects garbage and
calls glibc's ``malloc_trim(0)``; after a large rise of the second, e.g. a drained or
purged backlog, it calls ``malloc_trim(0)``), ``HeapWatch`` (that second trigger),
``malloc_trim`` and ``heap_info`` (ctypes, None where libc has no such function) and
``rss_bytes``.

Why: glibc keeps freed heap pages (only ``malloc_trim`` gives back free pages in the
middle of the heap), CPython frees its small-object arenas only when they are
completely empty (see ``shardmq.allocator``: the broker runs on glibc's malloc by
default for that reason), and hash tables (sets, dicts) keep the size of their largest
population after mass deletion. Without the trims the RSS stayed at the high-water mark
of the largest burst for good.

Invariants:
- Never on the message path: a check every ``CHECK_INTERVAL`` seconds reads one integer
  (the count); the connection trim (gc, the shrinks, ``malloc_trim``) runs only after
  the count dropped by ``DROP_ABS`` or to ``DROP_FRACTION`` of its peak since the last
  trim (and by at least ``DROP_MIN``), so at most once per drop. A steady or growing
  broker never trims.
- The heap check reads glibc's ``mallinfo2``, a walk of the heap's free lists under its
  lock: microseconds when freed memory coalesced, tens of milliseconds when hundreds of
  thousands of free chunks lie between live ones. So it runs at most every
  ``HEAP_COST_FACTOR`` times its own last duration (at most 0.1 % of the process's time),
  and at least ``CHECK_INTERVAL`` apart. The heap trim runs when the heap's free bytes
  stand at least ``HEAP_FREED`` (and ``HEAP_FRACTION`` of the heap) above their low
  point since the last trim and have settled (moved less than ``HEAP_FREED / 4`` since
  the check before): not in the middle of a drain, and not for memory that a churning
  backlog frees and takes again between two checks.
- A trim runs on the event loop: the connection trim's full ``gc.collect()`` (its cost
  grows with the number of live objects, e.g. messages held in memory) and
  ``malloc_trim`` (a walk of the heap) pause this process's traffic for that long,
  which is why they happen only after such drops.
- A shrink callback rebuilds a container in place (same object: nobody's reference
  goes stale), e.g. ``shrink_set`` / ``shrink_dict``.
- One INFO log line per trim (what set it off, RSS before and after); a missing
  ``malloc_trim`` or ``mallinfo2`` (non-glibc, glibc < 2.33) only skips that step.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("shardmq.net")

CHECK_INTERVAL = 2.0
DROP_ABS = 1000  # connections closed since the peak that warrant a trim
DROP_FRACTION = 0.5  # or: the count fell to this fraction of the peak ...
DROP_MIN = 200  # ... and by at least this many
HEAP_FREED = 16 * 2**20  # free heap bytes above their low point that warrant a trim ...
HEAP_FRACTION = 0.1  # ... and at least this fraction of the heap's size
HEAP_COST_FACTOR = 1000  # the heap check's spacing, in multiples of its own duration

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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes the heap took from the system (brk and arenas)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",  # bytes free in the heap (its free chunks and its top)
            "keepcost",
        )
    ]


def _load_mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = []
    fn.restype = _MallInfo2
    info: Callable[[], _MallInfo2] = fn
    return info


_mallinfo2 = _load_mallinfo2()


def heap_info() -> tuple[int, int] | None:
    """(free bytes, total bytes) of glibc's heap, None where it cannot say."""
    if _mallinfo2 is None:
        return None
    m = _mallinfo2()
    return int(m.fordblks), int(m.arena)


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


def shrink_dict(d: dict[Any, Any]) -> None:
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


class HeapWatch:
    """When the heap's free bytes stand well above their low point since the last trim
    and have settled (``due``; see the module doc)."""

    def __init__(self) -> None:
        self.low: int | None = None
        self.prev: int | None = None

    def due(self, free: int, total: int) -> bool:
        """Record the heap's ``free`` and ``total`` bytes now; True when a trim is due."""
        prev, self.prev = self.prev, free
        if self.low is None or free < self.low:
            self.low = free
            return False
        if free - self.low < max(HEAP_FREED, total * HEAP_FRACTION):
            return False
        return prev is not None and abs(free - prev) < HEAP_FREED / 4

    def reset(self, free: int | None) -> None:
        """After a trim: the heap's free bytes now are the new low point."""
        self.low = self.prev = free


class MemoryTrimmer:
    """Trim once the open-connection count has dropped a lot, or the heap holds a lot
    more free memory than it did (see the module doc)."""

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
        self.heap = HeapWatch()
        self.heap_next = 0.0  # loop time of the next heap check
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
        if self.due(n):
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
            heap_now = heap_info()  # the collection freed more: a fresh low point
            self.heap.reset(None if heap_now is None else heap_now[0])
            return
        now = self.loop.time()
        if malloc_trim is None or now < self.heap_next:
            return
        t0 = time.perf_counter()
        heap = heap_info()
        self.heap_next = now + max(self.interval, (time.perf_counter() - t0) * HEAP_COST_FACTOR)
        if heap is None or not self.heap.due(*heap):
            return
        before = rss_bytes()
        malloc_trim(0)
        self.trims += 1
        log.info(
            "memory trimmed: %.1f MiB freed in the heap; RSS %.1f -> %.1f MiB",
            (heap[0] - (self.heap.low or 0)) / 2**20,
            before / 2**20,
            rss_bytes() / 2**20,
        )
        # the trim gives pages back but leaves the free chunks free: what was free is
        # the new low point (no second walk of a heap that may be slow to walk)
        self.heap.reset(heap[0])
