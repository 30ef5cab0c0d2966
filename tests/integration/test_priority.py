"""Priority queues (``x-max-priority``), as RabbitMQ 3.10 behaves (each test also passes
against it with ``SHARDMQ_TEST_URI``): higher ``priority`` first, FIFO within a
priority, above the maximum counts as the maximum, none counts as 0; a requeued message
goes back to the front of its own priority; drop-head drops the head that would be
delivered next (the highest priority one); TTL, dead-lettering, consumers, kombu and
aio-pika; RabbitMQ's 406 texts for a bad ``x-max-priority``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from .conftest import Broker
from .helpers import WAIT, Env, queue_counts

pytestmark = pytest.mark.timeout(60)

# (body, priority): published in this order to a queue with x-max-priority 5
MIXED: list[tuple[bytes, int | None]] = [
    (b"a1", 1),
    (b"b-", None),
    (b"c9", 9),  # above the maximum: counts as 5
    (b"d5", 5),
    (b"e1", 1),
    (b"f0", 0),
    (b"g3", 3),
    (b"h200", 200),
]
# delivery order: stable sort by min(priority, 5) descending
EXPECTED = [b"c9", b"d5", b"h200", b"g3", b"a1", b"e1", b"b-", b"f0"]


def _publish(ch: BlockingChannel, q: str, items: list[tuple[bytes, int | None]]) -> None:
    for body, prio in items:
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio, delivery_mode=2))


def _drain(ch: BlockingChannel, q: str) -> list[bytes]:
    out = []
    while True:
        m, _p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append(b)


def _wait_count(ch: BlockingChannel, q: str, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while queue_counts(ch, q)[0] != n:
        assert time.monotonic() < deadline, f"{q}: {queue_counts(ch, q)[0]} != {n}"
        time.sleep(0.02)


@pytest.mark.parametrize("durable", [False, True], ids=["transient", "durable"])
def test_get_order(env: Env, durable: bool) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, durable=durable, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    _publish(ch, q, MIXED)
    assert _drain(ch, q) == EXPECTED


def test_consumer_order(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    _publish(ch, q, MIXED)
    ch.basic_qos(prefetch_count=1)
    got: list[bytes] = []

    def on_msg(c: BlockingChannel, m: Any, _p: Any, body: bytes) -> None:
        got.append(body)
        c.basic_ack(m.delivery_tag)

    ch.basic_consume(q, on_msg)
    deadline = time.monotonic() + WAIT
    while len(got) < len(EXPECTED) and time.monotonic() < deadline:
        ch.connection.process_data_events(0.05)
    assert got == EXPECTED


def test_requeue_keeps_place_by_priority(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    ch.confirm_delivery()
    items: list[tuple[bytes, int | None]] = [
        (b"m0p1", 1),
        (b"m1p5", 5),
        (b"m2p5", 5),
        (b"m3p9", 9),
        (b"m4p-", None),
        (b"m5p20", 20),
    ]
    _publish(ch, q, items)
    taken = [ch.basic_get(q) for _ in range(3)]
    assert [b for _m, _p, b in taken] == [b"m5p20", b"m3p9", b"m1p5"]
    for m, _p, _b in reversed(taken):  # nacked in the opposite order
        ch.basic_nack(m.delivery_tag, requeue=True)
    out = []
    while True:
        m, _p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            break
        out.append((b, m.redelivered))
    assert out == [
        (b"m5p20", True),
        (b"m3p9", True),
        (b"m1p5", True),  # back before m2p5, which was never delivered
        (b"m2p5", False),
        (b"m0p1", False),
        (b"m4p-", False),
    ]


def test_requeue_on_channel_close(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 3})
    ch.confirm_delivery()
    _publish(ch, q, [(b"low", 1), (b"high", 3), (b"high2", 3)])
    m, _p, b = ch.basic_get(q)
    assert b == b"high"
    ch.basic_publish("", q, b"high3", pika.BasicProperties(priority=3))
    ch.close()  # "high" goes back, ahead of the later high ones
    ch2 = conn.channel()
    _wait_count(ch2, q, 4)
    assert _drain(ch2, q) == [b"high", b"high2", b"high3", b"low"]


def test_drop_head_drops_the_next_delivery(env: Env) -> None:
    """RabbitMQ drops the head that would be delivered next, the highest priority."""
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 10, "x-max-length": 2})
    ch.confirm_delivery()
    _publish(ch, q, [(b"p1", 1), (b"p5a", 5), (b"p9", 9), (b"p5b", 5)])
    assert _drain(ch, q) == [b"p5b", b"p1"]


def test_ttl_and_dead_letter(env: Env) -> None:
    ch = env.channel()
    q, dead, dlx = env.queue(), env.queue("dead"), env.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(
        q, arguments={"x-max-priority": 5, "x-message-ttl": 200, "x-dead-letter-exchange": dlx}
    )
    ch.confirm_delivery()
    _publish(ch, q, [(b"low", 1), (b"high", 5)])
    _wait_count(ch, dead, 2)  # expired without a consumer (timer)
    assert queue_counts(ch, q)[0] == 0
    got = []
    for _ in range(2):
        m, p, b = ch.basic_get(dead, auto_ack=True)
        assert p.headers["x-death"][0]["reason"] == "expired"
        got.append(b)
    assert sorted(got) == [b"high", b"low"]


def test_reject_dead_letters(env: Env) -> None:
    ch = env.channel()
    q, dead = env.queue(), env.queue("dead")
    ch.queue_declare(dead)
    ch.queue_declare(
        q,
        arguments={
            "x-max-priority": 5,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    ch.confirm_delivery()
    _publish(ch, q, [(b"low", 1), (b"high", 4)])
    m, p, b = ch.basic_get(q)
    assert b == b"high" and p.priority == 4
    ch.basic_reject(m.delivery_tag, requeue=False)
    _wait_count(ch, dead, 1)
    m, p, b = ch.basic_get(dead, auto_ack=True)
    assert b == b"high" and p.priority == 4
    assert p.headers["x-death"][0]["reason"] == "rejected"
    assert _drain(ch, q) == [b"low"]


def test_zero_is_a_plain_queue(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 0})
    ch.confirm_delivery()
    _publish(ch, q, [(b"1", 1), (b"5", 5), (b"-", None)])
    assert _drain(ch, q) == [b"1", b"5", b"-"]


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (256, "{max_value_exceeded,256}"),
        (1 << 40, "{max_value_exceeded,1099511627776}"),
        (-1, "{value_negative,-1}"),
        ("5", '"expected integer, got longstr"'),
        (True, '"expected integer, got bool"'),
    ],
)
def test_invalid_max_priority(env: Env, value: object, detail: str) -> None:
    ch = env.channel()
    q = env.queue()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(q, arguments={"x-max-priority": value})
    assert exc.value.reply_code == 406
    assert exc.value.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {detail}"
    )


def test_kombu_priorities(env: Env, broker: Broker) -> None:
    from kombu import Connection, Exchange, Queue

    name = env.queue("kombu")
    exchange = Exchange("", type="direct")
    kq = Queue(name, exchange, routing_key=name, queue_arguments={"x-max-priority": 9})
    with Connection(broker.uri) as conn:
        producer = conn.Producer()
        kq(conn.default_channel).declare()
        for body, prio in [("low", 1), ("mid", 5), ("top", 9), ("mid2", 5)]:
            producer.publish(body, routing_key=name, priority=prio, serializer="raw")
        simple = conn.SimpleQueue(kq)
        got = []
        for _ in range(4):
            msg = simple.get(timeout=WAIT)
            got.append(msg.body)
            msg.ack()
        simple.close()
    assert [b if isinstance(b, str) else b.decode() for b in got] == ["top", "mid", "mid2", "low"]


def test_aio_pika_consumer_and_requeue(env: Env, broker: Broker) -> None:
    import aio_pika

    name = env.queue("aio")

    async def run() -> list[tuple[bytes, bool]]:
        conn = await aio_pika.connect(broker.uri)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            queue = await ch.declare_queue(name, arguments={"x-max-priority": 4})
            for body, prio in [(b"a", 0), (b"b", 2), (b"c", 4), (b"d", 2)]:
                await ch.default_exchange.publish(
                    aio_pika.Message(body, priority=prio), routing_key=name
                )
            first = await queue.get(no_ack=False)
            assert first.body == b"c"
            await first.nack(requeue=True)
            out = []
            await ch.set_qos(prefetch_count=1)
            async with queue.iterator() as it:
                async for msg in it:
                    out.append((msg.body, msg.redelivered))
                    await msg.ack()
                    if len(out) == 4:
                        break
            return out

    got = asyncio.run(asyncio.wait_for(run(), 30))
    assert got == [(b"c", True), (b"b", False), (b"d", False), (b"a", False)]
