"""Quorum-queue delivery counting, as RabbitMQ 3.10.8 does it (each test also passes
against it with ``SHARDMQ_TEST_URI``): ``x-delivery-count`` is 0 on a first delivery by
basic.get, absent on a consumer's first delivery, and counts the returns (nack/reject with requeue, a closed channel) after; a message
returned more than ``x-delivery-limit`` times is dead-lettered with reason
``delivery_limit`` (the copy without the count header), or dropped without a
dead-letter exchange; the ``delivery-limit`` policy key; a classic queue refuses the
argument with RabbitMQ's 406.
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from .conftest import Broker
from .helpers import WAIT, Env, queue_counts, unique
from .test_ctl_access import ok
from .test_policy_effects import policy  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)


def _quorum(ch: BlockingChannel, q: str, **args: Any) -> None:
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum", **args})


def _get(ch: BlockingChannel, q: str) -> tuple[Any, Any, bytes]:
    deadline = time.monotonic() + WAIT
    while True:
        m, p, b = ch.basic_get(q)
        if m is not None:
            return m, p, b
        assert time.monotonic() < deadline, f"nothing in {q}"
        time.sleep(0.02)


def _wait_count(ch: BlockingChannel, q: str, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while queue_counts(ch, q)[0] != n:
        assert time.monotonic() < deadline, f"{q}: {queue_counts(ch, q)[0]} != {n}"
        time.sleep(0.02)


def test_delivery_count_and_limit_dead_letters(env: Env) -> None:
    ch = env.channel()
    q, dead = env.queue(), env.queue("dead")
    ch.queue_declare(dead)
    _quorum(
        ch,
        q,
        **{
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison", pika.BasicProperties(headers={"a": 1}, delivery_mode=2))
    seen = []
    for _ in range(3):
        m, p, b = _get(ch, q)
        seen.append((m.redelivered, p.headers))
        ch.basic_nack(m.delivery_tag, requeue=True)
    assert seen == [
        (False, {"a": 1, "x-delivery-count": 0}),
        (True, {"a": 1, "x-delivery-count": 1}),
        (True, {"a": 1, "x-delivery-count": 2}),
    ]
    _wait_count(ch, dead, 1)
    assert queue_counts(ch, q)[0] == 0
    m, p, b = ch.basic_get(dead, auto_ack=True)
    assert b == b"poison"
    assert "x-delivery-count" not in p.headers and p.headers["a"] == 1
    death = p.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", q, 1)
    assert p.headers["x-first-death-reason"] == "delivery_limit"


def test_consumer_reject_and_channel_close_count(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = env.queue()
    _quorum(ch, q)  # no limit: counted all the same
    ch.confirm_delivery()
    ch.basic_publish(
        "", q, b"m", pika.BasicProperties(headers={"x-delivery-count": 7}, delivery_mode=2)
    )
    got: list[Any] = []

    def on_msg(c: BlockingChannel, m: Any, p: Any, _b: bytes) -> None:
        got.append(p.headers["x-delivery-count"])
        if len(got) == 1:
            c.basic_reject(m.delivery_tag, requeue=True)

    ch.basic_consume(q, on_msg)
    deadline = time.monotonic() + WAIT
    while len(got) < 2 and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert got == [7, 1]  # the publisher's value first, then the count
    ch.close()  # the second delivery was not acked: returned once more
    ch2 = conn.channel()
    m, p, _b = _get(ch2, q)
    assert (m.redelivered, p.headers["x-delivery-count"]) == (True, 2)
    ch2.basic_ack(m.delivery_tag)


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_zero_or_less_drops_after_first_return(env: Env, limit: int) -> None:
    ch = env.channel()
    q = env.queue()
    _quorum(ch, q, **{"x-delivery-limit": limit})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", q, b"n", pika.BasicProperties(delivery_mode=2))
    m, p, b = _get(ch, q)
    assert (b, p.headers) == (b"m", {"x-delivery-count": 0})
    ch.basic_nack(m.delivery_tag, requeue=True)  # no DLX: dropped
    _wait_count(ch, q, 1)
    m, _p, b = _get(ch, q)
    assert b == b"n"
    ch.basic_ack(m.delivery_tag)


def test_non_integer_limit_is_ignored(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    _quorum(ch, q, **{"x-delivery-limit": "1"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", pika.BasicProperties(delivery_mode=2))
    for n in range(3):
        m, p, _b = _get(ch, q)
        assert p.headers["x-delivery-count"] == n
        ch.basic_nack(m.delivery_tag, requeue=True)
    m, p, _b = _get(ch, q)
    assert p.headers["x-delivery-count"] == 3
    ch.basic_ack(m.delivery_tag)


def test_classic_queue_refuses_delivery_limit(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(q, arguments={"x-delivery-limit": 2})
    assert exc.value.reply_code == 406
    assert exc.value.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue '{q}' in vhost '/' "
        "of queue type rabbit_classic_queue"
    )


def test_delivery_limit_policy(env: Env, broker: Broker, policy: str) -> None:  # noqa: F811
    ch = env.channel()
    q = f"{policy}.{unique('dl')}"
    env.queues.append(q)
    _quorum(ch, q)
    ok(
        broker,
        "set_policy",
        "--apply-to",
        "queues",
        f"{policy}-a",
        f"^{policy}\\.",
        '{"delivery-limit": 1}',
    )
    ch.confirm_delivery()
    deadline = time.monotonic() + 10
    while True:  # the policy reaches the queue
        ch.basic_publish("", q, b"m", pika.BasicProperties(delivery_mode=2))
        returns = 0
        while True:
            m, _p, _b = ch.basic_get(q)
            if m is None:
                break
            returns += 1
            ch.basic_nack(m.delivery_tag, requeue=True)
            if returns > 3:
                break
        if returns == 2:  # delivered, returned, delivered, returned: dropped
            break
        assert time.monotonic() < deadline, "the delivery-limit policy did not apply"
        ch.queue_purge(q)
        time.sleep(0.1)
    assert queue_counts(ch, q)[0] == 0


def test_aio_pika_poison_message(env: Env, broker: Broker) -> None:
    import asyncio

    import aio_pika

    q, dead = env.queue("aio"), env.queue("aio-dead")

    async def run() -> tuple[list[Any], Any]:
        conn = await aio_pika.connect(broker.uri)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.declare_queue(dead)
            queue = await ch.declare_queue(
                q,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": 1,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dead,
                },
            )
            await ch.default_exchange.publish(
                aio_pika.Message(b"bad", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=q,
            )
            counts = []
            async with queue.iterator() as it:
                async for msg in it:
                    counts.append(msg.headers.get("x-delivery-count"))
                    await msg.reject(requeue=True)
                    if len(counts) == 2:
                        break
            dq = await ch.get_queue(dead)
            for _ in range(100):
                got = await dq.get(no_ack=True, fail=False)
                if got is not None:
                    return counts, got.headers["x-death"][0]["reason"]
                await asyncio.sleep(0.05)
            return counts, None

    counts, reason = asyncio.run(asyncio.wait_for(run(), 30))
    assert counts == [None, 1]  # a consumer's first delivery: as published
    assert reason == "delivery_limit"
