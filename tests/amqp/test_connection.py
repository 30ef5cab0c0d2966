"""Sans-IO connection: handshake, protocol errors, and a fuzzed frame parser.

Whatever bytes arrive, ``feed`` never raises, the output is always well-formed frames,
and errors are the right AMQP close with the right reply code.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.inproc import connect, frame, make_broker, method_frame, new_connection
from shardmq.amqp import methods as M
from shardmq.amqp.codec import PROTOCOL_HEADER
from shardmq.amqp.connection import CLOSED, CLOSING, OPEN


def _close_code(client) -> int:
    return client.last(M.ConnectionClose).reply_code


def test_wrong_protocol_header_gets_ours_back_and_closes() -> None:
    broker = make_broker()
    conn = new_connection(broker, "t")
    conn.feed(b"AMQP\x01\x01\x00\x09")
    assert bytes(conn.take_output()) == PROTOCOL_HEADER
    assert conn.want_close and conn.state == CLOSED


def test_garbage_before_header_is_rejected_early() -> None:
    broker = make_broker()
    conn = new_connection(broker, "t")
    conn.feed(b"GET ")
    assert bytes(conn.take_output()) == PROTOCOL_HEADER


def test_bad_password_closes_with_403() -> None:
    broker = make_broker()
    client = connect(broker, password="nope")
    assert client.closed or _close_code(client) == 403


def test_oversized_frame_is_501_before_it_is_buffered() -> None:
    client = connect(make_broker())
    client.send(struct.pack(">BHI", 1, 1, 10_000_000))  # header only: size is enough
    assert _close_code(client) == 501
    assert client.conn.state == CLOSING


def test_bad_frame_end_is_501() -> None:
    client = connect(make_broker())
    client.open_channel(1)
    data = bytearray(method_frame(1, M.BasicQos(prefetch_count=1)))
    data[-1] = 0
    client.send(bytes(data))
    assert _close_code(client) == 501


def test_content_header_without_publish_is_505() -> None:
    client = connect(make_broker())
    client.open_channel(1)
    client.send(frame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0)))
    assert _close_code(client) == 505


def test_method_on_unopened_channel_is_504() -> None:
    client = connect(make_broker())
    client.call(3, M.BasicQos(prefetch_count=1))
    assert _close_code(client) == 504


def test_unknown_method_is_a_hard_error() -> None:
    client = connect(make_broker())
    client.open_channel(1)
    client.send(frame(1, 1, struct.pack(">HH", 60, 999)))
    assert _close_code(client) in (503, 540)


def test_after_close_only_close_ok_is_processed() -> None:
    client = connect(make_broker())
    client.call(3, M.BasicQos())
    assert client.conn.state == CLOSING
    client.call(0, M.ChannelOpen())  # ignored
    client.call(0, M.ConnectionCloseOk())
    assert client.conn.state == CLOSED and client.closed


def test_soft_error_leaves_other_channels_working() -> None:
    client = connect(make_broker())
    client.open_channel(1)
    client.open_channel(2)
    client.call(1, M.QueueDeclare(queue="missing", passive=True))
    assert client.last(M.ChannelClose).reply_code == 404
    assert client.conn.state == OPEN
    assert client.declare(2, "fine").queue == "fine"


_frame_types = st.sampled_from([1, 2, 3, 8, 4, 0, 206])


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=64))
    channel = draw(st.sampled_from([0, 1, 2, 7]))
    if kind == 1:
        cls = draw(st.sampled_from(sorted(M.METHODS.values(), key=lambda c: c.INDEX)))
        payload = cls().encode()
        cut = draw(st.integers(0, len(payload)))
        payload = payload[:cut] + draw(st.binary(max_size=8))
        return frame(1, channel, payload)
    payload = draw(st.binary(max_size=40))
    return frame(draw(_frame_types), channel, payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frames(), max_size=12))
def test_fuzzed_input_never_raises_and_output_stays_well_formed(chunks: list[bytes]) -> None:
    broker = make_broker()
    client = connect(broker)
    client.open_channel(1)
    client.declare(1, "fuzz")
    bystander = connect(broker)
    bystander.open_channel(1)
    # a name the fuzzer cannot produce (it adds at most 8 random bytes to a method's
    # default payload, whose names are empty: "the last queue declared", i.e. "fuzz"),
    # so whatever it deletes or purges is its own
    bystander.declare(1, "bystander-queue")
    bystander.publish(1, "", "bystander-queue", b"keep me")
    for chunk in chunks:
        client.send(chunk)  # the harness asserts every output frame is well formed
    # Whatever happened to the fuzzed connection, the bystander and its data are intact.
    bystander.call(1, M.BasicGet(queue="bystander-queue", no_ack=True))
    bystander.pump()
    assert bystander.conn.state == OPEN
    assert [d.body for d in bystander.deliveries] == [b"keep me"]
