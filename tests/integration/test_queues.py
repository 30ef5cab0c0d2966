"""Issue 2, point 6: queues (declare flags, server-named, equivalence, exclusivity,
auto-delete, bind/unbind, purge, delete with if-unused/if-empty, message/consumer counts).

Invariants: counts are read only after the events they depend on were observed by a client
(confirms for publishes, deliveries for consumers); deletions that RabbitMQ performs
asynchronously (exclusive owner gone, auto-delete) are awaited with a bounded poll.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from .helpers import (
    Env,
    channel_error,
    publish_confirmed,
    queue_counts,
    queue_exists,
    wait_queue_gone,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- declare


def test_declare_ok_and_passive(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = env.queue()
    ok = ch.queue_declare(q).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 0, 0)
    publish_confirmed(conn, "", q, [b"a", b"b"])
    ok = ch.queue_declare(q, passive=True).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 2, 0)
    ok = ch.queue_declare(q).method  # a non-passive redeclare reports counts too
    assert ok.message_count == 2


def test_passive_declare_of_missing_queue_is_404(env: Env) -> None:
    conn = env.conn()
    err = channel_error(conn, lambda ch: ch.queue_declare(env.queue("missing"), passive=True))
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")


def test_passive_declare_ignores_flags(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q)
    ch.queue_declare(q, passive=True, durable=True, auto_delete=True)


def test_server_named_queues(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    names = {ch.queue_declare("", exclusive=True).method.queue for _ in range(3)}
    assert len(names) == 3
    assert all(n.startswith("amq.gen-") for n in names)
    q = sorted(names)[0]
    ch.basic_publish("", q, b"to-generated")
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None and body == b"to-generated"


def test_amq_prefix_queue_is_reserved(env: Env) -> None:
    conn = env.conn()
    name = "amq." + env.queue()
    err = channel_error(conn, lambda ch: ch.queue_declare(name))
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")


def test_durable_flag_kept(env: Env) -> None:
    conn = env.conn()
    q = env.queue("durable")
    conn.channel().queue_declare(q, durable=True)
    conn.channel().queue_declare(q, durable=True)
    err = channel_error(conn, lambda ch: ch.queue_declare(q, durable=False))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")


_TTL = {"x-message-ttl": 60000}


@pytest.mark.parametrize(
    "change",
    [
        {"durable": True},
        {"auto_delete": True},
        {"arguments": {"x-message-ttl": 1000}},
        {"arguments": {}},
        {"arguments": {**_TTL, "x-max-length": 5}},
    ],
    ids=["durable", "auto_delete", "different-x-arg", "missing-x-arg", "extra-x-arg"],
)
def test_declare_equivalence_406(env: Env, change: dict[str, Any]) -> None:
    conn = env.conn()
    q = env.queue("eq")
    conn.channel().queue_declare(q, arguments=_TTL)
    err = channel_error(conn, lambda ch: ch.queue_declare(q, **{"arguments": _TTL, **change}))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")


def test_declare_equivalence_ignores_non_x_arguments(env: Env) -> None:
    ch = env.channel()
    q = env.queue("eq")
    ch.queue_declare(q, arguments=_TTL)
    ch.queue_declare(q, arguments={**_TTL, "custom": 5})


def test_declare_exclusive_over_shared_queue_is_405(env: Env) -> None:
    conn = env.conn()
    q = env.queue()
    conn.channel().queue_declare(q)
    err = channel_error(conn, lambda ch: ch.queue_declare(q, exclusive=True))
    assert err.reply_code == 405
    assert err.reply_text.startswith("RESOURCE_LOCKED")


# --------------------------------------------------------------------------- exclusive


@pytest.mark.parametrize(
    "op",
    [
        lambda ch, q: ch.queue_declare(q, exclusive=True),
        lambda ch, q: ch.queue_declare(q),
        lambda ch, q: ch.queue_declare(q, passive=True),
        lambda ch, q: ch.basic_consume(q, lambda *a: None),
        lambda ch, q: ch.basic_get(q),
        lambda ch, q: ch.queue_bind(q, "amq.fanout"),
        lambda ch, q: ch.queue_purge(q),
        lambda ch, q: ch.queue_delete(q),
    ],
    ids=["declare", "declare-shared", "passive", "consume", "get", "bind", "purge", "delete"],
)
def test_exclusive_queue_locked_to_its_connection(env: Env, op: Callable[..., Any]) -> None:
    owner, other = env.conn(), env.conn()
    q = env.queue("excl")
    owner.channel().queue_declare(q, exclusive=True)
    err = channel_error(other, lambda ch: op(ch, q))
    assert err.reply_code == 405
    assert err.reply_text.startswith("RESOURCE_LOCKED")
    # The owner still has full use of it.
    ch = owner.channel()
    ch.queue_declare(q, passive=True)
    ch.queue_bind(q, "amq.fanout")
    ch.queue_unbind(q, "amq.fanout")


def test_other_connection_may_publish_to_exclusive_queue(env: Env) -> None:
    owner, other = env.conn(), env.conn()
    ch = owner.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_confirmed(other, "", q, [b"from-other"])
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None and body == b"from-other"


def test_exclusive_queue_deleted_with_its_connection(env: Env) -> None:
    owner, observer = env.conn(), env.conn()
    q = env.queue("excl")
    owner.channel().queue_declare(q, exclusive=True)
    assert queue_exists(owner, q)
    owner.close()
    wait_queue_gone(observer, q)
    observer.channel().queue_declare(q)  # the name is free again


def test_exclusive_queue_survives_channel_close(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.close()
    assert queue_exists(conn, q)


# --------------------------------------------------------------------------- auto-delete


def _end_by_cancel(conn: pika.BlockingConnection, ch: BlockingChannel, tag: str) -> None:
    ch.basic_cancel(tag)


def _end_by_channel_close(conn: pika.BlockingConnection, ch: BlockingChannel, tag: str) -> None:
    ch.close()


def _end_by_connection_close(conn: pika.BlockingConnection, ch: BlockingChannel, tag: str) -> None:
    conn.close()


@pytest.mark.parametrize(
    "end_consumer",
    [_end_by_cancel, _end_by_channel_close, _end_by_connection_close],
    ids=["cancel", "channel-close", "connection-close"],
)
def test_auto_delete_after_last_consumer_leaves(
    env: Env, end_consumer: Callable[[pika.BlockingConnection, BlockingChannel, str], None]
) -> None:
    observer = env.conn()
    q = env.queue("ad")
    observer.channel().queue_declare(q, auto_delete=True)
    publish_confirmed(observer, "", q, [b"x"])
    assert queue_exists(observer, q), "auto-delete queue without consumers must stay"
    conn = env.conn()
    ch1, ch2 = conn.channel(), conn.channel()
    tag1 = ch1.basic_consume(q, lambda *a: None)
    tag2 = ch2.basic_consume(q, lambda *a: None)
    ch1.basic_cancel(tag1)
    assert queue_counts(observer.channel(), q)[1] == 1  # one consumer left: still there
    end_consumer(conn, ch2, tag2)
    wait_queue_gone(observer, q)


# --------------------------------------------------------------------------- bind/unbind


def test_bind_and_unbind(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.direct", f"{q}.a")
    ch.queue_bind(q, "amq.direct", f"{q}.b")
    publish_confirmed(conn, "amq.direct", f"{q}.a", [b"a1"])
    publish_confirmed(conn, "amq.direct", f"{q}.b", [b"b1"])
    ch.queue_unbind(q, "amq.direct", f"{q}.a")
    publish_confirmed(conn, "amq.direct", f"{q}.a", [b"a2"])
    publish_confirmed(conn, "amq.direct", f"{q}.b", [b"b2"])
    bodies = []
    while (got := ch.basic_get(q, auto_ack=True))[0] is not None:
        bodies.append(got[2])
    assert bodies == [b"a1", b"b1", b"b2"]


def test_unbind_of_missing_binding_is_ok(env: Env) -> None:
    ch = env.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_unbind(q, "amq.direct", "never-bound")
    ch.queue_declare(q, passive=True)


# --------------------------------------------------------------------------- purge/delete


def test_purge_returns_count_and_leaves_unacked(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_confirmed(conn, "", q, [b"1", b"2", b"3", b"4"])
    held, _props, body = ch.basic_get(q, auto_ack=False)
    assert held is not None and body == b"1"
    assert ch.queue_purge(q).method.message_count == 3
    assert ch.queue_purge(q).method.message_count == 0
    ch.basic_reject(held.delivery_tag, requeue=True)
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None and body == b"1" and method.redelivered


def test_delete_reports_message_count(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = env.queue()
    ch.queue_declare(q)
    publish_confirmed(conn, "", q, [b"1", b"2"])
    assert ch.queue_delete(q).method.message_count == 2
    assert not queue_exists(conn, q)


def test_delete_missing_queue_is_ok(env: Env) -> None:
    ok = env.channel().queue_delete(env.queue("never-declared")).method
    assert ok.message_count == 0


def test_delete_if_unused(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = env.queue()
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None)
    err = channel_error(conn, lambda c: c.queue_delete(q, if_unused=True))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    ch.basic_cancel(tag)
    ch.queue_delete(q, if_unused=True)
    assert not queue_exists(conn, q)


def test_delete_if_empty(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = env.queue()
    ch.queue_declare(q)
    publish_confirmed(conn, "", q, [b"1"])
    err = channel_error(conn, lambda c: c.queue_delete(q, if_empty=True))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    ch.queue_purge(q)
    assert ch.queue_delete(q, if_empty=True).method.message_count == 0
    assert not queue_exists(conn, q)


# --------------------------------------------------------------------------- counts


def test_message_and_consumer_counts(env: Env) -> None:
    conn = env.conn()
    observer = conn.channel()
    q = env.queue()
    observer.queue_declare(q)
    publish_confirmed(conn, "", q, [b"1", b"2", b"3"])
    assert queue_counts(observer, q) == (3, 0)

    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=1)
    delivered: list[int] = []
    consumer.basic_consume(q, lambda ch, m, p, b: delivered.append(m.delivery_tag))
    wait_until(conn, lambda: len(delivered) >= 1, "first delivery")
    # One message is unacked at the consumer: message_count counts ready messages only.
    assert queue_counts(observer, q) == (2, 1)
    consumer.basic_ack(delivered[0])
    wait_until(conn, lambda: len(delivered) >= 2, "second delivery")
    assert queue_counts(observer, q) == (1, 1)
    consumer.close()
    # Closing the channel requeues its unacked message.
    assert queue_counts(observer, q) == (2, 0)
