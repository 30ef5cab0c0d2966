"""Queue types as a declare names them (``x-queue-type``, ``x-queue-mode``).

Owns: ``check_queue_type`` — what a single-node broker accepts, with RabbitMQ 3.10's
406 texts: ``classic`` (the default) and ``quorum`` are queues of this broker;
``quorum`` must be durable, not exclusive and not auto-delete, and refuses
``x-max-priority``; ``classic`` refuses ``x-delivery-limit`` (a quorum-queue argument,
``delivery_limit.py``); ``stream`` and anything else are refused ("unsupported queue type",
as RabbitMQ words an unknown type; streams do not exist here). ``x-queue-mode`` may be
``default`` or ``lazy`` (accepted, no effect: every durable queue pages to disk).

Invariant: deterministic, from the declare's fields only (every replica agrees).
A quorum queue on one node has no replicas: it is a durable queue (README).
"""

from __future__ import annotations

from typing import Any

from shardmq.amqp.errors import PRECONDITION_FAILED, SoftError

QUEUE_TYPES = ("classic", "quorum")
QUEUE_MODES = ("default", "lazy")
QUORUM_REFUSED_ARGS = ("x-max-priority",)
CLASSIC_REFUSED_ARGS = ("x-delivery-limit",)


def _text(v: Any) -> str | None:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else None


def check_queue_type(
    arguments: dict[str, Any],
    queue: str,
    vhost: str,
    *,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
) -> str:
    """The queue's type ("classic" or "quorum"); 406 with RabbitMQ's text otherwise."""
    where = f"for queue '{queue}' in vhost '{vhost}'"
    mode = arguments.get("x-queue-mode")
    if mode is not None and _text(mode) not in QUEUE_MODES:
        raise SoftError(
            PRECONDITION_FAILED,
            f"invalid arg 'x-queue-mode' {where}: \"unsupported queue mode '{_text(mode)}'\"",
        )
    raw = arguments.get("x-queue-type")
    qtype = "classic" if raw is None else _text(raw)
    if qtype not in QUEUE_TYPES:
        raise SoftError(
            PRECONDITION_FAILED,
            f"invalid arg 'x-queue-type' {where}: \"unsupported queue type '{qtype}'\"",
        )
    if qtype == "quorum":
        for bad, prop in (
            (not durable, "non-durable"),
            (exclusive, "exclusive-owner"),
            (auto_delete, "auto-delete"),
        ):
            if bad:
                raise SoftError(PRECONDITION_FAILED, f"invalid property '{prop}' {where}")
        for arg in QUORUM_REFUSED_ARGS:
            if arg in arguments:
                raise SoftError(
                    PRECONDITION_FAILED,
                    f"invalid arg '{arg}' {where} of queue type rabbit_quorum_queue",
                )
    else:
        for arg in CLASSIC_REFUSED_ARGS:
            if arg in arguments:
                raise SoftError(
                    PRECONDITION_FAILED,
                    f"invalid arg '{arg}' {where} of queue type rabbit_classic_queue",
                )
    return qtype
