"""AMQP 1.0 publishes to a durable queue: ``accepted`` means stored (1 and 3 workers).

Every durable message that Proton saw accepted is still there after kill -9 of the
whole broker and a restart on the same data dir; then it is consumed over AMQP 1.0."""

from __future__ import annotations

from typing import Any

import pytest
from proton import Delivery, Message
from proton.utils import BlockingConnection


@pytest.mark.parametrize("workers", [1, 3])
def test_accepted_durable_messages_survive_kill_9(make_durable: Any, workers: int) -> None:
    b = make_durable(workers=workers)
    conn = b.connect()
    queues = [f"a1-durable-{i}" for i in range(3)]  # on different workers with 3
    for q in queues:
        conn.channel().queue_declare(q, durable=True)
    conn.close()
    c = BlockingConnection(f"amqp://guest:guest@127.0.0.1:{b.port}", timeout=10)
    for q in queues:
        s = c.create_sender(f"/queues/{q}")
        for i in range(20):
            d = s.send(Message(body=f"{q}-{i}", durable=True))
            assert d.remote_state == Delivery.ACCEPTED
    b.restart(kill=True)  # no close, no flush: only what was stored survives
    conn = b.connect()
    counts = [conn.channel().queue_declare(q, passive=True).method.message_count for q in queues]
    conn.close()
    assert counts == [20, 20, 20]
    c = BlockingConnection(f"amqp://guest:guest@127.0.0.1:{b.port}", timeout=10)
    try:
        r = c.create_receiver(f"/queues/{queues[0]}", credit=5)
        got = []
        for _ in range(20):
            got.append(r.receive(timeout=10).body)
            r.accept()
        assert got == [f"{queues[0]}-{i}" for i in range(20)]
    finally:
        c.close()
