"""Issue 2, point 7: the basic class (publish/return, consume/cancel, get, ack/nack/reject,
redelivery, recover, qos) with pika's BlockingConnection and a raw socket.

Invariants: deliveries are awaited as events (bounded by a few seconds); where a test checks
that something does NOT happen (qos limits), it first waits for what must happen and then
pumps I/O for a short grace period so an over-delivery would be seen.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from tests.support import rawamqp as raw

from .helpers import Env, channel_error, publish_confirmed, queue_counts, wait_counts, wait_until

pytestmark = pytest.mark.timeout(30)

GRACE = 0.3  # seconds of I/O pumping to catch deliveries that must not happen


@dataclass
class Inbox:
    """Collects deliveries of one or more consumers."""

    items: list[tuple[Basic.Deliver, BasicProperties, bytes]] = field(default_factory=list)

    def __call__(
        self, _ch: BlockingChannel, m: Basic.Deliver, p: BasicProperties, b: bytes
    ) -> None:
        self.items.append((m, p, b))

    @property
    def bodies(self) -> list[bytes]:
        return [b for _m, _p, b in self.items]

    @property
    def tags(self) -> list[int]:
        return [m.delivery_tag for m, _p, _b in self.items]

    def wait(self, conn: pika.BlockingConnection, n: int) -> None:
        wait_until(conn, lambda: len(self.items) >= n, f"{n} deliveries (have {len(self.items)})")


def sync(ch: BlockingChannel) -> None:
    """A synchronous round trip, so an asynchronous error on ``ch`` surfaces here."""
    ch.basic_qos(prefetch_count=0)


def fill(conn: pika.BlockingConnection, env: Env, n: int) -> str:
    q = env.queue()
    conn.channel().queue_declare(q)
    publish_confirmed(conn, "", q, [str(i).encode() for i in range(1, n + 1)])
    return q


def drain(ch: BlockingChannel, queue: str) -> list[tuple[bytes, bool]]:
    out = []
    while True:
        m, _p, b = ch.basic_get(queue, auto_ack=True)
        if m is None:
            return out
        out.append((b, m.redelivered))


# --------------------------------------------------------------------------- publish


def test_mandatory_unroutable_is_returned_312(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    returned: list[tuple[Basic.Return, BasicProperties, bytes]] = []
    ch.add_on_return_callback(lambda _c, m, p, b: returned.append((m, p, b)))
    key = env.queue("nobody")
    props = pika.BasicProperties(content_type="text/plain", message_id="m-1")
    ch.basic_publish("amq.direct", key, b"lost", props, mandatory=True)
    wait_until(conn, lambda: bool(returned), "basic.return")
    m, p, b = returned[0]
    assert m.reply_code == 312
    assert m.reply_text == "NO_ROUTE"
    assert (m.exchange, m.routing_key, b) == ("amq.direct", key, b"lost")
    assert (p.content_type, p.message_id) == ("text/plain", "m-1")


def test_mandatory_in_confirm_mode(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    ch.basic_publish("", q, b"routable", mandatory=True)  # no exception: acked, not returned
    with pytest.raises(pika.exceptions.UnroutableError) as err:
        ch.basic_publish("", env.queue("nobody"), b"unroutable", mandatory=True)
    assert err.value.messages[0].method.reply_code == 312
    ch.basic_publish("", env.queue("nobody"), b"dropped-silently")  # not mandatory: acked
    assert drain(ch, q) == [(b"routable", False)]


def test_publish_to_missing_exchange_is_404_channel_close(env: Env) -> None:
    conn = env.conn()
    x = env.exchange("missing")

    def publish(ch: BlockingChannel) -> None:
        ch.basic_publish(x, "k", b"nowhere")
        sync(ch)

    err = channel_error(conn, publish)
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")
    assert x in err.reply_text


def test_publish_to_missing_exchange_raw_names_method(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.open_channel(2)
    c.send(raw.publish(1, env.exchange("missing"), "k", b"x"))
    close = c.expect_channel_close(1)
    assert (close.reply_code, close.class_id, close.method_id) == (404, 60, 40)
    name, _, _ = c.declare_queue(2, "", exclusive=True)  # channel 2 unaffected
    assert name.startswith("amq.gen-")


def test_immediate_flag_is_not_implemented(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    args = struct.pack(">H", 0) + raw.shortstr("amq.direct") + raw.shortstr("k")
    c.send(
        raw.method(1, raw.BASIC_PUBLISH, args + raw.bits(False, True))
        + raw.content_header(1, 1)
        + raw.body(1, b"x")
    )
    close = c.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (540, 60, 40)
    assert close.reply_text.startswith("NOT_IMPLEMENTED")


# --------------------------------------------------------------------------- consume


def test_server_generated_consumer_tag(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    q, _, _ = c.declare_queue(1, "", exclusive=True)
    tags = set()
    for _ in range(2):
        c.send(raw.basic_consume(1, q, ""))
        tags.add(c.expect(raw.BASIC_CONSUME_OK, channel=1).args().shortstr())
    assert len(tags) == 2
    assert all(t.startswith("amq.ctag-") for t in tags)


def test_reused_consumer_tag_is_530(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    q, _, _ = c.declare_queue(1, "", exclusive=True)
    c.send(raw.basic_consume(1, q, "same-tag"))
    c.expect(raw.BASIC_CONSUME_OK, channel=1)
    c.send(raw.basic_consume(1, q, "same-tag"))
    close = c.expect_connection_close()
    assert (close.reply_code, close.class_id, close.method_id) == (530, 60, 20)
    assert close.reply_text.startswith("NOT_ALLOWED")


def test_consume_missing_queue_is_404(env: Env) -> None:
    conn = env.conn()
    err = channel_error(conn, lambda ch: ch.basic_consume(env.queue("missing"), lambda *a: None))
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")


@pytest.mark.parametrize("exclusive_first", [True, False], ids=["exclusive-first", "shared-first"])
def test_exclusive_consumer_403(env: Env, exclusive_first: bool) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_consume(q, lambda *a: None, exclusive=exclusive_first)
    err = channel_error(
        conn, lambda c: c.basic_consume(q, lambda *a: None, exclusive=not exclusive_first)
    )
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")
    assert queue_counts(ch, q)[1] == 1


def test_no_ack_consumer(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 3)
    ch = conn.channel()
    inbox = Inbox()
    ch.basic_consume(q, inbox, auto_ack=True)
    inbox.wait(conn, 3)
    assert inbox.bodies == [b"1", b"2", b"3"]
    assert all(not m.redelivered for m, _p, _b in inbox.items)
    ch.close()  # nothing is outstanding, so nothing comes back
    assert queue_counts(conn.channel(), q) == (0, 0)


def test_round_robin_among_consumers(env: Env) -> None:
    conn = env.conn()
    q = env.queue()
    conn.channel().queue_declare(q)
    inboxes = [Inbox() for _ in range(3)]
    for inbox in inboxes:
        conn.channel().basic_consume(q, inbox, auto_ack=True)
    publish_confirmed(conn, "", q, [str(i).encode() for i in range(12)])
    wait_until(conn, lambda: sum(len(i.items) for i in inboxes) == 12, "12 deliveries")
    got = sorted(inboxes, key=lambda i: int(i.bodies[0]))
    assert [i.bodies for i in got] == [
        [str(n).encode() for n in range(start, 12, 3)] for start in range(3)
    ]


def test_client_cancel(env: Env) -> None:
    conn = env.conn()
    q = env.queue()
    conn.channel().queue_declare(q)
    ch = conn.channel()
    inbox = Inbox()
    tag = ch.basic_consume(q, inbox, auto_ack=True)
    publish_confirmed(conn, "", q, [b"before"])
    inbox.wait(conn, 1)
    assert ch.basic_cancel(tag) == []
    publish_confirmed(conn, "", q, [b"after"])
    conn.process_data_events(time_limit=GRACE)
    assert inbox.bodies == [b"before"]
    assert queue_counts(conn.channel(), q) == (1, 0)


def test_cancel_unknown_consumer_tag_is_ok(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    c.send(raw.method(1, (60, 30), raw.shortstr("never-existed") + raw.bits(False)))
    ok = c.expect((60, 31), channel=1)
    assert ok.args().shortstr() == "never-existed"


def test_server_cancel_when_queue_deleted_pika(env: Env) -> None:
    conn = env.conn()
    q = env.queue()
    conn.channel().queue_declare(q)
    ch = conn.channel()
    cancelled: list[Basic.Cancel] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method))
    tag = ch.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    wait_until(conn, lambda: bool(cancelled), "server-sent basic.cancel")
    assert cancelled[0].consumer_tag == tag
    assert ch.is_open  # the channel survives; only the consumer is gone
    sync(ch)


def test_server_cancel_when_queue_deleted_raw(env: Env) -> None:
    c = env.raw()
    c.handshake(capabilities={"consumer_cancel_notify": True})
    c.open_channel(1)
    c.open_channel(2)
    q, _, _ = c.declare_queue(1, "", exclusive=True)
    c.send(raw.basic_consume(1, q, "watched"))
    c.expect(raw.BASIC_CONSUME_OK, channel=1)
    c.send(raw.queue_delete(2, q))
    frames = [c.recv_method(), c.recv_method()]  # cancel and delete-ok, in either order
    got = {(f.channel, f.ids): f for f in frames if f is not None}
    assert set(got) == {(1, (60, 30)), (2, raw.QUEUE_DELETE_OK)}
    assert got[(1, (60, 30))].args().shortstr() == "watched"


# --------------------------------------------------------------------------- get


def test_get_reports_remaining_message_count(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 3)
    ch = conn.channel()
    seen = []
    for _ in range(3):
        m, _p, body = ch.basic_get(q, auto_ack=True)
        assert m is not None
        seen.append((body, m.message_count, m.redelivered, m.exchange, m.routing_key))
    assert seen == [
        (b"1", 2, False, "", q),
        (b"2", 1, False, "", q),
        (b"3", 0, False, "", q),
    ]
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)


def test_get_empty_raw(env: Env) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    q, _, _ = c.declare_queue(1, "", exclusive=True)
    c.send(raw.method(1, raw.BASIC_GET, struct.pack(">H", 0) + raw.shortstr(q) + raw.bits(True)))
    f = c.expect(raw.BASIC_GET_EMPTY, channel=1)
    assert f.args().shortstr() == ""  # reserved cluster-id
    c.send(raw.publish(1, "", q, b"one"))
    c.send(raw.method(1, raw.BASIC_GET, struct.pack(">H", 0) + raw.shortstr(q) + raw.bits(True)))
    m, _h, body, _sizes = c.read_message()
    assert m.ids == raw.BASIC_GET_OK and body == b"one"
    r = m.args()
    tag, redelivered, exchange, key, count = (
        r.longlong(),
        r.octet(),
        r.shortstr(),
        r.shortstr(),
        r.long(),
    )
    assert (tag, redelivered, exchange, key, count) == (1, 0, "", q, 0)


def test_get_missing_queue_is_404(env: Env) -> None:
    conn = env.conn()
    err = channel_error(conn, lambda ch: ch.basic_get(env.queue("missing")))
    assert err.reply_code == 404


# --------------------------------------------------------------------------- ack/nack/reject


def test_ack_multiple(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 5)
    ch = conn.channel()
    inbox = Inbox()
    ch.basic_consume(q, inbox)
    inbox.wait(conn, 5)
    assert inbox.tags == [1, 2, 3, 4, 5]
    ch.basic_ack(3, multiple=True)
    ch.close()
    assert drain(conn.channel(), q) == [(b"4", True), (b"5", True)]


def test_nack_multiple_requeue_and_drop(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 5)
    ch = conn.channel()
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]
    ch.basic_nack(2, multiple=True, requeue=True)
    ch.basic_nack(3, multiple=False, requeue=False)
    sync(ch)
    # Requeued messages go back to their original place at the head of the queue.
    assert drain(ch, q) == [(b"1", True), (b"2", True), (b"4", False), (b"5", False)]


@pytest.mark.parametrize("requeue", [True, False])
def test_reject(env: Env, requeue: bool) -> None:
    conn = env.conn()
    q = fill(conn, env, 2)
    ch = conn.channel()
    m, _p, body = ch.basic_get(q)
    assert body == b"1" and not m.redelivered
    ch.basic_reject(m.delivery_tag, requeue=requeue)
    sync(ch)
    expected = [(b"1", True), (b"2", False)] if requeue else [(b"2", False)]
    assert drain(ch, q) == expected


def test_redelivered_flag_on_consumer(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 1)
    ch = conn.channel()
    inbox = Inbox()
    ch.basic_consume(q, inbox)
    inbox.wait(conn, 1)
    assert not inbox.items[0][0].redelivered
    ch.basic_nack(inbox.tags[0], requeue=True)
    inbox.wait(conn, 2)
    m, _p, body = inbox.items[1]
    assert body == b"1" and m.redelivered and m.delivery_tag == 2
    ch.basic_ack(2)


def test_requeue_on_channel_close(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 4)
    ch = conn.channel()
    ch.basic_get(q)
    ch.basic_get(q)
    assert queue_counts(conn.channel(), q) == (2, 0)
    ch.close()
    wait_counts(conn, q, (4, 0))
    assert drain(conn.channel(), q) == [(b"1", True), (b"2", True), (b"3", False), (b"4", False)]


def test_requeue_on_connection_close(env: Env) -> None:
    observer = env.conn()
    q = fill(observer, env, 3)
    consumer_conn = env.conn()
    ch = consumer_conn.channel()
    inbox = Inbox()
    ch.basic_qos(prefetch_count=2)
    ch.basic_consume(q, inbox)
    inbox.wait(consumer_conn, 2)
    consumer_conn.close()
    wait_counts(observer, q, (3, 0))
    assert drain(observer.channel(), q) == [(b"1", True), (b"2", True), (b"3", False)]


def test_recover_requeues_unacked(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 3)
    ch = conn.channel()
    inbox = Inbox()
    ch.basic_consume(q, inbox)
    inbox.wait(conn, 3)
    ch.basic_ack(2)
    ch.basic_recover(requeue=True)
    inbox.wait(conn, 5)
    redelivered = [(b, m.redelivered) for m, _p, b in inbox.items[3:]]
    assert redelivered == [(b"1", True), (b"3", True)]
    ch.basic_ack(inbox.tags[-1], multiple=True)
    sync(ch)
    assert queue_counts(conn.channel(), q) == (0, 1)


def test_recover_without_requeue_is_not_implemented(env: Env) -> None:
    conn = env.conn()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
        conn.channel().basic_recover(requeue=False)
    assert err.value.reply_code == 540
    assert err.value.reply_text.startswith("NOT_IMPLEMENTED")


@pytest.mark.parametrize(
    "misuse",
    [
        lambda ch, tag: ch.basic_ack(tag + 100),
        lambda ch, tag: (ch.basic_ack(tag), ch.basic_ack(tag)),
        lambda ch, tag: ch.basic_ack(tag + 100, multiple=True),
        lambda ch, tag: ch.basic_nack(tag + 100),
        lambda ch, tag: ch.basic_reject(tag + 100),
        lambda ch, tag: (ch.basic_reject(tag, requeue=False), ch.basic_nack(tag)),
        lambda ch, tag: ch.basic_ack(0),
    ],
    ids=[
        "unknown-ack",
        "double-ack",
        "unknown-ack-multiple",
        "unknown-nack",
        "unknown-reject",
        "nack-after-reject",
        "ack-zero-single",
    ],
)
def test_unknown_delivery_tag_is_406(env: Env, misuse: Callable[..., Any]) -> None:
    conn = env.conn()
    q = fill(conn, env, 1)

    def run(ch: BlockingChannel) -> None:
        m, _p, _b = ch.basic_get(q)
        misuse(ch, m.delivery_tag)
        sync(ch)

    err = channel_error(conn, run)
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    assert "unknown delivery tag" in err.reply_text


def test_ack_of_no_ack_delivery_is_406(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 1)

    def run(ch: BlockingChannel) -> None:
        m, _p, _b = ch.basic_get(q, auto_ack=True)
        ch.basic_ack(m.delivery_tag)
        sync(ch)

    assert channel_error(conn, run).reply_code == 406


def test_ack_zero_multiple_acks_everything_outstanding(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 3)
    ch = conn.channel()
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    ch.close()
    assert queue_counts(conn.channel(), q) == (0, 0)


# --------------------------------------------------------------------------- qos


def test_qos_prefetch_limits_and_ack_frees_credit(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 5)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    inbox = Inbox()
    ch.basic_consume(q, inbox)
    inbox.wait(conn, 2)
    conn.process_data_events(time_limit=GRACE)
    assert inbox.bodies == [b"1", b"2"]
    ch.basic_ack(1)
    inbox.wait(conn, 3)
    conn.process_data_events(time_limit=GRACE)
    assert inbox.bodies == [b"1", b"2", b"3"]
    assert queue_counts(conn.channel(), q) == (2, 1)


def test_qos_per_consumer_when_global_false(env: Env) -> None:
    """RabbitMQ: global=false limits each consumer created afterwards separately."""
    conn = env.conn()
    qa, qb = fill(conn, env, 4), fill(conn, env, 4)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2, global_qos=False)
    a, b = Inbox(), Inbox()
    ch.basic_consume(qa, a)
    ch.basic_consume(qb, b)
    wait_until(conn, lambda: len(a.items) + len(b.items) >= 4, "4 deliveries")
    conn.process_data_events(time_limit=GRACE)
    assert (len(a.items), len(b.items)) == (2, 2)
    assert queue_counts(conn.channel(), qa)[0] == 2
    assert queue_counts(conn.channel(), qb)[0] == 2


def test_qos_per_channel_when_global_true(env: Env) -> None:
    """RabbitMQ: global=true shares one limit among all consumers on the channel."""
    conn = env.conn()
    qa, qb = fill(conn, env, 4), fill(conn, env, 4)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3, global_qos=True)
    a, b = Inbox(), Inbox()
    ch.basic_consume(qa, a)
    ch.basic_consume(qb, b)
    wait_until(conn, lambda: len(a.items) + len(b.items) >= 3, "3 deliveries")
    conn.process_data_events(time_limit=GRACE)
    assert len(a.items) + len(b.items) == 3
    ready = queue_counts(conn.channel(), qa)[0] + queue_counts(conn.channel(), qb)[0]
    assert ready == 5
    # Acking one delivery frees exactly one slot on the channel.
    ch.basic_ack(a.tags[0] if a.items else b.tags[0])
    wait_until(conn, lambda: len(a.items) + len(b.items) >= 4, "4th delivery")
    conn.process_data_events(time_limit=GRACE)
    assert len(a.items) + len(b.items) == 4


def test_qos_zero_means_unlimited(env: Env) -> None:
    conn = env.conn()
    q = fill(conn, env, 20)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=0)
    inbox = Inbox()
    ch.basic_consume(q, inbox)
    inbox.wait(conn, 20)
    assert inbox.tags == list(range(1, 21))


def test_qos_prefetch_size_is_not_implemented(env: Env) -> None:
    conn = env.conn()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
        conn.channel().basic_qos(prefetch_size=1000)
    assert err.value.reply_code == 540
    assert err.value.reply_text.startswith("NOT_IMPLEMENTED")
