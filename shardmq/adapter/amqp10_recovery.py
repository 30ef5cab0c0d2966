"""AMQP 1.0 link recovery: the unsettled deliveries of a lost receiving link, kept for a
while so that the link re-attached under the same name gets them back.

Owns: ``LinkRecovery`` (one per broker process, ``recovery_of``) — parked deliveries by
(vhost, the client's container-id, link name): each one's delivery-tag, queue and
message, in delivery order, taken out of their channel (so closing it does not requeue
them) while their queue still counts them as delivered. ``take`` hands them to the
re-attached link; after ``[amqp1] link_recovery_timeout`` seconds (or when the same key
is parked again) they go back to their queues as redelivered, as a closed link's do.
Also the outcomes of a client's unsettled map (``outcome_name``, ``apply_outcome``:
accepted = ack, rejected and modified undeliverable-here = reject, released and
modified = requeue) and what to do with each parked delivery on a re-attach
(``plan``, spec 2.6.13 "Resuming Deliveries").

Invariants:
- Every parked delivery is settled exactly once: by the re-attached link (the
  client's outcome, or sent again and settled by it), or requeued at the time-out.
- ``plan``: a delivery the client's map gives a terminal outcome is settled with it
  and resumed (resume=true, same delivery-tag) settled, without its message; one the
  map lists without an outcome is resumed with its message under its tag; one the map
  does not list is sent again as a new delivery (new tag, redelivered). Tags only the
  client lists are ignored (the client counts them settled).
- The registry is this worker's. With several workers, ``hooks`` (set by
  ``workers.amqp1_links``) tell the other workers which keys are parked here; a link
  re-attached on another worker finds nothing here, asks ``hooks.where`` which worker
  has the key, and has it ``release`` the key with the client's outcomes
  (``hooks.reclaim``): that worker settles those, requeues the rest at once
  (redelivered: they come back through their queue as new deliveries) and answers
  the delivery-tags, which the new worker puts in its attach's unsettled map; it
  resumes the client's terminal ones settled and aborts (resume=true, aborted) the
  ones the client listed without an outcome. Without hooks they come back at the
  time-out. Without a running event loop (the in-process unit brokers) nothing
  expires by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from weakref import WeakKeyDictionary

from shardmq.amqp1 import types_gen as T
from shardmq.oplog import event

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.broker.channel import AnyQueue
    from shardmq.message import Message

log = logging.getLogger("shardmq.amqp1")

Key = tuple[str, str, str]  # vhost, container-id, link name
Parked = list[tuple[bytes, "AnyQueue", "Message"]]  # delivery-tag, queue, message


Reclaimed = Callable[[list[bytes] | None], None]


class Hooks(Protocol):
    """Telling the other workers (``workers.amqp1_links``)."""

    def parked(self, key: Key) -> None: ...
    def unparked(self, key: Key) -> None: ...
    def where(self, key: Key) -> int | None:
        """The other worker that has ``key`` parked, if any."""

    def reclaim(self, slot: int, key: Key, outcomes: dict[str, str], done: Reclaimed) -> None:
        """Have worker ``slot`` release ``key``, applying ``outcomes`` (delivery-tag
        in hex -> ``outcome_name``); ``done`` gets the tags it had (None: no answer)."""


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

    def take(self, key: Key) -> Parked | None:
        """The entries parked under ``key`` (gone from here)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        entries = self.parked.pop(key, None)
        if self.hooks is not None and entries is not None:
            self.hooks.unparked(key)
        return entries

    def elsewhere(self, key: Key) -> int | None:
        """The other worker keeping ``key``, when not here."""
        return self.hooks.where(key) if self.hooks is not None else None

    def release(self, key: Key, outcomes: dict[str, str] | None = None) -> list[bytes]:
        """Another worker's link took ``key``: the client's ``outcomes`` (tag in hex
        -> ``outcome_name``) are applied, the rest goes back to the queues now; the
        delivery-tags that were parked here, in order."""
        entries = self.take(key) or []
        outcomes = outcomes or {}
        rest: Parked = []
        for entry in entries:
            name = outcomes.get(entry[0].hex())
            if name is None:
                rest.append(entry)
            else:
                apply_outcome(entry[1], entry[2], name)
        if entries:
            event(
                log,
                logging.INFO,
                "link_recovered",
                f"amqp1 link '{key[2]}' of container '{key[1]}' re-attached on another "
                f"worker: {len(entries) - len(rest)} deliveries settled by its unsettled "
                f"map, {len(rest)} requeued",
            )
            requeue(rest)
        return [tag for tag, _q, _m in entries]

    def _expire(self, key: Key) -> None:
        self._timers.pop(key, None)
        entries = self.parked.pop(key, None)
        if entries is not None and self.hooks is not None:
            self.hooks.unparked(key)
        if entries:
            event(
                log,
                logging.INFO,
                "link_not_recovered",
                f"amqp1 link '{key[2]}' of container '{key[1]}' (vhost '{key[0]}') not "
                f"recovered within {self.timeout:g} s: {len(entries)} deliveries requeued",
            )
            requeue(entries)


def outcome_name(state: Any) -> str | None:
    """A terminal delivery state of a client's unsettled map, as a name (None: not an
    outcome; the delivery is not decided)."""
    if isinstance(state, T.Accepted):
        return "accepted"
    if isinstance(state, T.Rejected):
        return "rejected"
    if isinstance(state, T.Released):
        return "released"
    if isinstance(state, T.Modified):
        return "modified-undeliverable" if state.undeliverable_here else "modified"
    return None


def apply_outcome(queue: AnyQueue, msg: Message, name: str) -> None:
    """A parked delivery settled with the client's outcome (``outcome_name``)."""
    if name == "accepted":
        queue.settle(msg)
    elif name in ("rejected", "modified-undeliverable"):
        queue.reject(msg)
    else:  # released, modified: back to the queue, redelivered
        queue.requeue([msg])


class Plan:
    """What a re-attached link does with its parked deliveries (see ``plan``)."""

    __slots__ = ("settled", "resumed", "resent", "unsettled")

    def __init__(self) -> None:
        self.settled: list[tuple[bytes, Any]] = []  # (tag, the client's state): applied
        self.resumed: Parked = []  # listed without an outcome: resumed with the message
        self.resent: Parked = []  # not listed: sent again as new deliveries
        self.unsettled: dict[bytes, Any] = {}  # the broker's map for its attach


def plan(parked: Parked, theirs: dict[bytes, Any] | None) -> Plan:
    """Spec 2.6.13 applied to ``parked`` and the client's unsettled map ``theirs``:
    the client's outcomes are applied to the queues here."""
    theirs = theirs or {}
    p = Plan()
    for entry in parked:
        tag, queue, msg = entry
        if tag not in theirs:
            p.resent.append(entry)
            p.unsettled[tag] = None
            continue
        state = theirs[tag]
        name = outcome_name(state)
        if name is None:
            p.resumed.append(entry)
            p.unsettled[tag] = None
        else:
            apply_outcome(queue, msg, name)
            p.settled.append((tag, plain_outcome(state)))
            p.unsettled[tag] = plain_outcome(state)
    return p


def plain_outcome(state: Any) -> Any:
    """A client's terminal state as the broker echoes it: the outcome alone (no error
    text or annotations of the client's, which could make a frame too large)."""
    if isinstance(state, T.Modified):
        return T.Modified(
            delivery_failed=state.delivery_failed, undeliverable_here=state.undeliverable_here
        )
    return type(state)()


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
