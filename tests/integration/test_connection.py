"""Issue 2, point 4: connection handshake, auth, server properties, tune, heartbeats, close,
channel open/close/flow, driven with pika, kombu/py-amqp and a raw socket.

Invariants: every assertion is what RabbitMQ 3.10 does (reply codes, text prefixes);
every wait is bounded by a few seconds.
"""

from __future__ import annotations

import math
import struct
import time

import amqp.exceptions
import kombu
import pika
import pika.exceptions
import pytest

from tests.support import rawamqp as raw

from .helpers import Env, get_bodies, publish_confirmed

pytestmark = pytest.mark.timeout(30)

REQUIRED_CAPABILITIES = (
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "authentication_failure_close",
    "per_consumer_qos",
)

_CLOSE_ARGS = struct.Struct(">H")


def _close_args(code: int, text: str, class_id: int = 0, method_id: int = 0) -> bytes:
    return _CLOSE_ARGS.pack(code) + raw.shortstr(text) + struct.pack(">HH", class_id, method_id)


# --------------------------------------------------------------------------- handshake


@pytest.mark.parametrize(
    "header",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"AMQP\x00\x00\x09\x02",
        b"XXXXXXXX",
        b"AMQP\x00\x00\x0a\x00",
    ],
    # (an AMQP 1.0 header is served since issue 15: tests/amqp1/test_wire.py)
    ids=["http", "amqp-0-9-2", "garbage", "amqp-0-10"],
)
def test_wrong_protocol_header_gets_supported_header_and_close(env: Env, header: bytes) -> None:
    c = env.raw()
    c.send(header)
    assert c.recv_exactly(8) == raw.PROTOCOL_HEADER
    assert c.assert_eof() == []


def test_connection_start_offers_plain_and_amqplain(env: Env) -> None:
    c = env.raw()
    c.start()
    assert c.start_args["version"] == (0, 9)
    assert {"PLAIN", "AMQPLAIN"} <= set(c.start_args["mechanisms"])
    assert "en_US" in c.start_args["locales"]


def test_server_properties_and_capabilities(env: Env) -> None:
    conn = env.conn()
    props = conn._impl.server_properties
    assert isinstance(props["product"], str) and props["product"]
    assert isinstance(props["version"], str) and props["version"]
    caps = props["capabilities"]
    for cap in REQUIRED_CAPABILITIES:
        assert caps.get(cap) is True, f"capability {cap} missing: {caps}"


def test_plain_login_with_pika(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"hello")
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None and body == b"hello"


def test_wrong_password_pika_is_refused(env: Env) -> None:
    params = env.broker.pika_params(credentials=pika.PlainCredentials("guest", "wrong"))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as err:
        pika.BlockingConnection(params)
    assert "403" in str(err.value) and "ACCESS_REFUSED" in str(err.value)


@pytest.mark.parametrize("mechanism", ["PLAIN", "AMQPLAIN"])
def test_wrong_password_raw_gets_403_close(env: Env, mechanism: str) -> None:
    c = env.raw()
    c.start()
    c.start_ok("guest", "not-the-password", mechanism)
    close = c.expect_connection_close()
    assert close.reply_code == 403
    assert close.reply_text.startswith("ACCESS_REFUSED")


def test_unknown_user_is_refused(env: Env) -> None:
    c = env.raw()
    c.start()
    c.start_ok("no-such-user-shardmq", "guest")
    close = c.expect_connection_close()
    assert close.reply_code == 403
    assert close.reply_text.startswith("ACCESS_REFUSED")


@pytest.mark.parametrize("mechanism", ["PLAIN", "AMQPLAIN"])
def test_raw_login_mechanisms(env: Env, mechanism: str) -> None:
    c = env.raw()
    c.handshake(mechanism=mechanism)
    c.open_channel(1)
    name, messages, consumers = c.declare_queue(1, "", exclusive=True)
    assert name.startswith("amq.gen-") and (messages, consumers) == (0, 0)


def test_amqplain_login_with_kombu(env: Env) -> None:
    q = env.queue()
    with kombu.Connection(env.broker.uri, login_method="AMQPLAIN", connect_timeout=5) as conn:
        conn.connect()
        assert conn.connected
        mechanisms = [a.mechanism for a in conn.connection.authentication]
        assert mechanisms == [b"AMQPLAIN"]
        queue = kombu.Queue(q, exchange=kombu.Exchange("", type="direct"), routing_key=q)
        with conn.Producer() as producer:
            producer.publish({"n": 1}, routing_key=q, declare=[queue], serializer="json")
        got = []
        with conn.Consumer(queue, callbacks=[lambda b, m: (got.append(b), m.ack())]):
            conn.drain_events(timeout=5)
        assert got == [{"n": 1}]


def test_wrong_password_kombu_amqplain(env: Env) -> None:
    b = env.broker
    uri = f"amqp://{b.user}:wrong-password@{b.host}:{b.port}//"
    conn = kombu.Connection(uri, login_method="AMQPLAIN", connect_timeout=5)
    try:
        with pytest.raises(amqp.exceptions.AccessRefused) as err:
            conn.connection  # noqa: B018 - attribute access connects
        assert err.value.reply_code == 403
    finally:
        conn.release()


def test_unknown_vhost_is_530(env: Env) -> None:
    c = env.raw()
    c.start()
    c.start_ok()
    c.expect(raw.CONNECTION_TUNE)
    c.send(raw.method(0, raw.CONNECTION_TUNE_OK, struct.pack(">HIH", 100, 131072, 0)))
    c.send(
        raw.method(
            0,
            raw.CONNECTION_OPEN,
            raw.shortstr("shardmq-no-such-vhost") + raw.shortstr("") + raw.bits(False),
        )
    )
    close = c.expect_connection_close()
    assert close.reply_code == 530
    assert close.reply_text.startswith("NOT_ALLOWED")


# --------------------------------------------------------------------------- tune


def test_server_tune_proposal(env: Env) -> None:
    c = env.raw()
    c.handshake()
    assert c.tune is not None
    channel_max, frame_max, heartbeat = c.tune
    print(f"server tune proposal: channel_max={channel_max} frame_max={frame_max} hb={heartbeat}")
    assert 1 <= channel_max <= 65535
    assert frame_max >= 4096
    assert heartbeat >= 0


def test_pika_negotiates_lower_channel_max_and_frame_max(env: Env) -> None:
    conn = env.conn(channel_max=7, frame_max=8192)
    assert conn._impl.params.channel_max == 7
    assert conn._impl.params.frame_max == 8192
    channels = [conn.channel() for _ in range(7)]
    assert all(ch.is_open for ch in channels)
    with pytest.raises(pika.exceptions.NoFreeChannels):
        conn.channel()


def test_channel_above_negotiated_channel_max_is_530(env: Env) -> None:
    c = env.raw()
    c.handshake(channel_max=2)
    c.open_channel(1)
    c.open_channel(2)
    c.send(raw.method(3, raw.CHANNEL_OPEN, raw.shortstr("")))
    close = c.expect_connection_close()
    assert close.reply_code == 530
    assert close.reply_text.startswith("NOT_ALLOWED")


def test_tune_ok_above_server_frame_max_ends_connection(env: Env) -> None:
    c = env.raw()
    c.start()
    c.start_ok()
    tune = c.expect(raw.CONNECTION_TUNE)
    _cmax, fmax, _hb = struct.unpack_from(">HIH", tune.payload, 4)
    assert fmax > 0
    c.send(raw.method(0, raw.CONNECTION_TUNE_OK, struct.pack(">HIH", 10, fmax * 4, 0)))
    c.send(raw.method(0, raw.CONNECTION_OPEN, raw.shortstr("/") + raw.shortstr("") + b"\x00"))
    frames = c.assert_eof()
    assert raw.CONNECTION_OPEN_OK not in [f.ids for f in frames]
    closes = [raw.parse_close(f) for f in frames if f.ids == raw.CONNECTION_CLOSE]
    assert all(cl.reply_code in (501, 503, 530) for cl in closes), closes


def test_body_split_by_negotiated_frame_max_raw(env: Env) -> None:
    """We publish in 4088-byte body frames and the broker delivers in frames <= 4088 too."""
    c = env.raw()
    _, frame_max, _ = c.handshake(frame_max=4096)
    assert frame_max == 4096
    c.open_channel(1)
    q, _, _ = c.declare_queue(1, "", exclusive=True)
    payload = bytes(range(256)) * 80  # 20480 bytes
    c.send(raw.publish(1, "", q, payload, frame_max=4096))
    c.send(raw.basic_consume(1, q, "ctag", no_ack=True))
    c.expect(raw.BASIC_CONSUME_OK, channel=1)
    m, _h, got, sizes = c.read_message()
    assert m.ids == raw.BASIC_DELIVER
    assert got == payload
    assert max(sizes) <= 4096 - 8
    assert len(sizes) == math.ceil(len(payload) / (4096 - 8))


def test_big_message_round_trip_with_small_frames_pika(env: Env) -> None:
    q = env.queue()
    conn = env.conn(frame_max=4096)
    ch = conn.channel()
    ch.queue_declare(q)
    payload = bytes(i % 251 for i in range(300_000))
    publish_confirmed(conn, "", q, [payload])
    assert get_bodies(ch, q, 1) == [payload]


# --------------------------------------------------------------------------- heartbeats


def test_server_sends_heartbeats(env: Env) -> None:
    c = env.raw()
    c.handshake(heartbeat=1)
    f = c.recv_frame(timeout=3)
    assert f is not None, "socket closed before any heartbeat"
    assert (f.type, f.channel, f.payload) == (raw.FRAME_HEARTBEAT, 0, b"")


def test_silent_peer_is_closed(env: Env) -> None:
    c = env.raw()
    c.handshake(heartbeat=1)
    started = time.monotonic()
    frames = c.assert_eof(timeout=8)  # we never send anything
    elapsed = time.monotonic() - started
    print(f"silent client with heartbeat=1 was disconnected after {elapsed:.2f} s")
    kinds = {f.type for f in frames}
    assert kinds <= {raw.FRAME_HEARTBEAT, raw.FRAME_METHOD}
    for f in frames:
        if f.type == raw.FRAME_METHOD:
            assert f.ids == raw.CONNECTION_CLOSE


def test_peer_sending_heartbeats_stays_connected(env: Env) -> None:
    c = env.raw()
    c.handshake(heartbeat=1)
    c.open_channel(1)
    end = time.monotonic() + 3.0  # three heartbeat intervals
    while time.monotonic() < end:
        f = c.recv_frame(timeout=2)
        assert f is not None, "broker closed a connection that kept sending heartbeats"
        assert f.type == raw.FRAME_HEARTBEAT
        c.send(raw.HEARTBEAT)
    name, _, _ = c.declare_queue(1, "", exclusive=True)
    assert name.startswith("amq.gen-")


# --------------------------------------------------------------------------- close


def test_client_initiated_close_gets_close_ok(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.send(raw.method(0, raw.CONNECTION_CLOSE, _close_args(200, "bye")))
    f = c.recv_method()
    assert f is not None and f.ids == raw.CONNECTION_CLOSE_OK and f.channel == 0


def test_server_initiated_close_on_hard_error_pika(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
        ch.exchange_declare(env.exchange(), exchange_type="no-such-type")
    assert err.value.reply_code == 503
    assert err.value.reply_text.startswith("COMMAND_INVALID")
    assert conn.is_closed


def test_server_initiated_close_raw_then_socket_closed(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    x = env.exchange()
    args = struct.pack(">H", 0) + raw.shortstr(x) + raw.shortstr("no-such-type")
    c.send(raw.method(1, (40, 10), args + raw.bits() + raw.table()))
    close = c.expect_connection_close()  # also waits for the socket to close after close-ok
    assert close.reply_code == 503
    assert (close.class_id, close.method_id) == (40, 10)


# --------------------------------------------------------------------------- channels


def test_channel_open_close_reopen_raw(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.send(raw.method(1, raw.CHANNEL_CLOSE, _close_args(200, "done")))
    c.expect(raw.CHANNEL_CLOSE_OK, channel=1)
    c.open_channel(1)
    name, _, _ = c.declare_queue(1, "", exclusive=True)
    assert name.startswith("amq.gen-")


def test_second_channel_open_on_same_number_is_504(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.send(raw.method(1, raw.CHANNEL_OPEN, raw.shortstr("")))
    close = c.expect_connection_close()
    assert close.reply_code == 504
    assert close.reply_text.startswith("CHANNEL_ERROR")


def test_channel_open_close_pika(env: Env) -> None:
    conn = env.conn()
    first = conn.channel()
    second = conn.channel()
    assert first.channel_number != second.channel_number
    first.close()
    assert first.is_closed and second.is_open
    third = conn.channel()
    assert third.is_open
    third.queue_declare("", exclusive=True)


def test_channel_flow_active_true_is_acknowledged(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.send(raw.method(1, raw.CHANNEL_FLOW, raw.bits(True)))
    ok = c.expect(raw.CHANNEL_FLOW_OK, channel=1)
    assert ok.args().octet() & 1 == 1


def test_channel_flow_active_false_is_not_implemented(env: Env) -> None:
    """RabbitMQ refuses client-requested flow stop with a 540 connection error."""
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.send(raw.method(1, raw.CHANNEL_FLOW, raw.bits(False)))
    close = c.expect_connection_close()
    assert close.reply_code == 540
    assert close.reply_text.startswith("NOT_IMPLEMENTED")
    assert (close.class_id, close.method_id) == (20, 20)
