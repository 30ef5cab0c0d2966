"""Restarts with real clients (pika): what comes back after SIGTERM and after kill -9.

Durable exchanges, queues and bindings come back, transient and exclusive ones do not;
persistent messages on durable queues come back in order, byte-identical, delivered-
unacked ones flagged redelivered, acked ones gone; transient messages never come back.
"""

from __future__ import annotations

import decimal
import os
from typing import Any

import pika
import pika.exceptions
import pytest

from .conftest import DurableBroker

BIG = os.urandom(300_000)  # spans several body frames (frame_max 128 KiB)


def _props(i: int) -> pika.BasicProperties:
    return pika.BasicProperties(
        delivery_mode=2,
        content_type="application/x-test",
        content_encoding="identity",
        headers={"i": i, "nested": {"d": decimal.Decimal("1.25"), "l": [1, "two"]}},
        priority=i % 10,
        correlation_id=f"corr-{i}",
        reply_to="nowhere",
        expiration=None,
        message_id=f"id-{i}",
        timestamp=1_700_000_000 + i,
        type="t",
        app_id="durability-test",
    )


def _body(i: int) -> bytes:
    return BIG if i == 3 else b"body-%d-" % i + bytes(range(256)) * (i % 4)


def _declare(ch: Any) -> None:
    ch.exchange_declare("dx", "topic", durable=True, arguments={"alternate-exchange": "ae"})
    ch.exchange_declare("dx2", "fanout", durable=True)
    ch.exchange_declare("tx", "direct", durable=False)
    ch.queue_declare("dq", durable=True, arguments={"x-custom": 7})
    ch.queue_declare("tq", durable=False)
    ch.queue_declare("dq-excl", durable=True, exclusive=True)
    ch.queue_bind("dq", "dx", "a.#")
    ch.exchange_bind("dx2", "dx", "b.*")  # exchange -> exchange, both durable
    ch.queue_bind("dq", "dx2", "")
    ch.queue_bind("tq", "dx", "a.#")  # to a transient queue: not durable
    ch.queue_bind("dq", "tx", "k")  # from a transient exchange: not durable
    ch.queue_bind("dq", "amq.direct", "via-amq")


def _passive_exists(conn: pika.BlockingConnection, kind: str, name: str) -> bool:
    ch = conn.channel()
    try:
        if kind == "queue":
            ch.queue_declare(name, passive=True)
        else:
            ch.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    ch.close()
    return True


def _drain(ch: Any, queue: str) -> list[tuple[bool, Any, bytes]]:
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method.redelivered, props, body))


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
def test_definitions_survive_restart(durable: DurableBroker, kill: bool) -> None:
    conn = durable.connect()
    ch = conn.channel()
    _declare(ch)
    ch.queue_declare("gone", durable=True)
    # a queue directory is made with the first persistent message: one for each kind
    ch.confirm_delivery()
    for queue in ("dq", "tq", "dq-excl", "gone"):
        ch.basic_publish("", queue, b"x", pika.BasicProperties(delivery_mode=2))
        assert ch.basic_get(queue, auto_ack=True)[2] == b"x"
    ch.queue_delete("gone")
    before = durable.queue_dirs()
    assert len(before) == 1  # dq only: transient, exclusive and deleted queues have none
    if not kill:
        conn.close()
    durable.restart(kill=kill)

    conn = durable.connect()
    for name, there in [("dx", True), ("dx2", True), ("tx", False)]:
        assert _passive_exists(conn, "exchange", name) is there, name
    for name, there in [("dq", True), ("tq", False), ("dq-excl", False), ("gone", False)]:
        assert _passive_exists(conn, "queue", name) is there, name
    ch = conn.channel()
    # the attributes are back: an equivalent re-declare is fine, a different one is not
    ch.exchange_declare("dx", "topic", durable=True, arguments={"alternate-exchange": "ae"})
    ch.queue_declare("dq", durable=True, arguments={"x-custom": 7})
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.exchange_declare("dx", "direct", durable=True)
    assert err.value.reply_code == 406
    ch = conn.channel()
    ch.confirm_delivery()
    # durable bindings route again; the transient exchange's binding is gone with it
    for ex, rk, tag in [
        ("dx", "a.x", b"direct"),
        ("dx", "b.y", b"e2e"),
        ("amq.direct", "via-amq", b"amq"),
    ]:
        ch.basic_publish(ex, rk, tag, pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("dx", "c.z", b"unrouted")
    assert [b for _, _, b in _drain(ch, "dq")] == [b"direct", b"e2e", b"amq"]
    assert durable.queue_dirs(deleted=True) == before  # leftovers swept at start-up
    conn.close()


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
def test_messages_survive_restart(durable: DurableBroker, kill: bool) -> None:
    conn = durable.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("dq", durable=True)
    ch.queue_declare("tq", durable=False)
    sent = {}
    for i in range(12):
        p = _props(i)
        ch.basic_publish("", "dq", _body(i), p, mandatory=True)
        sent[i] = (p, _body(i))
        # transient messages, interleaved, on both queues
        ch.basic_publish("", "dq", b"transient-%d" % i, pika.BasicProperties(delivery_mode=1))
        ch.basic_publish("", "tq", b"transient-%d" % i, pika.BasicProperties(delivery_mode=2))
    # the queue holds p0 t0 p1 t1 p2 t2 p3 t3 ... (p = persistent, t = transient):
    # take 8, ack p0 t0 t1 t2 p3, keep p1 p2 t3 unacked
    got = []
    for _ in range(8):
        method, props, body = ch.basic_get("dq")
        got.append((method.delivery_tag, props.headers, body))
    ch.basic_ack(got[0][0])
    ch.basic_ack(got[1][0])
    ch.basic_ack(got[3][0])
    ch.basic_ack(got[5][0])
    ch.basic_ack(got[6][0])
    assert got[2][2] == _body(1) and got[4][2] == _body(2) and got[6][2] == BIG
    # make sure every ack reached the broker before it dies: a round trip after them
    ch.queue_declare("dq", passive=True)
    if not kill:
        conn.close()  # the unacked ones go back to the queue as redelivered
    durable.restart(kill=kill)

    conn = durable.connect()
    ch = conn.channel()
    back = _drain(ch, "dq")
    # expected: persistent messages not acked, in publish order; delivered ones redelivered
    expect = [i for i in range(12) if i not in (0, 3)]
    assert [p.headers["i"] for _, p, _ in back] == expect
    for (redelivered, props, body), i in zip(back, expect, strict=True):
        want_props, want_body = sent[i]
        assert body == want_body
        assert redelivered == (i in (1, 2)), i
        for attr in (
            "delivery_mode",
            "content_type",
            "content_encoding",
            "headers",
            "priority",
            "correlation_id",
            "reply_to",
            "message_id",
            "timestamp",
            "type",
            "app_id",
        ):
            assert getattr(props, attr) == getattr(want_props, attr), attr
    assert not _passive_exists(conn, "queue", "tq")
    conn.close()


def test_each_worker_keeps_its_queues(make_durable: Any) -> None:
    """Three workers: publishes cross workers to the queues' owners, whose stores confirm
    only what they stored; after kill -9 the supervisor restores the definitions and
    each owner recovers its queues' messages."""
    broker = make_durable(workers=3)
    names = [f"wq-{i}" for i in range(6)]
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for name in names:
        ch.queue_declare(name, durable=True)
    for n in range(10):
        for name in names:
            body = f"{name}:{n}".encode()
            ch.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    dirs = broker.queue_dirs()
    assert len(dirs) == len(names)
    broker.restart(kill=True)
    conn = broker.connect()
    ch = conn.channel()
    for name in names:
        ch.queue_declare(name, passive=True)  # restored by the supervisor's sequencer
        bodies = [b for _, _, b in _drain(ch, name)]
        assert bodies == [f"{name}:{n}".encode() for n in range(10)], name
    conn.close()
