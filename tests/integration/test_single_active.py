"""Single active consumer (``x-single-active-consumer``), issue 12 item 6.

Owns: only the first registered consumer gets messages; when it cancels or its channel
or connection closes, the next one in registration order takes over, getting the gone
consumer's unacked messages first (redelivered); a non-bool argument gets RabbitMQ's
406. Then the same with the consumers on other workers than the queue.

Invariants: each "nobody else got anything" check follows a positive event (the active
consumer got every message) and a quiet pump.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pika
import pytest

from .consumers import Taker, publish, pump_all, quiet
from .helpers import WAIT, Env, channel_error
from .test_placement import Workers

SAC = {"x-single-active-consumer": True}

pytestmark = pytest.mark.timeout(60)


def _bodies(prefix: str, n: int, start: int = 0) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(start, start + n)]


def _takeover(
    queue: str,
    conns: list[pika.BlockingConnection],
    publisher: pika.BlockingConnection,
) -> None:
    """Three consumers (on ``conns``, registered in that order) of a single-active
    queue: the first gets everything; the takeovers follow registration order."""
    takers = [Taker(c, queue, prefetch=10) for c in conns]
    a, b, c = takers
    publish(publisher, queue, _bodies("m", 4))
    pump_all(conns, lambda: len(a.got) == 4, "the active consumer's 4 messages")
    quiet(conns)
    assert a.bodies == _bodies("m", 4)
    assert b.got == [] and c.got == []
    # the active one acks two, then its channel closes: the two unacked go to b first
    a.ch.basic_ack(a.got[1][2], multiple=True)
    a.ch.close()
    pump_all(conns, lambda: len(b.got) == 2, "the requeued messages at the next consumer")
    assert [(x, r) for x, r, _t in b.got] == [(b"m2", True), (b"m3", True)]
    publish(publisher, queue, _bodies("m", 2, 4))
    pump_all(conns, lambda: len(b.got) == 4, "new messages at the next consumer")
    assert b.bodies[2:] == [b"m4", b"m5"]
    quiet(conns)
    assert c.got == []
    # b cancels (its unacked stay with its channel, as in RabbitMQ), then c is active
    b.ack_all()
    b.cancel()
    publish(publisher, queue, _bodies("m", 2, 6))
    pump_all(conns, lambda: len(c.got) == 2, "the last consumer taking over")
    assert c.bodies == [b"m6", b"m7"]
    # c's connection goes with unacked messages: they stay in the queue for the next one
    c.conn.close()
    d = Taker(publisher, queue, prefetch=10)
    pump_all([publisher], lambda: len(d.got) == 2, "the requeued messages at a new consumer")
    assert [(x, r) for x, r, _t in d.got] == [(b"m6", True), (b"m7", True)]
    d.ack_all()


def test_single_active_consumer_takeover(env: Env) -> None:
    queue = env.queue("sac")
    env.channel().queue_declare(queue, arguments=SAC)
    _takeover(queue, [env.conn(), env.conn(), env.conn()], env.conn())


def test_invalid_single_active_argument(env: Env) -> None:
    queue = env.queue("sac-bad")
    for bad, name in (("yes", "longstr"), (1, "signedint")):
        err = channel_error(
            env.conn(),
            lambda ch, bad=bad: ch.queue_declare(
                queue, arguments={"x-single-active-consumer": bad}
            ),
        )
        assert err.reply_code == 406
        assert err.reply_text == (
            f"PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue "
            f"'{queue}' in vhost '{env.broker.vhost}': {{unacceptable_type,{name}}}"
        )


def test_single_active_consumer_aio_pika(env: Env) -> None:
    name = env.queue("sac-aio")

    async def main() -> tuple[list[bytes], list[bytes]]:
        conn = await aio_pika.connect(env.broker.uri, timeout=WAIT)
        async with conn:
            ch1 = await conn.channel()
            ch2 = await conn.channel()
            q1 = await ch1.declare_queue(name, arguments=SAC)
            q2 = await ch2.get_queue(name)
            first: list[bytes] = []
            second: list[bytes] = []
            done = asyncio.Event()

            async def on1(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                first.append(m.body)
                await m.ack()
                if len(first) == 3:
                    done.set()

            async def on2(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                second.append(m.body)
                await m.ack()
                if len(second) == 2:
                    done.set()

            tag1 = await q1.consume(on1)
            await q2.consume(on2)
            for i in range(3):
                await ch1.default_exchange.publish(aio_pika.Message(b"a%d" % i), routing_key=name)
            await asyncio.wait_for(done.wait(), WAIT)
            done.clear()
            await q1.cancel(tag1)
            for i in range(2):
                await ch1.default_exchange.publish(aio_pika.Message(b"b%d" % i), routing_key=name)
            await asyncio.wait_for(done.wait(), WAIT)
            return first, second

    first, second = asyncio.run(main())
    assert first == [b"a0", b"a1", b"a2"]
    assert second == [b"b0", b"b1"]


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
    [(1, (0, 2, 1), 2), (0, (1, 0, 2), 1), (2, (2, 2, 0), 1)],
    ids=["remote-first", "local-second", "remote-last"],
)
def test_single_active_consumer_across_workers(
    w: Workers, q: int, cons: tuple[int, int, int], pub: int
) -> None:
    queue = w.queue(q, "sac")
    w.conn(q).channel().queue_declare(queue, arguments=SAC)
    _takeover(queue, [w.conn(x) for x in cons], w.conn(pub))
