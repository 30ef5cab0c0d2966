"""Unit tests for the built-in x-consistent-hash exchange (shardmq.broker.chash).

Distribution and stability are properties over random sets of destinations and
weights (hypothesis), each checked on 100,000 keys; the bounds are statistical
(binomial noise at 100,000 keys is well under 1 %), so they never flake in practice
and fail for a biased or unstable scheme.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardmq.amqp.errors import PRECONDITION_FAILED, SoftError
from shardmq.broker.chash import (
    ConsistentHashRouter,
    MessageHashRouter,
    check_arguments,
    make_chash_router,
    parse_weight,
)
from shardmq.broker.routing import BindingArgumentError, make_router

N_KEYS = 100_000
KEYS = [b"key-%d" % i for i in range(N_KEYS)]


def ident(d: str) -> bytes:
    return d.encode()


def router(weights: dict[str, int]) -> ConsistentHashRouter[str]:
    r: ConsistentHashRouter[str] = ConsistentHashRouter(ident)
    for d, w in weights.items():
        r.add_binding(d, str(w), None)
    return r


def assignment(r: ConsistentHashRouter[str]) -> list[str | None]:
    return [r.pick(k) for k in KEYS]


weights_st = st.dictionaries(
    st.text("abcdefghij", min_size=1, max_size=6), st.integers(1, 10), min_size=2, max_size=8
)


@settings(max_examples=4, deadline=None)
@given(weights=weights_st)
def test_distribution_follows_the_weights(weights: dict[str, int]) -> None:
    counts: dict[str | None, int] = {}
    for d in assignment(router(weights)):
        counts[d] = counts.get(d, 0) + 1
    total = sum(weights.values())
    for d, w in weights.items():
        expected = N_KEYS * w / total
        # within 3 % of the total, and within 10 % of the expected share
        assert abs(counts.get(d, 0) - expected) < 0.03 * N_KEYS
        assert abs(counts.get(d, 0) - expected) < 0.1 * expected + 300


@settings(max_examples=3, deadline=None)
@given(weights=weights_st, new=st.text("klmnop", min_size=1, max_size=6), w=st.integers(1, 10))
def test_adding_a_destination_moves_only_the_keys_it_wins(
    weights: dict[str, int], new: str, w: int
) -> None:
    r = router(weights)
    before = assignment(r)
    r.add_binding(new, str(w), None)
    after = assignment(r)
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert all(b == new for _, b in moved)  # nothing moves between old destinations
    share = w / (sum(weights.values()) + w)
    assert abs(len(moved) - share * N_KEYS) < 0.03 * N_KEYS
    r.remove_binding(new, str(w), None)
    assert assignment(r) == before  # removing it restores the old assignment


@settings(max_examples=10, deadline=None)
@given(weights=weights_st, data=st.data())
def test_choice_does_not_depend_on_binding_order(weights: dict[str, int], data) -> None:
    items = list(weights.items())
    shuffled = data.draw(st.permutations(items))
    a, b = router(dict(items)), router(dict(shuffled))
    assert [a.pick(k) for k in KEYS[:2000]] == [b.pick(k) for k in KEYS[:2000]]


def test_several_bindings_to_one_destination_add_their_weights() -> None:
    r = router({"a": 1, "b": 1})
    r.add_binding("a", "2", None)  # a: 3, b: 1
    counts = {"a": 0, "b": 0}
    for k in KEYS[:40_000]:
        counts[r.pick(k)] += 1  # type: ignore[index]
    assert abs(counts["a"] / 40_000 - 0.75) < 0.02
    r.remove_binding("a", "1", None)
    r.remove_binding("a", "2", None)
    assert r.weights() == {"b": 1}
    assert list(r.route("x")) == ["b"]


def test_no_bindings_routes_nowhere_and_one_binding_gets_everything() -> None:
    r = router({})
    assert list(r.route("k")) == []
    r.add_binding("only", "5", None)
    assert {r.pick(k) for k in KEYS[:100]} == {"only"}


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("abc", 'The binding key must be an integer: <<"abc">>'),
        ("", "The binding key must be an integer: <<>>"),
        ("1.5", 'The binding key must be an integer: <<"1.5">>'),
        ("0", "The binding key must be greater than 0"),
        ("-3", "The binding key must be greater than 0"),
    ],
)
def test_bad_binding_keys_are_refused_like_the_plugin(key: str, text: str) -> None:
    r = router({})
    with pytest.raises(BindingArgumentError) as ei:
        r.add_binding("q", key, None)
    assert ei.value.reply_code == PRECONDITION_FAILED
    assert ei.value.text == text
    assert len(r) == 0
    assert parse_weight("+7") == 7


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (
            {"hash-header": "h", "hash-property": "message_id"},
            "hash-header and hash-property are mutually exclusive",
        ),
        ({"hash-property": "foo"}, "Unsupported property: foo"),
        ({"hash-header": 5}, "invalid type 'signedint' for arg 'hash-header'; expected longstr"),
    ],
)
def test_bad_exchange_arguments(args: dict, text: str) -> None:
    with pytest.raises(SoftError) as ei:
        check_arguments(args)
    assert ei.value.reply_code == PRECONDITION_FAILED
    assert ei.value.text == text


class Props:
    def __init__(self, headers=None, message_id=None, timestamp=None) -> None:
        self.headers = headers
        self.message_id = message_id
        self.correlation_id = None
        self.timestamp = timestamp


def test_hash_header_and_property() -> None:
    rh = make_chash_router({"hash-header": "h"}, ident)
    rp = make_chash_router({"hash-property": "message_id"}, ident)
    assert isinstance(rh, MessageHashRouter) and rh.NEEDS_HEADERS
    for r in (rh, rp):
        for d in "abcd":
            r.add_binding(d, "1", None)
    # the routing key does not matter, the header / property does
    a = {rh.route_message(f"rk{i}", Props({"h": "same"}))[0] for i in range(50)}  # type: ignore[index]
    assert len(a) == 1
    spread = {tuple(rh.route_message("rk", Props({"h": f"v{i}"}))) for i in range(200)}
    assert len(spread) == 4
    b = {tuple(rp.route_message(f"rk{i}", Props(message_id="m1"))) for i in range(50)}
    assert len(b) == 1
    # a missing header hashes as one value: all such messages go to one destination
    c = {tuple(rh.route_message(f"rk{i}", Props({}))) for i in range(50)}
    assert len(c) == 1
    rt = make_chash_router({"hash-property": "timestamp"}, ident)
    rt.add_binding("a", "1", None)
    rt.add_binding("b", "1", None)
    assert rt.route_message("x", Props(timestamp=5)) == rt.route_message("y", Props(timestamp=5))


def test_make_router_builds_it_and_a_delayed_exchange_routes_as_its_type() -> None:
    assert type(make_router("x-consistent-hash")) is ConsistentHashRouter
    d = make_router("x-delayed-message", {"x-delayed-type": "topic"})
    assert d.TYPE == "topic"
    with pytest.raises(ValueError):
        make_router("x-delayed-message", {})
