"""Sans-IO engine and adapter, issue 16: channel numbers and the open-channel limit,
heartbeat frames with a payload, queue.delete-ok before the server's basic.cancel on the
deleting channel, and an internal error logged as one line (its traceback once).

The same behaviour is checked end to end, against shardmq and RabbitMQ, in
``tests/integration/test_compat.py``.
"""

from __future__ import annotations

import logging

import pytest

from loadtest.inproc import Client, connect, frame, make_broker, new_connection
from shardmq.adapter import amqp091_methods
from shardmq.amqp import connection
from shardmq.amqp import methods as M
from shardmq.amqp.codec import PROTOCOL_HEADER
from shardmq.amqp.connection import CLOSING, OPEN, payload_snippet
from shardmq.broker.broker import Broker


def _tuned(broker: Broker, channel_max: int) -> Client:
    client = Client(new_connection(broker))
    client.send(PROTOCOL_HEADER)
    client.call(
        0,
        M.ConnectionStartOk(
            client_properties={"capabilities": {"consumer_cancel_notify": True}},
            mechanism="PLAIN",
            response=b"\0guest\0guest",
            locale="en_US",
        ),
    )
    client.call(0, M.ConnectionTuneOk(channel_max=channel_max, frame_max=131072, heartbeat=0))
    client.call(0, M.ConnectionOpen(virtual_host="/"))
    assert isinstance(client.methods[-1][1], M.ConnectionOpenOk)
    return client


def _close(client: Client) -> M.ConnectionClose:
    return client.last(M.ConnectionClose)  # type: ignore[return-value]


# --------------------------------------------------------------------------- channel_max


def test_channel_numbers_are_not_limited_by_channel_max() -> None:
    client = _tuned(make_broker(), channel_max=2)
    client.open_channel(65535)
    client.open_channel(2047)
    assert client.declare(65535, "high").queue == "high"
    client.call(65535, M.ChannelClose(reply_code=200))
    client.open_channel(40000)  # a closed channel frees its place
    assert client.conn.state == OPEN


def test_opening_more_channels_than_channel_max_is_530() -> None:
    client = _tuned(make_broker(), channel_max=2)
    client.open_channel(9)
    client.open_channel(10)
    client.call(11, M.ChannelOpen())
    close = _close(client)
    assert (close.reply_code, close.class_id, close.method_id) == (530, 0, 0)
    assert close.reply_text == (
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
    )
    assert client.conn.state == CLOSING


def test_channel_max_zero_means_the_server_limit() -> None:
    client = _tuned(make_broker(), channel_max=0)
    assert client.conn.engine.channel_max == 2047
    client.open_channel(65535)


# --------------------------------------------------------------------------- heartbeats


@pytest.mark.parametrize(
    "channel,payload,code,text",
    [
        (0, b"xyz", 501, 'FRAME_ERROR - type 8, all octets = <<"xyz">>: unknown_frame'),
        (1, b"\x00\xff", 501, "FRAME_ERROR - type 8, all octets = <<0,255>>: unknown_frame"),
        (5, b"q", 501, 'FRAME_ERROR - type 8, all octets = <<"q">>: unknown_frame'),
        (1, b"", 505, "UNEXPECTED_FRAME - type 8, all octets = <<>>"),
        (5, b"", 505, "UNEXPECTED_FRAME - type 8, all octets = <<>>"),
    ],
    ids=["ch0", "open-channel", "unopened-channel", "empty-open", "empty-unopened"],
)
def test_bad_heartbeat_frames(channel: int, payload: bytes, code: int, text: str) -> None:
    client = connect(make_broker())
    client.open_channel(1)
    client.send(frame(8, channel, payload))
    close = _close(client)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        code,
        text,
        0,
        0,
    )


def test_empty_heartbeat_on_channel_zero_is_fine() -> None:
    client = connect(make_broker())
    client.send(frame(8, 0, b""))
    assert client.conn.state == OPEN and not client.closed


def test_payload_snippet_prints_binaries_as_erlang_does() -> None:
    assert payload_snippet(b"") == "all octets = <<>>"
    assert payload_snippet(b'a\nb"c\\') == 'all octets = <<"a\\nb\\"c\\\\">>'
    assert payload_snippet(b"caf\xe9") == "all octets = <<99,97,102,233>>"
    assert payload_snippet(bytes(range(20))) == (
        "first 16 octets = <<0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15>>"
    )


# --------------------------------------------------------------------------- delete order


def _kinds(client: Client, channel: int) -> list[str]:
    return [type(m).__name__ for ch, m in client.methods if ch == channel]


def test_queue_delete_ok_comes_before_the_cancel_of_the_deleting_channel() -> None:
    client = connect(make_broker())
    client.open_channel(1)
    client.open_channel(2)
    client.declare(1, "q")
    client.consume(1, "q", "c1")
    client.consume(2, "q", "c2")
    client.methods.clear()
    client.call(1, M.QueueDelete(queue="q"))
    assert _kinds(client, 1) == ["QueueDeleteOk", "BasicCancel"]
    assert _kinds(client, 2) == ["BasicCancel"]
    assert client.conn._held_cancels == []


def test_a_refused_delete_cancels_nothing() -> None:
    client = connect(make_broker())
    client.open_channel(2)
    client.call(2, M.BasicQos(prefetch_count=1))
    client.declare(2, "q2")
    client.consume(2, "q2", "c2")
    client.publish(2, "", "q2", b"delivered")
    client.publish(2, "", "q2", b"ready")
    client.call(2, M.QueueDelete(queue="q2", if_empty=True))
    assert client.last(M.ChannelClose).reply_code == 406
    assert "BasicCancel" not in _kinds(client, 2)
    assert client.conn._held_cancels == []


# --------------------------------------------------------------------------- internal errors


def test_internal_error_is_one_line_with_its_traceback_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(a: object, ch: object, m: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setitem(amqp091_methods.HANDLERS, M.BasicQos.INDEX, broken)
    monkeypatch.setattr(connection, "_TRACED", set())
    broker = make_broker()
    caplog.set_level(logging.INFO, logger="shardmq")
    for _ in range(5):
        client = connect(broker)
        client.open_channel(1)
        client.call(1, M.BasicQos(prefetch_count=1))
        assert _close(client).reply_code == 541
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 5
    assert all("RuntimeError: simulated bug" in r.getMessage() for r in errors)
    assert sum(r.exc_info is not None for r in errors) == 1  # once per process and place
    assert caplog.text.count("Traceback") == 1
