"""Issue 2, point 8: publisher confirms (acks, multiple acks, with mandatory returns) and
transactions (tx.select/commit/rollback covering publishes and acks), with pika
(BlockingConnection and SelectConnection), aio-pika and a raw socket.

Invariants: confirm coverage is checked exactly (every sequence number acked once, in
order, nothing nacked); transactional effects are observed from a second channel.
"""

from __future__ import annotations

import asyncio
import struct

import aio_pika
import pika
import pika.exceptions
import pytest
from pamqp.commands import Basic as PamqpBasic
from pika.adapters.select_connection import SelectConnection

from tests.support import rawamqp as raw

from .helpers import WAIT, Env, queue_counts

pytestmark = pytest.mark.timeout(30)


def check_confirm_coverage(acks: list[tuple[int, bool]], n: int) -> None:
    """Every sequence number 1..n is confirmed exactly once, in increasing order."""
    pending = set(range(1, n + 1))
    last = 0
    for tag, multiple in acks:
        assert tag > last, f"confirm tags must increase: {tag} after {last}"
        assert tag in pending, f"tag {tag} confirmed twice or never published"
        if multiple:
            pending -= set(range(1, tag + 1))
        else:
            pending.discard(tag)
        last = tag
    assert not pending, f"never confirmed: {sorted(pending)[:10]}"


# --------------------------------------------------------------------------- confirms


def test_confirm_burst_is_acked_with_multiple_raw(env: Env) -> None:
    n = 500
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    q, _, _ = c.declare_queue(1, "", exclusive=True)
    c.send(raw.method(1, raw.CONFIRM_SELECT, raw.bits(False)))
    c.expect(raw.CONFIRM_SELECT_OK, channel=1)
    c.send(b"".join(raw.publish(1, "", q, b"0123456789abcdef") for _ in range(n)))
    acks: list[tuple[int, bool]] = []
    while not acks or acks[-1][0] < n:
        f = c.recv_method()
        assert f is not None and f.ids == raw.BASIC_ACK, f and f.ids
        r = f.args()
        acks.append((r.longlong(), bool(r.octet() & 1)))
    check_confirm_coverage(acks, n)
    print(f"{n} publishes confirmed by {len(acks)} basic.ack frames")
    assert len(acks) < n, "a burst of publishes should be confirmed with multiple=true acks"
    _, messages, _ = c.declare_queue(1, q, passive=True)
    assert messages == n


def test_confirm_select_nowait_and_unroutable_return_before_ack(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.send(raw.method(1, raw.CONFIRM_SELECT, raw.bits(True)))  # no-wait: no select-ok
    c.send(raw.publish(1, "amq.direct", env.queue("nobody"), b"x", mandatory=True))
    c.send(raw.publish(1, "amq.direct", env.queue("nobody"), b"y"))  # not mandatory
    first = c.recv_method()
    assert first is not None and first.ids == (60, 50), first and first.ids
    r = first.args()
    assert (r.short(), r.shortstr()) == (312, "NO_ROUTE")
    c.recv_frame()  # header
    c.recv_frame()  # body
    acks = []
    while not acks or acks[-1][0] < 2:
        f = c.recv_method()
        assert f is not None and f.ids == raw.BASIC_ACK, f and f.ids
        r = f.args()
        acks.append((r.longlong(), bool(r.octet() & 1)))
    check_confirm_coverage(acks, 2)


def test_confirms_pika_blocking(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", q, str(i).encode())  # raises unless acked
    assert queue_counts(ch, q) == (20, 0)


def test_confirms_pika_select_connection(env: Env) -> None:
    """Asynchronous publisher: records every ack frame, then checks full coverage."""
    n = 300
    q = env.queue()
    acks: list[tuple[int, bool]] = []
    nacks: list[int] = []
    failure: list[BaseException] = []

    def on_open(conn: SelectConnection) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: pika.channel.Channel) -> None:
        ch.queue_declare(q, callback=lambda _f: ch.confirm_delivery(on_confirm, on_select))

        def on_select(_frame: object) -> None:
            for i in range(n):
                ch.basic_publish("", q, str(i).encode())

        def on_confirm(frame: pika.frame.Method) -> None:
            m = frame.method
            if isinstance(m, pika.spec.Basic.Ack):
                acks.append((m.delivery_tag, m.multiple))
            else:
                nacks.append(m.delivery_tag)
            if acks and acks[-1][0] == n:
                ch.connection.close()

    def on_open_error(_conn: SelectConnection, err: BaseException) -> None:
        failure.append(err)

    conn = SelectConnection(
        env.broker.pika_params(),
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=lambda c, _r: c.ioloop.stop(),
    )
    conn.ioloop.call_later(WAIT, conn.ioloop.stop)
    conn.ioloop.start()
    if conn.is_open:
        conn.close()
        conn.ioloop.start()
    assert not failure
    assert nacks == []
    check_confirm_coverage(acks, n)
    assert queue_counts(env.channel(), q) == (n, 0)


def test_confirms_aio_pika(env: Env) -> None:
    async def main() -> int:
        conn = await aio_pika.connect(env.broker.uri, timeout=WAIT)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            queue = await ch.declare_queue(exclusive=True)
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        ch.default_exchange.publish(
                            aio_pika.Message(str(i).encode()), routing_key=queue.name
                        )
                        for i in range(100)
                    )
                ),
                WAIT,
            )
            assert all(isinstance(r, PamqpBasic.Ack) for r in results), results[:3]
            declared = await ch.declare_queue(queue.name, passive=True)
            return declared.declaration_result.message_count

    assert asyncio.run(main()) == 100


def test_confirm_after_tx_and_tx_after_confirm_are_406(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    ch.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.confirm_delivery()
    assert err.value.reply_code == 406
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.tx_select()
    assert err.value.reply_code == 406
    assert err.value.reply_text.startswith("PRECONDITION_FAILED")


# --------------------------------------------------------------------------- tx


def test_tx_publish_commit_and_rollback(env: Env) -> None:
    conn = env.conn()
    observer = conn.channel()
    q = env.queue()
    observer.queue_declare(q)
    ch = conn.channel()
    ch.tx_select()
    ch.basic_publish("", q, b"rolled-back-1")
    ch.basic_publish("", q, b"rolled-back-2")
    assert queue_counts(observer, q) == (0, 0)
    ch.tx_rollback()
    assert queue_counts(observer, q) == (0, 0)
    ch.basic_publish("", q, b"committed-1")
    ch.basic_publish("", q, b"committed-2")
    assert queue_counts(observer, q) == (0, 0)
    ch.tx_commit()
    assert queue_counts(observer, q) == (2, 0)
    bodies = [observer.basic_get(q, auto_ack=True)[2] for _ in range(2)]
    assert bodies == [b"committed-1", b"committed-2"]


def test_tx_uncommitted_publishes_discarded_on_channel_close(env: Env) -> None:
    conn = env.conn()
    q = env.queue()
    conn.channel().queue_declare(q)
    ch = conn.channel()
    ch.tx_select()
    ch.basic_publish("", q, b"never")
    ch.close()
    assert queue_counts(conn.channel(), q) == (0, 0)


def test_tx_ack_commit_and_rollback(env: Env) -> None:
    conn = env.conn()
    observer = conn.channel()
    q = env.queue()
    observer.queue_declare(q)
    observer.confirm_delivery()
    for body in (b"a", b"b"):
        observer.basic_publish("", q, body)
    ch = conn.channel()
    ch.tx_select()
    ma, _p, _b = ch.basic_get(q)
    mb, _p, _b = ch.basic_get(q)
    ch.basic_ack(ma.delivery_tag)
    ch.tx_rollback()  # the ack is discarded; "a" stays unacked on this channel
    ch.basic_ack(mb.delivery_tag)
    ch.tx_commit()
    ch.close()  # only "a" comes back
    m, _p, body = observer.basic_get(q, auto_ack=True)
    assert body == b"a" and m.redelivered and m.message_count == 0


def test_tx_reject_requeue_applies_on_commit(env: Env) -> None:
    conn = env.conn()
    observer = conn.channel()
    q = env.queue()
    observer.queue_declare(q)
    observer.confirm_delivery()
    observer.basic_publish("", q, b"a")
    ch = conn.channel()
    ch.tx_select()
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=True)
    assert queue_counts(observer, q) == (0, 0)
    ch.tx_commit()
    assert queue_counts(observer, q) == (1, 0)


def test_settles_before_commit_ok_are_seen_by_the_next_passive_declare(env: Env) -> None:
    """A commit's requeues and acks are applied before anything the client asks next:
    a passive declare on another channel counts them, every time (the queue may sit on
    another worker than the connection: the owner reads its rings before it answers)."""
    conn = env.conn()
    observer = conn.channel()
    q = env.queue()
    observer.queue_declare(q)
    observer.confirm_delivery()
    for i in range(40):
        observer.basic_publish("", q, b"m%d" % i)
    ch = conn.channel()
    ch.tx_select()
    for _ in range(40):
        m, _p, _b = ch.basic_get(q)
        assert m is not None
        ch.basic_reject(m.delivery_tag, requeue=True)
        ch.tx_commit()
        assert queue_counts(observer, q) == (40, 0)
        m, _p, _b = ch.basic_get(q)
        assert m is not None
        ch.basic_ack(m.delivery_tag)
        ch.tx_commit()
        assert queue_counts(observer, q) == (39, 0)
        observer.basic_publish("", q, b"again")
        assert queue_counts(observer, q) == (40, 0)


@pytest.mark.parametrize("op", ["commit", "rollback"])
def test_tx_without_select_is_406(env: Env, op: str) -> None:
    conn = env.conn()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        getattr(ch, f"tx_{op}")()
    assert err.value.reply_code == 406
    assert err.value.reply_text.startswith("PRECONDITION_FAILED")


def test_tx_raw_method_ids(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    q, _, _ = c.declare_queue(1, "", exclusive=True)
    c.send(raw.method(1, (90, 10)))
    c.expect((90, 11), channel=1)
    c.send(raw.publish(1, "", q, b"tx"))
    c.send(raw.method(1, (90, 20)))
    c.expect((90, 21), channel=1)
    c.send(raw.method(1, (90, 30)))
    c.expect((90, 31), channel=1)
    get = raw.method(1, raw.BASIC_GET, struct.pack(">H", 0) + raw.shortstr(q) + raw.bits(True))
    c.send(get)
    _m, _h, body, _ = c.read_message()
    assert body == b"tx"
