"""SharedCounts: per-slot counts by key hash, read by the other slots; rebuilds when half
full keep the live keys; a reset slot holds nothing. And ConnCounts' admission on top."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shardmq.amqp.errors import HardError
from shardmq.auth.limits import Limits
from shardmq.broker.conn_limits import ConnCounts
from shardmq.ipc.counts import SharedCounts, key_hash


@pytest.fixture
def shared() -> Iterator[SharedCounts]:
    name = f"/shardmq.test{os.getpid()}.counts"
    sc = SharedCounts.create(name, 3, capacity=16)
    try:
        yield sc
    finally:
        sc.close()
        sc.unlink()


def test_counts_are_per_slot_and_visible_to_others(shared: SharedCounts) -> None:
    other = SharedCounts.attach(shared.name)
    try:
        h = key_hash("v:/")
        shared.set(0, h, 3)
        other.set(1, h, 2)
        assert other.get(0, h) == 3 and shared.get(1, h) == 2 and shared.get(2, h) == 0
        shared.set(0, h, 1)
        assert other.get(0, h) == 1
        assert shared.get(0, key_hash("v:other")) == 0
    finally:
        other.close()


def test_rebuild_keeps_live_keys_and_reset_clears(shared: SharedCounts) -> None:
    keys = [key_hash(f"u:{i}") for i in range(40)]
    for i, h in enumerate(keys):
        shared.set(0, h, i + 1)
        if i % 2:
            shared.set(0, h, 0)  # gone: its entry is dropped at the next rebuild
    live = [(h, i + 1) for i, h in enumerate(keys) if not i % 2]
    # 16 entries per slot: only the live keys of the last rebuild window are kept
    kept = [(h, n) for h, n in live if shared.get(0, h)]
    assert kept and all(shared.get(0, h) == n for h, n in kept)
    assert all(shared.get(0, h) == 0 for i, h in enumerate(keys) if i % 2)
    shared.reset(0)
    assert all(shared.get(0, h) == 0 for h in keys)


def test_conn_counts_admission_spans_slots(shared: SharedCounts) -> None:
    limits = Limits()
    limits.set_vhost("/", {"max-connections": 2}, merge=False)
    limits.set_user("u", {"max-channels": 1})
    a, b = ConnCounts(0, limits), ConnCounts(1, limits)
    a.attach(SharedCounts.attach(shared.name), lambda s: True)
    b.attach(SharedCounts.attach(shared.name), lambda s: True)
    a.connection_opened("/", "u")
    b.connection_opened("/", "u")
    with pytest.raises(HardError) as err:
        a.connection_opened("/", "u")
    assert err.value.reply_code == 530 and "connection limit (2) is reached" in err.value.reply_text
    assert a.connections("/") == 2  # the refused claim was withdrawn
    b.connection_closed("/", "u")
    a.connection_opened("/", "u")
    a.channel_opened("u")
    with pytest.raises(HardError):
        b.channel_opened("u")
    a.channel_closed("u")
    b.channel_opened("u")
    # a slot that is not ready does not count
    c = ConnCounts(2, limits)
    c.attach(SharedCounts.attach(shared.name), lambda s: s == 2)
    c.connection_opened("/", "u")
    c.connection_opened("/", "u")
