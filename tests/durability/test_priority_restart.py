"""Durable priority queues across restarts (SIGTERM and kill -9, 1 and 3 workers): every
confirmed persistent message comes back with its priority, in delivery order (highest
priority first, publish order within one), including a backlog paged to disk; a message
delivered and not acked before the crash comes back redelivered at its place; transient
messages are gone; the queue keeps working (new publishes are ordered with the old).
"""

from __future__ import annotations

from typing import Any

import pika
import pytest

from .conftest import DurableBroker

TOP = 10
BODY = b"x" * 1024


def _drain(ch: Any, q: str) -> list[tuple[bytes, int, bool]]:
    out = []
    while True:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append((b[:12], p.priority or 0, m.redelivered))


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
def test_priorities_survive_restart(make_durable: Any, kill: bool, workers: int) -> None:
    # 16 KiB in memory per level (~50 KiB each): most messages are paged to disk
    broker: DurableBroker = make_durable(workers, queue_memory_budget=16 * 1024)
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("prio", durable=True, arguments={"x-max-priority": TOP})
    published: list[tuple[bytes, int]] = []
    for i in range(600):
        prio = (i * 7) % 13  # 0..12: 11 and 12 count as 10
        tag = b"%05d-p%02d-xx" % (i, prio)
        ch.basic_publish(
            "", "prio", tag + BODY, pika.BasicProperties(priority=prio, delivery_mode=2)
        )
        published.append((tag[:12], prio))
        if i % 50 == 0:  # transient: gone after the restart
            ch.basic_publish("", "prio", b"transient", pika.BasicProperties(priority=prio))
    held, _p, held_body = ch.basic_get("prio")  # the first in order: highest priority
    assert held is not None
    if kill:
        broker.kill()
    else:
        conn.close()
        assert broker.stop() == 0
    broker.start()
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    got = _drain(ch, "prio")
    want = sorted(published, key=lambda bp: -min(bp[1], TOP))  # stable: publish order kept
    assert [(b, p) for b, p, _r in got] == want
    assert [b for b, _p, r in got if r] == [held_body[:12]]  # delivered before: redelivered
    # the queue works on: new messages ordered with each other
    for prio in (1, 9, 5):
        ch.basic_publish("", "prio", b"new-%d" % prio, pika.BasicProperties(priority=prio))
    assert [b for b, _p, _r in _drain(ch, "prio")] == [b"new-9", b"new-5", b"new-1"]
    conn.close()
