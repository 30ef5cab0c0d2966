"""AMQP 1.0 on the wire against a real broker: protocol header choice, SASL, open,
sessions, windows and errors, with a raw client (``wire.RawClient``)."""

from __future__ import annotations

from collections.abc import Callable

import pika
import pytest

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.framing import HEADER_AMQP, HEADER_SASL, TYPE_SASL
from shardmq.amqp1.values import Symbol, UInt
from tests.integration.conftest import Broker
from tests.integration.helpers import unique

from .wire import RawClient


def test_amqp091_still_served_beside(broker: Broker) -> None:
    conn = broker.blocking()
    try:
        assert conn.channel().queue_declare("", exclusive=True).method.queue
    finally:
        conn.close()


@pytest.mark.parametrize(
    "header,answer",
    [
        (b"AMQP\x02\x01\x00\x00", HEADER_SASL),  # TLS inside: not here, SASL preferred
        (b"AMQP\x00\x01\x00\x00", HEADER_SASL),  # no SASL while ANONYMOUS is off
        (b"AMQP\x01\x01\x00\x00", b"AMQP\x00\x00\x09\x01"),  # not 1.0: the 0-9-1 engine's
        (b"HTTP/1.1", b"AMQP\x00\x00\x09\x01"),
    ],
)
def test_unsupported_header_gets_preferred_header_and_close(
    broker: Broker, header: bytes, answer: bytes
) -> None:
    c = RawClient(broker.port)
    try:
        c.send_raw(header)
        assert c.read_header() == answer
        assert c.closed_by_peer(5)
    finally:
        c.close()


def test_sasl_plain_and_open(broker: Broker) -> None:
    c = RawClient(broker.port)
    try:
        opened = c.login(idle_time_out=UInt(30000))
        assert opened.container_id.startswith("shardmq")
        assert opened.max_frame_size == 131072
        c.send(T.Close())
        assert isinstance(c.read_frame()[1], T.Close)
        assert c.closed_by_peer(5)
    finally:
        c.close()


def test_sasl_offers_plain_only_and_refuses_bad_password(broker: Broker) -> None:
    c = RawClient(broker.port)
    try:
        c.send_raw(HEADER_SASL)
        assert c.read_header() == HEADER_SASL
        mechs = c.read_frame()[1]
        assert list(mechs.sasl_server_mechanisms) == ["PLAIN"]
        c.send(
            T.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\x00guest\x00wrong"),
            ftype=TYPE_SASL,
        )
        outcome = c.read_frame()[1]
        assert isinstance(outcome, T.SaslOutcome) and outcome.code == T.SASL_CODE_AUTH
        assert c.closed_by_peer(10)
    finally:
        c.close()


def test_anonymous_when_enabled(own_broker: Callable[..., Broker]) -> None:
    b = own_broker("[amqp1]\nanonymous = true\n")
    c = RawClient(b.port)
    try:
        c.send_raw(HEADER_SASL)
        assert c.read_header() == HEADER_SASL
        assert "ANONYMOUS" in c.read_frame()[1].sasl_server_mechanisms
        c.send(T.SaslInit(mechanism=Symbol("ANONYMOUS")), ftype=TYPE_SASL)
        assert c.read_frame()[1].code == T.SASL_CODE_OK
        c.send_raw(HEADER_AMQP)
        assert c.read_header() == HEADER_AMQP
        c.send(T.Open(container_id="anon"))
        assert isinstance(c.read_frame()[1], T.Open)
    finally:
        c.close()
    # and without SASL at all
    c = RawClient(b.port)
    try:
        c.send_raw(HEADER_AMQP)
        assert c.read_header() == HEADER_AMQP
        c.send(T.Open(container_id="anon"))
        assert isinstance(c.read_frame()[1], T.Open)
    finally:
        c.close()


def test_unknown_vhost_is_refused(broker: Broker) -> None:
    c = RawClient(broker.port)
    try:
        c.login(hostname="vhost:" + unique("novhost"))
        close = c.read_until(T.Close)
        assert close.error.condition == T.AMQP_ERROR_NOT_FOUND
    finally:
        c.close()


def test_max_frame_size_below_minimum(broker: Broker) -> None:
    c = RawClient(broker.port)
    try:
        c.login(max_frame_size=UInt(100))
        close = c.read_until(T.Close)
        assert close.error.condition == T.AMQP_ERROR_FRAME_SIZE_TOO_SMALL
    finally:
        c.close()


def test_garbage_frame_is_decode_error(broker: Broker) -> None:
    c = RawClient(broker.port)
    try:
        c.login()
        c.send_raw(b"\x00\x00\x00\x0c\x02\x00\x00\x00\xff\xff\xff\xff")
        close = c.read_until(T.Close)
        assert close.error.condition == T.AMQP_ERROR_DECODE_ERROR
    finally:
        c.close()


def test_sessions_and_unattached_handle(broker: Broker) -> None:
    c = RawClient(broker.port)
    try:
        c.login()
        b1 = c.begin(0)
        b2 = c.begin(1)
        assert (b1.remote_channel, b2.remote_channel) == (0, 1)
        # a flow on a handle never attached ends that session only
        c.send(
            T.Flow(
                incoming_window=UInt(10),
                next_outgoing_id=UInt(0),
                outgoing_window=UInt(10),
                handle=UInt(7),
                delivery_count=UInt(0),
                link_credit=UInt(1),
            ),
            channel=1,
        )
        ch, end, _p = c.read_frame()
        assert isinstance(end, T.End) and ch == b2.remote_channel or ch == 1
        assert end.error.condition == T.SESSION_ERROR_UNATTACHED_HANDLE
        c.send(T.End(), channel=1)
        # the other session still works: attach to a missing queue -> not-found
        name = unique("missing")
        c.send(
            T.Attach(
                name="l1",
                handle=UInt(0),
                role=T.ROLE_RECEIVER,
                source=T.Source(address=f"/queues/{name}"),
                target=T.Target(),
            ),
            channel=0,
        )
        attach = c.read_until(T.Attach)
        assert attach.source is None
        detach = c.read_until(T.Detach)
        assert detach.closed and detach.error.condition == T.AMQP_ERROR_NOT_FOUND
        assert name in detach.error.description
    finally:
        c.close()


def test_window_violation_ends_the_session(broker: Broker, env: object) -> None:
    q = unique("win")
    conn = broker.blocking()
    conn.channel().queue_declare(q, auto_delete=False)
    c = RawClient(broker.port)
    try:
        c.login()
        begin = c.begin()
        window = int(begin.incoming_window)
        c.send(
            T.Attach(
                name="pub",
                handle=UInt(0),
                role=T.ROLE_SENDER,
                snd_settle_mode=T.SENDER_SETTLE_MODE_SETTLED,
                source=T.Source(),
                target=T.Target(address=f"/queues/{q}"),
                initial_delivery_count=UInt(0),
            )
        )
        c.read_until(T.Attach)
        flow = c.read_until(T.Flow)
        assert flow.link_credit > 0
        # window + 1 frames of one multi-frame delivery (it takes one credit)
        body = T.Data(b"x").to_bytes()
        for i in range(window + 1):
            perf = T.Transfer(
                handle=UInt(0),
                delivery_id=UInt(0) if i == 0 else None,
                delivery_tag=b"t" if i == 0 else None,
                settled=True if i == 0 else None,
                more=True,
            )
            c.send(perf, payload=body)
        end = c.read_until(T.End)
        assert end.error.condition == T.SESSION_ERROR_WINDOW_VIOLATION
    finally:
        c.close()
        ch = conn.channel()
        ch.queue_delete(q)
        conn.close()


def test_idle_peer_is_disconnected(own_broker: Callable[..., Broker]) -> None:
    b = own_broker("[amqp1]\nidle_time_out = 500\n")
    c = RawClient(b.port)
    try:
        opened = c.login(idle_time_out=UInt(400))
        assert opened.idle_time_out == 500
        # the broker sends empty frames at least every 200 ms; we send nothing: it
        # closes the connection after twice its time-out (1 s), well within 10 s
        empties = 0
        for _ in range(3):
            _ch, perf, _p = c.read_frame(skip_empty=False)
            empties += perf is None
        assert empties == 3
        assert c.closed_by_peer(10)
    finally:
        c.close()
    # a pika connection on the same broker is unaffected
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port))
    conn.close()
