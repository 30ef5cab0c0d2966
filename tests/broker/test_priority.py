"""The priority container (``shardmq.broker.priority``) against a model, with
hypothesis: the delivery order is a stable sort by clamped priority, descending; a
requeued message goes back to the front of its own level (its place by publish order);
the disk kind pages each level and recovers every level in that order; no level is
kept without messages (memory) and none is made before a message needs it.
"""

from __future__ import annotations

import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shardmq.amqp.methods import BasicProperties
from shardmq.broker.priority import (
    DiskPriorityStore,
    MemoryPriorityStore,
    max_priority,
    message_priority,
    open_disk_priority,
)
from shardmq.message import Message
from shardmq.store.commit import InlineCommitter
from shardmq.store.queue_store import DiskQueueStore
from shardmq.store.settings import StoreSettings

_seq = iter(range(1, 1 << 62))


def mk(prio: int | None, persistent: bool = False, **kw: Any) -> Message:
    props = BasicProperties(priority=prio, delivery_mode=2 if persistent else None, **kw)
    seq = next(_seq)
    body = b"%012d" % seq + b"x" * 288
    header = (60).to_bytes(2, "big") + b"\0\0" + len(body).to_bytes(8, "big") + props.encode()
    return Message.from_parts(b"\0\0", header, body, seq)


@given(
    prio=st.none() | st.integers(0, 255),
    kw=st.sampled_from(
        [{}, {"content_type": "text/plain", "headers": {"k": "v" * 40}, "content_encoding": "x"}]
    ),
)
def test_message_priority_reads_the_property(prio: int | None, kw: dict[str, Any]) -> None:
    for persistent in (False, True):
        assert message_priority(mk(prio, persistent, **kw).raw) == (prio or 0)


def test_max_priority() -> None:
    assert max_priority(None) == 0
    assert max_priority({"x-max-priority": 10}) == 10
    assert max_priority({"x-max-priority": 0}) == 0
    assert max_priority({"x-max-priority": True}) == 0
    assert max_priority({"x-max-priority": "5"}) == 0


# ops: ("pub", priority, persistent) | ("take",) | ("requeue", index mask) | ("ack", i)
_op = st.one_of(
    st.tuples(st.just("pub"), st.none() | st.integers(0, 20), st.booleans()),
    st.tuples(st.just("take")),
    st.tuples(st.just("requeue"), st.integers(0, 255)),
    st.tuples(st.just("ack"), st.integers(0, 50)),
)


class Model:
    """Ready messages as (level, seq); delivery = highest level, then lowest seq."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.ready: list[Message] = []
        self.unacked: list[Message] = []
        self.levels_used: set[int] = set()

    def level(self, m: Message) -> int:
        return min(message_priority(m.raw), self.top)

    def next(self) -> Message:
        return min(self.ready, key=lambda m: (-self.level(m), m.seq))


def run(store: Any, model: Model, ops: list[tuple[Any, ...]]) -> None:
    for op in ops:
        if op[0] == "pub":
            m = mk(op[1], op[2])
            store.push(m)
            model.ready.append(m)
            model.levels_used.add(model.level(m))
        elif op[0] == "take":
            if not model.ready:
                assert not store
                continue
            want = model.next()
            assert store.peek() is want
            got = store.take()
            assert got is want
            model.ready.remove(got)
            model.unacked.append(got)
        elif op[0] == "requeue":
            back = [m for i, m in enumerate(model.unacked) if op[1] >> (i % 8) & 1]
            model.unacked = [m for m in model.unacked if m not in back]
            store.requeue(reversed(back))
            model.ready += back
        else:
            if model.unacked:
                m = model.unacked.pop(op[1] % len(model.unacked))
                store.ack(m)
        assert len(store) == len(model.ready)
        assert bool(store) == bool(model.ready)


def drain(store: Any, model: Model) -> None:
    while model.ready:
        want = model.next()
        assert store.take() is want
        model.ready.remove(want)
        model.unacked.append(want)
    assert not store and len(store) == 0


@settings(max_examples=150, deadline=None)
@given(top=st.integers(1, 12), ops=st.lists(_op, max_size=80))
def test_memory_store_matches_model(top: int, ops: list[tuple[Any, ...]]) -> None:
    store = MemoryPriorityStore(top)
    model = Model(top)
    run(store, model, ops)
    assert sorted(m.seq for m in store) == sorted(m.seq for m in model.ready)
    levels = {model.level(m) for m in model.ready}
    assert set(store.levels) == levels  # no empty level kept
    drain(store, model)
    assert store.levels == {}


def _open(path: str, top: int) -> DiskPriorityStore:
    s = StoreSettings(queue_memory_budget=2048, segment_size=4096)
    committer = InlineCommitter.from_settings(s)

    def level(p: str) -> DiskQueueStore:
        return DiskQueueStore.open(p, settings=s, committer=committer)

    return open_disk_priority(path, top, level, committer)


@settings(max_examples=60, deadline=None)
@given(top=st.integers(1, 12), ops=st.lists(_op, max_size=80))
def test_disk_store_matches_model_and_recovers(top: int, ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/q"
        store = _open(path, top)
        model = Model(top)
        run(store, model, ops)
        assert set(store.levels) <= model.levels_used  # none made before needed
        store.flush()
        store.close()
        # after a restart: the persistent ready and unacked messages, unacked ones
        # redelivered, in delivery order by level then publish order
        back = _open(path, top)
        kept = [m for m in model.ready + model.unacked if _persistent(m)]
        want = sorted(kept, key=lambda m: (-model.level(m), m.seq))
        got = []
        while back:
            got.append(back.take())
        assert [(model.level(m), m.body) for m in got] == [(model.level(m), m.body) for m in want]
        assert len(got) == len(want)
        back.close()


def _persistent(m: Message) -> bool:
    from shardmq.store.queue_store import RawCodec

    return RawCodec.persistent(m)


def test_disk_levels_are_made_on_demand() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = _open(f"{tmp}/q", 255)
        assert store.levels == {}
        store.push(mk(7, True))
        store.push(mk(None, True))
        assert set(store.levels) == {0, 7}
        assert message_priority(store.take().raw) == 7
        store.close()
        again = _open(f"{tmp}/q", 255)
        assert set(again.levels) == {0, 7} and again.recovered == 2
        again.close()
