"""Where a requeued message goes, as RabbitMQ 3.10.8 does it (each test also passes
against it with ``SHARDMQ_TEST_URI``): in a quorum queue, a message the client returns
(basic.reject / basic.nack with requeue, basic.recover) goes to the back of the queue,
in the order returned; what a closing channel held goes back to the front, in its
order. A classic queue puts every requeued message back in its place at the front.

With 3 workers the client's connection is on another worker than the queue (the
returns travel as settle records); with 1 worker everything is local.
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from shardmq.broker.metadata import shard_for

from .helpers import WAIT, Env, pika_on_worker, queue_counts

pytestmark = pytest.mark.timeout(60)

BODIES = [b"m1", b"m2", b"m3"]


def _channel(env: Env, q: str) -> BlockingChannel:
    """A channel on a connection of another worker than ``q``'s owner (3 workers)."""
    workers = env.broker.workers
    if not workers or workers == 1:
        return env.channel()
    other = (shard_for("/", q, workers) + 1) % workers
    conn = pika_on_worker(env.broker.blocking, other)
    env._conns.append(conn)
    return conn.channel()


def _declare(env: Env, kind: str) -> tuple[BlockingChannel, str]:
    q = env.queue(f"requeue-{kind}")
    ch = _channel(env, q)
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": kind})
    ch.confirm_delivery()
    for b in BODIES:
        ch.basic_publish("", q, b)
    return ch, q


def _get(ch: BlockingChannel, q: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        m, _p, _b = ch.basic_get(q)
        if m is not None:
            return m
        assert time.monotonic() < deadline, f"nothing in {q}"
        time.sleep(0.02)


def _drain(ch: BlockingChannel, q: str, n: int = 3) -> list[tuple[bytes, bool, Any]]:
    """The ``n`` ready messages in order (waits for returns in flight to arrive)."""
    deadline = time.monotonic() + WAIT
    while queue_counts(ch, q)[0] < n:
        assert time.monotonic() < deadline, f"{q}: {queue_counts(ch, q)[0]} < {n}"
        time.sleep(0.02)
    out = []
    for _ in range(n):
        m, p, b = ch.basic_get(q, auto_ack=True)
        assert m is not None
        out.append((b, m.redelivered, (p.headers or {}).get("x-delivery-count")))
    return out


def test_quorum_nack_goes_to_the_back(env: Env) -> None:
    ch, q = _declare(env, "quorum")
    ch.basic_nack(_get(ch, q).delivery_tag, requeue=True)
    assert _drain(ch, q) == [(b"m2", False, 0), (b"m3", False, 0), (b"m1", True, 1)]


def test_quorum_rejects_go_to_the_back_in_the_order_returned(env: Env) -> None:
    ch, q = _declare(env, "quorum")
    m1, m2 = _get(ch, q), _get(ch, q)
    ch.basic_reject(m2.delivery_tag, requeue=True)
    ch.basic_reject(m1.delivery_tag, requeue=True)
    assert [b for b, _r, _c in _drain(ch, q)] == [b"m3", b"m2", b"m1"]


def test_quorum_nack_multiple_keeps_the_returned_order(env: Env) -> None:
    ch, q = _declare(env, "quorum")
    _get(ch, q)
    m2 = _get(ch, q)
    ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
    assert _drain(ch, q) == [(b"m3", False, 0), (b"m1", True, 1), (b"m2", True, 1)]


def test_quorum_recover_goes_to_the_back(env: Env) -> None:
    ch, q = _declare(env, "quorum")
    _get(ch, q), _get(ch, q)
    ch.basic_recover(requeue=True)
    assert _drain(ch, q) == [(b"m3", False, 0), (b"m1", True, 1), (b"m2", True, 1)]


def test_quorum_channel_close_goes_to_the_front(env: Env) -> None:
    ch, q = _declare(env, "quorum")
    other = _channel(env, q)
    _get(other, q), _get(other, q)
    other.close()
    assert _drain(ch, q) == [(b"m1", True, 1), (b"m2", True, 1), (b"m3", False, 0)]


def test_quorum_consumer_nack_redelivers_after_the_rest(env: Env) -> None:
    """A consumer (prefetch 1) nacking its first delivery gets the others first."""
    ch, q = _declare(env, "quorum")
    ch.basic_qos(prefetch_count=1)
    seen: list[bytes] = []

    def on_message(c: BlockingChannel, m: Any, _p: Any, body: bytes) -> None:
        seen.append(body)
        if len(seen) == 1:
            c.basic_nack(m.delivery_tag, requeue=True)
        else:
            c.basic_ack(m.delivery_tag)

    ch.basic_consume(q, on_message)
    deadline = time.monotonic() + WAIT
    while len(seen) < 4:
        assert time.monotonic() < deadline, seen
        ch.connection.process_data_events(time_limit=0.05)
    assert seen == [b"m1", b"m2", b"m3", b"m1"]


def test_classic_requeue_goes_back_to_its_place(env: Env) -> None:
    ch, q = _declare(env, "classic")
    ch.basic_nack(_get(ch, q).delivery_tag, requeue=True)
    m1, m2 = _get(ch, q), _get(ch, q)
    ch.basic_reject(m2.delivery_tag, requeue=True)
    ch.basic_reject(m1.delivery_tag, requeue=True)
    assert [(b, r) for b, r, _c in _drain(ch, q)] == [(b"m1", True), (b"m2", True), (b"m3", False)]


def test_durable_quorum_back_order_holds_for_persistent_messages(env: Env) -> None:
    ch, q = _declare(env, "quorum")
    ch.basic_publish("", q, b"p4", pika.BasicProperties(delivery_mode=2))
    ch.basic_nack(_get(ch, q).delivery_tag, requeue=True)
    got = [b for b, _r, _c in _drain(ch, q, 4)]
    assert got == [b"m2", b"m3", b"p4", b"m1"]
