"""Issue 2, point 9: error codes and isolation. Soft errors close one channel, hard errors
one connection, and neither disturbs any other channel or client. Malformed input sent
from a raw socket (garbage, oversized frames, bad frame ends, unexpected frames, unknown
methods, channel misuse) gets RabbitMQ's close and never takes the broker down.

Invariants: every abuse test ends by proving the broker still serves a fresh client, and
isolation tests keep a consumer on another channel/connection receiving throughout.
"""

from __future__ import annotations

import struct

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.support import rawamqp as raw

from .helpers import Env, publish_confirmed, queue_counts, wait_counts, wait_until

pytestmark = pytest.mark.timeout(30)

QOS_ARGS = struct.pack(">IHB", 0, 0, 0)


def assert_broker_serves(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"alive")
    m, _p, body = ch.basic_get(q, auto_ack=True)
    assert m is not None and body == b"alive"
    conn.close()


def opened(env: Env, **kw: int) -> tuple[raw.RawConnection, str]:
    """Raw connection with channel 1 open and an exclusive queue on it."""
    c = env.raw()
    c.handshake(**kw)
    c.open_channel(1)
    q, _, _ = c.declare_queue(1, "", exclusive=True)
    return c, q


def publish_method(queue: str, channel: int = 1) -> bytes:
    args = struct.pack(">H", 0) + raw.shortstr("") + raw.shortstr(queue) + raw.bits(False)
    return raw.method(channel, raw.BASIC_PUBLISH, args)


# --------------------------------------------------------------------------- frame errors


@pytest.mark.parametrize(
    "junk",
    [raw.frame(9, 0, b"abc"), b"\x00\x01garbage-garbage-garbage\xff" * 3],
    ids=["unknown-frame-type", "garbage-bytes"],
)
def test_garbage_after_handshake_is_501(env: Env, junk: bytes) -> None:
    c, _q = opened(env)
    c.send(junk)
    close = c.expect_connection_close(await_eof=False)
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")
    assert_broker_serves(env)


@pytest.mark.parametrize("kind", ["body", "method"])
def test_frame_larger_than_negotiated_frame_max_is_501(env: Env, kind: str) -> None:
    c, q = opened(env, frame_max=4096)
    if kind == "body":
        c.send(raw.publish(1, "", q, b"a" * 10000, frame_max=20000))
    else:
        c.send(raw.method(1, raw.QUEUE_DECLARE, b"\x00" * 5000))
    close = c.expect_connection_close(await_eof=False)
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")
    assert_broker_serves(env)


def test_bad_frame_end_octet_is_501(env: Env) -> None:
    c, _q = opened(env)
    good = raw.method(1, raw.BASIC_QOS, QOS_ARGS)
    c.send(good[:-1] + b"\x00")
    close = c.expect_connection_close(await_eof=False)
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")
    assert_broker_serves(env)


@pytest.mark.parametrize(
    "args",
    [b"\x00", struct.pack(">H", 0) + b"\xff" + b"a" * 10],
    ids=["truncated", "shortstr-overruns-frame"],
)
def test_undecodable_method_arguments_are_501(env: Env, args: bytes) -> None:
    c, _q = opened(env)
    c.send(raw.method(1, raw.QUEUE_DECLARE, args))
    close = c.expect_connection_close(await_eof=False)
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")
    assert (close.class_id, close.method_id) == (50, 10)
    assert_broker_serves(env)


# --------------------------------------------------------------------------- unexpected frames


UNEXPECTED = {
    "header-without-publish": lambda q: raw.content_header(1, 3) + raw.body(1, b"abc"),
    "body-without-publish": lambda q: raw.body(1, b"abc"),
    "method-instead-of-header": lambda q: (
        publish_method(q) + raw.method(1, raw.BASIC_QOS, QOS_ARGS)
    ),
    "method-instead-of-body": lambda q: (
        publish_method(q) + raw.content_header(1, 10) + raw.method(1, raw.BASIC_QOS, QOS_ARGS)
    ),
    "header-for-wrong-class": lambda q: (
        publish_method(q) + raw.content_header(1, 3, class_id=50) + raw.body(1, b"abc")
    ),
    "header-on-other-channel": lambda q: (
        publish_method(q) + raw.content_header(2, 3) + raw.body(2, b"abc")
    ),
    "heartbeat-on-channel-1": lambda q: raw.frame(raw.FRAME_HEARTBEAT, 1, b""),
}


@pytest.mark.parametrize("case", sorted(UNEXPECTED))
def test_unexpected_frame_is_505(env: Env, case: str) -> None:
    c, q = opened(env)
    c.send(UNEXPECTED[case](q))
    close = c.expect_connection_close()
    assert close.reply_code == 505
    assert close.reply_text.startswith("UNEXPECTED_FRAME")
    assert_broker_serves(env)


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("ids", [(60, 999), (77, 10)], ids=["unknown-method", "unknown-class"])
def test_unknown_method_ends_connection(env: Env, ids: tuple[int, int]) -> None:
    """RabbitMQ 3.10 drops the socket without a close frame; 540/503 closes are accepted."""
    c, _q = opened(env)
    c.send(raw.method(1, ids, b"\x00" * 16))
    frames = c.assert_eof()
    for f in frames:
        assert f.ids == raw.CONNECTION_CLOSE, f
        assert raw.parse_close(f).reply_code in (503, 540)
    assert_broker_serves(env)


def test_method_on_unopened_channel_is_504(env: Env) -> None:
    c, _q = opened(env)
    c.send(raw.method(5, raw.BASIC_QOS, QOS_ARGS))
    close = c.expect_connection_close()
    assert close.reply_code == 504
    assert close.reply_text.startswith("CHANNEL_ERROR")
    assert (close.class_id, close.method_id) == (60, 10)
    assert_broker_serves(env)


def test_channel_method_on_channel_zero_is_504(env: Env) -> None:
    c, _q = opened(env)
    c.send(raw.method(0, raw.BASIC_QOS, QOS_ARGS))
    close = c.expect_connection_close()
    assert close.reply_code == 504
    assert close.reply_text.startswith("CHANNEL_ERROR")
    assert_broker_serves(env)


def test_closing_channel_ignores_methods_until_close_ok(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.send(raw.queue_declare(1, env.queue("missing"), passive=True))
    c.send(raw.queue_declare(1, "", exclusive=True))  # must be ignored: channel is closing
    f = c.recv_method()
    assert f is not None and f.ids == raw.CHANNEL_CLOSE and f.channel == 1
    assert raw.parse_close(f).reply_code == 404
    c.send(raw.method(1, raw.CHANNEL_CLOSE_OK))
    c.open_channel(1)  # the next frame we see is the open-ok: the declare was dropped
    name, _, _ = c.declare_queue(1, "", exclusive=True)
    assert name.startswith("amq.gen-")


# --------------------------------------------------------------------------- isolation


def _consumer(conn: pika.BlockingConnection, queue: str) -> tuple[BlockingChannel, list[bytes]]:
    ch = conn.channel()
    got: list[bytes] = []
    ch.basic_consume(queue, lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
    return ch, got


def test_channel_error_does_not_disturb_other_channel(env: Env) -> None:
    conn = env.conn()
    q = env.queue()
    conn.channel().queue_declare(q)
    ch_ok, got = _consumer(conn, q)
    held = conn.channel()
    publish_confirmed(conn, "", q, [b"before"])
    wait_until(conn, lambda: got == [b"before"], "delivery before the error")
    bad = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        bad.queue_declare(env.queue("missing"), passive=True)
    assert err.value.reply_code == 404
    assert conn.is_open and ch_ok.is_open and held.is_open
    publish_confirmed(conn, "", q, [b"after"])
    wait_until(conn, lambda: got == [b"before", b"after"], "delivery after the error")


def test_channel_error_requeues_that_channels_unacked_only(env: Env) -> None:
    conn = env.conn()
    q = env.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    publish_confirmed(conn, "", q, [b"1", b"2"])
    good = conn.channel()
    m_good, _p, _b = good.basic_get(q)
    bad = conn.channel()
    bad.basic_get(q)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        bad.basic_ack(999)
        bad.basic_qos(prefetch_count=0)
    wait_counts(conn, q, (1, 0))  # "2" is back; "1" is still held by ``good``
    good.basic_ack(m_good.delivery_tag)
    m, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"2" and m.redelivered


def test_channel_error_does_not_disturb_other_connection(env: Env) -> None:
    a, b = env.conn(), env.conn()
    q = env.queue()
    b.channel().queue_declare(q)
    _ch, got = _consumer(b, q)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        a.channel().exchange_declare("amq.reserved." + q, "direct")
    publish_confirmed(a, "", q, [b"from-a"])
    wait_until(b, lambda: got == [b"from-a"], "delivery on the other connection")


def test_hard_error_does_not_disturb_other_connection(env: Env) -> None:
    observer = env.conn()
    q = env.queue()
    observer.channel().queue_declare(q)
    _ch, got = _consumer(observer, q)
    publish_confirmed(observer, "", q, [b"before"])
    wait_until(observer, lambda: got == [b"before"], "delivery before the hard error")
    c, _q = opened(env, frame_max=4096)
    c.send(raw.publish(1, "", q, b"x" * 9000, frame_max=10000))  # oversized: 501
    assert c.expect_connection_close(await_eof=False).reply_code == 501
    victim = env.conn()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        victim.channel().exchange_declare(env.exchange(), "no-such-type")  # 503
    assert observer.is_open
    publish_confirmed(observer, "", q, [b"after"])
    wait_until(observer, lambda: got == [b"before", b"after"], "delivery after the hard errors")
    assert queue_counts(observer.channel(), q) == (0, 1)


def test_hard_error_requeues_that_connections_unacked(env: Env) -> None:
    observer = env.conn()
    q = env.queue()
    observer.channel().queue_declare(q)
    publish_confirmed(observer, "", q, [b"held"])
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.send(raw.method(1, raw.BASIC_GET, struct.pack(">H", 0) + raw.shortstr(q) + raw.bits(False)))
    _m, _h, body, _ = c.read_message()
    assert body == b"held"
    c.send(raw.frame(9, 0, b"boom"))
    assert c.expect_connection_close(await_eof=False).reply_code == 501
    wait_counts(observer, q, (1, 0))  # requeued once the broker dropped the connection
    m, _p, body = observer.channel().basic_get(q, auto_ack=True)
    assert m is not None and body == b"held" and m.redelivered
