"""Message TTL (``x-message-ttl``, the ``expiration`` property) and queue expiry
(``x-expires``), as RabbitMQ 3.10 behaves: expired messages are never delivered, are
removed without a consumer (timer), dead-lettered with reason ``expired``; bad values
get RabbitMQ's 406 texts.

Invariants: no timing assertions: TTLs are either far in the future (must still be
there) or short and awaited with a bounded poll (must be gone / dead-lettered).
"""

from __future__ import annotations

import time

import pika
import pytest

from .conftest import Broker
from .helpers import WAIT, Env, channel_error, queue_counts, queue_exists

pytestmark = pytest.mark.timeout(60)


def _wait_count(ch: pika.adapters.blocking_connection.BlockingChannel, q: str, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while queue_counts(ch, q)[0] != n:
        assert time.monotonic() < deadline, f"{q}: {queue_counts(ch, q)[0]} messages, want {n}"
        time.sleep(0.02)


def _get(ch: pika.adapters.blocking_connection.BlockingChannel, q: str) -> tuple:
    deadline = time.monotonic() + WAIT
    while True:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is not None:
            return m, p, b
        assert time.monotonic() < deadline, f"nothing arrived in {q}"
        time.sleep(0.02)


def test_queue_ttl_expires_without_consumer(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
    _wait_count(ch, q, 0)  # the timer removed them: nobody asked
    m, _p, _b = ch.basic_get(q, auto_ack=True)
    assert m is None


def test_long_ttl_kept_and_delivered(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 600_000})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"keep", pika.BasicProperties(expiration="600000"))
    m, p, b = _get(ch, q)
    assert b == b"keep" and p.expiration == "600000"


def test_per_message_expiration_and_dead_letter(env: Env) -> None:
    ch = env.channel()
    q, dead, dlx = env.queue(), env.queue("dead"), env.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="50", headers={"h": 1}))
    m, p, b = _get(ch, dead)
    assert b == b"short"
    assert m.exchange == dlx and m.routing_key == q
    assert p.expiration is None  # removed, kept as original-expiration
    h = p.headers
    assert h["h"] == 1
    (death,) = h["x-death"]
    assert death["reason"] == "expired" and death["queue"] == q and death["count"] == 1
    assert death["exchange"] == "" and death["routing-keys"] == [q]
    assert death["original-expiration"] == "50"
    assert h["x-first-death-reason"] == "expired"
    assert h["x-first-death-queue"] == q
    assert h["x-first-death-exchange"] == ""


def test_ttl_zero_expires_unless_a_consumer_waits(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 0})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"gone")
    _wait_count(ch, q, 0)
    got: list[bytes] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"now")
    deadline = time.monotonic() + WAIT
    while not got:
        assert time.monotonic() < deadline
        ch.connection.process_data_events(time_limit=0.05)
    assert got == [b"now"]


def test_expired_message_never_delivered_to_late_consumer(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"old")
    time.sleep(0.3)  # past the TTL (not a timing assertion: it only makes it expire)
    got: list[bytes] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"fresh")
    deadline = time.monotonic() + WAIT
    while not got:
        assert time.monotonic() < deadline
        ch.connection.process_data_events(time_limit=0.05)
    ch.connection.process_data_events(time_limit=0.2)
    assert got == [b"fresh"]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (
            {"x-message-ttl": -1},
            "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_negative,-1}}",
        ),
        (
            {"x-message-ttl": "abc"},
            "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': "
            '"expected integer, got longstr"',
        ),
        (
            {"x-expires": 0},
            "invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}",
        ),
        (
            {"x-max-length": -1},
            "invalid arg 'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-1}}",
        ),
        (
            {"x-overflow": "bogus"},
            "invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow",
        ),
        (
            {"x-dead-letter-routing-key": "rk"},
            "invalid arg 'x-dead-letter-routing-key' for "
            "queue '{q}' in vhost '/': routing_key_but_no_dlx_defined",
        ),
        (
            {"x-dead-letter-exchange": 5},
            "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'",
        ),
    ],
)
def test_invalid_arguments_406(env: Env, args: dict, text: str) -> None:
    conn = env.conn()
    q = env.queue()
    err = channel_error(conn, lambda ch: ch.queue_declare(q, arguments=args))
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - " + text.format(q=q)
    assert not queue_exists(conn, q)


@pytest.mark.parametrize(
    ("exp", "detail"),
    [("abc", "no_integer"), ("-1", "{value_negative,-1}"), ("1.5", '{leftover_string,".5"}')],
)
def test_invalid_expiration_406(env: Env, exp: str, detail: str) -> None:
    conn = env.conn()
    q = env.queue()
    conn.channel().queue_declare(q)

    def publish(ch: pika.adapters.blocking_connection.BlockingChannel) -> None:
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=exp))
        ch.queue_declare(q, passive=True)  # a round trip: the close arrives before

    err = channel_error(conn, publish)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - invalid expiration '{exp}': {detail}"


def _wait_expired(conn: pika.BlockingConnection, q: str) -> None:
    """Poll less often than the expiry period: a passive declare is a use (RabbitMQ
    restarts the period), so each poll leaves the queue a whole period unused."""
    deadline = time.monotonic() + WAIT
    while queue_exists(conn, q):
        assert time.monotonic() < deadline, f"{q} did not expire"
        time.sleep(0.4)


def test_queue_expires_when_unused(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-expires": 200})
    _wait_expired(conn, q)


def test_queue_with_consumer_does_not_expire(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-expires": 100})
    ch.basic_consume(q, lambda *a: None, auto_ack=True)
    conn.process_data_events(time_limit=0.5)  # several periods with a consumer
    assert queue_exists(conn, q)
    ch.close()  # consumer gone: it expires now
    _wait_expired(conn, q)


def test_queue_ttl_with_kombu(broker: Broker, env: Env) -> None:
    kombu = pytest.importorskip("kombu")
    q = env.queue()
    with kombu.Connection(broker.uri) as c:
        queue = kombu.Queue(q, routing_key=q, queue_arguments={"x-message-ttl": 60_000})
        with c.Producer() as p:
            p.publish({"a": 1}, routing_key=q, declare=[queue], expiration=0.05)
            p.publish({"b": 2}, routing_key=q, declare=[queue])
        time.sleep(0.2)  # past the first one's TTL (it only makes it expire)
        simple = c.SimpleQueue(queue)
        msg = simple.get(timeout=WAIT)
        assert msg.payload == {"b": 2}  # the first expired at the head
        msg.ack()
        simple.close()
