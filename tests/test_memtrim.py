"""``shardmq.net.memtrim``: when a trim is due, and the in-place shrinks (the process
test ``tests/process/test_memory_return.py`` measures the RSS itself)."""

from __future__ import annotations

import asyncio
import sys

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
