"""``AckTimeouts`` with a fake clock: never early, at most one check late, per-queue
timeouts, the setting's default, and nothing walked for channels without unacked."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

from shardmq.broker.consumer_timeout import MAX_INTERVAL, AckTimeouts, timeout_text
from shardmq.config import Config


class FakeSink:
    def __init__(self) -> None:
        self.closed: list[tuple[int, int, str]] = []

    def close_channel(self, ch: Any, code: int, text: str) -> None:
        self.closed.append((ch.number, code, text))


def _setup(args: dict[str, Any]) -> tuple[AckTimeouts, Any, FakeSink]:
    sink = FakeSink()
    queue = SimpleNamespace(name="q", vhost="/", arguments=args)
    consumer = SimpleNamespace(tag="ctag", queue=queue)
    ch = SimpleNamespace(
        number=3,
        unacked=OrderedDict(),
        next_tag=0,
        ack_marks=None,
        consumers={"ctag": consumer},
        sink=sink,
    )
    conn = SimpleNamespace(channels={3: ch})
    broker = SimpleNamespace(connections=[conn])
    default = Config().amqp.consumer_timeout
    return AckTimeouts(broker, default), ch, sink  # type: ignore[arg-type]


def _deliver(ch: Any) -> int:
    ch.next_tag += 1
    consumer = ch.consumers["ctag"]
    ch.unacked[ch.next_tag] = (consumer, consumer.queue, object())
    return int(ch.next_tag)


def test_default_is_rabbitmqs_30_minutes_and_never_early() -> None:
    t, ch, sink = _setup({})
    assert t.default_ms == 1_800_000
    assert t.check(0.0) == MAX_INTERVAL  # nothing unacked
    _deliver(ch)
    now = 1.0
    while now < 1.0 + 1800.0:  # checks every 5 s for 30 minutes from the first mark
        t.check(now)
        now += MAX_INTERVAL
        assert not sink.closed or now > 1800.0
    t.check(now + MAX_INTERVAL)
    assert sink.closed == [(3, 406, timeout_text(3, 1_800_000))]


def test_queue_argument_and_acked_deliveries() -> None:
    t, ch, sink = _setup({"x-consumer-timeout": 1000})
    first = _deliver(ch)
    assert t.check(0.0) == 0.25  # a quarter of the shortest timeout in use
    t.check(0.9)
    del ch.unacked[first]  # acked in time
    _deliver(ch)  # a later delivery: its age counts from the first check that saw it
    t.check(1.2)
    t.check(2.1)
    assert sink.closed == []
    t.check(2.3)
    assert sink.closed == [(3, 406, timeout_text(3, 1000))]


def test_marks_are_dropped_when_nothing_is_unacked() -> None:
    t, ch, _sink = _setup({})
    tag = _deliver(ch)
    t.check(0.0)
    assert ch.ack_marks is not None
    del ch.unacked[tag]
    t.check(5.0)
    assert ch.ack_marks is None
