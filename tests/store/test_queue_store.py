"""DiskQueueStore: order, acks, requeue, recovery, redelivered flags, segment deletion,
paging, purge, write errors. Synchronous (InlineCommitter); see test_commit.py for the
threaded group commit."""

from __future__ import annotations

import errno
import os
import random
import struct

import pytest

from shardmq.amqp.methods import BasicProperties
from shardmq.store.commit import InlineCommitter
from shardmq.store.queue_store import DiskQueueStore, delivery_mode
from shardmq.store.settings import StoreSettings
from tests.store.helpers import disk_bytes, files, header, make, same

SMALL = StoreSettings(segment_size=8192, queue_memory_budget=1 << 20, fsync="off")


class Sink:
    def __init__(self) -> None:
        self.durable: list = []
        self.failed: list = []

    def on_durable(self, tokens: list) -> None:
        self.durable += tokens

    def on_failed(self, tokens: list, exc: OSError) -> None:
        self.failed += [(t, exc.errno) for t in tokens]


def open_store(path, settings: StoreSettings = SMALL, sink: Sink | None = None) -> DiskQueueStore:
    sink = sink or Sink()
    return DiskQueueStore.open(
        str(path),
        settings=settings,
        committer=InlineCommitter.from_settings(settings),
        on_durable=sink.on_durable,
        on_failed=sink.on_failed,
    )


def open_fds(under) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(under))
        except OSError:
            pass
    return n


def body_of(i: int, size: int = 40) -> bytes:
    return b"%08d" % i + bytes(random.Random(i).randbytes(size))


def drain(store: DiskQueueStore, ack: bool = True) -> list:
    out = []
    while store:
        m = store.take()
        out.append(m)
        if ack:
            store.ack(m)
    return out


def ids(msgs) -> list[int]:
    return [int(m.body[:8]) for m in msgs]


# ---------------------------------------------------------------- properties parsing
@pytest.mark.parametrize(
    "props",
    [
        BasicProperties(),
        BasicProperties(delivery_mode=2),
        BasicProperties(delivery_mode=1, content_type="text/plain"),
        BasicProperties(
            content_type="application/json",
            content_encoding="gzip",
            headers={"a": 1, "b": [1, "x"], "c": {"d": b"e"}},
            delivery_mode=2,
            priority=3,
        ),
        BasicProperties(headers={}, delivery_mode=2, message_id="m"),
        BasicProperties(content_type="x", priority=9),
    ],
)
def test_delivery_mode_without_decoding(props: BasicProperties) -> None:
    hdr = header(5, props)
    assert delivery_mode(hdr, 12) == (props.delivery_mode or 0)


# ---------------------------------------------------------------- basic semantics
def test_push_take_ack_order_and_return_values(tmp_path) -> None:
    sink = Sink()
    s = open_store(tmp_path / "q", sink=sink)
    results = [s.push(make(body_of(i), persistent=i % 3 != 0), i) for i in range(30)]
    assert results == [i % 3 != 0 for i in range(30)]
    assert len(s) == 30 and s
    s.flush()
    assert sorted(sink.durable) == [i for i in range(30) if i % 3]  # transient: no token back
    got = drain(s)
    assert ids(got) == list(range(30))
    assert len(s) == 0 and not s


def test_requeue_goes_back_in_original_order(tmp_path) -> None:
    s = open_store(tmp_path / "q")
    for i in range(10):
        s.push(make(body_of(i), persistent=i != 4))
    taken = [s.take() for _ in range(6)]
    s.requeue([taken[4], taken[1]])
    assert ids([s.take(), s.take()]) == [1, 4]
    s.requeue([taken[5], taken[4], taken[1]])  # 5 is behind nothing, 1 and 4 again
    assert ids(drain(s)) == [1, 4, 5, 6, 7, 8, 9]


def test_recovery_order_bytes_acks_and_transients(tmp_path) -> None:
    path = tmp_path / "q"
    s = open_store(path)
    props = BasicProperties(
        delivery_mode=2, content_type="a/b", headers={"k": "v", "n": 7}, message_id="id"
    )
    originals = []
    for i in range(200):
        m = make(body_of(i, 300), persistent=i % 5 != 0, props=props if i % 7 == 0 else None)
        originals.append(m)
        s.push(m)
    s.flush()
    for _ in range(50):
        s.ack(s.take())  # 0..49 acked
    s.flush()
    s.close()
    r = open_store(path)
    expect = [m for i, m in enumerate(originals) if i >= 50 and (i % 5 != 0 or i % 7 == 0)]
    got = drain(r, ack=False)
    assert len(got) == len(expect) == r.recovered
    assert all(same(a, b) for a, b in zip(got, expect, strict=True))
    assert not r.redelivered


def test_delivered_unacked_come_back_redelivered_first(tmp_path) -> None:
    path = tmp_path / "q"
    s = open_store(path)
    for i in range(20):
        s.push(make(body_of(i)))
    taken = [s.take() for _ in range(8)]
    for m in taken[:3]:
        s.ack(m)  # 0, 1, 2 acked; 3..7 delivered, unacked
    s.requeue([taken[7]])  # back in the queue, still "delivered once"
    direct = make(body_of(100))
    s.flush()
    r_msgs: list = []
    s2 = s  # a direct delivery while the queue is non-empty would not happen; do it later
    del s2
    s.close()
    r = open_store(path)
    got = drain(r, ack=False)
    assert ids(got) == list(range(3, 20))
    r_msgs = [m for m in got if m in r.redelivered]
    assert ids(r_msgs) == [3, 4, 5, 6, 7]
    # push_taken: stored as delivered, never in the ready list
    for m in got:
        r.ack(m)
    assert r.push_taken(direct, "t") is True
    assert len(r) == 0
    r.flush()
    r.close()
    r2 = open_store(path)
    back = drain(r2, ack=False)
    assert ids(back) == [100] and back[0] in r2.recovered_redelivered


def test_push_taken_then_ack_is_gone(tmp_path) -> None:
    path = tmp_path / "q"
    s = open_store(path)
    m = make(body_of(1))
    s.push_taken(m)
    assert s.push_taken(make(body_of(2), persistent=False)) is False
    s.push(make(body_of(3)))
    s.ack(m)
    s.flush()
    s.close()
    assert ids(drain(open_store(path))) == [3]


def test_sids_keep_increasing_across_restarts(tmp_path) -> None:
    path = tmp_path / "q"
    for round_ in range(4):
        s = open_store(path)
        s.push(make(body_of(round_)))
        if round_ == 2:
            s.ack(s.take())  # 0, 1 were taken earlier? no: drains the oldest one
        s.flush()
        s.close()
    got = ids(drain(open_store(path), ack=False))
    assert got == [1, 2, 3]


# ---------------------------------------------------------------- segments and disk space
def test_fully_acked_segments_are_deleted_and_space_freed(tmp_path) -> None:
    path = tmp_path / "q"
    s = open_store(path, StoreSettings(segment_size=64 * 1024, fsync="off"))
    for i in range(2000):
        s.push(make(body_of(i, 1000)))
    s.flush()
    nsegs = len(files(path, ".seg"))
    used = disk_bytes(path)
    assert nsegs >= 25 and used >= 2000 * 1000
    first = s.take()  # stays unacked: pins the first segment only
    got = [first]
    for _ in range(1999):
        m = s.take()
        got.append(m)
        s.ack(m)
    s.flush()
    left = files(path, ".seg")
    assert len(left) <= 2  # the pinned first segment and the current one
    assert disk_bytes(path) < used // 10
    s.ack(first)
    s.flush()
    assert len(files(path, ".seg")) <= 1
    s.close()
    assert len(open_store(path)) == 0
    assert files(path, ".seg") == [] and files(path, ".idx") == []


def test_recovery_reads_only_live_segments(tmp_path) -> None:
    """History does not accumulate: after a long run of publish/ack, what is left on
    disk is about the live data."""
    path = tmp_path / "q"
    s = open_store(path, StoreSettings(segment_size=16 * 1024, fsync="off"))
    for i in range(5000):
        s.push(make(body_of(i, 200)))
        if i >= 10:
            s.ack(s.take())
        if i % 100 == 0:
            s.flush()
    s.flush()
    s.close()
    assert disk_bytes(path) < 10 * 16 * 1024
    r = open_store(path, StoreSettings(segment_size=16 * 1024, fsync="off"))
    assert ids(drain(r)) == list(range(4990, 5000))


# ---------------------------------------------------------------- paging
def test_backlog_beyond_budget_stays_on_disk_and_drains_in_order(tmp_path) -> None:
    budget = 64 * 1024
    st = StoreSettings(segment_size=256 * 1024, queue_memory_budget=budget, fsync="off")
    s = open_store(tmp_path / "q", st)
    n = 3000
    for i in range(n):
        s.push(make(body_of(i, 1000), persistent=i % 50 != 7))
        assert s.stats()["memory_bytes"] <= budget + 2000
        if i % 97 == 0:
            s.flush()
    s.flush()
    st0 = s.stats()
    assert st0["messages"] == n
    assert st0["ready_on_disk_only"] > n * 0.9
    assert st0["segments"] > 10
    assert open_fds(tmp_path) <= 3  # current + the one being read (+ an index)
    got = []
    while s:
        m = s.take()
        got.append(m)
        s.ack(m)
        assert s.stats()["memory_bytes"] <= budget + 2000
        if len(got) % 200 == 0:
            s.flush()
            assert open_fds(tmp_path) <= 4
    assert ids(got) == list(range(n))
    assert s.stats()["messages"] == 0


def test_paging_with_pushes_interleaved_and_unflushed(tmp_path) -> None:
    st = StoreSettings(segment_size=32 * 1024, queue_memory_budget=8192, fsync="off")
    s = open_store(tmp_path / "q", st)
    rnd = random.Random(5)
    pushed = taken = 0
    got = []
    while pushed < 2000 or s:
        for _ in range(min(rnd.randint(0, 30), 2000 - pushed)):
            s.push(make(body_of(pushed, rnd.randint(0, 900)), persistent=rnd.random() > 0.1))
            pushed += 1
        for _ in range(rnd.randint(0, 25)):
            if not s:
                break
            m = s.take()
            got.append(m)
            taken += 1
            if rnd.random() < 0.1:
                s.requeue([m])  # goes back in front
                got.pop()
            else:
                s.ack(m)
        if rnd.random() < 0.5:
            s.flush()  # sometimes page-in must write buffered records itself
    assert ids(got) == list(range(2000))


def test_paged_backlog_recovers_bounded_and_in_order(tmp_path) -> None:
    path = tmp_path / "q"
    st = StoreSettings(segment_size=64 * 1024, queue_memory_budget=16 * 1024, fsync="off")
    s = open_store(path, st)
    for i in range(1500):
        s.push(make(body_of(i, 500)))
    s.flush()
    taken = [s.take() for _ in range(40)]  # delivered, never acked: redelivered later
    for m in taken[:10]:
        s.ack(m)
    s.flush()
    s.close()
    r = open_store(path, st)
    assert len(r) == 1490
    assert r.stats()["memory_bytes"] <= 16 * 1024 + 1000
    assert len(r._segs) > 10 and open_fds(tmp_path) == 1  # only the segment being read
    out = []
    redelivered = []
    while r:
        m = r.take()
        out.append(m)
        if m in r.redelivered:
            r.redelivered.discard(m)
            redelivered.append(m)
        r.ack(m)
    assert ids(out) == list(range(10, 1500))
    assert ids(redelivered) == list(range(10, 40))


# ---------------------------------------------------------------- purge
def test_purge_keeps_only_unacked_across_restart(tmp_path) -> None:
    path = tmp_path / "q"
    s = open_store(path)
    for i in range(300):
        s.push(make(body_of(i, 100)))
    s.flush()
    held = [s.take() for _ in range(5)]
    assert s.purge() == 295
    assert len(s) == 0
    s.push(make(body_of(1000)))
    s.flush()
    s.close()
    r = open_store(path)
    got = drain(r, ack=False)
    assert ids(got) == [0, 1, 2, 3, 4, 1000]
    assert {int(m.body[:8]) for m in got if m in r.redelivered} == {0, 1, 2, 3, 4}
    assert len(held) == 5


def test_purge_of_everything_deletes_segments(tmp_path) -> None:
    path = tmp_path / "q"
    s = open_store(path)
    for i in range(300):
        s.push(make(body_of(i, 100)))
    s.flush()
    s.purge()
    s.flush()
    assert files(path, ".seg") == []
    s.close()
    assert len(open_store(path)) == 0


def test_destroy_removes_directory(tmp_path) -> None:
    path = tmp_path / "q"
    s = open_store(path)
    s.push(make(b"x"), "t")
    s.destroy()
    assert not path.exists()


# ---------------------------------------------------------------- errors
def _enospc_on(monkeypatch, suffix: str) -> dict:
    real = os.pwrite
    state = {"on": True, "hits": 0}

    def pwrite(fd: int, data, offset: int) -> int:
        if state["on"] and os.readlink(f"/proc/self/fd/{fd}").endswith(suffix):
            state["hits"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return state


def test_enospc_nacks_the_publishes_and_the_store_goes_on(tmp_path, monkeypatch) -> None:
    path = tmp_path / "q"
    sink = Sink()
    s = open_store(path, sink=sink)
    for i in range(5):
        s.push(make(body_of(i)), i)
    s.flush()
    state = _enospc_on(monkeypatch, ".seg")
    for i in range(5, 10):
        s.push(make(body_of(i)), i)
    s.flush()
    assert state["hits"] == 1
    assert [t for t, _ in sink.failed] == [5, 6, 7, 8, 9]
    assert {e for _, e in sink.failed} == {errno.ENOSPC}
    assert s.error is not None and s.error.errno == errno.ENOSPC
    assert sorted(sink.durable) == [0, 1, 2, 3, 4]
    state["on"] = False
    for i in range(10, 13):
        s.push(make(body_of(i)), i)
    s.flush()
    assert sorted(sink.durable) == [0, 1, 2, 3, 4, 10, 11, 12]
    # the nacked messages are still deliverable from memory, and acking them is harmless
    got = drain(s, ack=False)
    assert ids(got) == list(range(13))
    for m in got[:7]:
        s.ack(m)
    s.flush()
    s.close()
    # after a restart: the unacked ones that reached the disk, not the nacked ones
    assert ids(drain(open_store(path), ack=False)) == [10, 11, 12]


def test_enospc_on_a_paged_backlog_drops_only_lost_records(tmp_path, monkeypatch) -> None:
    st = StoreSettings(segment_size=1 << 20, queue_memory_budget=4096, fsync="off")
    sink = Sink()
    s = open_store(tmp_path / "q", st, sink)
    for i in range(20):
        s.push(make(body_of(i, 1000)), i)
    s.flush()
    state = _enospc_on(monkeypatch, ".seg")
    for i in range(20, 30):
        s.push(make(body_of(i, 1000)), i)
    assert len(s) == 30
    s.flush()
    state["on"] = False
    assert [t for t, _ in sink.failed] == list(range(20, 30))
    assert len(s) == 20  # the nacked ones were on disk only: they are gone
    assert ids(drain(s)) == list(range(20))


def test_index_write_error_is_survivable(tmp_path, monkeypatch) -> None:
    path = tmp_path / "q"
    s = open_store(path)
    for i in range(10):
        s.push(make(body_of(i)))
    s.flush()
    _enospc_on(monkeypatch, ".idx")
    for _ in range(3):
        s.ack(s.take())
    s.flush()  # acks could not be written: logged, flagged, not fatal
    assert s.error is not None
    monkeypatch.undo()
    s.close()
    assert ids(drain(open_store(path))) == list(range(10))  # at-least-once: they come back


def test_fsync_error_nacks(tmp_path, monkeypatch) -> None:
    st = StoreSettings(segment_size=8192, fsync="always")
    sink = Sink()
    s = open_store(tmp_path / "q", st, sink)

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", eio)
    s.push(make(b"a"), "a")
    s.flush()
    assert sink.failed == [("a", errno.EIO)] and sink.durable == []
    monkeypatch.undo()
    s.push(make(b"b"), "b")
    s.flush()
    assert sink.durable == ["b"]


def test_records_the_store_cannot_parse_do_not_stop_recovery(tmp_path) -> None:
    path = tmp_path / "q"
    s = open_store(path)
    for i in range(50):
        s.push(make(body_of(i)))
    s.flush()
    s.close()
    seg = path / files(path, ".seg")[0]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # tear the last record
        f.truncate(size - 3)
    with open(seg, "ab") as f:
        f.write(struct.pack("<II", 5, 0) + b"junk!")  # and add a bad one
    r = open_store(path)
    assert ids(drain(r)) == list(range(49))


# ---------------------------------------------------------------- edge paths
def test_requeue_interleaves_with_requeued_messages(tmp_path) -> None:
    s = open_store(tmp_path / "q")
    for i in range(6):
        s.push(make(body_of(i), persistent=i % 2 == 0))
    t = [s.take() for _ in range(3)]
    s.requeue([t[0]])
    s.requeue([t[2]])  # behind 0, ahead of 3: needs a merge
    s.requeue([t[1]])
    assert ids(drain(s)) == [0, 1, 2, 3, 4, 5]


def test_acked_before_written_is_never_written(tmp_path) -> None:
    path = tmp_path / "q"
    sink = Sink()
    s = open_store(path, StoreSettings(segment_size=4096, fsync="off"), sink)
    for i in range(100):
        s.push(make(body_of(i, 200)), i)  # ~25 segments in one turn
    for _ in range(100):
        s.ack(s.take())
    s.flush()
    assert sorted(sink.durable) == list(range(100))  # acked: confirmed without a write
    assert len(files(path, ".seg")) <= 1
    assert disk_bytes(path) <= 2 * 4096 + 8192
    s.push(make(body_of(100)), 100)
    s.flush()
    s.close()
    assert ids(drain(open_store(path))) == [100]


def test_current_segment_emptied_then_rolled_is_deleted(tmp_path) -> None:
    path = tmp_path / "q"
    s = open_store(path, StoreSettings(segment_size=4096, fsync="off"))
    n = 0
    while s._cur is None or s._cur.data.end < 4096:  # fill the first segment exactly
        s.push(make(body_of(n, 100)))
        n += 1
    s.flush()
    assert files(path, ".seg") == ["0000000000000001.seg"]
    drain(s)
    s.flush()
    assert len(files(path, ".seg")) == 1  # the current one stays while it is current
    s.push(make(body_of(n, 100)))  # rolls: the empty full segment goes
    s.flush()
    assert files(path, ".seg") == ["0000000000000002.seg"]
    assert ids(drain(s)) == [n]


def test_region_ending_in_transient_messages(tmp_path) -> None:
    st = StoreSettings(segment_size=1 << 20, queue_memory_budget=4096, fsync="off")
    s = open_store(tmp_path / "q", st)
    for i in range(20):
        s.push(make(body_of(i, 1000), persistent=i < 12))
    s.flush()
    assert s.stats()["ready_on_disk_only"] > 0
    assert ids(drain(s)) == list(range(20))


def test_write_failure_of_unacked_and_direct_messages(tmp_path, monkeypatch) -> None:
    path = tmp_path / "q"
    sink = Sink()
    s = open_store(path, sink=sink)
    s.push(make(body_of(0)), 0)
    s.flush()
    state = _enospc_on(monkeypatch, ".seg")
    direct = make(body_of(1))
    s.push_taken(direct, 1)  # delivered directly, its record fails
    s.push(make(body_of(2)), 2)
    taken = [s.take(), s.take()]  # 0 (on disk) and 2 (record fails)
    s.flush()
    state["on"] = False
    assert sorted(t for t, _ in sink.failed) == [1, 2]
    for m in [direct, *taken]:
        s.ack(m)  # lost ones are acked in memory only
    s.flush()
    s.close()
    assert len(open_store(path)) == 0


def test_cannot_create_a_segment(tmp_path, monkeypatch) -> None:
    sink = Sink()
    s = open_store(tmp_path / "q", sink=sink)
    real_open = os.open

    def no_create(path, flags, *args):
        if str(path).endswith(".seg") and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_create)
    assert s.push(make(body_of(0)), 0) is True  # its token will be nacked
    assert s.push_taken(make(body_of(1)), 1) is True
    s.flush()
    monkeypatch.undo()
    assert sorted(t for t, _ in sink.failed) == [0, 1]
    assert ids(drain(s)) == [0]  # still deliverable from memory
    s.push(make(body_of(2)), 2)
    s.flush()
    assert sink.durable == [2]


def test_purge_then_restart_with_paged_region(tmp_path) -> None:
    path = tmp_path / "q"
    st = StoreSettings(segment_size=16 * 1024, queue_memory_budget=4096, fsync="off")
    s = open_store(path, st)
    for i in range(100):
        s.push(make(body_of(i, 500)))
    s.flush()
    held = [s.take() for _ in range(3)]
    s.purge()
    for i in range(100, 140):
        s.push(make(body_of(i, 500)))
    s.flush()
    s.close()
    r = open_store(path, st)
    got = drain(r, ack=False)
    assert ids(got) == [0, 1, 2, *range(100, 140)]
    assert {int(m.body[:8]) for m in got if m in r.redelivered} == {0, 1, 2}
    assert len(held) == 3


def test_on_dirty_is_called_once_per_flush(tmp_path) -> None:
    dirty: list = []
    st = StoreSettings(fsync="off")
    s = DiskQueueStore.open(
        str(tmp_path / "q"), settings=st, committer=InlineCommitter("off"), on_dirty=dirty.append
    )
    s.push(make(b"transient", persistent=False))
    assert dirty == []  # nothing to write
    for i in range(10):
        s.push(make(body_of(i)))
    assert dirty == [s]
    s.flush()
    s.ack(s.take())  # the transient one: nothing to write
    assert dirty == [s]
    m = s.take()  # a delivered marker to write
    assert dirty == [s, s]
    s.ack(m)
    s.flush()
    s.flush()
    assert dirty == [s, s]


def test_queue_dir_destroy_and_redeclare(tmp_path) -> None:
    from shardmq.store.queue_store import queue_dir, sweep_deleted

    data = str(tmp_path)
    a = queue_dir(data, "/", "orders")
    assert a != queue_dir(data, "other", "orders") and a != queue_dir(data, "/", "orders2")
    assert a == queue_dir(data, "/", "orders")
    weird = queue_dir(data, "/", "a/../b\x00" + "x" * 250)
    assert os.path.dirname(weird) == os.path.join(data, "queues")
    s = open_store(a)
    s.push(make(body_of(1)))
    s.flush()
    s.destroy()
    again = open_store(a)  # the same name right away: empty
    assert len(again) == 0
    again.push(make(body_of(2)))
    again.flush()
    again.close()
    os.makedirs(a + ".deleted-1-abc")  # as if a crash interrupted a background delete
    assert sweep_deleted(data) == 1
    assert ids(drain(open_store(a))) == [2]


def test_region_survives_losing_its_disk_part(tmp_path, monkeypatch) -> None:
    """A failed write takes the only on-disk part of the region; a transient message is
    left in it, and a later persistent push must still be found by the pager."""
    st = StoreSettings(segment_size=1 << 20, queue_memory_budget=4096, fsync="off")
    sink = Sink()
    s = open_store(tmp_path / "q", st, sink)
    s.push(make(body_of(0, 1000)), 0)
    s.flush()
    state = _enospc_on(monkeypatch, ".seg")
    i = 1
    while s.stats()["ready_on_disk_only"] == 0:  # until one goes to disk only
        s.push(make(body_of(i, 1000)), i)
        i += 1
    paged = i - 1
    s.push(make(body_of(i, 1000), persistent=False))  # a transient joins the region
    i += 1
    s.flush()  # the whole batch fails: `paged` is gone, the others stay in memory
    state["on"] = False
    assert [t for t, _ in sink.failed] == list(range(1, paged + 1))
    s.push(make(body_of(i, 1000)), i)
    s.flush()
    assert sink.durable == [0, i]
    assert ids(drain(s)) == [n for n in range(i + 1) if n != paged]
