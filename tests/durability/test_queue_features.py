"""Queue features across restarts: TTL deadlines are absolute (a message whose deadline
passed while the broker was down is gone after the restart, also from a backlog paged
to disk; one with a long TTL is still there) and a persistent message dead-lettered
from one durable queue to another is never lost across kill -9 (1 and 3 workers, the
target on another worker than the source).

Invariants: no timing assertions: the broker stays down longer than the short TTL, and
what must be gone is checked with basic.get, which never hands out an expired message.
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest

from shardmq.broker.metadata import shard_for

from .conftest import DurableBroker

SHORT_MS = 1000
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _count(ch: Any, q: str) -> int:
    return ch.queue_declare(q, passive=True).method.message_count


def _drain(ch: Any, q: str) -> list[bytes]:
    out = []
    while True:
        m, _p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append(b)


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
def test_ttl_deadline_survives_restart(make_durable: Any, kill: bool) -> None:
    broker: DurableBroker = make_durable(queue_memory_budget=64 * 1024)
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("short", durable=True, arguments={"x-message-ttl": SHORT_MS})
    ch.queue_declare("long", durable=True, arguments={"x-message-ttl": 600_000})
    ch.queue_declare("per-msg", durable=True)
    body = b"x" * 1024
    for _ in range(500):  # 500 KiB: most of it paged to disk (64 KiB budget)
        ch.basic_publish("", "short", body, PERSISTENT)
    for i in range(5):
        ch.basic_publish("", "long", b"%d" % i, PERSISTENT)
    exp = pika.BasicProperties(delivery_mode=2, expiration=str(SHORT_MS))
    ch.basic_publish("", "per-msg", b"soon", exp)
    published = time.monotonic()
    conn.close()
    if kill:
        broker.kill()
    else:
        assert broker.stop() == 0
    time.sleep(max(0.0, SHORT_MS / 1000 + 0.3 - (time.monotonic() - published)))
    broker.start()
    conn = broker.connect()
    ch = conn.channel()
    assert _drain(ch, "short") == []
    assert _drain(ch, "per-msg") == []
    assert _drain(ch, "long") == [b"%d" % i for i in range(5)]
    conn.close()


def _name(prefix: str, workers: int, shard: int) -> str:
    i = 0
    while True:
        n = f"{prefix}-{i}"
        if workers == 1 or shard_for("/", n, workers) == shard:
            return n
        i += 1


@pytest.mark.parametrize("workers", [1, 3])
def test_dead_letter_between_durable_queues_survives_kill9(make_durable: Any, workers: int) -> None:
    broker: DurableBroker = make_durable(workers=workers)
    src, dst = _name("src", workers, 1), _name("dst", workers, 2)
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare("dlx", "fanout", durable=True)
    ch.queue_declare(dst, durable=True)
    ch.queue_bind(dst, "dlx")
    ch.queue_declare(src, durable=True, arguments={"x-dead-letter-exchange": "dlx"})
    ch.confirm_delivery()
    n = 300
    for i in range(n):
        ch.basic_publish("", src, b"%d" % i, PERSISTENT)
    rejected = 0
    while rejected < n:
        m, _p, _b = ch.basic_get(src, auto_ack=False)
        if m is None:
            conn.process_data_events(time_limit=0.01)
            continue
        ch.basic_reject(m.delivery_tag, requeue=False)
        rejected += 1
    broker.kill()  # some copies in flight, some source acks not written
    broker.start()
    conn = broker.connect()
    ch = conn.channel()
    left = _drain(ch, src)
    moved = _drain(ch, dst)
    # every message is somewhere (a duplicate is allowed, a loss is not)
    assert {int(b) for b in left} | {int(b) for b in moved} == set(range(n))
    conn.close()


@pytest.mark.parametrize("args", [{}, {"x-message-ttl": 600_000}], ids=["plain", "queue-ttl"])
def test_recovered_message_with_its_own_expiration_behind_a_live_head(
    make_durable: Any, args: dict[str, Any]
) -> None:
    """After a restart, a message whose own ``expiration`` ran out while the broker was
    down is not delivered even when a live message is in front of it (the timer only
    sees the head): the recovered queue checks every message it hands out."""
    broker: DurableBroker = make_durable()
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("mixed", durable=True, arguments=args)
    ch.basic_publish("", "mixed", b"live", PERSISTENT)
    ch.basic_publish("", "mixed", b"soon", pika.BasicProperties(delivery_mode=2, expiration="1000"))
    ch.basic_publish("", "mixed", b"live2", PERSISTENT)
    published = time.monotonic()
    conn.close()
    assert broker.stop() == 0
    time.sleep(max(0.0, 1.3 - (time.monotonic() - published)))
    broker.start()
    conn = broker.connect()
    ch = conn.channel()
    assert _drain(ch, "mixed") == [b"live", b"live2"]
    conn.close()
