"""Dead-lettering (``x-dead-letter-exchange``, ``x-dead-letter-routing-key``) on reject,
nack, expiry and maxlen, with RabbitMQ 3.10's ``x-death`` layout, cycle breaking, and
the dead-letter target on another worker than the queue.

Invariants: every wait is bounded; what must not arrive is checked after something
that must arrive later did (or after a quiet window, which can only pass wrongly).
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from shardmq.broker.metadata import shard_for

from .helpers import WAIT, Env, queue_counts, unique

pytestmark = pytest.mark.timeout(60)


def _get(ch: BlockingChannel, q: str) -> tuple[Any, Any, bytes]:
    deadline = time.monotonic() + WAIT
    while True:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is not None:
            return m, p, b
        assert time.monotonic() < deadline, f"nothing arrived in {q}"
        time.sleep(0.02)


def _setup(env: Env, ch: BlockingChannel, **args: Any) -> tuple[str, str, str]:
    q, dead, dlx = env.queue(), env.queue("dead"), env.exchange("dlx")
    ch.exchange_declare(dlx, "topic")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx, "#")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, **args})
    return q, dead, dlx


@pytest.mark.parametrize("how", ["reject", "nack", "nack-multiple"])
def test_reject_dead_letters(env: Env, how: str) -> None:
    ch = env.channel()
    q, dead, dlx = _setup(env, ch)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"r", pika.BasicProperties(headers={"CC": ["other"]}, delivery_mode=2))
    m, _p, _b = _get_unacked(ch, q)
    if how == "reject":
        ch.basic_reject(m.delivery_tag, requeue=False)
    elif how == "nack":
        ch.basic_nack(m.delivery_tag, requeue=False)
    else:
        ch.basic_nack(0, multiple=True, requeue=False)
    m2, p, b = _get(ch, dead)
    assert b == b"r" and m2.exchange == dlx and m2.routing_key == q
    h = p.headers
    (death,) = h["x-death"]
    assert death["count"] == 1 and death["reason"] == "rejected" and death["queue"] == q
    assert death["exchange"] == "" and death["routing-keys"] == [q, "other"]
    assert "original-expiration" not in death
    assert h["CC"] == ["other"]
    assert (h["x-first-death-reason"], h["x-first-death-queue"]) == ("rejected", q)
    assert p.delivery_mode == 2
    assert queue_counts(ch, q)[0] == 0


def _get_unacked(ch: BlockingChannel, q: str) -> tuple[Any, Any, bytes]:
    deadline = time.monotonic() + WAIT
    while True:
        m, p, b = ch.basic_get(q, auto_ack=False)
        if m is not None:
            return m, p, b
        assert time.monotonic() < deadline, f"nothing arrived in {q}"
        time.sleep(0.02)


def test_routing_key_override_drops_cc(env: Env) -> None:
    ch = env.channel()
    q, dead, _dlx = _setup(env, ch, **{"x-dead-letter-routing-key": "fixed.key"})
    ch.basic_publish("", q, b"x", pika.BasicProperties(headers={"CC": ["c1"]}))
    m, _p, _b = _get_unacked(ch, q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m2, p, _b = _get(ch, dead)
    assert m2.routing_key == "fixed.key"
    assert "CC" not in p.headers
    assert p.headers["x-death"][0]["routing-keys"] == [q, "c1"]


def test_requeue_true_does_not_dead_letter(env: Env) -> None:
    ch = env.channel()
    q, dead, _dlx = _setup(env, ch)
    ch.basic_publish("", q, b"x")
    m, _p, _b = _get_unacked(ch, q)
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _p, b = _get(ch, q)
    assert b == b"x" and m.redelivered
    assert queue_counts(ch, dead)[0] == 0


def test_x_death_count_increments_and_moves_to_front(env: Env) -> None:
    """q1 rejects to q2 (via DLX), q2 expires back to q1, q1 rejects again: the (q1,
    rejected) entry is counted twice and is first; (q2, expired) stays once."""
    ch = env.channel()
    q1, q2 = env.queue("one"), env.queue("two")
    x1, x2 = env.exchange("to2"), env.exchange("to1")
    ch.exchange_declare(x1, "fanout")
    ch.exchange_declare(x2, "fanout")
    ch.queue_declare(q1, arguments={"x-dead-letter-exchange": x1})
    ch.queue_declare(q2, arguments={"x-dead-letter-exchange": x2, "x-message-ttl": 20})
    ch.queue_bind(q2, x1)
    ch.queue_bind(q1, x2)
    ch.basic_publish("", q1, b"loop")
    for _ in range(2):
        m, _p, _b = _get_unacked(ch, q1)
        ch.basic_reject(m.delivery_tag, requeue=False)
    m, p, _b = _get_unacked(ch, q1)
    deaths = p.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        (q2, "expired", 2),
        (q1, "rejected", 2),
    ]
    assert p.headers["x-first-death-queue"] == q1
    ch.basic_ack(m.delivery_tag)


def test_expiry_cycle_is_dropped(env: Env) -> None:
    """A queue dead-lettering expired messages to itself: RabbitMQ drops the message
    on the second round (no rejection in the cycle)."""
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(
        q,
        arguments={
            "x-message-ttl": 20,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": q,
        },
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"cycle")
    deadline = time.monotonic() + WAIT
    while queue_counts(ch, q)[0]:
        assert time.monotonic() < deadline, "the cycling message was not dropped"
        time.sleep(0.05)
    time.sleep(0.2)
    assert queue_counts(ch, q)[0] == 0


def test_missing_dlx_drops(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": unique("nope")})
    ch.basic_publish("", q, b"x")
    m, _p, _b = _get_unacked(ch, q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    assert queue_counts(ch, q)[0] == 0
    assert ch.is_open


def test_dead_letter_with_aio_pika(env: Env) -> None:
    aio_pika = pytest.importorskip("aio_pika")
    import asyncio

    ch = env.channel()
    q, dead, _dlx = _setup(env, ch)

    async def run() -> dict[str, Any]:
        conn = await aio_pika.connect(env.broker.uri)
        async with conn:
            c = await conn.channel()
            await c.default_exchange.publish(aio_pika.Message(b"aio"), routing_key=q)
            queue = await c.get_queue(q, ensure=False)
            msg = await queue.get(timeout=WAIT, fail=True)
            await msg.reject(requeue=False)
            dq = await c.get_queue(dead, ensure=False)
            for _ in range(100):
                got = await dq.get(fail=False)
                if got is not None:
                    await got.ack()
                    return dict(got.headers)
                await asyncio.sleep(0.05)
            raise AssertionError("no dead-lettered message")

    headers = asyncio.run(run())
    assert headers["x-first-death-reason"] == "rejected"


def test_dead_letter_target_on_other_workers(env: Env) -> None:
    """3 workers: source queue on worker 1, its DLX target on worker 2, the rejecting
    consumer on worker 0, the reader of the target on worker 2 (RabbitMQ: any)."""
    if env.broker.workers not in (None, 3):
        pytest.skip("placement needs 3 workers")
    vhost = env.broker.vhost

    def named(worker: int, prefix: str) -> str:
        while True:
            n = unique(prefix)
            if env.broker.workers is None or shard_for(vhost, n, 3) == worker:
                env.queues.append(n)
                return n

    q, dead, dlx = named(1, "src"), named(2, "dead"), env.exchange("dlx")
    ch = env.channel()
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead, durable=True)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(q, durable=True, arguments={"x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2))
    got: list[bytes] = []

    def on_msg(c: BlockingChannel, m: Any, p: Any, b: bytes) -> None:
        c.basic_reject(m.delivery_tag, requeue=False)

    ch.basic_qos(prefetch_count=5)
    ch.basic_consume(q, on_msg)
    deadline = time.monotonic() + WAIT
    rd = env.channel()
    while len(got) < 20:
        assert time.monotonic() < deadline, f"got {len(got)} of 20"
        ch.connection.process_data_events(time_limit=0.02)
        m, p, b = rd.basic_get(dead, auto_ack=True)
        if m is not None:
            assert p.headers["x-death"][0]["queue"] == q
            got.append(b)
    assert sorted(got, key=int) == [b"%d" % i for i in range(20)]
