"""Unit tests for shardmq.store.delayed: the log of held delayed messages."""

from __future__ import annotations

import os
from pathlib import Path

from shardmq.store.delayed import DelayedStore, adopt, adoptable, delayed_dir


class Target:
    def __init__(self) -> None:
        self.answers: list[tuple[int, bool]] = []

    def stored(self, key: int, ok: bool) -> None:
        self.answers.append((key, ok))


def add(store: DelayedStore, due: int, body: bytes, token=None) -> tuple[int, int]:
    return store.add(due, "/", "dx", b"\x02dx\x01k", 1, 14, 131072, b"raw:" + body, token)


def test_add_flush_recover_remove(tmp_path: Path) -> None:
    s = DelayedStore(str(tmp_path), segment_size=4096)
    assert s.recover() == []
    t = Target()
    held = [add(s, 1000 + i, b"m%d" % i, (t, i)) for i in range(50)]
    assert t.answers == []  # tokens are answered by the flush that covers them
    s.flush()
    assert t.answers == [(i, True) for i in range(50)]
    h = s.load(held[7][1])
    assert (h.vhost, h.exchange, h.exrk, h.ch, h.hsize, h.fmax, h.raw) == (
        "/",
        "dx",
        b"\x02dx\x01k",
        1,
        14,
        131072,
        b"raw:m7",
    )
    for rid, loc in held[:20]:
        s.remove(rid, loc)
    s.close()
    s2 = DelayedStore(str(tmp_path), segment_size=4096)
    rec = s2.recover()
    assert [r.due for r in rec] == [1000 + i for i in range(20, 50)]
    assert s2.load(rec[0].loc).raw == b"raw:m20"
    # new ids do not collide with recovered ones
    rid, _ = add(s2, 5, b"new")
    assert rid > max(r.id for r in rec)
    s2.close()


def test_segments_are_deleted_oldest_first_once_empty(tmp_path: Path) -> None:
    s = DelayedStore(str(tmp_path), segment_size=4096)
    s.recover()
    held = []
    for i in range(200):  # several segments (rotation happens at flush boundaries)
        held.append(add(s, i, b"x" * 100))
        s.flush()
    assert len(os.listdir(tmp_path)) > 3
    for rid, loc in held[:-1]:
        s.remove(rid, loc)
    s.flush()
    s.remove(*held[-1])
    s.flush()
    add(s, 1, b"y")
    s.flush()
    assert len(os.listdir(tmp_path)) <= 2
    s.close()
    s2 = DelayedStore(str(tmp_path))
    assert [r.due for r in s2.recover()] == [1]
    s2.close()


def test_torn_tail_is_cut_and_the_rest_recovered(tmp_path: Path) -> None:
    s = DelayedStore(str(tmp_path))
    s.recover()
    for i in range(5):
        add(s, i, b"m%d" % i)
    s.flush()
    path = s.current.path  # type: ignore[union-attr]
    s.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 3)  # the last record loses its end
    s2 = DelayedStore(str(tmp_path))
    assert [r.due for r in s2.recover()] == [0, 1, 2, 3]
    s2.close()


def test_a_smaller_broker_adopts_the_slots_beyond_its_workers(tmp_path: Path) -> None:
    data = str(tmp_path)
    old = DelayedStore(delayed_dir(data, 2))
    old.recover()
    add(old, 10, b"from-w2")
    old.close()
    assert adoptable(data, 0, 2) == [delayed_dir(data, 2)]
    assert adoptable(data, 1, 2) == []
    mine = DelayedStore(delayed_dir(data, 0))
    mine.recover()
    moved = adopt(mine, delayed_dir(data, 2), lambda r: True)
    assert [mine.load(r.loc).raw for r in moved] == [b"raw:from-w2"]
    assert not os.path.exists(delayed_dir(data, 2))
    mine.close()
    again = DelayedStore(delayed_dir(data, 0))
    assert [r.due for r in again.recover()] == [10]
    again.close()
