"""Issue 16: behaviour real clients rely on, as RabbitMQ 3.10 has it (each checked against
it with ``SHARDMQ_TEST_URI``): idempotent unbind, queue.delete-ok before the cancel of
the deleting channel's consumer, the default exchange refused even passively, channel
numbers up to 65535 with the negotiated channel_max counting open channels, heartbeat
frames with a payload, the handshake timer running until connection.open-ok, and field
tables nested too deep refused cleanly (one log line, no traceback).

Invariants: every test uses its own names (``Env``) and ends with the broker still
serving; where shardmq knowingly differs from RabbitMQ (a nesting limit) the test says
so and skips on an external broker.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest

from shardmq.amqp.fieldtable import MAX_DEPTH
from shardmq.broker.metadata import shard_for
from tests.support import rawamqp as raw
from tests.support.launch import serve_args, spawn, terminate, wait_answering
from tests.support.ports import free_port

from .conftest import EXTERNAL_URI, WORKER_COUNTS, Broker, _parse_external
from .helpers import Env, channel_error, queue_exists

pytestmark = pytest.mark.timeout(60)

_SHORT = struct.Struct(">H")
_LONG = struct.Struct(">I")
_TUNE = struct.Struct(">HIH")
DEFAULT_EXCHANGE_TEXT = "ACCESS_REFUSED - operation not permitted on the default exchange"


def assert_serves(env: Env) -> None:
    ch = env.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"alive")
    m, _p, body = ch.basic_get(q, auto_ack=True)
    assert m is not None and body == b"alive"


# --------------------------------------------------------------------------- unbind


def test_queue_unbind_is_idempotent(env: Env) -> None:
    """unbind-ok for a missing queue, a missing exchange, both, or a missing binding."""
    conn = env.conn()
    ch = conn.channel()
    q, x = env.queue(), env.exchange()
    ch.queue_declare(q)
    ch.exchange_declare(x, "direct")
    ch.queue_unbind(env.queue("missing"), x, "k")
    ch.queue_unbind(q, env.exchange("missing"), "k")
    ch.queue_unbind(env.queue("missing"), env.exchange("missing"), "k")
    ch.queue_unbind(q, x, "never-bound")
    ch.queue_bind(q, x, "k")
    ch.queue_unbind(q, x, "k")
    ch.queue_unbind(q, x, "k")  # twice
    assert ch.is_open


def test_exchange_unbind_is_idempotent(env: Env) -> None:
    ch = env.channel()
    x = env.exchange()
    ch.exchange_declare(x, "topic")
    ch.exchange_unbind(env.exchange("missing"), x, "k")
    ch.exchange_unbind(x, env.exchange("missing"), "k")
    ch.exchange_unbind(env.exchange("missing"), env.exchange("missing"), "k")
    ch.exchange_unbind(x, "amq.topic", "never-bound")
    assert ch.is_open


def test_rpc_reply_queue_unbound_after_its_consumer_is_cancelled(env: Env) -> None:
    """An RPC helper cancels the only consumer of its auto-delete reply queue (so the
    queue goes), then unbinds it; a clean-up deletes before it unbinds."""
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange()
    ch.exchange_declare(x, "direct")
    reply = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(reply, x, reply)
    tag = ch.basic_consume(reply, lambda *a: None)
    ch.basic_cancel(tag)
    ch.queue_unbind(reply, x, reply)
    q = env.queue()
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    ch.queue_delete(q)
    ch.queue_unbind(q, x, "k")
    assert ch.is_open and not queue_exists(conn, q)


def test_unbind_locked_exclusive_queue_only_refused_when_bound(env: Env) -> None:
    owner = env.channel()
    q = env.queue()
    owner.queue_declare(q, exclusive=True)
    owner.queue_bind(q, "amq.direct", "k")
    other = env.conn()
    ch = other.channel()
    ch.queue_unbind(q, "amq.direct", "not-bound")
    ch.queue_unbind(q, env.exchange("missing"), "k")
    err = channel_error(other, lambda c: c.queue_unbind(q, "amq.direct", "k"))
    assert err.reply_code == 405
    assert err.reply_text.startswith(
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}'"
    )


def test_unbind_involving_the_default_exchange_is_403(env: Env) -> None:
    conn = env.conn()
    x = env.exchange()
    conn.channel().exchange_declare(x, "direct")
    for op in (
        lambda c: c.queue_unbind(env.queue("missing"), "", "k"),
        lambda c: c.exchange_unbind("", x, "k"),
        lambda c: c.exchange_unbind(x, "", "k"),
    ):
        err = channel_error(conn, op)
        assert (err.reply_code, err.reply_text) == (403, DEFAULT_EXCHANGE_TEXT)


def test_bind_checks_in_rabbitmq_order(env: Env) -> None:
    """403 for the default exchange at either end before any 404; then the source
    exchange's 404 before the destination's."""
    conn = env.conn()
    missing_x, missing_q = env.exchange("missing"), env.queue("missing")
    err = channel_error(conn, lambda c: c.exchange_bind("", missing_x, "k"))
    assert (err.reply_code, err.reply_text) == (403, DEFAULT_EXCHANGE_TEXT)
    err = channel_error(conn, lambda c: c.queue_bind(missing_q, missing_x, "k"))
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no exchange '{missing_x}' in vhost '/'"


# --------------------------------------------------------------------------- delete order


def _queue_placed(env: Env, r: raw.RawConnection, remote: bool) -> str:
    """A queue name owned by the connection's worker (``remote`` False) or by another."""
    workers = env.broker.workers or 1
    mine = r.start_args["server_properties"].get("worker", 0)
    if remote and workers == 1:
        pytest.skip("one worker or an external broker: no queue on another worker")
    while True:
        name = env.queue("del")
        if (shard_for("/", name, workers) != mine) == remote:
            return name


@pytest.mark.parametrize("remote", [False, True], ids=["queue-local", "queue-remote"])
def test_queue_delete_ok_precedes_cancel_of_own_consumer(env: Env, remote: bool) -> None:
    """Raw frames: delete-ok, then basic.cancel on the deleting channel (RabbitMQ's order);
    the consumer on another channel is cancelled too."""
    r = env.raw()
    r.handshake()
    q = _queue_placed(env, r, remote)
    r.open_channel(1)
    r.open_channel(2)
    r.declare_queue(1, q)
    r.send(raw.basic_consume(1, q, "c1"))
    r.expect(raw.BASIC_CONSUME_OK, channel=1)
    r.send(raw.basic_consume(2, q, "c2"))
    r.expect(raw.BASIC_CONSUME_OK, channel=2)
    r.send(raw.queue_delete(1, q))
    got = []
    for _ in range(3):
        f = r.recv_method()
        assert f is not None
        got.append((f.channel, f.ids))
    on_1 = [ids for chnum, ids in got if chnum == 1]
    assert on_1 == [raw.QUEUE_DELETE_OK, (60, 30)], got
    assert (2, (60, 30)) in got


def test_pika_queue_delete_from_consuming_channel(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = env.queue()
    ch.queue_declare(q)
    cancelled: list[object] = []
    ch.add_on_cancel_callback(cancelled.append)
    ch.basic_consume(q, lambda *a: None)
    assert ch.queue_delete(q).method.message_count == 0
    conn.process_data_events(time_limit=0.2)
    assert len(cancelled) == 1 and ch.is_open


def _py_amqp(broker: Broker) -> amqp.Connection:
    c = amqp.Connection(
        f"{broker.host}:{broker.port}",
        userid=broker.user,
        password=broker.password,
        virtual_host=broker.vhost,
        connect_timeout=5,
    )
    c.connect()
    return c


@pytest.mark.parametrize("n", range(3))
def test_py_amqp_queue_delete_from_consuming_channel(env: Env, n: int) -> None:
    """py-amqp (kombu's transport) raises ConsumerCancelled if the server's cancel comes
    while it waits for delete-ok; after it, the cancel is an ordinary event. Three
    queues, so with 3 workers some live on another worker than the connection."""
    c = _py_amqp(env.broker)
    env.on_cleanup(c.close)
    ch = c.channel()
    q = env.queue()
    ch.queue_declare(q, durable=False, auto_delete=False)
    ch.basic_consume(q, callback=lambda m: None, on_cancel=None)
    assert ch.queue_delete(q) == 0
    assert not queue_exists(env.conn(), q)


# --------------------------------------------------------------------------- default exchange


@pytest.mark.parametrize("kind", ["direct", "topic"])
def test_passive_declare_of_default_exchange_is_403(env: Env, kind: str) -> None:
    conn = env.conn()
    err = channel_error(conn, lambda c: c.exchange_declare("", kind, passive=True))
    assert (err.reply_code, err.reply_text) == (403, DEFAULT_EXCHANGE_TEXT)
    conn.channel().exchange_declare("amq.direct", passive=True)  # others still fine


# --------------------------------------------------------------------------- channel_max


def test_channel_numbers_above_channel_max_open(env: Env) -> None:
    r = env.raw()
    assert r.handshake(channel_max=3)[0] == 3
    for n in (65535, 7, 3):
        r.open_channel(n)
    r.send(raw.method(65535, raw.CHANNEL_CLOSE, _SHORT.pack(200) + raw.shortstr("") + b"\0" * 4))
    r.expect(raw.CHANNEL_CLOSE_OK, channel=65535)
    r.open_channel(40000)  # a closed channel frees its place
    r.send(raw.queue_declare(40000, "", exclusive=True))
    r.expect(raw.QUEUE_DECLARE_OK, channel=40000)


def test_opening_more_channels_than_channel_max_is_530(env: Env) -> None:
    r = env.raw()
    r.handshake(channel_max=2)
    r.open_channel(100)
    r.open_channel(65535)
    r.send(raw.method(5, raw.CHANNEL_OPEN, raw.shortstr("")))
    close = r.expect_connection_close()
    assert close == raw.Close(
        530,
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
        0,
        0,
    )
    assert_serves(env)


def test_pika_channel_65535(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel(channel_number=65535)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x")
    assert ch.basic_get(q, auto_ack=True)[2] == b"x"


# --------------------------------------------------------------------------- heartbeats


@pytest.mark.parametrize(
    "channel,payload,code,text",
    [
        (0, b"xyz", 501, 'FRAME_ERROR - type 8, all octets = <<"xyz">>: unknown_frame'),
        (0, b"\x01\x02", 501, "FRAME_ERROR - type 8, all octets = <<1,2>>: unknown_frame"),
        (
            0,
            b"abcdefghijklmnopqrstuvwxyz",
            501,
            'FRAME_ERROR - type 8, first 16 octets = <<"abcdefghijklmnop">>: unknown_frame',
        ),
        (1, b"ab", 501, 'FRAME_ERROR - type 8, all octets = <<"ab">>: unknown_frame'),
        (1, b"", 505, "UNEXPECTED_FRAME - type 8, all octets = <<>>"),
    ],
    ids=["text", "binary", "long", "channel-1", "empty-channel-1"],
)
def test_bad_heartbeat_frame(env: Env, channel: int, payload: bytes, code: int, text: str) -> None:
    r = env.raw()
    r.handshake()
    r.open_channel(1)
    r.send(raw.frame(raw.FRAME_HEARTBEAT, channel, payload))
    assert r.expect_connection_close(await_eof=False) == raw.Close(code, text, 0, 0)
    assert_serves(env)


# --------------------------------------------------------------------------- handshake timer

HANDSHAKE_TIMEOUT = 1.0


def _quick_params() -> list[object]:
    if EXTERNAL_URI:
        return [pytest.param(None, id="external")]
    return [pytest.param(n, id=f"workers{n}") for n in WORKER_COUNTS]


@pytest.fixture(params=_quick_params())
def quick_handshake_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A broker of its own whose handshake timeout is 1 s; with ``SHARDMQ_TEST_URI``,
    that broker (RabbitMQ's timeout is 10 s)."""
    if EXTERNAL_URI:
        yield _parse_external(EXTERNAL_URI)
        return
    config = tmp_path / "shardmq.toml"
    config.write_text(f"[amqp]\nhandshake_timeout = {HANDSHAKE_TIMEOUT}\n")
    port = free_port()
    log_path = tmp_path / "broker.log"
    proc = spawn(serve_args(port, request.param, tmp_path / "data", config), log_path)
    b = Broker("127.0.0.1", port, process=proc, workers=request.param, log_path=log_path)

    def stop() -> None:
        terminate(proc, 10)

    wait_answering(proc, port, b.log_text, stop)
    try:
        yield b
    finally:
        stop()
    assert "Traceback" not in b.log_text()


def _tuned(b: Broker, heartbeat: int) -> raw.RawConnection:
    r = raw.RawConnection(b.host, b.port, timeout=30)
    r.start()
    r.start_ok()
    r.expect(raw.CONNECTION_TUNE)
    r.send(raw.method(0, raw.CONNECTION_TUNE_OK, _TUNE.pack(2047, 131072, heartbeat)))
    return r


def test_silent_after_tune_ok_is_closed_by_handshake_timeout(
    quick_handshake_broker: Broker,
) -> None:
    """Tuned with heartbeat 0 or 60, then silent before connection.open: closed (the
    bound is generous: it proves the close comes, not how fast). An open connection that
    says nothing meanwhile stays."""
    b = quick_handshake_broker
    opened = raw.RawConnection(b.host, b.port)
    conns = [opened]
    try:
        opened.handshake()
        opened.open_channel(1)
        conns += [_tuned(b, hb) for hb in (0, 60)]
        for r in conns[1:]:
            seen = r.assert_eof(timeout=25)
            assert all(f.type == raw.FRAME_HEARTBEAT for f in seen), seen
        opened.send(raw.queue_declare(1, "", exclusive=True))
        opened.expect(raw.QUEUE_DECLARE_OK)
    finally:
        for r in conns:
            r.close()


# --------------------------------------------------------------------------- nested tables


def _nested_arguments(depth: int) -> bytes:
    """queue.declare arguments ``{"x-nest": {"a": {"a": ...}}}``: ``depth`` levels counting
    the arguments table itself, alternating tables and arrays."""
    inner = _LONG.pack(0)
    kind = b"F"
    for level in range(depth - 1, 1, -1):
        if level % 2:
            body = raw.shortstr("a") + kind + inner
            kind = b"F"
        else:
            body = kind + inner
            kind = b"A"
        inner = _LONG.pack(len(body)) + body
    body = raw.shortstr("x-nest") + kind + inner
    return _LONG.pack(len(body)) + body


def _declare_with(channel: int, name: str, arguments: bytes) -> bytes:
    flags = raw.bits(False, False, False, True, False)  # auto-delete
    return raw.method(
        channel, raw.QUEUE_DECLARE, _SHORT.pack(0) + raw.shortstr(name) + flags + arguments
    )


def test_field_table_nesting_up_to_the_limit_works(env: Env) -> None:
    r = env.raw()
    r.handshake()
    r.open_channel(1)
    q = env.queue("nest")
    r.send(_declare_with(1, q, _nested_arguments(MAX_DEPTH)))
    r.expect(raw.QUEUE_DECLARE_OK, channel=1)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 330, 980, 5000])
def test_field_table_nested_too_deep_is_501_with_one_log_line(env: Env, depth: int) -> None:
    if env.broker.external:
        pytest.skip("RabbitMQ has no nesting limit (it accepts 5000 levels); shardmq: 501")
    before = env.broker.log_text()
    clients = 3
    for _ in range(clients):
        r = env.raw()
        r.handshake()
        r.open_channel(1)
        r.send(_declare_with(1, env.queue("nest"), _nested_arguments(depth)))
        close = r.expect_connection_close()
        assert close == raw.Close(
            501, f"FRAME_ERROR - field table nested deeper than {MAX_DEPTH} levels", 0, 0
        )
    assert_serves(env)
    new = env.broker.log_text()[len(before) :]
    assert "Traceback" not in new and "INTERNAL_ERROR" not in new, new
    lines = [ln for ln in new.splitlines() if "nested deeper" in ln]
    assert len(lines) == clients, new
