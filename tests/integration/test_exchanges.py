"""Issue 2, point 5: exchanges (all types, default and amq.* exchanges, declare flags,
equivalence, reserved names, delete if-unused, exchange-to-exchange bindings, auto-delete,
internal exchanges), driven with pika's BlockingConnection.

Invariants: routing is checked by draining each queue after confirmed publishes, so a
missing or duplicated copy fails the test; every expected outcome was observed on RabbitMQ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from .helpers import Env, channel_error, publish_confirmed

pytestmark = pytest.mark.timeout(30)

BUILTIN = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
}


def drain(ch: BlockingChannel, queue: str) -> list[bytes]:
    """Every ready message of ``queue`` (basic.get until get-empty), acked."""
    out: list[bytes] = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def exq(ch: BlockingChannel) -> str:
    return ch.queue_declare("", exclusive=True).method.queue


# --------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_exchange_exists(env: Env, name: str) -> None:
    ch = env.channel()
    ch.exchange_declare(name, passive=True)
    ch.exchange_declare(name, BUILTIN[name], durable=True)  # equivalent redeclare is fine


def test_builtin_exchanges_route(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = exq(ch)
    ch.queue_bind(q, "amq.direct", "k")
    ch.queue_bind(q, "amq.topic", "t.#")
    ch.queue_bind(q, "amq.headers", arguments={"h": "v"})
    publish_confirmed(conn, "amq.direct", "k", [b"direct"])
    publish_confirmed(conn, "amq.direct", "other", [b"nope"])
    publish_confirmed(conn, "amq.topic", "t.a.b", [b"topic"])
    publish_confirmed(
        conn, "amq.headers", "", [b"headers"], pika.BasicProperties(headers={"h": "v"})
    )
    assert drain(ch, q) == [b"direct", b"topic", b"headers"]


def test_default_exchange_routes_by_queue_name(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q1, q2 = env.queue(), env.queue()
    ch.queue_declare(q1)
    ch.queue_declare(q2)
    publish_confirmed(conn, "", q1, [b"to-q1"])
    publish_confirmed(conn, "", q2, [b"to-q2"])
    publish_confirmed(conn, "", env.queue("nobody"), [b"dropped"])
    assert drain(ch, q1) == [b"to-q1"]
    assert drain(ch, q2) == [b"to-q2"]


@pytest.mark.parametrize(
    "op",
    [
        lambda ch, q: ch.queue_bind(q, "", routing_key="anything"),
        lambda ch, q: ch.queue_unbind(q, "", routing_key=q),
        lambda ch, q: ch.exchange_delete(""),
        lambda ch, q: ch.exchange_declare("", "direct"),
    ],
    ids=["bind", "unbind", "delete", "declare"],
)
def test_default_exchange_is_not_modifiable(env: Env, op: Callable[..., Any]) -> None:
    conn = env.conn()
    q = exq(conn.channel())
    err = channel_error(conn, lambda ch: op(ch, q))
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")


# --------------------------------------------------------------------------- declare


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_declare_each_type_and_passive(env: Env, kind: str) -> None:
    ch = env.channel()
    x = env.exchange(kind)
    ch.exchange_declare(x, kind)
    ch.exchange_declare(x, passive=True)
    ch.exchange_declare(x, kind)  # idempotent


def test_passive_declare_of_missing_exchange_is_404(env: Env) -> None:
    conn = env.conn()
    x = env.exchange("missing")
    err = channel_error(conn, lambda ch: ch.exchange_declare(x, passive=True))
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")


def test_passive_declare_ignores_type(env: Env) -> None:
    ch = env.channel()
    x = env.exchange()
    ch.exchange_declare(x, "fanout")
    ch.exchange_declare(x, "direct", passive=True)


def test_unknown_exchange_type_is_503_connection_error(env: Env) -> None:
    conn = env.conn()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
        conn.channel().exchange_declare(env.exchange(), "no-such-type")
    assert err.value.reply_code == 503
    assert err.value.reply_text.startswith("COMMAND_INVALID")


_BASE: dict[str, Any] = {"exchange_type": "headers", "durable": False, "auto_delete": True}


@pytest.mark.parametrize(
    "change",
    [
        {"exchange_type": "direct"},
        {"durable": True},
        {"auto_delete": False},
        {"internal": True},
        {"arguments": {"alternate-exchange": "elsewhere"}},
    ],
    ids=["type", "durable", "auto_delete", "internal", "arguments"],
)
def test_declare_equivalence_406(env: Env, change: dict[str, Any]) -> None:
    conn = env.conn()
    x = env.exchange("eq")
    ch = conn.channel()
    ch.exchange_declare(x, **_BASE)
    ch.queue_bind(exq(ch), x, arguments={"k": "v"})  # keep the auto-delete exchange alive
    err = channel_error(conn, lambda c: c.exchange_declare(x, **{**_BASE, **change}))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    conn.channel().exchange_declare(x, **_BASE)  # the original still stands, unchanged


def test_durable_exchange_flag_kept(env: Env) -> None:
    conn = env.conn()
    x = env.exchange("durable")
    conn.channel().exchange_declare(x, "topic", durable=True)
    conn.channel().exchange_declare(x, "topic", durable=True)
    err = channel_error(conn, lambda c: c.exchange_declare(x, "topic", durable=False))
    assert err.reply_code == 406


def test_amq_prefix_is_reserved(env: Env) -> None:
    conn = env.conn()
    name = "amq." + env.exchange("reserved")
    err = channel_error(conn, lambda ch: ch.exchange_declare(name, "direct"))
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")
    err = channel_error(conn, lambda ch: ch.exchange_declare(name, passive=True))
    assert err.reply_code == 404


def test_builtin_exchange_cannot_be_deleted(env: Env) -> None:
    conn = env.conn()
    err = channel_error(conn, lambda ch: ch.exchange_delete("amq.direct"))
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")
    conn.channel().exchange_declare("amq.direct", passive=True)


# --------------------------------------------------------------------------- delete


def test_delete_if_unused(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange()
    ch.exchange_declare(x, "direct")
    q = exq(ch)
    ch.queue_bind(q, x, "k")
    err = channel_error(conn, lambda c: c.exchange_delete(x, if_unused=True))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    ch.exchange_declare(x, passive=True)
    ch.queue_unbind(q, x, "k")
    ch.exchange_delete(x, if_unused=True)
    err = channel_error(conn, lambda c: c.exchange_declare(x, passive=True))
    assert err.reply_code == 404


def test_delete_if_unused_counts_exchange_bindings_from_source(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    src, dst = env.exchange("src"), env.exchange("dst")
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src)
    err = channel_error(conn, lambda c: c.exchange_delete(src, if_unused=True))
    assert err.reply_code == 406
    # Being only the destination of a binding does not make an exchange "used".
    conn.channel().exchange_delete(dst, if_unused=True)
    conn.channel().exchange_delete(src, if_unused=True)


def test_delete_missing_exchange_is_ok(env: Env) -> None:
    env.channel().exchange_delete(env.exchange("never-declared"))


def test_delete_removes_bindings(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange()
    ch.exchange_declare(x, "fanout")
    q = exq(ch)
    ch.queue_bind(q, x)
    ch.exchange_delete(x)
    ch.exchange_declare(x, "fanout")
    publish_confirmed(conn, x, "", [b"after-recreate"])
    assert drain(ch, q) == []


# --------------------------------------------------------------------------- routing


def test_direct_routing(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange()
    ch.exchange_declare(x, "direct")
    qa, qb, qab = exq(ch), exq(ch), exq(ch)
    ch.queue_bind(qa, x, "a")
    ch.queue_bind(qb, x, "b")
    ch.queue_bind(qab, x, "a")
    ch.queue_bind(qab, x, "b")
    ch.queue_bind(qab, x, "a")  # duplicate binding is idempotent
    publish_confirmed(conn, x, "a", [b"1"])
    publish_confirmed(conn, x, "b", [b"2"])
    publish_confirmed(conn, x, "c", [b"3"])
    assert drain(ch, qa) == [b"1"]
    assert drain(ch, qb) == [b"2"]
    assert drain(ch, qab) == [b"1", b"2"]  # one copy per queue, however many bindings match


def test_fanout_routing_ignores_key(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange()
    ch.exchange_declare(x, "fanout")
    qs = [exq(ch) for _ in range(3)]
    for i, q in enumerate(qs):
        ch.queue_bind(q, x, f"key{i}")
    publish_confirmed(conn, x, "whatever", [b"m1", b"m2"])
    for q in qs:
        assert drain(ch, q) == [b"m1", b"m2"]


TOPIC_KEYS = [
    "quick.orange.rabbit",
    "lazy.orange.elephant",
    "quick.orange.fox",
    "lazy.brown.fox",
    "lazy",
    "lazy.pink.rabbit",
    "quick.orange.male.rabbit",
    "ohio",
    "us.ohio",
    "us.east.ohio",
    "ohio.us",
    "a.b",
    "a.x.b",
    "a.x.y.b",
    "a",
    "exact.key",
]
TOPIC_EXPECTED = {
    "*.orange.*": ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"],
    "*.*.rabbit": ["quick.orange.rabbit", "lazy.pink.rabbit"],
    "lazy.#": ["lazy.orange.elephant", "lazy.brown.fox", "lazy", "lazy.pink.rabbit"],
    "#": TOPIC_KEYS,
    "#.ohio": ["ohio", "us.ohio", "us.east.ohio"],
    "*.ohio": ["us.ohio"],
    "a.#.b": ["a.b", "a.x.b", "a.x.y.b"],
    "a.*.#": ["a.b", "a.x.b", "a.x.y.b"],
    "#.b.#": ["a.b", "a.x.b", "a.x.y.b"],
    "#.#": TOPIC_KEYS,
    "*": ["lazy", "ohio", "a"],
    "*.*": ["us.ohio", "ohio.us", "a.b", "exact.key"],
    "exact.key": ["exact.key"],
    "quick.#.rabbit": ["quick.orange.rabbit", "quick.orange.male.rabbit"],
}


def test_topic_routing_table(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange("topic")
    ch.exchange_declare(x, "topic")
    queues = {}
    for pattern in TOPIC_EXPECTED:
        queues[pattern] = exq(ch)
        ch.queue_bind(queues[pattern], x, pattern)
    pub = conn.channel()
    pub.confirm_delivery()
    for key in TOPIC_KEYS:
        pub.basic_publish(x, key, key.encode())
    got = {p: sorted(b.decode() for b in drain(ch, q)) for p, q in queues.items()}
    assert got == {p: sorted(keys) for p, keys in TOPIC_EXPECTED.items()}


EDGE_KEYS = ["", "a..b", ".b", "a.", "."]
EDGE_EXPECTED = {  # "" has no words; "a." is the two words "a" and ""
    "#": EDGE_KEYS,
    "*": [],
    "": [""],
    "a.*.b": ["a..b"],
    "a.#": ["a..b", "a."],
    "#.b": ["a..b", ".b"],
    "*.b": [".b"],
    "a.*": ["a."],
    "*.*": [".b", "a.", "."],
}


def test_topic_empty_words(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange("topic-edge")
    ch.exchange_declare(x, "topic")
    queues = {}
    for pattern in EDGE_EXPECTED:
        queues[pattern] = exq(ch)
        ch.queue_bind(queues[pattern], x, pattern)
    pub = conn.channel()
    pub.confirm_delivery()
    for key in EDGE_KEYS:
        pub.basic_publish(x, key, key.encode())
    got = {p: sorted(b.decode() for b in drain(ch, q)) for p, q in queues.items()}
    assert got == {p: sorted(keys) for p, keys in EDGE_EXPECTED.items()}


def test_topic_unbind_stops_routing(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = exq(ch)
    ch.queue_bind(q, "amq.topic", f"{q}.#")
    publish_confirmed(conn, "amq.topic", f"{q}.one", [b"1"])
    ch.queue_unbind(q, "amq.topic", f"{q}.#")
    publish_confirmed(conn, "amq.topic", f"{q}.two", [b"2"])
    assert drain(ch, q) == [b"1"]


HEADER_BINDINGS: dict[str, dict[str, Any]] = {
    "all": {"x-match": "all", "a": 1, "b": "two"},
    "any": {"x-match": "any", "a": 1, "b": "two"},
    "default-is-all": {"a": 1, "b": "two"},
    "all-with-x": {"x-match": "all-with-x", "x-k": "v", "a": 1},
    "any-with-x": {"x-match": "any-with-x", "x-k": "v"},
    "all-ignores-x-args": {"x-match": "all", "x-k": "v"},
    "any-ignores-x-args": {"x-match": "any", "x-k": "v"},
    "void-means-present": {"x-match": "all", "flag": None},
    "no-args": {},
}
HEADER_MESSAGES: dict[str, dict[str, Any] | None] = {
    "m1": {"a": 1, "b": "two"},
    "m2": {"a": 1},
    "m3": {"b": "two", "x-k": "v"},
    "m4": {"x-k": "v", "a": 1},
    "m5": {},
    "m6": {"a": "1"},  # string "1" is not the integer 1
    "m7": None,
    "m8": {"flag": "anything"},
    "m9": {"a": 1, "b": "two", "c": 3},
}
ALL_MESSAGES = list(HEADER_MESSAGES)
HEADER_EXPECTED = {
    "all": ["m1", "m9"],
    "any": ["m1", "m2", "m3", "m4", "m9"],
    "default-is-all": ["m1", "m9"],
    "all-with-x": ["m4"],
    "any-with-x": ["m3", "m4"],
    "all-ignores-x-args": ALL_MESSAGES,
    "any-ignores-x-args": [],
    "void-means-present": ["m8"],
    "no-args": ALL_MESSAGES,
}


def test_headers_routing_table(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange("headers")
    ch.exchange_declare(x, "headers")
    queues = {}
    for name, args in HEADER_BINDINGS.items():
        queues[name] = exq(ch)
        ch.queue_bind(queues[name], x, arguments=args)
    pub = conn.channel()
    pub.confirm_delivery()
    for name, headers in HEADER_MESSAGES.items():
        pub.basic_publish(x, "ignored", name.encode(), pika.BasicProperties(headers=headers))
    got = {n: [b.decode() for b in drain(ch, q)] for n, q in queues.items()}
    assert got == HEADER_EXPECTED


def test_headers_invalid_x_match_is_406(env: Env) -> None:
    conn = env.conn()
    q = exq(conn.channel())
    err = channel_error(
        conn, lambda ch: ch.queue_bind(q, "amq.headers", arguments={"x-match": "bogus", "a": 1})
    )
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")


# --------------------------------------------------------------------------- e2e bindings


def test_exchange_to_exchange_binding(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    src, dst = env.exchange("src"), env.exchange("dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "direct")
    ch.exchange_bind(dst, src, "orders.*")
    q = exq(ch)
    ch.queue_bind(q, dst, "orders.new")
    publish_confirmed(conn, src, "orders.new", [b"via-e2e"])
    publish_confirmed(conn, src, "orders.old", [b"dst-key-mismatch"])
    publish_confirmed(conn, src, "invoices.new", [b"src-pattern-mismatch"])
    assert drain(ch, q) == [b"via-e2e"]
    ch.exchange_unbind(dst, src, "orders.*")
    publish_confirmed(conn, src, "orders.new", [b"after-unbind"])
    assert drain(ch, q) == []


def test_e2e_routes_one_copy_per_queue_even_with_cycles(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    a, b = env.exchange("a"), env.exchange("b")
    ch.exchange_declare(a, "fanout")
    ch.exchange_declare(b, "fanout")
    ch.exchange_bind(b, a)
    ch.exchange_bind(a, b)  # a cycle
    q = exq(ch)
    ch.queue_bind(q, a)
    ch.queue_bind(q, b)  # reachable along two paths
    publish_confirmed(conn, a, "", [b"once"])
    publish_confirmed(conn, b, "", [b"twice?"])
    assert drain(ch, q) == [b"once", b"twice?"]


def test_e2e_bind_missing_source_is_404(env: Env) -> None:
    conn = env.conn()
    dst = env.exchange("dst")
    conn.channel().exchange_declare(dst, "fanout")
    err = channel_error(conn, lambda ch: ch.exchange_bind(dst, env.exchange("missing")))
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")


def test_bind_errors_are_404(env: Env) -> None:
    conn = env.conn()
    q = exq(conn.channel())
    err = channel_error(conn, lambda ch: ch.queue_bind(q, env.exchange("missing")))
    assert err.reply_code == 404
    err = channel_error(conn, lambda ch: ch.queue_bind(env.queue("missing"), "amq.direct"))
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")


# --------------------------------------------------------------------------- auto-delete


def test_auto_delete_when_last_queue_binding_goes(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange("ad")
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.exchange_declare(x, passive=True)  # no bindings yet: still there
    q1, q2 = exq(ch), exq(ch)
    ch.queue_bind(q1, x, "k")
    ch.queue_bind(q2, x, "k")
    ch.queue_unbind(q1, x, "k")
    ch.exchange_declare(x, passive=True)
    ch.queue_unbind(q2, x, "k")
    err = channel_error(conn, lambda c: c.exchange_declare(x, passive=True))
    assert err.reply_code == 404


def test_auto_delete_when_bound_queue_is_deleted(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange("ad")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q = exq(ch)
    ch.queue_bind(q, x)
    ch.queue_delete(q)
    err = channel_error(conn, lambda c: c.exchange_declare(x, passive=True))
    assert err.reply_code == 404


def test_auto_delete_source_of_exchange_binding(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    src, dst = env.exchange("adsrc"), env.exchange("dst")
    ch.exchange_declare(src, "direct", auto_delete=True)
    ch.exchange_declare(dst, "fanout", auto_delete=True)
    ch.exchange_bind(dst, src, "k")
    ch.exchange_unbind(dst, src, "k")
    err = channel_error(conn, lambda c: c.exchange_declare(src, passive=True))
    assert err.reply_code == 404
    # Losing a binding where it was only the destination does not delete ``dst``.
    conn.channel().exchange_declare(dst, passive=True)


# --------------------------------------------------------------------------- internal


def test_publish_to_internal_exchange_is_403(env: Env) -> None:
    conn = env.conn()
    x = env.exchange("internal")
    conn.channel().exchange_declare(x, "fanout", internal=True)

    def publish(ch: BlockingChannel) -> None:
        ch.confirm_delivery()
        ch.basic_publish(x, "", b"refused")

    err = channel_error(conn, publish)
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")


def test_internal_exchange_routes_via_exchange_binding(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    src, internal = env.exchange("src"), env.exchange("internal")
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_bind(internal, src)
    q = exq(ch)
    ch.queue_bind(q, internal)
    publish_confirmed(conn, src, "", [b"through-internal"])
    assert drain(ch, q) == [b"through-internal"]
