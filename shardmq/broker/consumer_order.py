"""Which consumer of a queue gets the next message, when it is not plain round robin.

Owns: ``ConsumerOrder`` (single active consumer, ``x-single-active-consumer``, and
consumer priorities, the ``x-priority`` consumer argument) and the checks of those
arguments with RabbitMQ's reply codes and texts (``check_queue_arguments``,
``consumer_priority``).

A queue whose consumers all have priority 0 and no single active consumer has no
``ConsumerOrder`` (``Queue.order`` is None) and keeps its plain round robin.

Invariants:
- Single active consumer: only the first consumer in registration order (the queue's
  ``consumers`` list order) ever gets messages; when it goes (cancel, channel or
  connection closed, its worker died) the next one in that order takes over, and the
  messages the gone one held unacked go back to the head of the queue when its channel
  releases them, so the new active consumer gets them first.
- Priorities: a consumer gets a message only when every consumer of a higher priority
  is not ready (prefetch full, flow, socket, or ring blocked); consumers of one priority
  take turns (round robin, each level its own turn).
- ``rebuild`` runs whenever the consumer list changes (``Queue.add_consumer`` /
  ``remove_consumer``); ``next`` never walks more than the consumers.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Mapping
from typing import Any, Protocol

from shardmq.amqp.errors import PRECONDITION_FAILED, SoftError

SINGLE_ACTIVE = "x-single-active-consumer"
PRIORITY = "x-priority"


class Ordered(Protocol):
    """A queue consumer as ordering needs it (``queue.QueueConsumer``)."""

    @property
    def priority(self) -> int: ...

    def ready(self) -> bool: ...


def _type_name(v: object) -> str:
    """RabbitMQ's name of a field-table value's type (as its error texts give it)."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "signedint" if -(2**31) <= v < 2**31 else "long"
    if isinstance(v, float):
        return "double"
    if isinstance(v, decimal.Decimal):
        return "decimal"
    if isinstance(v, str | bytes):
        return "longstr"
    if isinstance(v, dict):
        return "table"
    if isinstance(v, list):
        return "array"
    if isinstance(v, datetime.datetime):
        return "timestamp"
    if v is None:
        return "void"
    return type(v).__name__


def check_queue_arguments(name: str, vhost: str, arguments: Mapping[str, Any] | None) -> None:
    """queue.declare: ``x-single-active-consumer`` must be a bool (406 as RabbitMQ)."""
    if not arguments or SINGLE_ACTIVE not in arguments:
        return
    v = arguments[SINGLE_ACTIVE]
    if not isinstance(v, bool):
        raise SoftError(
            PRECONDITION_FAILED,
            f"invalid arg '{SINGLE_ACTIVE}' for queue '{name}' in vhost '{vhost}': "
            f"{{unacceptable_type,{_type_name(v)}}}",
            50,
            10,
        )


def consumer_priority(name: str, vhost: str, arguments: Mapping[str, Any] | None) -> int:
    """basic.consume: the consumer's ``x-priority`` (0 without one); 406 as RabbitMQ
    when it is not an integer."""
    if not arguments or PRIORITY not in arguments:
        return 0
    v = arguments[PRIORITY]
    if isinstance(v, bool) or not isinstance(v, int):
        raise SoftError(
            PRECONDITION_FAILED,
            f"invalid arg '{PRIORITY}' for queue '{name}' in vhost '{vhost}': "
            f'"expected integer, got {_type_name(v)}"',
            60,
            20,
        )
    return v


def single_active(arguments: Mapping[str, Any]) -> bool:
    return arguments.get(SINGLE_ACTIVE) is True


class ConsumerOrder:
    """The selection of a queue that has a single active consumer or consumers with
    priorities (see the module block)."""

    __slots__ = ("single", "levels", "turns")

    def __init__(self, single: bool) -> None:
        self.single = single
        self.levels: list[tuple[int, list[Any]]] = []  # (priority, consumers), highest first
        self.turns: dict[int, int] = {}  # priority -> round-robin position in its level

    def rebuild(self, consumers: list[Any]) -> None:
        if self.single:
            return
        by_priority: dict[int, list[Any]] = {}
        for c in consumers:
            by_priority.setdefault(c.priority, []).append(c)
        self.levels = [(p, by_priority[p]) for p in sorted(by_priority, reverse=True)]
        turns = self.turns
        self.turns = {p: turns.get(p, 0) % len(cs) for p, cs in self.levels}

    def next(self, consumers: list[Any]) -> Any:
        """The consumer to get the next message, or None when none is ready."""
        if self.single:
            if not consumers:
                return None
            c = consumers[0]
            return c if c.ready() else None
        turns = self.turns
        for p, level in self.levels:
            n = len(level)
            start = turns[p]
            for k in range(n):
                j = (start + k) % n
                c = level[j]
                if c.ready():
                    turns[p] = (j + 1) % n
                    return c
        return None

    def active(self, consumers: list[Any]) -> Any:
        """The single active consumer (None if not single-active or no consumer)."""
        return consumers[0] if self.single and consumers else None
