"""Unit tests of the lean path of a queue whose only per-message feature is its TTL
(``ttlqueue``): which settings select it, when a queue leaves it, that it never hands
out a due message, and the once-per-loop-turn clock (``expiry.turn_ms``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from shardmq.amqp.codec import shortstr
from shardmq.amqp.methods import BasicProperties
from shardmq.broker.expiry import now_ms, turn_ms
from shardmq.broker.qargs import QueueSettings
from shardmq.broker.qfeatures import FULL, PLAIN, TTL
from shardmq.broker.queue import Queue
from shardmq.message import Message


def msg(body: bytes = b"x", seq: int = 0, **props: Any) -> Message:
    p = BasicProperties(**props).encode()
    header = (60).to_bytes(2, "big") + b"\0\0" + len(body).to_bytes(8, "big") + p
    return Message.from_parts(shortstr("") + shortstr("q"), header, body, seq)


class _Sink:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, bool]] = []

    def deliver(self, c: Any, q: Queue, m: Message, redelivered: bool) -> None:
        self.got.append((m.body, redelivered))


class _Consumer:
    exclusive = False
    priority = 0

    def __init__(self, room: bool = True) -> None:
        self.channel = _Sink()
        self.room = room

    def ready(self) -> bool:
        return self.room


@pytest.mark.parametrize(
    ("arguments", "mode"),
    [
        ({}, PLAIN),
        ({"x-message-ttl": 1000}, TTL),
        ({"x-message-ttl": 0, "x-expires": 5000, "x-dead-letter-exchange": "dlx"}, TTL),
        ({"x-message-ttl": 1000, "x-max-priority": 5}, TTL),
        ({"x-message-ttl": 1000, "x-max-length": 10}, FULL),
        ({"x-message-ttl": 1000, "x-max-length-bytes": 10}, FULL),
        ({"x-max-length": 10}, FULL),
        ({"x-dead-letter-exchange": "dlx"}, FULL),
    ],
)
def test_mode_from_arguments(arguments: dict[str, Any], mode: int) -> None:
    assert Queue("q", "/", arguments=arguments).features == mode


def test_a_message_with_its_own_expiration_leaves_the_ttl_path_for_good() -> None:
    q = Queue("q", "/", arguments={"x-message-ttl": 60_000})
    q.publish(msg(b"a"))
    assert q.features == TTL
    q.publish(msg(b"b", expiration="0"))
    assert q.features == FULL
    q.apply_settings(QueueSettings(message_ttl=60_000))
    assert q.features == FULL  # sticky: "b" is in the store
    c = _Consumer()
    q.add_consumer(c)  # type: ignore[arg-type]
    assert c.channel.got == [(b"a", False)] and q.expired == 1


def test_settings_changes() -> None:
    q = Queue("q", "/")
    q.apply_settings(QueueSettings(message_ttl=1000))  # a policy sets a TTL
    assert q.features == TTL
    q.apply_settings(QueueSettings(message_ttl=1000, max_length=5))
    assert q.features == FULL
    q = Queue("q", "/", arguments={"x-message-ttl": 1000})
    q.apply_settings(QueueSettings())  # the TTL goes: the general path, as before
    assert q.features == FULL


def test_due_messages_are_never_delivered() -> None:
    q = Queue("q", "/", arguments={"x-message-ttl": 60_000})
    c = _Consumer(room=False)
    q.add_consumer(c)  # type: ignore[arg-type]
    old = msg(b"old", seq=1)
    old.ts = now_ms() - 61_000  # stamped by an earlier queue of the same publish
    q.publish(old)
    q.publish(msg(b"new", seq=2))
    assert q.features == TTL and q.message_count == 2
    c.room = True
    q.dispatch()
    assert c.channel.got == [(b"new", False)]
    assert q.expired == 1 and q.message_count == 0


def test_stamps_on_entering_the_store_only() -> None:
    q = Queue("q", "/", arguments={"x-message-ttl": 60_000})
    c = _Consumer()
    q.add_consumer(c)  # type: ignore[arg-type]
    straight = msg(b"a", seq=1)
    q.publish(straight)  # handed to the consumer: no clock read
    assert straight.ts == 0 and c.channel.got == [(b"a", False)]
    c.room = False
    kept = msg(b"b", seq=2)
    before = now_ms()
    q.publish(kept)
    assert before <= kept.ts <= now_ms()
    # a message never stamped comes back (requeued): stamped when checked, delivered
    q.requeue([straight])
    c.room = True
    q.dispatch()
    assert c.channel.got[1:] == [(b"a", True), (b"b", False)]
    assert straight.ts >= before and q.expired == 0


def test_many_due_heads_expire_in_slices_through_the_ttl_path() -> None:
    """A dispatch in front of more due heads than one slice leaves them to the timer
    (``qfeatures``), and the live message behind them is delivered once they are gone."""
    from shardmq.broker.expiry import EXPIRE_SLICE

    n = 3 * EXPIRE_SLICE

    async def run() -> tuple[int, int, list[tuple[bytes, bool]]]:
        q = Queue("q", "/", arguments={"x-message-ttl": 60_000})
        q.start(None)
        past = now_ms() - 120_000
        for i in range(n):
            m = msg(seq=i + 1)
            m.ts = past
            q.publish(m)
        q.publish(msg(b"live", seq=n + 1))
        assert q.features == TTL
        c = _Consumer()
        q.add_consumer(c)  # type: ignore[arg-type]
        in_one_turn = q.expired
        for _ in range(10_000):
            if c.channel.got:
                break
            await asyncio.sleep(0)
        return in_one_turn, q.expired, c.channel.got

    in_one_turn, expired, got = asyncio.run(run())
    assert 0 < in_one_turn <= EXPIRE_SLICE
    assert expired == n and got == [(b"live", False)]


def test_turn_ms_is_read_once_per_loop_turn() -> None:
    async def run() -> tuple[int, int, int]:
        first = turn_ms()
        time.sleep(0.005)
        same = turn_ms()  # the same turn: the same reading
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return first, same, turn_ms()

    first, same, later = asyncio.run(run())
    assert same == first and later >= first + 5
    a = turn_ms()  # without a loop: the clock every time
    time.sleep(0.005)
    assert turn_ms() >= a + 5


class _Publisher:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def throttle(self, queue: Queue, on: bool) -> None:
        self.calls.append(on)


def test_throttled_publishers_are_released_when_the_backlog_is_gone() -> None:
    """As on the plain path: a dispatch that finds the backlog under the release mark
    releases the publishers, also when nothing is left to deliver."""
    q = Queue("q", "/", arguments={"x-message-ttl": 60_000})
    c = _Consumer(room=False)
    q.add_consumer(c)  # type: ignore[arg-type]
    for i in range(4):
        q.publish(msg(seq=i + 1))
    pub = _Publisher()
    q.throttle(pub)  # type: ignore[arg-type]
    assert pub.calls == [True] and q.release_at == 2
    while q.get() is not None:  # drained by basic.get
        pass
    q.dispatch()
    assert pub.calls == [True, False] and not q.throttled
