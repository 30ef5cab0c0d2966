"""AMQP 1.0 link recovery: the unsettled deliveries of a lost receiving link, kept for a
while so that the link re-attached under the same name gets them back.

Owns: ``LinkRecovery`` (one per broker process, ``recovery_of``) — parked deliveries by
(vhost, the client's container-id, link name): each one's delivery-tag, queue and
message, in delivery order, taken out of their channel (so closing it does not requeue
them) while their queue still counts them as delivered. ``take`` hands them to the
re-attached link; after ``[amqp1] link_recovery_timeout`` seconds (or when the same key
is parked again) they go back to their queues as redelivered, as a closed link's do.

Invariants:
- Every parked delivery is settled exactly once: by the re-attached link (outcome or
  resend, see ``shardmq.adapter.amqp10``), or requeued at the time-out.
- The registry is this worker's: a link re-attached on another worker finds nothing
  here, and gets the deliveries from its queue once the time-out requeued them (none
  lost, later). Without a running event loop (the in-process unit brokers) nothing
  expires by itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.broker.channel import AnyQueue
    from shardmq.message import Message

log = logging.getLogger("shardmq.amqp1")

Key = tuple[str, str, str]  # vhost, container-id, link name
Parked = list[tuple[bytes, "AnyQueue", "Message"]]  # delivery-tag, queue, message


class LinkRecovery:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.parked: dict[Key, Parked] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def park(self, key: Key, entries: Parked) -> None:
        """Keep ``entries`` for ``key`` until ``take`` or the time-out."""
        old = self.take(key)
        if old:
            requeue(old)
        if not entries:
            return
        self.parked[key] = entries
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timers[key] = loop.call_later(self.timeout, self._expire, key)

    def take(self, key: Key) -> Parked | None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        return self.parked.pop(key, None)

    def _expire(self, key: Key) -> None:
        self._timers.pop(key, None)
        entries = self.parked.pop(key, None)
        if entries:
            log.info(
                "amqp1 link '%s' of container '%s' (vhost '%s') not recovered within %g s: "
                "%d deliveries requeued",
                key[2],
                key[1],
                key[0],
                self.timeout,
                len(entries),
            )
            requeue(entries)


def requeue(entries: Parked) -> None:
    """Back to their queues, as redelivered (one call per queue)."""
    by_queue: dict[AnyQueue, list[Message]] = {}
    for _tag, queue, msg in entries:
        by_queue.setdefault(queue, []).append(msg)
    for queue, msgs in by_queue.items():
        queue.requeue(msgs)


_REGISTRIES: WeakKeyDictionary[Broker, LinkRecovery] = WeakKeyDictionary()


def recovery_of(broker: Broker) -> LinkRecovery:
    reg = _REGISTRIES.get(broker)
    if reg is None:
        reg = _REGISTRIES[broker] = LinkRecovery(broker.config.amqp1.link_recovery_timeout)
    return reg
