"""Direct reply-to (``amq.rabbitmq.reply-to``) and the RPC pattern with a private reply queue.

Owns: the tests of issue 12 item 8: the requester consumes from the pseudo-queue in
no-ack mode, publishes with ``reply_to = amq.rabbitmq.reply-to``, the server sees a
generated ``amq.rabbitmq.reply-to.*`` address and its reply (default exchange, routing
key = that address) reaches the requesting channel, with RabbitMQ's errors for misuse;
then the same across workers (requester, server and request queue on chosen workers).

Invariants: every RPC is checked by its correlation id and body; "nothing arrives" is
checked only after a later message on the same path did arrive (ordering), never by
waiting for silence alone.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from .helpers import WAIT, Env, channel_error, wait_until
from .test_placement import Workers

REPLY_TO = "amq.rabbitmq.reply-to"

pytestmark = pytest.mark.timeout(60)


def _serve_one(server: BlockingChannel, queue: str, conn: pika.BlockingConnection) -> str:
    """Take one request from ``queue`` and answer it (body reversed, same correlation
    id) to its reply_to; returns the reply_to it saw."""
    got: list[tuple[pika.BasicProperties, bytes]] = []

    def take() -> bool:
        method, props, body = server.basic_get(queue, auto_ack=True)
        if method is not None:
            got.append((props, body))
        return bool(got)

    wait_until(conn, take, f"a request on {queue}")
    props, body = got[0]
    server.basic_publish(
        "",
        props.reply_to,
        body[::-1],
        pika.BasicProperties(correlation_id=props.correlation_id),
    )
    return str(props.reply_to)


def _rpc(
    requester: pika.BlockingConnection,
    server_conn: pika.BlockingConnection,
    queue: str,
    reply_queue: str | None = None,
) -> None:
    """One RPC round trip; ``reply_queue`` None: direct reply-to."""
    ch = requester.channel()
    replies: list[tuple[str, bytes, str]] = []

    def on_reply(
        _ch: BlockingChannel, method: object, props: pika.BasicProperties, body: bytes
    ) -> None:
        replies.append((props.correlation_id, body, getattr(method, "routing_key", "")))

    ch.basic_consume(reply_queue or REPLY_TO, on_reply, auto_ack=True)
    server = server_conn.channel()
    server.queue_declare(queue, passive=True)
    for i in range(3):
        corr = uuid.uuid4().hex
        body = f"request-{i}".encode()
        ch.basic_publish(
            "",
            queue,
            body,
            pika.BasicProperties(reply_to=reply_queue or REPLY_TO, correlation_id=corr),
        )
        seen = _serve_one(server, queue, server_conn)
        if reply_queue is None:
            assert seen.startswith(REPLY_TO + "."), seen
            # queue.declare of the address (from the server's side) finds it
            ok = server.queue_declare(seen, passive=True).method
            assert (ok.message_count, ok.consumer_count) == (0, 1)
        else:
            assert seen == reply_queue
        wait_until(requester, lambda i=i: len(replies) > i, "the reply")
        assert replies[i][:2] == (corr, body[::-1])
        assert replies[i][2] == seen
    server.close()
    ch.close()


def test_rpc_direct_reply_to_pika(env: Env) -> None:
    queue = env.queue("rpc")
    env.channel().queue_declare(queue)
    _rpc(env.conn(), env.conn(), queue)


def test_rpc_private_reply_queue_pika(env: Env) -> None:
    queue = env.queue("rpc")
    c = env.conn()
    c.channel().queue_declare(queue)
    reply = c.channel().queue_declare("", exclusive=True).method.queue
    _rpc(c, env.conn(), queue, reply)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "private"])
def test_rpc_aio_pika(env: Env, direct: bool) -> None:
    rpc_queue = env.queue("rpc-aio")

    async def main() -> list[tuple[str, bytes]]:
        server_conn = await aio_pika.connect(env.broker.uri, timeout=WAIT)
        client_conn = await aio_pika.connect(env.broker.uri, timeout=WAIT)
        async with server_conn, client_conn:
            sch = await server_conn.channel()
            queue = await sch.declare_queue(rpc_queue)
            seen: list[str] = []

            async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with message.process():
                    assert message.reply_to is not None
                    seen.append(message.reply_to)
                    await sch.default_exchange.publish(
                        aio_pika.Message(
                            body=message.body[::-1], correlation_id=message.correlation_id
                        ),
                        routing_key=message.reply_to,
                    )

            await queue.consume(serve)
            cch = await client_conn.channel()
            if direct:
                reply_queue = await cch.get_queue(REPLY_TO, ensure=False)
            else:
                reply_queue = await cch.declare_queue(exclusive=True)
            loop = asyncio.get_running_loop()
            futures: dict[str, asyncio.Future[bytes]] = {}

            async def on_response(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                futures[message.correlation_id or ""].set_result(message.body)

            await reply_queue.consume(on_response, no_ack=True)
            for n in range(5):
                corr = uuid.uuid4().hex
                futures[corr] = loop.create_future()
                await cch.default_exchange.publish(
                    aio_pika.Message(
                        body=f"req{n}".encode(), correlation_id=corr, reply_to=reply_queue.name
                    ),
                    routing_key=rpc_queue,
                )
            bodies = await asyncio.wait_for(asyncio.gather(*futures.values()), WAIT)
            if direct:
                assert all(s.startswith(REPLY_TO + ".") for s in seen), seen
            else:
                assert seen == [reply_queue.name] * 5
            return list(zip(futures, bodies, strict=True))

    answers = asyncio.run(main())
    assert [b for _c, b in answers] == [f"req{n}".encode()[::-1] for n in range(5)]


# ------------------------------------------------------------------------ misuse


def test_consume_with_manual_ack_is_refused(env: Env) -> None:
    err = channel_error(
        env.conn(), lambda ch: ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)
    )
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"


def test_second_reply_consumer_is_refused(env: Env) -> None:
    def twice(ch: BlockingChannel) -> None:
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)

    err = channel_error(env.conn(), twice)
    assert (err.reply_code, err.reply_text) == (
        406,
        "PRECONDITION_FAILED - reply consumer already set",
    )


@pytest.mark.parametrize("how", ["never", "other-channel", "cancelled"])
def test_publish_without_reply_consumer_is_refused(env: Env, how: str) -> None:
    conn = env.conn()

    def publish(ch: BlockingChannel) -> None:
        if how == "other-channel":
            conn.channel().basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        elif how == "cancelled":
            tag = ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
            ch.basic_cancel(tag)
        ch.basic_publish("", "anything", b"x", pika.BasicProperties(reply_to=REPLY_TO))
        ch.queue_declare(REPLY_TO, passive=True)  # a round trip: the error arrives first

    err = channel_error(conn, publish)
    assert (err.reply_code, err.reply_text) == (
        406,
        "PRECONDITION_FAILED - fast reply consumer does not exist",
    )


def test_declare_and_get(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    for passive in (True, False):
        ok = ch.queue_declare(REPLY_TO, passive=passive).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (REPLY_TO, 0, 1)
    err = channel_error(conn, lambda c: c.basic_get(REPLY_TO, auto_ack=True))
    assert err.reply_code == 404


def _address(conn: pika.BlockingConnection) -> tuple[BlockingChannel, str, list[bytes]]:
    """A channel of ``conn`` consuming from reply-to, its address (learned through a
    private queue) and the bodies it receives."""
    ch = conn.channel()
    got: list[bytes] = []
    ch.basic_consume(REPLY_TO, lambda _c, _m, _p, body: got.append(body), auto_ack=True)
    probe = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", probe, b"probe", pika.BasicProperties(reply_to=REPLY_TO))
    found: list[str] = []

    def take() -> bool:
        method, props, _body = ch.basic_get(probe, auto_ack=True)
        if method is not None:
            found.append(props.reply_to)
        return bool(found)

    wait_until(conn, take, "the probe")
    return ch, found[0], got


def test_forged_address_and_gone_requester(env: Env) -> None:
    requester = env.conn()
    _ch, address, got = _address(requester)
    assert address.startswith(REPLY_TO + ".")
    replier = env.conn()
    rch = replier.channel()
    rch.confirm_delivery()
    # a different key, a malformed address: confirmed (like any unroutable publish),
    # never delivered
    ident, _, key = address[len(REPLY_TO) + 1 :].partition(".")
    forged = f"{REPLY_TO}.{ident}.{'A' * len(key)}"
    for bad in (forged, REPLY_TO + ".garbage"):
        rch.basic_publish("", bad, b"forged")
    rch.basic_publish("", address, b"genuine")
    wait_until(requester, lambda: bool(got), "the genuine reply")
    assert got == [b"genuine"]
    err = channel_error(replier, lambda c: c.queue_declare(forged, passive=True))
    assert err.reply_code == 404
    # the requester goes: replies to it are dropped, the replier's channel lives on
    requester.close()
    assert not _address_live(replier, address)
    rch.basic_publish("", address, b"late")
    assert rch.is_open and replier.is_open


def _address_live(conn: pika.BlockingConnection, address: str) -> bool:
    try:
        conn.channel().queue_declare(address, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return False
    return True


# ------------------------------------------------------------------------ placement

THREE = pytest.mark.parametrize("broker", [3], indirect=True, ids=["workers3"])


@pytest.fixture
def w(env: Env) -> Workers:
    if env.broker.workers != 3:
        pytest.skip("needs a shardmq broker with 3 workers")
    return Workers(env)


@THREE
@pytest.mark.parametrize(
    "req,srv,q",
    [(0, 1, 2), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 1, 1)],
    ids=["spread", "together-q-elsewhere", "q-with-requester", "q-with-server", "all-one"],
)
def test_direct_reply_to_across_workers(w: Workers, req: int, srv: int, q: int) -> None:
    queue = w.queue(q, "rpc")
    requester = w.conn(req)
    server = w.conn(srv)
    server.channel().queue_declare(queue)
    _rpc(requester, server, queue)


@THREE
def test_gone_requester_on_another_worker(w: Workers) -> None:
    requester = w.conn(0)
    _ch, address, got = _address(requester)
    replier = w.conn(1)
    assert _address_live(replier, address)
    rch = replier.channel()
    rch.confirm_delivery()
    rch.basic_publish("", address, b"first")
    wait_until(requester, lambda: got == [b"first"], "the reply from worker 1")
    requester.close()
    assert not _address_live(replier, address)
    rch.basic_publish("", address, b"late")  # confirmed, dropped
    assert rch.is_open
