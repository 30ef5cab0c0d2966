"""Ring unit tests in one process: framing, wrap-around, full/empty, big records,
zero-copy reserve, streamed writes, sleep/wait flags, and a model-based test against a
reference deque (hypothesis)."""

from __future__ import annotations

import collections
from collections.abc import Callable

import posix_ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardmq.ipc.ring import HEADER_SIZE, LEN, Ring, RingError

RingFactory = Callable[[int], Ring]


def payload(i: int, size: int) -> bytes:
    return bytes((i + k) & 0xFF for k in range(size))


def test_empty_ring(ring_factory: RingFactory) -> None:
    r = ring_factory(128)
    assert r.capacity == 128
    assert r.read_all() == []
    assert r.used() == 0
    assert r.free() == 128
    assert not r.readable()


def test_capacity_rounded_and_minimum(ring_factory: RingFactory) -> None:
    assert ring_factory(100).capacity == 128
    with pytest.raises(ValueError):
        ring_factory(32)


def test_single_record_roundtrip_and_sizes(ring_factory: RingFactory) -> None:
    r = ring_factory(256)
    assert r.try_write(b"hello")
    assert r.used() == 9
    assert r.free() == 256 - 9
    assert r.readable()
    assert r.read_all() == [b"hello"]
    assert r.used() == 0
    assert r.read_all() == []


def test_empty_record(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    assert r.try_write(b"")
    assert r.try_write(bytearray(b"x"))
    assert r.try_write(memoryview(b"yz"))
    assert r.read_all() == [b"", b"x", b"yz"]


def test_wraparound_at_every_offset(ring_factory: RingFactory) -> None:
    # 64-byte ring and 4+13 = 17-byte records: the header and the payload straddle the end
    # at every possible offset over 64 laps.
    r = ring_factory(64)
    for i in range(64 * 17 // 17 * 4):
        rec = payload(i, 13)
        assert r.try_write(rec)
        if i % 3 == 2:
            continue
        got = r.read_all()
        assert got and got[-1] == rec
    r.read_all()
    assert r.used() == 0


def test_full_ring_refuses_without_dropping(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    written = []
    i = 0
    while r.try_write(payload(i, 10)):
        written.append(payload(i, 10))
        i += 1
    assert len(written) == 64 // 14
    assert r.free() < 14
    # still refused, nothing half-written
    assert not r.try_write(payload(99, 10))
    assert r.used() == 14 * len(written)
    assert r.read_all() == written
    assert r.try_write(payload(99, 10))
    assert r.read_all() == [payload(99, 10)]


def test_records_larger_than_half_the_ring(ring_factory: RingFactory) -> None:
    r = ring_factory(256)
    big = [payload(i, 200) for i in range(10)]
    for i, rec in enumerate(big):
        assert r.try_write(rec)
        assert not r.try_write(payload(0, 200)), "second big record must not fit"
        if i % 2:
            assert r.try_write(b"small")
            assert r.read_all() == [rec, b"small"]
        else:
            assert r.read_all() == [rec]


def test_record_of_exactly_capacity(ring_factory: RingFactory) -> None:
    r = ring_factory(128)
    assert r.max_record == 124
    assert r.try_write(b"ab")
    assert r.read_all() == [b"ab"]
    rec = payload(7, 124)
    assert r.try_write(rec)
    assert r.free() == 0
    assert r.read_all() == [rec]


def test_record_larger_than_the_ring_is_streamed(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    huge = payload(3, 1000)
    assert r.try_write(huge)  # accepted: the rest waits in the writer
    assert r.pending > 0
    assert not r.try_write(b"after")  # ordering: the big record goes first
    rounds = 0
    got: list[bytes] = []
    while not got:
        got = r.read_all()
        r.try_write_many([])  # pumps the pending part
        rounds += 1
        assert rounds < 100
    assert got == [huge]
    assert r.pending == 0
    assert r.try_write(b"after")
    assert r.read_all() == [b"after"]


def test_try_write_many_stops_at_first_misfit(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    recs = [payload(i, 12) for i in range(10)]  # 16 bytes each: 4 fit
    assert r.try_write_many(recs) == 4
    assert r.try_write_many(recs[4:]) == 0
    assert r.read_all(limit=3) == recs[:3]
    assert r.try_write_many(recs[4:]) == 3
    assert r.read_all() == recs[3:7]


def test_many_small_records(ring_factory: RingFactory) -> None:
    r = ring_factory(4096)
    expected = collections.deque()
    got: list[bytes] = []
    for i in range(20_000):
        rec = i.to_bytes(4, "little") * 4
        while not r.try_write(rec):
            got.extend(r.read_all())
        expected.append(rec)
    got.extend(r.read_all())
    assert got == list(expected)


def test_read_limit(ring_factory: RingFactory) -> None:
    r = ring_factory(1024)
    for i in range(10):
        assert r.try_write(payload(i, 5))
    assert r.read_all(limit=4) == [payload(i, 5) for i in range(4)]
    assert r.read_all(limit=100) == [payload(i, 5) for i in range(4, 10)]


def test_attach_sees_same_ring(ring_factory: RingFactory) -> None:
    w = ring_factory(256)
    w.try_write(b"one")
    rd = Ring.attach(w.name)
    try:
        assert rd.capacity == 256
        assert rd.read_all() == [b"one"]
        w.try_write(b"two")
        assert w.used() == 7
        assert rd.read_all() == [b"two"]
        assert w.free() == 256
    finally:
        rd.close()


def test_attach_rejects_foreign_segment(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=HEADER_SIZE + 64)
    shm.close_fd()
    with pytest.raises(RingError):
        Ring.attach(name)
    with pytest.raises(posix_ipc.ExistentialError):
        Ring.attach(name + ".missing")


def test_create_is_exclusive(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    with pytest.raises(posix_ipc.ExistentialError):
        Ring.create(r.name, 64)


def test_unlink_then_attach_fails_but_mapping_lives(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    r.unlink()
    with pytest.raises(posix_ipc.ExistentialError):
        Ring.attach(r.name)
    assert r.try_write(b"still mapped")
    assert r.read_all() == [b"still mapped"]
    r.unlink()  # idempotent


def test_reserve_commit(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    view = r.reserve(8)
    assert view is not None and len(view) == 8
    view[:] = b"ABCDEFGH"
    del view
    r.commit()
    assert r.read_all() == [b"ABCDEFGH"]
    # position 12 of 64: a 60-byte slot would wrap, so reserve refuses; try_write does not
    assert r.reserve(56) is None
    assert r.try_write(payload(1, 56))
    assert r.read_all() == [payload(1, 56)]
    # no room
    assert r.try_write(payload(2, 50))
    assert r.reserve(20) is None
    with pytest.raises(RingError):
        r.commit()


def test_write_bytes_partial_records_are_reassembled(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    recs = [payload(i, n) for i, n in enumerate([3, 40, 0, 100, 7, 250, 1])]
    stream = b"".join(LEN.pack(len(x)) + x for x in recs)
    pos = 0
    got: list[bytes] = []
    while pos < len(stream):
        pos += r.write_bytes(stream, pos)
        got.extend(r.read_all())
    got.extend(r.read_all())
    assert got == recs


def test_partial_header_across_reads(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    stream = LEN.pack(5) + b"hello"
    for k in range(len(stream)):
        assert r.write_bytes(stream[k : k + 1]) == 1
        got = r.read_all()
        assert got == ([b"hello"] if k == len(stream) - 1 else [])


def test_reader_sleep_and_wake_generations(ring_factory: RingFactory) -> None:
    w = ring_factory(128)
    rd = Ring.attach(w.name)
    try:
        assert not w.reader_needs_wake()  # reader never slept
        assert rd.reader_sleep()  # empty: may sleep
        w.try_write(b"a")
        assert w.reader_needs_wake()  # ring once...
        w.try_write(b"b")
        assert not w.reader_needs_wake()  # ...per sleep
        assert not rd.reader_sleep()  # data is there: do not sleep
        assert not w.reader_needs_wake()  # and the flag was withdrawn
        assert rd.read_all() == [b"a", b"b"]
        assert rd.reader_sleep()
        rd.reader_awake()
        w.try_write(b"c")
        assert not w.reader_needs_wake()  # awake again: no ring needed
    finally:
        rd.close()


def test_writer_wait_and_wake(ring_factory: RingFactory) -> None:
    w = ring_factory(64)
    rd = Ring.attach(w.name)
    try:
        while w.try_write(b"x" * 10):
            pass
        assert w.writer_wait(14)  # full: wait for the reader
        assert rd.read_all()  # reader frees space...
        assert rd.writer_needs_wake()  # ...and must ring once
        assert not rd.writer_needs_wake()
        assert not w.writer_wait(14)  # space is there now
        w.writer_resume()
    finally:
        rd.close()


def test_discard(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    r.write_bytes(LEN.pack(100) + b"abc")
    assert r.read_all() == []  # partial kept privately
    r.try_write_many([])
    r.discard()
    assert r.used() == 0
    assert r.try_write(b"fresh")
    assert r.read_all() == [b"fresh"]


def test_close_is_idempotent(ring_factory: RingFactory) -> None:
    r = ring_factory(64)
    r.close()
    r.close()
    assert r.closed


ops = st.lists(
    st.one_of(
        st.tuples(st.just("w"), st.integers(0, 300)),
        st.tuples(st.just("m"), st.lists(st.integers(0, 80), max_size=6)),
        st.tuples(st.just("s"), st.lists(st.integers(0, 200), min_size=1, max_size=4)),
        st.tuples(st.just("r"), st.integers(1, 8)),
    ),
    max_size=80,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(capacity=st.sampled_from([64, 128, 192, 512]), script=ops)
def test_model_against_deque(
    shm_name: Callable[[], str], capacity: int, script: list[tuple[str, object]]
) -> None:
    """Any interleaving of writes (single, batch, streamed) and limited reads delivers
    exactly the accepted records, in order, and never more than fits."""
    name = shm_name()
    w = Ring.create(name, capacity)
    rd = Ring.attach(name)
    model: collections.deque[bytes] = collections.deque()
    backlog = bytearray()  # streamed bytes not yet accepted by the ring
    counter = 0
    try:
        for op, arg in script:
            if op == "w" and not backlog:
                rec = payload(counter, arg)  # type: ignore[arg-type]
                counter += 1
                had_pending = w.pending
                before = w.used()
                if w.try_write(rec):
                    model.append(rec)
                else:
                    assert had_pending or 4 + len(rec) > capacity - before
            elif op == "m" and not backlog:
                recs = [payload(counter + i, n) for i, n in enumerate(arg)]  # type: ignore[arg-type]
                counter += len(recs)
                had_pending = w.pending
                k = w.try_write_many(recs)
                model.extend(recs[:k])
                if k < len(recs) and not had_pending:
                    assert 4 + len(recs[k]) > w.free() or w.pending
            elif op == "s" and w.pending == 0:
                for n in arg:  # type: ignore[union-attr]
                    rec = payload(counter, n)
                    counter += 1
                    backlog += LEN.pack(n) + rec
                    model.append(rec)  # accepted into the stream: must arrive
            elif op == "r":
                got = rd.read_all(limit=arg)  # type: ignore[arg-type]
                for rec in got:
                    assert rec == model.popleft()
            if backlog:
                k = w.write_bytes(backlog)
                del backlog[:k]
            assert 0 <= w.used() <= capacity
        # drain everything
        for _ in range(10_000):
            if backlog:
                k = w.write_bytes(backlog)
                del backlog[:k]
            w.try_write_many([])
            for rec in rd.read_all():
                assert rec == model.popleft()
            if not model and not backlog and w.pending == 0 and w.used() == 0:
                break
        assert not model and not backlog
        assert w.used() == 0
    finally:
        rd.close()
        w.close()
        w.unlink()
