"""Policies: validation texts (as rabbitmqctl 3.10 prints them), matching, precedence,
the merge with queue arguments, and the metadata ops that set and clear them."""

from __future__ import annotations

import json

import pytest

from shardmq.amqp.errors import NOT_FOUND, PRECONDITION_FAILED, SoftError
from shardmq.broker import metadata as md
from shardmq.broker.policies import PolicyError, PolicySet, erl, make_policy


@pytest.mark.parametrize(
    ("definition", "text"),
    [
        ({"message-ttl": -1}, "-1 is not a valid message TTL"),
        ({"foo": 1}, '[{<<"foo">>,1}] are not recognised policy settings'),
        ({}, "no policy provided"),
        ({"expires": 0}, "0 is not a valid queue expiry"),
        ({"max-length": "10"}, '<<"10">> is not a valid maximum length'),
        ({"overflow": "bogus"}, '<<"bogus">> is not a valid overflow value'),
        ({"dead-letter-exchange": 5}, "5 is not a valid dead letter exchange name"),
        ({"max-length-bytes": True}, "true is not a valid maximum length in bytes"),
        ({"delivery-limit": 1.5}, "1.5 is not a valid delivery limit"),
    ],
)
def test_invalid_definitions_get_rabbitmqs_text(definition: dict[str, object], text: str) -> None:
    with pytest.raises(PolicyError) as err:
        make_policy("/", "p", "^x", definition)
    assert str(err.value) == text


def test_invalid_pattern_apply_to_priority() -> None:
    with pytest.raises(PolicyError, match="pattern should be regular expression but is invalid"):
        make_policy("/", "p", "[", {"max-length": 1})
    with pytest.raises(PolicyError) as err:
        make_policy("/", "p", "x", {"max-length": 1}, apply_to="bogus")
    assert (
        str(err.value) == "apply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'"
    )
    with pytest.raises(PolicyError, match="priority should be a number"):
        make_policy("/", "p", "x", {"max-length": 1}, priority="high")


def test_erl_formats_terms_as_rabbitmq_prints_them() -> None:
    assert erl({"a": [1, "b"], "c": None}) == '[{<<"a">>,[1,<<"b">>]},{<<"c">>,null}]'
    assert erl(False) == "false"


def test_highest_priority_matching_policy_applies_ties_by_name() -> None:
    ps = PolicySet()
    ps.put(make_policy("/", "all", ".*", {"max-length": 5}))
    ps.put(make_policy("/", "orders", "^orders\\.", {"max-length": 1}, priority=2))
    ps.put(
        make_policy(
            "/", "ex", "^orders\\.", {"alternate-exchange": "ae"}, priority=9, apply_to="exchanges"
        )
    )
    assert ps.match("queue", "orders.new").name == "orders"  # type: ignore[union-attr]
    assert ps.match("queue", "x.orders.new").name == "all"  # type: ignore[union-attr]
    assert ps.match("exchange", "orders.x").name == "ex"  # type: ignore[union-attr]
    # a search, not a full match: RabbitMQ's re:run
    assert make_policy("/", "p", "ord", {"max-length": 1}).applies_to("queue", "my-orders")
    ps.put(make_policy("/", "b", "^z", {"max-length": 2}, priority=1))
    ps.put(make_policy("/", "a", "^z", {"max-length": 3}, priority=1))
    assert ps.match("queue", "z").name == "a"  # type: ignore[union-attr]
    assert ps.remove("a") is not None and ps.remove("a") is None
    assert ps.match("queue", "z").name == "b"  # type: ignore[union-attr]


def _meta() -> md.Metadata:
    from loadtest.inproc import make_broker

    return make_broker().metadata


def _declare(meta: md.Metadata, name: str) -> None:
    meta.apply(md.DeclareQueue("/", name, False, False, False, False, b"", 1, False))


def _set(
    meta: md.Metadata, name: str, pattern: str, definition: dict[str, object], **kw: object
) -> None:
    op = md.SetPolicy(
        "/",
        name,
        pattern,
        str(kw.get("apply_to", "all")),
        int(kw.get("priority", 0)),  # type: ignore[call-overload]
        json.dumps(definition),
    )
    # the op survives the trip between processes unchanged
    assert md.decode_op(md.encode_op(op)) == op
    meta.apply(op)


def test_policy_ops_apply_to_existing_and_new_queues_and_clear() -> None:
    meta = _meta()
    vh = meta.vhost("/")
    _declare(meta, "orders.a")
    _declare(meta, "other")
    _set(meta, "lim", "^orders\\.", {"max-length": 2}, apply_to="queues")
    assert vh.queues["orders.a"].policy is not None
    assert vh.queues["orders.a"].policy.name == "lim"  # type: ignore[union-attr]
    assert vh.queues["other"].policy is None
    _declare(meta, "orders.b")
    assert vh.queues["orders.b"].policy.name == "lim"  # type: ignore[union-attr]
    assert vh.exchanges["amq.direct"].policy is None
    # a replacement with a higher-priority policy reaches the queues at once
    _set(meta, "all", ".*", {"expires": 1000}, priority=5)
    assert vh.queues["orders.a"].policy.name == "all"  # type: ignore[union-attr]
    assert vh.exchanges["amq.direct"].policy.name == "all"  # type: ignore[union-attr]
    meta.apply(md.ClearPolicy("/", "all"))
    assert vh.queues["orders.a"].policy.name == "lim"  # type: ignore[union-attr]
    assert vh.queues["other"].policy is None
    with pytest.raises(SoftError) as err:
        meta.apply(md.ClearPolicy("/", "all"))
    assert err.value.reply_code == NOT_FOUND
    assert err.value.text == "Parameter does not exist"


def test_policy_op_with_invalid_definition_changes_nothing() -> None:
    meta = _meta()
    _declare(meta, "q")
    with pytest.raises(SoftError) as err:
        _set(meta, "bad", ".*", {"max-length": -3})
    assert err.value.reply_code == PRECONDITION_FAILED
    assert err.value.text == "-3 is not a valid maximum length"
    assert meta.vhost("/").queues["q"].policy is None
    assert len(meta.vhost("/").policies) == 0


def test_queue_hears_of_its_policy_change() -> None:
    """The vhost calls ``policy_changed`` on an object that has one (queue features
    recompute their limits there)."""
    meta = _meta()
    seen: list[object] = []

    class Hooked:
        name = "q2"
        policy = None

        def policy_changed(self) -> None:
            seen.append(self.policy)

    h = Hooked()
    meta.vhost("/").queues["q2"] = h  # type: ignore[assignment]
    _set(meta, "p", "^q2$", {"max-length": 1})
    assert len(seen) == 1 and seen[0] is not None
    meta.apply(md.ClearPolicy("/", "p"))
    assert seen[-1] is None


def test_a_restarted_worker_gets_the_policies_with_its_snapshot() -> None:
    from shardmq.broker.sequencer import snapshot

    meta = _meta()
    _set(meta, "lim", "^q", {"max-length": 2}, priority=4, apply_to="queues")
    _declare(meta, "q1")
    from shardmq.broker.broker import Broker
    from shardmq.config import load_config

    # a worker of several: its users, policies and queues all come with the snapshot
    fresh = Broker(load_config(), slot=1, workers=2, storage=False).metadata
    for data in snapshot(meta):
        fresh.apply(md.decode_op(data))
    vh = fresh.vhost("/")
    assert [p.as_row() for p in vh.policies] == [p.as_row() for p in meta.vhost("/").policies]
    assert vh.queues["q1"].policy is not None and vh.queues["q1"].policy.name == "lim"
    assert set(fresh.access.users) == {"guest"} and fresh.access.permission("guest", "/")
