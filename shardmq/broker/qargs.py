"""Queue arguments as typed settings: what a queue's TTL, expiry, length limits and
dead-lettering are.

Owns: ``QueueSettings`` (frozen: a queue holds one and swaps it whole),
``parse_queue_args`` (validates ``x-*`` declare arguments with RabbitMQ 3.10's 406
texts), ``effective`` (arguments overlaid by a policy definition, RabbitMQ's rule) and
``parse_expiration`` (a message's ``expiration`` property, RabbitMQ's 406 text).

Invariants:
- Validation is deterministic and depends only on the arguments: it runs inside
  ``VHost.declare_queue``, so every metadata replica raises the same error.
- A queue reads its settings from ``Queue.settings`` only. Policies plug in by calling
  ``effective(parse_queue_args(...), policy_definition)`` and ``Queue.apply_settings``:
  numeric limits take the smaller of argument and policy, any other key the argument
  when present, else the policy.
- Unknown ``x-`` arguments are ignored (RabbitMQ accepts them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from shardmq.amqp.errors import PRECONDITION_FAILED, SoftError
from shardmq.amqp.fieldtable import ByteArray, Timestamp

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The effective feature settings of one queue (None: not set)."""

    message_ttl: int | None = None  # ms
    expires: int | None = None  # ms, > 0
    max_length: int | None = None  # messages
    max_length_bytes: int | None = None  # body bytes
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    overflow_set: bool = False  # ``x-overflow`` given (an argument wins over a policy)
    quorum: bool = False  # ``x-queue-type: quorum``: deliveries counted (delivery_limit.py)
    delivery_limit: int | None = None  # quorum queues only

    @property
    def limited(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None

    @property
    def any(self) -> bool:
        """Some feature needs the queue's per-message work."""
        return self != NO_SETTINGS


NO_SETTINGS = QueueSettings()

# policy definition key -> settings field; numeric ones take the smaller value
_POLICY_KEYS = {
    "message-ttl": "message_ttl",
    "expires": "expires",
    "max-length": "max_length",
    "max-length-bytes": "max_length_bytes",
    "overflow": "overflow",
    "dead-letter-exchange": "dead_letter_exchange",
    "dead-letter-routing-key": "dead_letter_routing_key",
    "delivery-limit": "delivery_limit",
}
_NUMERIC = {"message_ttl", "expires", "max_length", "max_length_bytes", "delivery_limit"}


def type_name(v: object) -> str:
    """RabbitMQ's name of a field value's type (ints by the width the peer used)."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, Timestamp):
        return "timestamp"
    if isinstance(v, int):
        return "signedint" if -(1 << 31) <= v < (1 << 31) else "long"
    if isinstance(v, ByteArray):
        return "bytearray"
    if isinstance(v, str | bytes):
        return "longstr"
    if isinstance(v, float):
        return "double"
    if isinstance(v, Decimal):
        return "decimal"
    if isinstance(v, dict):
        return "table"
    if isinstance(v, list):
        return "array"
    return "void"


def _err(arg: str, queue: str, vhost: str, detail: str) -> SoftError:
    return SoftError(
        PRECONDITION_FAILED, f"invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {detail}"
    )


def _int_arg(args: dict[str, Any], key: str, queue: str, vhost: str, zero_ok: bool) -> int | None:
    if key not in args:
        return None
    v = args[key]
    if isinstance(v, bool) or not isinstance(v, int) or isinstance(v, Timestamp):
        raise _err(key, queue, vhost, f'"expected integer, got {type_name(v)}"')
    if v < 0:
        raise _err(key, queue, vhost, f"{{value_negative,{v}}}")
    if v == 0 and not zero_ok:
        raise _err(key, queue, vhost, f"{{value_zero,{v}}}")
    return v


def _str_value(v: object) -> str | None:
    if isinstance(v, ByteArray):
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    return None


def parse_queue_args(arguments: dict[str, Any], queue: str, vhost: str) -> QueueSettings:
    """The settings ``arguments`` ask for; raises 406 with RabbitMQ's text when one is
    invalid."""
    if not arguments:
        return NO_SETTINGS
    ttl = _int_arg(arguments, "x-message-ttl", queue, vhost, True)
    expires = _int_arg(arguments, "x-expires", queue, vhost, False)
    max_len = _int_arg(arguments, "x-max-length", queue, vhost, True)
    max_bytes = _int_arg(arguments, "x-max-length-bytes", queue, vhost, True)
    top = _int_arg(arguments, "x-max-priority", queue, vhost, True)  # priority.py
    if top is not None and top > 255:
        raise _err("x-max-priority", queue, vhost, f"{{max_value_exceeded,{top}}}")
    overflow = "drop-head"
    overflow_set = "x-overflow" in arguments
    if overflow_set:
        v = arguments["x-overflow"]
        s = _str_value(v)
        if s is None:
            raise _err("x-overflow", queue, vhost, f"{{unacceptable_type,{type_name(v)}}}")
        if s not in OVERFLOW_MODES:
            raise _err("x-overflow", queue, vhost, "invalid_overflow")
        overflow = s
    dlx: str | None = None
    if "x-dead-letter-exchange" in arguments:
        v = arguments["x-dead-letter-exchange"]
        dlx = _str_value(v)
        if dlx is None:
            raise SoftError(
                PRECONDITION_FAILED,
                f"invalid type '{type_name(v)}' for arg 'x-dead-letter-exchange' "
                f"in queue '{queue}' in vhost '{vhost}'",
            )
    dlrk: str | None = None
    if "x-dead-letter-routing-key" in arguments:
        v = arguments["x-dead-letter-routing-key"]
        dlrk = _str_value(v)
        if dlrk is None:
            raise _err(
                "x-dead-letter-routing-key", queue, vhost, f"{{unacceptable_type,{type_name(v)}}}"
            )
        if dlx is None:
            raise _err("x-dead-letter-routing-key", queue, vhost, "routing_key_but_no_dlx_defined")
    quorum = _str_value(arguments.get("x-queue-type")) == "quorum"
    limit = arguments.get("x-delivery-limit") if quorum else None
    if isinstance(limit, bool) or not isinstance(limit, int) or isinstance(limit, Timestamp):
        limit = None  # RabbitMQ 3.10 ignores a non-integer limit
    return QueueSettings(
        ttl, expires, max_len, max_bytes, overflow, dlx, dlrk, overflow_set, quorum, limit
    )


def effective(from_args: QueueSettings, policy: dict[str, Any] | None) -> QueueSettings:
    """``from_args`` overlaid by a policy definition (RabbitMQ's rule: where both set a
    numeric limit the smaller wins; otherwise the argument wins when it is set)."""
    if not policy:
        return from_args
    changes: dict[str, Any] = {}
    for key, field_name in _POLICY_KEYS.items():
        if key not in policy:
            continue
        pv = policy[key]
        av = getattr(from_args, field_name)
        if field_name == "delivery_limit" and not from_args.quorum:
            continue  # a quorum-queue key
        if field_name in _NUMERIC:
            changes[field_name] = pv if av is None else min(av, pv)
        elif field_name == "overflow":
            if not from_args.overflow_set and pv in OVERFLOW_MODES:
                changes[field_name] = pv
        elif av is None:
            changes[field_name] = pv
    return replace(from_args, **changes) if changes else from_args


_INT_PREFIX = re.compile(r"[+-]?[0-9]+")


def parse_expiration(value: str) -> int:
    """A message's ``expiration`` property in ms; 406 with RabbitMQ's text if invalid."""
    m = _INT_PREFIX.match(value)
    if m is None:
        detail = "no_integer"
    else:
        n = int(m.group())
        rest = value[m.end() :]
        if rest:
            detail = f'{{leftover_string,"{rest}"}}'
        elif n < 0:
            detail = f"{{value_negative,{n}}}"
        else:
            return n
    raise SoftError(PRECONDITION_FAILED, f"invalid expiration '{value}': {detail}")


__all__ = [
    "NO_SETTINGS",
    "OVERFLOW_MODES",
    "QueueSettings",
    "effective",
    "parse_expiration",
    "parse_queue_args",
    "type_name",
]
