"""Unit tests of the queue feature path: argument validation (``qargs``), the policy
overlay rule, expiration parsing, expiry in slices, length limits and the x-death
layout (``deadletter``), without a broker process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shardmq.amqp.codec import shortstr
from shardmq.amqp.errors import SoftError
from shardmq.amqp.fieldtable import Timestamp
from shardmq.amqp.methods import BasicProperties
from shardmq.broker import deadletter, qfeatures
from shardmq.broker.deadletter import dead_letter_copy, is_cycle
from shardmq.broker.expiry import EXPIRE_CLOCK_MASK, EXPIRE_SLICE, now_ms
from shardmq.broker.qargs import (
    NO_SETTINGS,
    QueueSettings,
    effective,
    parse_expiration,
    parse_queue_args,
)
from shardmq.broker.queue import Queue
from shardmq.message import Message


def msg(body: bytes = b"x", rk: str = "q", **props: Any) -> Message:
    p = BasicProperties(**props).encode()
    header = (60).to_bytes(2, "big") + b"\0\0" + len(body).to_bytes(8, "big") + p
    return Message.from_parts(shortstr("") + shortstr(rk), header, body)


# ---------------------------------------------------------------- qargs
def test_no_arguments_no_settings() -> None:
    assert parse_queue_args({}, "q", "/") is NO_SETTINGS
    assert not parse_queue_args({"x-custom": 1}, "q", "/").any


def test_parse_all() -> None:
    s = parse_queue_args(
        {
            "x-message-ttl": 0,
            "x-expires": 5,
            "x-max-length": 0,
            "x-max-length-bytes": 10,
            "x-overflow": "reject-publish-dlx",
            "x-dead-letter-exchange": "dlx",
            "x-dead-letter-routing-key": "rk",
        },
        "q",
        "/",
    )
    assert s == QueueSettings(0, 5, 0, 10, "reject-publish-dlx", "dlx", "rk", True)
    assert s.limited and s.any


@pytest.mark.parametrize(
    ("args", "detail"),
    [
        (
            {"x-message-ttl": -1},
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}",
        ),
        (
            {"x-message-ttl": True},
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': "
            '"expected integer, got bool"',
        ),
        ({"x-expires": 0}, "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"),
        (
            {"x-max-length-bytes": "a"},
            "invalid arg 'x-max-length-bytes' for queue 'q' in "
            "vhost '/': \"expected integer, got longstr\"",
        ),
        (
            {"x-overflow": 5},
            "invalid arg 'x-overflow' for queue 'q' in vhost '/': {unacceptable_type,signedint}",
        ),
        (
            {"x-dead-letter-exchange": "e", "x-dead-letter-routing-key": 1 << 40},
            "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': "
            "{unacceptable_type,long}",
        ),
    ],
)
def test_invalid(args: dict[str, Any], detail: str) -> None:
    with pytest.raises(SoftError) as e:
        parse_queue_args(args, "q", "/")
    assert e.value.reply_code == 406 and e.value.text == detail


def test_policy_overlay() -> None:
    args = parse_queue_args({"x-max-length": 10, "x-dead-letter-exchange": "a"}, "q", "/")
    s = effective(args, {"max-length": 5, "message-ttl": 7, "dead-letter-exchange": "b"})
    assert s.max_length == 5  # numeric: the smaller
    assert s.message_ttl == 7  # only the policy sets it
    assert s.dead_letter_exchange == "a"  # the argument wins
    assert effective(args, {"max-length": 50}).max_length == 10
    assert effective(args, None) is args
    assert effective(args, {"overflow": "reject-publish"}).overflow == "reject-publish"
    explicit = parse_queue_args({"x-overflow": "drop-head"}, "q", "/")
    assert effective(explicit, {"overflow": "reject-publish"}).overflow == "drop-head"


@pytest.mark.parametrize(("value", "ok"), [("0", 0), ("60000", 60000), ("+5", 5)])
def test_expiration_ok(value: str, ok: int) -> None:
    assert parse_expiration(value) == ok


@pytest.mark.parametrize("value", ["", "abc", "-1", "1.5", " 5"])
def test_expiration_invalid(value: str) -> None:
    with pytest.raises(SoftError) as e:
        parse_expiration(value)
    assert e.value.reply_code == 406
    assert e.value.text.startswith(f"invalid expiration '{value}': ")


# ---------------------------------------------------------------- expiry in slices
def test_expire_in_slices() -> None:
    q = Queue("q", "/", arguments={"x-message-ttl": 10})
    n = 2 * EXPIRE_SLICE + 5
    past = now_ms() - 1000
    for _ in range(n):
        m = msg()
        m.ts = past
        q.publish(m)
    assert q.message_count == n
    unbounded = float("inf")  # no time budget: the count alone cuts the slice
    assert qfeatures.expire_due(q, budget=unbounded) is True
    assert q.message_count == n - EXPIRE_SLICE
    assert qfeatures.expire_due(q, budget=unbounded) is True
    assert qfeatures.expire_due(q, budget=unbounded) is False
    assert q.message_count == 0 and q.expired == n


def test_expire_slice_stops_on_time_budget() -> None:
    q = Queue("q", "/", arguments={"x-message-ttl": 10})
    past = now_ms() - 1000
    for _ in range(1000):
        m = msg()
        m.ts = past
        q.publish(m)
    assert qfeatures.expire_due(q, limit=10**9, budget=0.0) is True
    assert q.expired == EXPIRE_CLOCK_MASK + 1  # the clock is read every 16 messages


def test_timer_expires_across_loop_turns() -> None:
    """100,000 messages due at once leave over several loop turns, each turn expiring
    at most EXPIRE_SLICE (so other work interleaves)."""

    async def run() -> tuple[int, list[int]]:
        q = Queue("q", "/", arguments={"x-message-ttl": 0})
        q.start(None)
        for _ in range(100_000):
            q.publish(msg())
        counts: list[int] = []
        loop = asyncio.get_running_loop()
        while q.message_count:
            counts.append(q.message_count)
            await asyncio.sleep(0)
            assert len(counts) < 10_000
        await asyncio.sleep(0)
        _ = loop
        return q.expired, counts

    expired, counts = asyncio.run(run())
    assert expired == 100_000
    steps = [a - b for a, b in zip(counts, counts[1:] + [0], strict=True)]
    assert max(steps) <= EXPIRE_SLICE
    assert len(counts) >= 100_000 // EXPIRE_SLICE


class _Sink:
    def __init__(self) -> None:
        self.got: list[Message] = []

    def deliver(self, c: Any, q: Queue, m: Message, redelivered: bool) -> None:
        self.got.append(m)


class _Taker:
    """A consumer with room for everything."""

    exclusive = False
    priority = 0

    def __init__(self) -> None:
        self.channel = _Sink()

    def ready(self) -> bool:
        return True


def _due_then_live(q: Queue, n: int) -> Message:
    past = now_ms() - 120_000
    for _ in range(n):
        m = msg()
        m.ts = past  # due already, as if the timer had not had its turn yet
        q.publish(m)
    live = msg(b"live")
    q.publish(live)
    return live


def test_dispatch_leaves_a_mass_of_due_heads_to_the_timer() -> None:
    """A consumer with room arriving in front of many due heads: its dispatch expires
    one slice at most and hands the rest to the TTL timer, which dispatches again once
    they are gone (the live message behind them is delivered)."""
    n = 5 * EXPIRE_SLICE

    async def run() -> tuple[int, int, list[Message], Message]:
        q = Queue("q", "/", arguments={"x-message-ttl": 60_000})
        q.start(None)
        live = _due_then_live(q, n)
        taker = _Taker()
        q.add_consumer(taker)  # type: ignore[arg-type]
        in_one_turn = q.expired
        for _ in range(10_000):
            if taker.channel.got:
                break
            await asyncio.sleep(0)
        return in_one_turn, q.expired, taker.channel.got, live

    in_one_turn, expired, got, live = asyncio.run(run())
    assert 0 < in_one_turn <= EXPIRE_SLICE
    assert expired == n and got == [live]


def test_dispatch_without_a_loop_expires_all_due_heads() -> None:
    q = Queue("q", "/", arguments={"x-message-ttl": 60_000})
    live = _due_then_live(q, 3 * EXPIRE_SLICE)
    taker = _Taker()
    q.add_consumer(taker)  # type: ignore[arg-type]
    assert q.expired == 3 * EXPIRE_SLICE and taker.channel.got == [live]


def test_per_message_ttl_expires_at_head_only() -> None:
    q = Queue("q", "/")
    a, b = msg(b"a"), msg(b"b", expiration="0")
    q.publish(a)
    q.publish(b)
    assert q.features  # a message with its own TTL switches the feature path on
    got = q.get()
    assert got is not None and got[0] is a
    assert q.get() is None and q.expired == 1


def test_drop_head_and_bytes() -> None:
    q = Queue("q", "/", arguments={"x-max-length-bytes": 5})
    for body in (b"aaa", b"bb", b"c"):
        q.publish(msg(body))
    assert q.message_count == 2 and q.dropped == 1 and q.ready_bytes == 3


# ---------------------------------------------------------------- x-death
@pytest.mark.parametrize(
    "props",
    [
        {},
        {"headers": {}},
        {"content_type": "text/plain", "expiration": "100"},
        {"content_encoding": "gzip", "delivery_mode": 2, "priority": 3},
        {"content_type": "a", "content_encoding": "b", "correlation_id": "c", "app_id": "d"},
        {"expiration": "0", "message_id": "m", "timestamp": 5, "type": "t", "user_id": "u"},
    ],
)
@pytest.mark.parametrize("dlrk", [None, "k2"])
def test_first_death_of_a_headerless_message_matches_the_general_path(
    props: dict[str, Any], dlrk: str | None
) -> None:
    """The cached first-death table (messages without headers) gives the same bytes as
    decoding, merging and encoding the headers."""
    m = msg(b"body", rk="rk", **props)
    for reason in ("rejected", "expired", "rejected"):  # the second "rejected" is cached
        fast, keys, deaths = dead_letter_copy(m, reason, "q1", "dlx", dlrk, 1000)
        p = BasicProperties.decode(m.raw, 19)
        slow, skeys, sdeaths = deadletter._general_copy(
            m, p, "", "rk", reason, "q1", "dlx", dlrk, 1000
        )
        assert (fast.exrk, fast.raw, keys, deaths) == (slow.exrk, slow.raw, skeys, sdeaths)


def test_x_death_first_and_repeat() -> None:
    m = msg(b"b", rk="rk", expiration="100", headers={"CC": ["c"]})
    c1, keys, _ = dead_letter_copy(m, "expired", "q1", "dlx", None, 1000)
    assert keys == ["rk", "c"]
    p = c1.properties()
    assert p.expiration is None
    h = p.headers
    assert h is not None
    (d,) = h["x-death"]
    assert list(d) == [
        "count",
        "reason",
        "queue",
        "time",
        "exchange",
        "routing-keys",
        "original-expiration",
    ]
    assert d["time"] == Timestamp(1000) and d["original-expiration"] == "100"
    assert h["x-first-death-reason"] == "expired"
    c2, _, _ = dead_letter_copy(c1, "rejected", "q2", "dlx", "k2", 2000)
    c3, keys3, deaths3 = dead_letter_copy(c2, "expired", "q1", "dlx", None, 3000)
    h3 = c3.properties().headers
    assert h3 is not None
    assert [(x["queue"], x["reason"], x["count"]) for x in h3["x-death"]] == [
        ("q1", "expired", 2),
        ("q2", "rejected", 1),
    ]
    assert list(h3["x-death"][0]) == sorted(h3["x-death"][0])
    assert deaths3 == h3["x-death"]
    assert "CC" not in h3  # dropped with the routing key override of the 2nd death
    assert keys3 == ["k2"]
    assert c3.body == b"b"


def test_cycle_rule() -> None:
    expired = {"queue": "a", "reason": "expired"}
    rejected = {"queue": "b", "reason": "rejected"}
    assert is_cycle("a", [expired])
    assert not is_cycle("b", [expired])
    assert not is_cycle("a", [rejected, expired])


def test_policy_changed_recomputes_settings() -> None:
    """What the policies' ``VHost.assign_policy`` hook does: the queue's effective
    settings become its arguments overlaid by the policy's definition."""

    class FakePolicy:
        definition = {"max-length": 2, "message-ttl": 50}

    class PolicyQueue(Queue):  # the policies' Queue has this slot itself
        __slots__ = ("policy",)

    q = PolicyQueue("q", "/", arguments={"x-max-length": 5})
    q.policy = FakePolicy()
    q.policy_changed()
    assert q.settings.max_length == 2 and q.settings.message_ttl == 50
    q.policy = None
    q.policy_changed()
    assert q.settings.max_length == 5 and q.settings.message_ttl is None
