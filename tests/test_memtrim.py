"""``shardmq.net.memtrim``: when a trim is due, and the in-place shrinks (the process
test ``tests/process/test_memory_return.py`` measures the RSS itself)."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from shardmq.net import memtrim
from shardmq.net.memtrim import MemoryTrimmer, shrink_dict, shrink_set


def _trimmer() -> MemoryTrimmer:
    return MemoryTrimmer(asyncio.new_event_loop(), lambda: 0)


def test_due_after_a_large_drop_only() -> None:
    t = _trimmer()
    for n in (0, 500, 5000, 4500):  # growing, then a small drop
        assert not t.due(n)
    assert t.peak == 5000
    assert t.due(4000)  # 1,000 below the peak
    t.peak = 300
    assert not t.due(200)  # half of the peak not reached and under DROP_MIN
    assert t.due(100)  # 300 -> 100: under half the peak, by DROP_MIN (200)
    t.loop.close()


def test_trim_runs_on_the_timer_and_resets_the_peak() -> None:
    loop = asyncio.new_event_loop()
    counts = iter([3000, 3000, 0, 0])
    shrunk: list[bool] = []
    t = MemoryTrimmer(loop, lambda: next(counts, 0), [lambda: shrunk.append(True)], interval=0.01)
    t.start()
    loop.run_until_complete(asyncio.sleep(0.2))
    t.stop()
    loop.close()
    assert t.trims == 1 and shrunk == [True] and t.peak == 0


def test_shrinks_keep_the_object_and_its_content() -> None:
    s = set(range(20000))
    d = {i: i for i in range(20000)}
    for i in range(19990):
        s.discard(i)
        del d[i]
    big_s, big_d = sys.getsizeof(s), sys.getsizeof(d)
    s_id, d_id = id(s), id(d)
    shrink_set(s)
    shrink_dict(d)
    assert id(s) == s_id and id(d) == d_id
    assert s == set(range(19990, 20000)) and list(d) == list(range(19990, 20000))
    assert sys.getsizeof(s) < big_s / 10 and sys.getsizeof(d) < big_d / 10


def test_malloc_trim_is_found_on_glibc_or_absent() -> None:
    if memtrim.malloc_trim is not None:
        assert memtrim.malloc_trim(0) in (0, 1)
    assert memtrim.rss_bytes() > 0


MIB = 2**20


def test_heap_watch_due_when_much_was_freed_and_it_settled() -> None:
    w = memtrim.HeapWatch()
    total = 200 * MIB  # a tenth of it is 20 MiB
    assert not w.due(10 * MIB, total)  # first look: the low point
    assert not w.due(5 * MIB, total)  # lower: the new low point
    assert not w.due(45 * MIB, total)  # 40 MiB freed, still moving (a drain)
    assert not w.due(5 * MIB, total)  # taken again at once (a churning backlog)
    assert not w.due(60 * MIB, total)
    assert not w.due(90 * MIB, total)  # still draining
    assert w.due(91 * MIB, total)  # settled 86 MiB above the low point: trim
    w.reset(91 * MIB)
    assert not w.due(95 * MIB, total)  # too little freed since the trim
    assert not w.due(30 * MIB, total)  # reused: the new low point
    assert not w.due(60 * MIB, total) and w.due(60 * MIB, total)


def test_heap_watch_needs_a_share_of_the_heap_not_only_bytes() -> None:
    w = memtrim.HeapWatch()
    total = 1000 * MIB  # a tenth of it is 100 MiB
    w.due(0, total)
    for _ in range(3):
        assert not w.due(90 * MIB, total)
    w = memtrim.HeapWatch()
    w.due(0, 10 * MIB)
    for _ in range(3):  # a small heap: HEAP_FREED is the floor
        assert not w.due(memtrim.HEAP_FREED - 1, 10 * MIB)


def test_heap_trim_runs_on_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    frees = iter([MIB, 100 * MIB, 100 * MIB])  # low point, freed, settled
    trimmed: list[int] = []
    monkeypatch.setattr(memtrim, "heap_info", lambda: (next(frees, 2 * MIB), 200 * MIB))
    monkeypatch.setattr(memtrim, "malloc_trim", lambda pad: trimmed.append(pad) or 1)
    loop = asyncio.new_event_loop()
    t = MemoryTrimmer(loop, lambda: 0, interval=0.01)
    t.start()
    loop.run_until_complete(asyncio.sleep(0.2))
    t.stop()
    loop.close()
    assert trimmed == [0] and t.trims == 1 and t.heap.low == 2 * MIB


def test_heap_info_on_glibc_or_absent() -> None:
    info = memtrim.heap_info()
    if info is not None:
        free, total = info
        assert 0 <= free <= total and total > 0


def test_connection_counter_rebuilds_its_set_after_a_flood() -> None:
    from workers.worker import ConnectionCounter

    class Proto(asyncio.Protocol):
        transport = None

    counter = ConnectionCounter()
    make = counter.wrap(Proto)
    protos = [make() for _ in range(4000)]
    assert counter.count() == 0 and counter.peak == 4000  # none has a transport
    big = counter.live
    del protos[100:]
    counter.count()
    assert counter.live is not big and len(counter.live) == 100 and counter.peak == 100
    protos.append(make())  # the wrapper adds to the set in use now
    assert len(counter.live) == 101


def test_a_slow_heap_check_is_spaced_by_its_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []

    def slow_heap_info() -> tuple[int, int]:
        calls.append(time.monotonic())
        time.sleep(0.005)  # a fragmented heap's walk
        return MIB, 200 * MIB

    monkeypatch.setattr(memtrim, "heap_info", slow_heap_info)
    monkeypatch.setattr(memtrim, "malloc_trim", lambda pad: 1)
    loop = asyncio.new_event_loop()
    t = MemoryTrimmer(loop, lambda: 0, interval=0.01)
    t.start()
    loop.run_until_complete(asyncio.sleep(0.3))
    t.stop()
    # 5 ms of walk -> the next walk no sooner than 5 s later (HEAP_COST_FACTOR 1000)
    assert len(calls) == 1
    assert t.heap_next - loop.time() > 0.005 * memtrim.HEAP_COST_FACTOR - 0.5
    loop.close()
