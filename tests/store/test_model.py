"""Randomized model test: DiskQueueStore against a plain reference model, through
pushes (persistent / transient, small / larger than the memory budget), direct
deliveries, takes, acks, requeues, purges, flushes and clean restarts."""

from __future__ import annotations

import random

import pytest

from shardmq.store.commit import InlineCommitter
from shardmq.store.queue_store import DiskQueueStore
from shardmq.store.settings import StoreSettings
from tests.store.helpers import make

SETTINGS = StoreSettings(segment_size=16 * 1024, queue_memory_budget=8 * 1024, fsync="off")


def ident(m) -> int:
    return int(m.body[:8])


class Model:
    def __init__(self) -> None:
        self.ready: list[int] = []  # ids in delivery order
        self.unacked: dict[int, object] = {}  # id -> Message held by the "consumer"
        self.persistent: set[int] = set()
        self.delivered: set[int] = set()  # ever handed to a consumer (across restarts)

    def restart(self) -> None:
        live = set(self.ready) | set(self.unacked)
        self.ready = sorted(i for i in live if i in self.persistent)
        self.unacked = {}


@pytest.mark.parametrize("seed", range(8))
def test_store_matches_model(tmp_path, seed: int) -> None:
    rnd = random.Random(seed)
    path = str(tmp_path / "q")

    def reopen() -> DiskQueueStore:
        return DiskQueueStore.open(path, settings=SETTINGS, committer=InlineCommitter("off"))

    s = reopen()
    model = Model()
    next_id = 1
    # recovered at the last restart: id -> must come with redelivered (checked on the
    # first take; later flags are the queue's business, not the store's)
    recovered: dict[int, bool] = {}
    for _ in range(2500):
        op = rnd.random()
        if op < 0.35:
            persistent = rnd.random() < 0.85
            size = rnd.choice((10, 200, 1500, 5000))
            m = make(b"%08d" % next_id + bytes(size), persistent=persistent)
            if persistent:
                model.persistent.add(next_id)
            if not model.ready and rnd.random() < 0.2:
                s.push_taken(m)  # the queue's direct delivery fast path
                model.unacked[next_id] = m
                model.delivered.add(next_id)
            else:
                s.push(m)
                model.ready.append(next_id)
            next_id += 1
        elif op < 0.65:
            assert len(s) == len(model.ready)
            if model.ready:
                m = s.take()
                i = ident(m)
                assert i == model.ready.pop(0)
                expect = recovered.pop(i, False)
                assert (m in s.redelivered) == expect, i
                s.redelivered.discard(m)
                model.unacked[i] = m
                model.delivered.add(i)
        elif op < 0.82:
            if model.unacked:
                i = rnd.choice(list(model.unacked))
                s.ack(model.unacked.pop(i))
        elif op < 0.9:
            if model.unacked:
                back = rnd.sample(list(model.unacked), rnd.randint(1, len(model.unacked)))
                s.requeue([model.unacked.pop(i) for i in back])
                model.ready = sorted(model.ready + back)
        elif op < 0.91:
            assert s.purge() == len(model.ready)
            model.ready = []
        elif op < 0.97:
            s.flush()
        else:
            s.flush()
            s.close()
            s = reopen()
            model.restart()
            recovered = {i: i in model.delivered for i in model.ready}
        assert len(s) == len(model.ready)
    s.flush()
    s.close()
    s = reopen()
    model.restart()
    got = []
    while s:
        got.append(ident(s.take()))
    assert got == model.ready
