"""A durable quorum queue keeps its messages' delivery counts across a restart and a
kill -9 (issue 12): a message returned (nack with requeue) twice comes back after the
restart with ``x-delivery-count: 2`` and is dead-lettered at its next return once over
``x-delivery-limit``, as RabbitMQ's Raft log keeps it; returned messages keep their
place at the back of the queue.

Invariants: no timing assertions; a return is known to be stored once a later
synchronous method on the same channel was answered (the broker writes the store
before that turn's replies).
"""

from __future__ import annotations

from typing import Any

import pika
import pytest

from .conftest import DurableBroker

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _declare(ch: Any) -> None:
    ch.queue_declare("poison.dead", durable=True)
    ch.queue_declare(
        "poison",
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "poison.dead",
        },
    )


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
def test_delivery_count_survives_restart(make_durable: Any, kill: bool) -> None:
    broker: DurableBroker = make_durable()
    conn = broker.connect()
    ch = conn.channel()
    _declare(ch)
    ch.confirm_delivery()
    ch.basic_publish("", "poison", b"bad", PERSISTENT)
    ch.basic_publish("", "poison", b"good", PERSISTENT)
    counts = []
    for _ in range(2):
        m, p, b = ch.basic_get("poison")
        assert b == b"bad"
        counts.append(p.headers["x-delivery-count"])
        ch.basic_nack(m.delivery_tag, requeue=True)
        m, p, b = ch.basic_get("poison")  # the other one: "bad" went to the back
        assert b == b"good"
        ch.basic_nack(m.delivery_tag, requeue=True)
    assert counts == [0, 1]
    assert ch.queue_declare("poison", passive=True).method.message_count == 2
    conn.close()
    if kill:
        broker.kill()
    else:
        assert broker.stop() == 0
    broker.start()
    conn = broker.connect()
    ch = conn.channel()
    m, p, b = ch.basic_get("poison")
    assert (b, p.headers["x-delivery-count"]) == (b"bad", 2)
    ch.basic_nack(m.delivery_tag, requeue=True)  # the third return: over the limit
    m, p, b = ch.basic_get("poison")
    assert (b, p.headers["x-delivery-count"]) == (b"good", 2)
    ch.basic_ack(m.delivery_tag)
    assert ch.queue_declare("poison", passive=True).method.message_count == 0
    m, p, b = ch.basic_get("poison.dead", auto_ack=True)
    assert b == b"bad" and "x-delivery-count" not in p.headers
    assert p.headers["x-death"][0]["reason"] == "delivery_limit"
    conn.close()
