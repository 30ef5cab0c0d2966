"""Consumer priorities (the ``x-priority`` consumer argument), issue 12 item 6.

Owns: a higher-priority consumer gets messages while it has prefetch room, a lower one
only when every higher one is full or gone; equals take turns; a non-integer priority
gets RabbitMQ's 406. Then the same with consumers on other workers than the queue.

Invariants: the counts checked follow from prefetch windows alone (no ack races): the
messages are published only after every consumer's consume-ok.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pika
import pytest

from .consumers import Taker, publish, pump_all, quiet
from .helpers import WAIT, Env, channel_error
from .test_placement import Workers

pytestmark = pytest.mark.timeout(60)


def _prio(n: int) -> dict[str, int]:
    return {"x-priority": n}


def _bodies(n: int, start: int = 0) -> list[bytes]:
    return [b"m%d" % i for i in range(start, start + n)]


def _priorities(
    queue: str, conns: tuple[pika.BlockingConnection, ...], publisher: pika.BlockingConnection
) -> None:
    """Consumers high (10), two equal (5), low (default 0) on ``conns`` (registered
    lowest first, so registration order never explains the outcome)."""
    all_conns = [*conns, publisher]
    low = Taker(conns[0], queue, prefetch=50)
    mid1 = Taker(conns[1], queue, prefetch=3, arguments=_prio(5))
    mid2 = Taker(conns[2], queue, prefetch=3, arguments=_prio(5))
    high = Taker(conns[3], queue, prefetch=4, arguments=_prio(10))
    publish(publisher, queue, _bodies(3))
    pump_all(all_conns, lambda: len(high.got) == 3, "the high-priority consumer's messages")
    quiet(all_conns)
    assert high.bodies == _bodies(3)
    assert mid1.got == mid2.got == low.got == []
    # high has room for one more; then the two equals take turns; then the low one
    publish(publisher, queue, _bodies(10, 3))
    total = lambda: sum(len(t.got) for t in (low, mid1, mid2, high))  # noqa: E731
    pump_all(all_conns, lambda: total() == 13, "all 13 messages")
    assert high.bodies == _bodies(4)
    assert mid1.bodies == [b"m4", b"m6", b"m8"] or mid1.bodies == [b"m5", b"m7", b"m9"]
    assert sorted(mid1.bodies + mid2.bodies) == sorted(_bodies(6, 4))
    assert low.bodies == _bodies(3, 10)
    # the higher ones go: the low one gets the rest, whatever they held unacked
    for t in (high, mid1, mid2):
        t.cancel()
    publish(publisher, queue, _bodies(2, 13))
    pump_all(all_conns, lambda: len(low.got) == 5, "the low consumer alone")
    assert low.bodies[3:] == [b"m13", b"m14"]
    for t in (high, mid1, mid2):
        t.ch.close()  # their unacked messages come back, to the only consumer left
    pump_all(all_conns, lambda: len(low.got) == 15, "the requeued messages")
    assert sorted(low.bodies) == sorted(_bodies(15))


def test_consumer_priorities(env: Env) -> None:
    queue = env.queue("prio")
    env.channel().queue_declare(queue)
    _priorities(queue, (env.conn(), env.conn(), env.conn(), env.conn()), env.conn())


def test_invalid_priority(env: Env) -> None:
    queue = env.queue("prio-bad")
    conn = env.conn()
    conn.channel().queue_declare(queue)
    err = channel_error(
        conn,
        lambda ch: ch.basic_consume(queue, lambda *a: None, arguments={"x-priority": "high"}),
    )
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{queue}' in vhost "
        f"'{env.broker.vhost}': \"expected integer, got longstr\""
    )


def test_consumer_priority_aio_pika(env: Env) -> None:
    name = env.queue("prio-aio")

    async def main() -> tuple[list[bytes], list[bytes]]:
        conn = await aio_pika.connect(env.broker.uri, timeout=WAIT)
        async with conn:
            ch_low = await conn.channel()
            ch_high = await conn.channel()
            await ch_high.set_qos(prefetch_count=2)
            q_low = await ch_low.declare_queue(name)
            q_high = await ch_high.get_queue(name)
            low: list[bytes] = []
            high: list[bytes] = []
            done = asyncio.Event()

            async def on_low(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                low.append(m.body)
                await m.ack()
                if len(low) == 3:
                    done.set()

            async def on_high(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                high.append(m.body)  # never acked: its window stays full

            await q_low.consume(on_low)
            await q_high.consume(on_high, arguments={"x-priority": 3})
            for i in range(5):
                await ch_low.default_exchange.publish(
                    aio_pika.Message(b"m%d" % i), routing_key=name
                )
            await asyncio.wait_for(done.wait(), WAIT)
            return low, high

    low, high = asyncio.run(main())
    assert high == [b"m0", b"m1"]
    assert low == [b"m2", b"m3", b"m4"]


# ------------------------------------------------------------------------ placement

THREE = pytest.mark.parametrize("broker", [3], indirect=True, ids=["workers3"])


@pytest.fixture
def w(env: Env) -> Workers:
    if env.broker.workers != 3:
        pytest.skip("needs a shardmq broker with 3 workers")
    return Workers(env)


@THREE
@pytest.mark.parametrize(
    "q,cons,pub",
    [(1, (1, 0, 2, 0), 2), (0, (1, 2, 0, 1), 2), (2, (2, 0, 1, 2), 0)],
    ids=["remote-high", "local-mid", "local-high"],
)
def test_consumer_priorities_across_workers(
    w: Workers, q: int, cons: tuple[int, int, int, int], pub: int
) -> None:
    queue = w.queue(q, "prio")
    w.conn(q).channel().queue_declare(queue)
    conns = tuple(w.conn(x) for x in cons)
    _priorities(queue, (conns[0], conns[1], conns[2], conns[3]), w.conn(pub))
