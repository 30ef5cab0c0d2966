"""Consumer acknowledgement timeout, as RabbitMQ's ``consumer_timeout``.

Owns: ``AckTimeouts`` — one per worker (``Broker.ack_timeouts``): a coarse periodic
check of every channel's oldest unacked deliveries; a delivery unacked for longer than
its queue's ``x-consumer-timeout`` argument (or the ``[amqp] consumer_timeout``
setting, 30 minutes by default; 0 turns it off) closes its channel with 406
PRECONDITION_FAILED and RabbitMQ's text, which requeues what the channel held.

How a delivery's age is known without a timestamp per delivery: at every check, a
channel holding unacked deliveries gets a mark (its highest delivery tag so far, now),
kept while some unacked delivery is not newer than it. A delivery with tag ``t`` was
made no later than the first mark whose tag is >= ``t``, so ``now - that mark's time``
never overstates its age: the channel is closed at most one check interval late, never
early.

Invariants:
- The delivery path pays nothing (no clock read, no per-message state); the check
  walks a channel's unacked deliveries only while they are older than the smallest
  timeout that can apply to them (normally one look at the oldest).
- Checks run every ``MAX_INTERVAL`` seconds, or a quarter of the smallest timeout in
  use (at least ``MIN_INTERVAL``) while a short one applies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from shardmq.amqp.errors import PRECONDITION_FAILED

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.broker.channel import Channel

log = logging.getLogger("shardmq.consumer_timeout")

ARGUMENT = "x-consumer-timeout"
MAX_INTERVAL = 5.0
MIN_INTERVAL = 0.1
# a channel's marks: (highest delivery tag at the check, monotonic time of the check)
Marks = deque[tuple[int, float]]


def queue_timeout(arguments: dict[str, Any], default_ms: int) -> int:
    """The timeout (ms) of a queue's deliveries: its ``x-consumer-timeout`` when a
    positive integer, else the setting (0: none)."""
    v = arguments.get(ARGUMENT)
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    return default_ms


def timeout_text(chnum: int, timeout_ms: int) -> str:
    return (
        f"delivery acknowledgement on channel {chnum} timed out. Timeout value used: "
        f"{timeout_ms} ms. This timeout value can be configured, see consumers doc guide "
        "to learn more"
    )


class AckTimeouts:
    def __init__(self, broker: Broker, default_ms: int) -> None:
        self.broker = broker
        self.default_ms = default_ms
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle = loop.call_later(MAX_INTERVAL, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        interval = MAX_INTERVAL
        try:
            interval = self.check(time.monotonic())
        except Exception:  # the timer must survive a bug in one channel's state
            log.exception("consumer timeout check failed")
        if self._loop is not None:
            self._handle = self._loop.call_later(interval, self._tick)

    def check(self, now: float) -> float:
        """Close every channel holding a delivery past its timeout; returns the
        interval until the next check."""
        smallest = 0
        for conn in list(self.broker.connections):
            for ch in list(conn.channels.values()):
                if not ch.unacked:
                    if ch.ack_marks is not None:
                        ch.ack_marks = None
                    continue
                floor = self._check_channel(ch, now)
                if floor and (not smallest or floor < smallest):
                    smallest = floor
        if not smallest:
            return MAX_INTERVAL
        return max(MIN_INTERVAL, min(MAX_INTERVAL, smallest / 4000))

    def _floor(self, ch: Channel, first_queue_args: dict[str, Any]) -> int:
        """The smallest timeout that can apply to the channel's deliveries (0: none)."""
        default = self.default_ms
        floor = queue_timeout(first_queue_args, default)
        for c in ch.consumers.values():
            t = queue_timeout(c.queue.arguments, default)
            if t and (not floor or t < floor):
                floor = t
        return floor

    def _check_channel(self, ch: Channel, now: float) -> int:
        marks = ch.ack_marks
        if marks is None:
            marks = ch.ack_marks = deque()
        if not marks or marks[-1][0] != ch.next_tag:
            marks.append((ch.next_tag, now))
        unacked = ch.unacked
        oldest = next(iter(unacked))
        while len(marks) > 1 and marks[0][0] < oldest:
            marks.popleft()
        floor = self._floor(ch, unacked[oldest][1].arguments)
        if not floor:
            return 0
        i = 0
        default = self.default_ms
        for tag, (consumer, queue, _msg) in unacked.items():
            while marks[i][0] < tag:
                i += 1
            age_ms = (now - marks[i][1]) * 1000
            if age_ms <= floor:
                break  # this one and every later (younger) one is within any timeout
            timeout = queue_timeout(queue.arguments, default)
            if timeout and age_ms > timeout:
                log.warning(
                    "Consumer %s on channel %d and queue '%s' in vhost '%s' has timed out "
                    "waiting for a delivery acknowledgement. Timeout used: %d ms. Closing "
                    "channel.",
                    consumer.tag if consumer is not None else "(basic.get)",
                    ch.number,
                    queue.name,
                    queue.vhost,
                    timeout,
                )
                ch.sink.close_channel(ch, PRECONDITION_FAILED, timeout_text(ch.number, timeout))
                return floor
        return floor
