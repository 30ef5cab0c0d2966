"""Unit tests for shardmq.broker.routing.

The ``*_OBSERVED`` tables and the cases marked "RabbitMQ 3.10" were recorded from a real
RabbitMQ 3.10 broker with pika (one queue per binding, one message per routing key or
headers table, then basic.get on every queue).
"""

from __future__ import annotations

import re
import struct
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardmq.amqp.errors import PRECONDITION_FAILED, AMQPError
from shardmq.amqp.fieldtable import ByteArray, Timestamp
from shardmq.broker.routing import (
    ROUTER_TYPES,
    BindingArgumentError,
    DirectRouter,
    FanoutRouter,
    HeadersRouter,
    TopicRouter,
    args_key,
    make_router,
    topic_words,
)


class Dest:
    """An opaque destination compared by identity, like a queue object."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Dest({self.name})"


def dec(raw: int, scale: int) -> Decimal:
    """A Decimal exactly as the field table decoder builds it from (scale, raw)."""
    return Decimal(raw).scaleb(-scale)


def f32(x: float) -> float:
    """A value as decoded from an AMQP 'f' (float32) field."""
    return struct.unpack("!f", struct.pack("!f", x))[0]


# --------------------------------------------------------------------------- registry


def test_make_router_types() -> None:
    assert set(ROUTER_TYPES) == {"direct", "fanout", "topic", "headers"}
    for name, cls in ROUTER_TYPES.items():
        r = make_router(name)
        assert type(r) is cls
        assert r.TYPE == name
        assert r.NEEDS_HEADERS is (name == "headers")
        assert len(r) == 0
        assert r.bindings() == []
        assert list(r.route("anything", {"a": 1})) == []
    assert make_router("direct") is not make_router("direct")


@pytest.mark.parametrize("bad", ["", "Direct", "x-consistent-hashing", "topic "])
def test_make_router_unknown(bad: str) -> None:
    with pytest.raises(ValueError):
        make_router(bad)


# --------------------------------------------------------------------------- bookkeeping


@pytest.mark.parametrize("kind", sorted(ROUTER_TYPES))
def test_add_remove_bookkeeping(kind: str) -> None:
    r = make_router(kind)
    q1, q2 = Dest("q1"), Dest("q2")
    assert r.add_binding(q1, "k", None) is True
    assert r.add_binding(q1, "k", None) is False
    assert r.add_binding(q1, "k", {}) is False  # None and {} are the same binding
    assert r.add_binding(q1, "k", {"a": 1}) is True  # other arguments: other binding
    assert r.add_binding(q1, "k2", None) is True
    assert r.add_binding(q2, "k", None) is True
    assert len(r) == 4
    assert r.has_binding(q1, "k", {})
    assert r.has_binding(q1, "k", {"a": 1})
    assert not r.has_binding(q1, "k", {"a": 2})
    assert not r.has_binding(q2, "k2", None)
    assert r.bindings() == [
        (q1, "k", {}),
        (q1, "k", {"a": 1}),
        (q1, "k2", {}),
        (q2, "k", {}),
    ]
    assert r.remove_binding(q1, "k", {"a": 2}) is False
    assert r.remove_binding(q2, "k2", None) is False
    assert r.remove_binding(q1, "k", {"a": 1}) is True
    assert r.remove_binding(q1, "k", {"a": 1}) is False
    assert len(r) == 3
    assert r.has_destination(q1) and r.has_destination(q2)
    assert r.remove_destination(q1) == 2
    assert r.remove_destination(q1) == 0
    assert not r.has_destination(q1)
    assert r.bindings() == [(q2, "k", {})]
    assert r.remove_destination(Dest("never bound")) == 0
    assert r.remove_binding(q2, "k", {}) is True
    assert not r.has_destination(q2)
    assert len(r) == 0
    assert list(r.route("k", {})) == []


def test_arguments_identity_matches_rabbitmq() -> None:
    # RabbitMQ 3.10: unbinding with these second tables leaves the first binding in place,
    # except where marked equal (top-level order does not matter, None == {}).
    same = [
        ({"x": 1, "y": 2}, {"y": 2, "x": 1}),
        (None, {}),
        ({"a": 1}, {"a": 1}),
        ({"a": {"n": [1, "s"]}}, {"a": {"n": [1, "s"]}}),
        ({"a": dec(10, 1)}, {"a": Decimal("1.0")}),
        ({"a": Timestamp(5)}, {"a": Timestamp(5)}),
        ({"a": datetime(1970, 1, 1, 0, 0, 5)}, {"a": Timestamp(5)}),
        ({"a": b"\xff"}, {"a": b"\xff"}),  # non-UTF-8 longstr, decoded as bytes
    ]
    different = [
        ({"a": {"n": 1, "m": 2}}, {"a": {"m": 2, "n": 1}}),  # nested order matters
        ({"a": [1, 2]}, {"a": [2, 1]}),
        ({"a": 1}, {"a": 1.0}),
        ({"a": 1}, {"a": True}),
        ({"a": 0}, {"a": False}),
        ({"a": "1"}, {"a": ByteArray(b"1")}),  # longstr vs byte array
        ({"a": 1}, {"a": Timestamp(1)}),
        ({"a": dec(10, 1)}, {"a": dec(100, 2)}),
        ({"a": dec(1, 0)}, {"a": 1}),
        ({"a": None}, {}),
        ({"a": None}, {"a": ""}),
        ({"a": {"n": 1}}, {"a": {"n": 1.0}}),
    ]
    for a, b in same:
        assert args_key(a) == args_key(b), (a, b)
        assert hash(args_key(a)) == hash(args_key(b))
    for a, b in different:
        assert args_key(a) != args_key(b), (a, b)
        r = FanoutRouter()
        q = Dest("q")
        assert r.add_binding(q, "", a)
        assert r.add_binding(q, "", b)
        assert len(r) == 2
        assert r.route("", None) == (q,)
        assert r.remove_binding(q, "", b)
        assert r.has_binding(q, "", a)
        assert r.route("", None) == (q,)


def test_args_key_handles_unhashable_and_odd_values() -> None:
    nan = float("nan")
    assert args_key({"f": nan}) == args_key({"f": float("nan")})
    assert args_key({"f": 0.0}) != args_key({"f": -0.0})
    assert args_key({"a": bytearray(b"x")}) == args_key({"a": ByteArray(b"x")})
    assert args_key({"a": [{"b": [b"x", None]}]}) == args_key({"a": [{"b": [b"x", None]}]})
    assert args_key({"a": {1, 2}}) == args_key({"a": {1, 2}})  # not an AMQP type, still keyed
    assert args_key({"a": Decimal("NaN")}) != args_key({"a": Decimal("Infinity")})


def test_stored_arguments_are_private_copies() -> None:
    r = DirectRouter()
    q = Dest("q")
    args = {"a": 1}
    r.add_binding(q, "k", args)
    args["a"] = 2
    assert r.has_binding(q, "k", {"a": 1})
    listed = r.bindings()[0][2]
    listed["b"] = 3
    assert r.bindings() == [(q, "k", {"a": 1})]
    assert r.remove_binding(q, "k", {"a": 1})


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic"])
def test_same_destination_several_bindings_routed_once(kind: str) -> None:
    r = make_router(kind)
    q, other = Dest("q"), Dest("other")
    key = "a.b"
    for i in range(3):
        r.add_binding(q, key, {"i": i})
    r.add_binding(other, key, None)
    if kind == "topic":
        for k in ("a.*", "#", "*.b", "a.#.b", "#.#"):
            r.add_binding(q, k, None)
    got = r.route(key, None)
    assert sorted(got, key=repr) == [other, q]
    # removing some of q's bindings keeps it routed; removing all of them drops it
    r.remove_binding(q, key, {"i": 0})
    assert q in r.route(key, None)
    assert r.remove_destination(q) == (7 if kind == "topic" else 2)
    assert list(r.route(key, None)) == [other]


def test_remove_destination_keeps_other_destinations() -> None:
    for kind in ROUTER_TYPES:
        r = make_router(kind)
        qs = [Dest(f"q{i}") for i in range(5)]
        for q in qs:
            r.add_binding(q, "k", None)
            r.add_binding(q, "k.x", None)
        assert r.remove_destination(qs[2]) == 2
        assert len(r) == 8
        expect = {qs[0], qs[1], qs[3], qs[4]}
        assert set(r.route("k", {})) == expect


def test_destinations_compared_by_hash_and_eq() -> None:
    # exchange-to-exchange bindings may use names or tuples as destinations
    r = DirectRouter()
    assert r.add_binding(("exchange", "e1"), "k", None)
    assert not r.add_binding(("exchange", "e1"), "k", None)
    assert r.add_binding(("queue", "e1"), "k", None)
    assert set(r.route("k")) == {("exchange", "e1"), ("queue", "e1")}


# --------------------------------------------------------------------------- direct


def test_direct_exact_match() -> None:
    r = DirectRouter()
    q1, q2, q3 = Dest("1"), Dest("2"), Dest("3")
    r.add_binding(q1, "info", None)
    r.add_binding(q2, "info", None)
    r.add_binding(q3, "", None)
    assert set(r.route("info")) == {q1, q2}
    assert r.route("Info") == ()
    assert r.route("info ") == ()
    assert r.route("") == (q3,)
    assert r.route("#") == ()
    r.add_binding(q3, "*", None)
    assert r.route("x") == ()  # no wildcards in direct exchanges
    assert r.route("*") == (q3,)


def test_direct_route_returns_prebuilt_tuple() -> None:
    r = DirectRouter()
    q1, q2 = Dest("1"), Dest("2")
    r.add_binding(q1, "k", None)
    first = r.route("k")
    assert first == (q1,)
    assert r.route("k") is first  # no allocation on the hot path
    r.add_binding(q2, "k", None)
    second = r.route("k")
    assert set(second) == {q1, q2}
    assert r.route("k") is second
    r.remove_binding(q1, "k", None)
    assert r.route("k") == (q2,)
    r.remove_binding(q2, "k", None)
    assert r.route("k") == ()
    assert r.route("never") == ()


# --------------------------------------------------------------------------- fanout


def test_fanout_ignores_key_and_headers() -> None:
    r = FanoutRouter()
    assert r.route("x") == ()
    q1, q2 = Dest("1"), Dest("2")
    r.add_binding(q1, "a", None)
    r.add_binding(q2, "b", {"x-match": "any", "h": 1})
    r.add_binding(q2, "c", None)
    assert set(r.route("zzz", {"h": 2})) == {q1, q2}
    assert len(r.route("")) == 2
    assert r.route("a") is r.route("b")
    r.remove_binding(q2, "b", {"x-match": "any", "h": 1})
    assert set(r.route("")) == {q1, q2}
    r.remove_binding(q2, "c", None)
    assert r.route("") == (q1,)


# --------------------------------------------------------------------------- topic

TOPIC_ROUTING_KEYS = [
    "", ".", "..", "a", "a.", ".a", "a..b", "a.b", "ohio", "x.ohio", "ohio.x", "a.b.c", "a.x.b",
    "a.ohio", "#", "*", "a.#", "b.c", "a.b.b.c", "a.b.x.c", "a#", "a*", "x.y.z.w", "a.b.a",
    "b.a", "a.a", "...", "a.x.y.b", "a.b.b",
]  # fmt: skip
ALL = frozenset(TOPIC_ROUTING_KEYS)

# binding key -> routing keys (of TOPIC_ROUTING_KEYS) that RabbitMQ 3.10 routed through it
TOPIC_OBSERVED: dict[str, frozenset[str] | set[str]] = {
    "": {""},
    ".": {"."},
    "..": {".."},
    "a..b": {"a..b"},
    "#": ALL,
    "#.#": ALL,
    "*.#": ALL - {""},
    "#.*": ALL - {""},
    "#.ohio": {"ohio", "x.ohio", "a.ohio"},
    "*": {"a", "ohio", "#", "*", "a#", "a*"},
    "*.*": {".", "a.", ".a", "a.b", "x.ohio", "ohio.x", "a.ohio", "a.#", "b.c", "b.a", "a.a"},
    "a": {"a"},
    "a.": {"a."},
    ".a": {".a"},
    "a.#": {
        "a", "a.", "a..b", "a.b", "a.b.c", "a.x.b", "a.ohio", "a.#", "a.b.b.c", "a.b.x.c",
        "a.b.a", "a.a", "a.x.y.b", "a.b.b",
    },
    "a.#.b": {"a..b", "a.b", "a.x.b", "a.x.y.b", "a.b.b"},
    "#.a.#": ALL - {
        "", ".", "..", "ohio", "x.ohio", "ohio.x", "#", "*", "b.c", "a#", "a*", "x.y.z.w", "...",
    },
    "a.*.#": {
        "a.", "a..b", "a.b", "a.b.c", "a.x.b", "a.ohio", "a.#", "a.b.b.c", "a.b.x.c", "a.b.a",
        "a.a", "a.x.y.b", "a.b.b",
    },
    "#.#.#": ALL,
    "*.#.*": ALL - {"", "a", "ohio", "#", "*", "a#", "a*"},
    "a.#.#.b": {"a..b", "a.b", "a.x.b", "a.x.y.b", "a.b.b"},
    "#.b.#.c": {"a.b.c", "b.c", "a.b.b.c", "a.b.x.c"},
    "a.*": {"a.", "a.b", "a.ohio", "a.#", "a.a"},
    "*.b": {"a.b"},
    "#.": {".", "..", "a.", "..."},
    ".#": {".", "..", ".a", "..."},
    "*.": {".", "a."},
    ".*": {".", ".a"},
    "a#": {"a#"},
    "a*": {"a*"},
    "#a": set(),
    "#.#.a": {"a", ".a", "a.b.a", "b.a", "a.a"},
    "a.#.#": {
        "a", "a.", "a..b", "a.b", "a.b.c", "a.x.b", "a.ohio", "a.#", "a.b.b.c", "a.b.x.c",
        "a.b.a", "a.a", "a.x.y.b", "a.b.b",
    },
    "*.*.*": {"..", "a..b", "a.b.c", "a.x.b", "a.b.a", "a.b.b"},
    "#.*.#": ALL - {""},
}  # fmt: skip


def reference_regex(binding_key: str) -> re.Pattern[str]:
    """Straightforward reference matcher over the routing key with every word prefixed
    by '.', so that zero words is the empty string (see ``encode_for_reference``)."""
    parts = []
    for w in topic_words(binding_key):
        if w == "*":
            parts.append(r"\.[^.]*")
        elif w == "#":
            parts.append(r"(?:\.[^.]*)*")
        else:
            parts.append(re.escape("." + w))
    return re.compile("".join(parts))


def encode_for_reference(routing_key: str) -> str:
    return "".join("." + w for w in topic_words(routing_key))


def reference_match(binding_key: str, routing_key: str) -> bool:
    return reference_regex(binding_key).fullmatch(encode_for_reference(routing_key)) is not None


def test_topic_words_split_like_rabbitmq() -> None:
    assert topic_words("") == []
    assert topic_words(".") == ["", ""]
    assert topic_words("a..b") == ["a", "", "b"]
    assert topic_words("a.") == ["a", ""]
    assert topic_words("#.ohio") == ["#", "ohio"]


def test_reference_matcher_agrees_with_rabbitmq_table() -> None:
    for bkey, expected in TOPIC_OBSERVED.items():
        got = {rk for rk in TOPIC_ROUTING_KEYS if reference_match(bkey, rk)}
        assert got == set(expected), bkey


def test_topic_matches_rabbitmq_table_one_binding_each() -> None:
    for bkey, expected in TOPIC_OBSERVED.items():
        r = TopicRouter()
        q = Dest(bkey)
        r.add_binding(q, bkey, None)
        got = {rk for rk in TOPIC_ROUTING_KEYS if r.route(rk, None)}
        assert got == set(expected), bkey


def test_topic_matches_rabbitmq_table_all_bindings_together() -> None:
    r = TopicRouter()
    dests = {bkey: Dest(bkey) for bkey in TOPIC_OBSERVED}
    for bkey, q in dests.items():
        assert r.add_binding(q, bkey, None)
    for rk in TOPIC_ROUTING_KEYS:
        got = r.route(rk, None)
        assert len(got) == len(set(got))
        assert set(got) == {dests[b] for b, exp in TOPIC_OBSERVED.items() if rk in exp}, rk


@pytest.mark.parametrize(
    ("bkey", "matches", "misses"),
    [
        ("", [""], [".", "a", "#"]),
        (".", ["."], ["", "a", "a.b", ".."]),
        ("a..b", ["a..b"], ["a.b", "a...b"]),
        ("#", ["", ".", "a", "a.b.c", "#"], []),
        ("#.#", ["", ".", "a", "a.b.c"], []),
        ("*.#", [".", "a", "a.b.c"], [""]),
        ("#.ohio", ["ohio", "x.ohio", "x.y.ohio", ".ohio"], ["", "ohio.x", "ohioo", "xohio"]),
        ("*", ["a", "*", "#"], ["", "a.b", "."]),
        ("a.*.c", ["a.b.c", "a..c"], ["a.c", "a.b.b.c"]),
        ("a.#.c", ["a.c", "a.b.c", "a.b.b.c", "a..c"], ["a.b", "c.a.c"]),
        ("#.a.#", ["a", "x.a", "a.x", "x.a.y", "a.a.a"], ["", "b", "ab"]),
    ],
)
def test_topic_edge_cases(bkey: str, matches: list[str], misses: list[str]) -> None:
    r = TopicRouter()
    q = Dest("q")
    r.add_binding(q, bkey, None)
    for rk in matches:
        assert r.route(rk) == (q,), (bkey, rk)
    for rk in misses:
        assert r.route(rk) == (), (bkey, rk)


def test_topic_many_hashes_no_exponential_blowup() -> None:
    # 40 '#' against 60 words: a backtracking matcher explores ~C(100, 40) paths here.
    r = TopicRouter()
    q, q2 = Dest("q"), Dest("q2")
    r.add_binding(q, ".".join(["#"] * 40 + ["z"]), None)
    r.add_binding(q2, ".".join(["#", "a"] * 30), None)
    words = ["a"] * 60
    assert r.route(".".join(words)) == (q2,)
    assert r.route(".".join(words + ["z"])) == (q,)
    assert r.route(".".join(words + ["y"])) == ()


def test_topic_cache_invalidated_on_changes() -> None:
    r = TopicRouter()
    q1, q2 = Dest("1"), Dest("2")
    r.add_binding(q1, "a.*", None)
    assert r.route("a.b") == (q1,)
    assert r.route("a.b") is r.route("a.b")
    r.add_binding(q2, "#.b", None)
    assert set(r.route("a.b")) == {q1, q2}
    r.remove_binding(q1, "a.*", None)
    assert r.route("a.b") == (q2,)
    r.remove_destination(q2)
    assert r.route("a.b") == ()


def test_topic_cache_is_bounded_and_stays_correct() -> None:
    class Small(TopicRouter):
        CACHE_SIZE = 3

    r = Small()
    q = Dest("q")
    r.add_binding(q, "k.*", None)
    for i in range(20):
        assert r.route(f"k.{i}") == (q,)
        assert r.route(f"j.{i}") == ()
        assert len(r._cache) <= 3
    assert r.route("k.0") == (q,)


def test_topic_trie_pruned_after_removal() -> None:
    r = TopicRouter()
    qs = [Dest(str(i)) for i in range(4)]
    keys = ["a.b.c", "a.*.c", "a.#", "#.c", "*", "", "a.b"]
    for q in qs:
        for k in keys:
            r.add_binding(q, k, None)
    r.remove_binding(qs[0], "a.b.c", None)
    assert qs[0] not in r.route("x.y.z") and set(r.route("a.b.c")) == set(qs)
    for q in qs:
        r.remove_destination(q)
    assert len(r) == 0
    root = r._root
    assert root.empty()
    assert root.lit == {} and root.star is None and root.hash is None


def test_topic_literal_star_and_hash_words_in_routing_key() -> None:
    r = TopicRouter()
    lit, star = Dest("lit"), Dest("star")
    r.add_binding(lit, "a.b", None)
    r.add_binding(star, "a.*", None)
    assert r.route("a.*") == (star,)
    assert r.route("a.#") == (star,)
    assert set(r.route("a.b")) == {lit, star}


# hypothesis: trie vs regex reference, including removals

_words = st.sampled_from(["a", "b", "ab", "", "*", "#"])
_binding_keys = st.lists(_words, max_size=6).map(".".join)
_routing_keys = st.lists(st.sampled_from(["a", "b", "ab", "", "c", "*", "#"]), max_size=8).map(
    ".".join
)


@settings(max_examples=300, deadline=None)
@given(
    bkeys=st.lists(_binding_keys, min_size=1, max_size=14),
    rkeys=st.lists(_routing_keys, min_size=1, max_size=12),
    remove_mask=st.lists(st.booleans(), min_size=14, max_size=14),
)
def test_topic_trie_matches_regex_reference(
    bkeys: list[str], rkeys: list[str], remove_mask: list[bool]
) -> None:
    r = TopicRouter()
    dests = [Dest(str(i)) for i in range(len(bkeys))]
    shared = Dest("shared")  # bound with every key: must come out at most once
    for q, bk in zip(dests, bkeys, strict=True):
        assert r.add_binding(q, bk, None)
        r.add_binding(shared, bk, None)

    def check(live: list[tuple[Dest, str]]) -> None:
        for rk in rkeys:
            got = r.route(rk)
            assert len(got) == len(set(got)), rk
            expect = {q for q, bk in live if reference_match(bk, rk)}
            assert set(got) == expect, (rk, live)

    live = [(q, bk) for q, bk in zip(dests, bkeys, strict=True)]
    live += [(shared, bk) for bk in set(bkeys)]
    check(live)
    for (q, bk), drop in zip(list(live), remove_mask, strict=False):
        if drop:
            assert r.remove_binding(q, bk, None)
            live.remove((q, bk))
    check(live)
    assert len(r) == len(live)


# --------------------------------------------------------------------------- headers


def hroute(args: dict[str, Any] | None, headers: dict[str, Any] | None) -> bool:
    r = HeadersRouter()
    q = Dest("q")
    assert r.add_binding(q, "ignored", args)
    got = r.route("whatever", headers)
    assert got in ((), (q,))
    return bool(got)


# (binding arguments, headers, routed?) -- every row observed on RabbitMQ 3.10
HEADERS_OBSERVED: list[tuple[dict[str, Any] | None, dict[str, Any] | None, bool]] = [
    # no pattern: "all" of nothing matches everything, "any" of nothing matches nothing
    (None, None, True),
    ({}, {}, True),
    ({}, {"a": 1}, True),
    ({"x-match": "any"}, None, False),
    ({"x-match": "any"}, {"a": 1}, False),
    ({"x-foo": "bar"}, None, True),
    ({"x-match": "any", "x-foo": "bar"}, {"x-foo": "bar"}, False),
    ({"x-match": "all-with-x"}, None, True),
    ({"x-match": "any-with-x"}, {"x-match": "any-with-x"}, False),
    # all / any
    ({"x-match": "all", "a": 1}, {"a": 1}, True),
    ({"x-match": "all", "a": 1}, {"a": 1, "b": 3, "x-foo": "bar"}, True),
    ({"x-match": "all", "a": 1}, {"a": 2}, False),
    ({"x-match": "all", "a": 1}, {"b": 1}, False),
    ({"x-match": "all", "a": 1}, {}, False),
    ({"x-match": "all", "a": 1}, None, False),
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),
    ({"a": 1, "b": 2}, {"a": 1, "b": 3}, False),
    ({"a": 1, "b": 2}, {"a": 1}, False),
    ({"x-match": "any", "a": 1, "b": "x"}, {"b": "x"}, True),
    ({"x-match": "any", "a": 1, "b": "x"}, {"a": 1, "b": "y"}, True),
    ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "y"}, False),
    ({"x-match": "any", "a": 1, "b": "x"}, {}, False),
    ({"x-match": "any", "a": 1, "b": "x"}, None, False),
    # a header called x-match in the message is just another header
    ({"a": 1}, {"a": 1, "x-match": "any"}, True),
    # x- keys ignored by all/any, matched by the -with-x variants; x-match never matched
    ({"a": 1, "x-foo": "bar"}, {"a": 1}, True),
    ({"x-match": "all-with-x", "x-foo": "bar"}, {"x-foo": "bar"}, True),
    ({"x-match": "all-with-x", "x-foo": "bar"}, {"x-foo": "baz"}, False),
    ({"x-match": "all-with-x", "x-foo": "bar"}, {"a": 1}, False),
    ({"x-match": "all-with-x", "x-foo": None}, {"x-foo": None}, True),
    ({"x-match": "all-with-x", "x-foo": None}, {"x-foo": 7}, True),
    ({"x-match": "all-with-x", "x-foo": None}, {"a": 1}, False),
    ({"x-match": "any-with-x", "x-foo": "bar", "a": 2}, {"x-foo": "bar"}, True),
    ({"x-match": "any-with-x", "x-foo": "bar", "a": 2}, {"a": 2}, True),
    ({"x-match": "any-with-x", "x-foo": "bar", "a": 2}, {"a": 1}, False),
    ({"x-match": "any-with-x", "x-match2": "q"}, {"x-match2": "q"}, True),
    # void binding value: the header must merely be present (with any value, even void)
    ({"a": None}, {"a": 1}, True),
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {"a": ""}, True),
    ({"a": None}, {"a": False}, True),
    ({"a": None}, {"b": 1}, False),
    ({"a": None}, {}, False),
    ({"a": None}, None, False),
    ({"x-match": "any", "a": None}, {"a": {"n": 1}}, True),
    ({"x-match": "any", "a": None, "b": None}, {"b": None}, True),
    ({"x-match": "any", "a": None, "b": None}, {"c": None}, False),
    ({"x-match": "all", "a": None, "b": None}, {"a": 1, "b": 3}, True),
    ({"x-match": "all", "a": None, "b": None}, {"a": 1}, False),
    # a void header does not equal a non-void binding value
    ({"a": 1}, {"a": None}, False),
    ({"a": ""}, {"a": None}, False),
    # numbers compare by value across int widths, float and timestamp (Erlang ==)
    ({"a": 1}, {"a": 1.0}, True),
    ({"a": 1.0}, {"a": 1}, True),
    ({"a": 1}, {"a": Timestamp(1)}, True),
    ({"a": Timestamp(1)}, {"a": 1.0}, True),
    ({"a": 1}, {"a": f32(1.0)}, True),
    ({"a": 2**40}, {"a": float(2**40)}, True),
    ({"a": 0.1}, {"a": 0.1}, True),
    ({"a": 0.1}, {"a": f32(0.1)}, False),
    ({"a": 1.5}, {"a": 1}, False),
    ({"a": 1577836800}, {"a": Timestamp(1577836800)}, True),
    ({"a": datetime(2020, 1, 1)}, {"a": Timestamp(1577836800)}, True),
    ({"a": datetime(2020, 1, 1)}, {"a": 1577836800}, True),
    # ... but not with strings, booleans or decimals
    ({"a": 1}, {"a": "1"}, False),
    ({"a": "1"}, {"a": 1}, False),
    ({"a": 1}, {"a": True}, False),
    ({"a": True}, {"a": 1}, False),
    ({"a": True}, {"a": True}, True),
    ({"a": 0}, {"a": False}, False),
    ({"a": False}, {"a": False}, True),
    ({"a": False}, {"a": 0}, False),
    ({"a": 1}, {"a": dec(1, 0)}, False),
    # decimals: scale and value both count (1.0 != 1.00 != 1)
    ({"a": dec(10, 1)}, {"a": dec(10, 1)}, True),
    ({"a": dec(10, 1)}, {"a": dec(100, 2)}, False),
    ({"a": dec(10, 1)}, {"a": dec(1, 0)}, False),
    # longstr and byte array are both binaries
    ({"a": "1"}, {"a": "1"}, True),
    ({"a": "1"}, {"a": ByteArray(b"1")}, True),
    ({"a": ByteArray(b"1")}, {"a": "1"}, True),
    ({"a": ""}, {"a": ByteArray(b"")}, True),
    ({"a": "1"}, {"a": "1 "}, False),
    ({"a": "é"}, {"a": ByteArray("é".encode())}, True),
    ({"a": b"\xff"}, {"a": ByteArray(b"\xff")}, True),
    # nested tables/arrays: exact, with types and order
    ({"a": {"n": 1}}, {"a": {"n": 1}}, True),
    ({"a": {"n": 1}}, {"a": {"n": 1}, "b": 1}, True),
    ({"a": {"n": 1}}, {"a": {"n": 1.0}}, False),
    ({"a": {"n": 1}}, {"a": {"n": "1"}}, False),
    ({"a": {"n": "1"}}, {"a": {"n": "1"}}, True),
    ({"a": {"n": 1, "m": 2}}, {"a": {"n": 1, "m": 2}}, True),
    ({"a": {"n": 1, "m": 2}}, {"a": {"m": 2, "n": 1}}, False),
    ({"a": [1, 2]}, {"a": [1, 2]}, True),
    ({"a": [1, 2]}, {"a": [2, 1]}, False),
    ({"a": [1, 2]}, {"a": [1.0, 2]}, False),
]


@pytest.mark.parametrize(("args", "headers", "expected"), HEADERS_OBSERVED)
def test_headers_match_like_rabbitmq(
    args: dict[str, Any] | None, headers: dict[str, Any] | None, expected: bool
) -> None:
    assert hroute(args, headers) is expected


def test_headers_routing_key_ignored_and_dedup() -> None:
    r = HeadersRouter()
    q, other = Dest("q"), Dest("other")
    r.add_binding(q, "k1", {"a": 1})
    r.add_binding(q, "k2", {"a": 1})  # same table, other key: another binding
    r.add_binding(q, "k1", {"x-match": "any", "a": 1, "b": 2})
    r.add_binding(q, "k1", {"b": None})
    r.add_binding(other, "", {"a": 1})
    assert len(r) == 5
    got = r.route("", {"a": 1, "b": 2})
    assert sorted(got, key=repr) == [other, q]
    assert r.route("k1", {"a": 1}) == r.route("zzz", {"a": 1})
    assert r.route("", {"b": 5}) == (q,)
    assert r.route("", {"c": 5}) == ()
    r.remove_binding(other, "", {"a": 1})
    assert r.route("", {"a": 1}) == (q,)
    assert r.remove_destination(q) == 4
    assert r.route("", {"a": 1, "b": 2}) == ()


def test_headers_group_bookkeeping() -> None:
    r = HeadersRouter()
    qs = [Dest(str(i)) for i in range(3)]
    for q in qs:
        r.add_binding(q, "", {"x-match": "all", "a": 1})
    r.add_binding(qs[0], "", {"x-match": "any"})  # never matches
    assert set(r.route("", {"a": 1})) == set(qs)
    r.remove_binding(qs[1], "", {"x-match": "all", "a": 1})
    assert set(r.route("", {"a": 1})) == {qs[0], qs[2]}
    r.remove_binding(qs[0], "", {"a": 1, "x-match": "all"})  # same table, other order
    r.remove_binding(qs[2], "", {"x-match": "all", "a": 1})
    assert r.route("", {"a": 1}) == ()
    assert len(r) == 1


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (
            {"x-match": "foo"},
            'Invalid x-match field value <<"foo">>; expected all, any, all-with-x, or any-with-x',
        ),
        (
            {"x-match": "ANY", "a": 1},
            'Invalid x-match field value <<"ANY">>; expected all, any, all-with-x, or any-with-x',
        ),
        ({"x-match": 1}, "Invalid x-match field type signedint (value 1); expected longstr"),
        (
            {"x-match": ByteArray(b"any")},
            'Invalid x-match field type binary (value <<"any">>); expected longstr',
        ),
    ],
)
def test_headers_invalid_x_match_rejected_like_rabbitmq(args: dict[str, Any], text: str) -> None:
    r = HeadersRouter()
    q = Dest("q")
    with pytest.raises(BindingArgumentError) as info:
        r.add_binding(q, "", args)
    err = info.value
    assert isinstance(err, AMQPError) and isinstance(err, ValueError)
    assert err.soft is True
    assert err.reply_code == PRECONDITION_FAILED
    assert err.text == text
    assert err.reply_text == "PRECONDITION_FAILED - " + text
    assert len(r) == 0 and not r.has_binding(q, "", args)
    assert r.remove_binding(q, "", args) is False
    assert r.route("", {"a": 1}) == ()


def test_x_match_only_validated_by_headers_exchange() -> None:
    for kind in ("direct", "fanout", "topic"):
        r = make_router(kind)
        assert r.add_binding(Dest("q"), "k", {"x-match": "nonsense"})


def test_headers_odd_header_values_never_raise() -> None:
    r = HeadersRouter()
    q = Dest("q")
    r.add_binding(q, "", {"x-match": "any", "a": 1, "b": "s", "c": [1], "d": None})
    odd = (float("nan"), b"\xff", bytearray(b"1"), memoryview(b"s"), {"k": {1, 2}}, [[]], "\ud800")
    for v in odd:
        r.route("", {"a": v, "b": v, "c": v})
    assert r.route("", {"b": memoryview(b"s")}) == (q,)
    assert r.route("", {"a": float("nan")}) == ()


@settings(max_examples=150, deadline=None)
@given(
    pattern=st.dictionaries(
        st.sampled_from(["a", "b", "c", "x-a"]),
        st.one_of(st.none(), st.integers(0, 2), st.sampled_from(["0", "1"])),
        max_size=4,
    ),
    headers=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["a", "b", "c", "d", "x-a"]),
            st.one_of(st.none(), st.integers(0, 2), st.sampled_from(["0", "1"])),
            max_size=5,
        ),
    ),
    mode=st.sampled_from(["all", "any", "all-with-x", "any-with-x", None]),
)
def test_headers_against_spec_reference(
    pattern: dict[str, Any], headers: dict[str, Any] | None, mode: str | None
) -> None:
    """Simple restatement of the rules for scalar values (no type coercions involved)."""
    args = dict(pattern)
    if mode is not None:
        args["x-match"] = mode
    with_x = mode in ("all-with-x", "any-with-x")
    h = headers or {}
    pats = {k: v for k, v in pattern.items() if with_x or not k.startswith("x-")}

    def ok(k: str, v: Any) -> bool:
        return k in h and (v is None or (h[k] is not None and h[k] == v))

    if mode in ("any", "any-with-x"):
        expected = any(ok(k, v) for k, v in pats.items())
    else:
        expected = all(ok(k, v) for k, v in pats.items())
    assert hroute(args, headers) is expected


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(0, 2),
    st.sampled_from([0.0, 1.0, 1.5]),
    st.sampled_from(["0", "1", ""]),
    st.sampled_from([ByteArray(b"1"), ByteArray(b"")]),
    st.sampled_from([Timestamp(1), dec(10, 1), dec(1, 0)]),
)
_hkeys = st.sampled_from(["a", "b", "c", "x-a"])


def erl_eq(pv: Any, dv: Any) -> bool:
    """Erlang == for the scalar field values above."""

    def kind(v: Any) -> tuple[str, Any]:
        if v is None:
            return ("void", None)
        if isinstance(v, bool):
            return ("bool", v)
        if isinstance(v, int | float):
            return ("number", v)
        if isinstance(v, str):
            return ("binary", v.encode())
        if isinstance(v, bytes):
            return ("binary", bytes(v))
        assert isinstance(v, Decimal)
        t = v.as_tuple()
        return ("decimal", (t.exponent, t.digits))

    kp, kd = kind(pv), kind(dv)
    return kp[0] == kd[0] != "void" and kp[1] == kd[1]


def reference_headers_match(args: dict[str, Any], headers: dict[str, Any] | None) -> bool:
    mode = args.get("x-match", "all")
    with_x = mode.endswith("-with-x")
    h = headers or {}
    hits = [
        k in h and (v is None or erl_eq(v, h[k]))
        for k, v in args.items()
        if k != "x-match" and (with_x or not k.startswith("x-"))
    ]
    return any(hits) if mode.startswith("any") else all(hits)


@settings(max_examples=200, deadline=None)
@given(
    tables=st.lists(
        st.tuples(
            st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"]),
            st.dictionaries(_hkeys, _scalar, max_size=3),
            st.integers(0, 4),  # destination index: several bindings share destinations
        ),
        min_size=1,
        max_size=10,
    ),
    messages=st.lists(
        st.one_of(
            st.none(), st.dictionaries(st.sampled_from(["a", "b", "c", "d", "x-a"]), _scalar)
        ),
        min_size=1,
        max_size=8,
    ),
    drop=st.lists(st.booleans(), min_size=10, max_size=10),
)
def test_headers_router_many_bindings_against_reference(
    tables: list[tuple[str | None, dict[str, Any], int]],
    messages: list[dict[str, Any] | None],
    drop: list[bool],
) -> None:
    r = HeadersRouter()
    dests = [Dest(str(i)) for i in range(5)]
    live: list[tuple[Dest, str, dict[str, Any]]] = []
    for i, (mode, pattern, di) in enumerate(tables):
        args = dict(pattern)
        if mode is not None:
            args["x-match"] = mode
        key = f"k{i % 2}"
        if r.add_binding(dests[di], key, args):
            live.append((dests[di], key, args))
    assert len(r) == len(live)

    def check() -> None:
        for m in messages:
            got = r.route("rk", m)
            assert len(got) == len(set(got))
            expect = {d for d, _, a in live if reference_headers_match(a, m)}
            assert set(got) == expect, (m, live)

    check()
    for binding, d in zip(list(live), drop, strict=False):
        if d:
            assert r.remove_binding(*binding)
            live.remove(binding)
    check()
    for dest in dests[:2]:
        r.remove_destination(dest)
    live = [b for b in live if b[0] not in dests[:2]]
    check()
    # nothing may linger once every binding is gone (no leaked index entries)
    for dest in dests:
        r.remove_destination(dest)
    assert len(r) == 0
    assert not r._groups and not r._always and not r._by_key and not r._by_pair
    assert r.route("rk", {"a": 1}) == ()
