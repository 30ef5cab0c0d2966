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
- The registry is this worker's. With several workers, ``hooks`` (set by
  ``workers.amqp1_links``) tell the other workers which keys are parked here; a link
  re-attached on another worker finds nothing here, that worker asks this one to
  ``release`` the key, and the deliveries go back to their queue at once (redelivered,
  to the new link as the queue's consumer: at-least-once, without the time-out's wait;
  the client's unsettled map is not applied then). Without hooks they come back at the
  time-out. Without a running event loop (the in-process unit brokers) nothing expires
  by itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.broker.channel import AnyQueue
    from shardmq.message import Message

log = logging.getLogger("shardmq.amqp1")

Key = tuple[str, str, str]  # vhost, container-id, link name
Parked = list[tuple[bytes, "AnyQueue", "Message"]]  # delivery-tag, queue, message


class Hooks(Protocol):
    """Telling the other workers (``workers.amqp1_links``)."""

    def parked(self, key: Key) -> None: ...
    def unparked(self, key: Key) -> None: ...
    def missed(self, key: Key) -> None: ...


class LinkRecovery:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.parked: dict[Key, Parked] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self.hooks: Hooks | None = None

    def park(self, key: Key, entries: Parked) -> None:
        """Keep ``entries`` for ``key`` until ``take`` or the time-out."""
        old = self.take(key)
        if old:
            requeue(old)
        if not entries:
            return
        self.parked[key] = entries
        if self.hooks is not None:
            self.hooks.parked(key)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timers[key] = loop.call_later(self.timeout, self._expire, key)

    def take(self, key: Key, ask_others: bool = False) -> Parked | None:
        """The entries parked under ``key`` (gone from here). Not here and
        ``ask_others``: the other workers are asked to release theirs."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        entries = self.parked.pop(key, None)
        if self.hooks is not None:
            if entries is not None:
                self.hooks.unparked(key)
            elif ask_others:
                self.hooks.missed(key)
        return entries

    def release(self, key: Key) -> int:
        """Another worker's link took ``key``: what is parked here goes back to the
        queues now; how many."""
        entries = self.take(key)
        if entries:
            log.info(
                "amqp1 link '%s' of container '%s' re-attached on another worker: "
                "%d deliveries requeued",
                key[2],
                key[1],
                len(entries),
            )
            requeue(entries)
        return len(entries or ())

    def _expire(self, key: Key) -> None:
        self._timers.pop(key, None)
        entries = self.parked.pop(key, None)
        if entries is not None and self.hooks is not None:
            self.hooks.unparked(key)
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
