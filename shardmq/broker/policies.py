"""Policies: named, per-vhost rules that set queue and exchange options by name pattern.

Owns: ``Policy`` (one validated policy, its regex compiled), ``make_policy`` (validation
with RabbitMQ's rules and error texts, as ``rabbitmqctl set_policy`` prints them),
``PolicySet`` (a vhost's policies and which one applies to a given queue or exchange).
A queue's settings are its arguments overlaid by its policy in ``qargs.effective``; an
exchange's alternate in ``exchange.effective_alternate``.

Invariants:
- At most one policy applies to an object: among the policies of its vhost whose
  ``apply-to`` covers its kind and whose pattern matches its name (a regex *search*,
  as RabbitMQ's ``re:run``: anchor with ``^``/``$``), the one with the highest priority;
  equal priorities are broken by name (RabbitMQ leaves that order unspecified; ours is
  the same on every worker and across restarts).
- A definition only ever holds known keys with valid values: anything else is refused
  with ``PolicyError`` before any state changes.
- Merging with an object's own argument follows RabbitMQ's classic queue: for the
  numeric limits (``MIN_WINS``) the smaller value wins; for every other key the argument
  wins over the policy (``qargs.effective``, ``exchange.effective_alternate``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

APPLY_TO = ("queues", "exchanges", "all")


class PolicyError(ValueError):
    """A policy that cannot be set; ``str(exc)`` is RabbitMQ's validation text."""


def erl(value: Any) -> str:
    """``value`` as Erlang's ``~p`` prints the decoded JSON term (RabbitMQ's texts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return '<<"' + value.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(value, list):
        return "[" + ",".join(erl(v) for v in value) + "]"
    if isinstance(value, dict):
        return "[" + ",".join("{" + erl(k) + "," + erl(v) + "}" for k, v in value.items()) + "]"
    return repr(value)


def _non_neg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _string(v: Any) -> bool:
    return isinstance(v, str)


def _one_of(*allowed: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in allowed


# key -> (valid?, RabbitMQ's text for an invalid value, with %s for the value)
_VALIDATORS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "alternate-exchange": (_string, "%s is not a valid alternate exchange name"),
    "dead-letter-exchange": (_string, "%s is not a valid dead letter exchange name"),
    "dead-letter-routing-key": (_string, "%s is not a valid dead letter routing key"),
    "message-ttl": (_non_neg_int, "%s is not a valid message TTL"),
    "expires": (_pos_int, "%s is not a valid queue expiry"),
    "max-length": (_non_neg_int, "%s is not a valid maximum length"),
    "max-length-bytes": (_non_neg_int, "%s is not a valid maximum length in bytes"),
    "max-in-memory-length": (_non_neg_int, "%s is not a valid maximum memory in bytes"),
    "max-in-memory-bytes": (_non_neg_int, "%s is not a valid maximum memory in bytes"),
    "queue-mode": (_one_of("default", "lazy"), "%s is not a valid queue-mode value"),
    "overflow": (
        _one_of("drop-head", "reject-publish", "reject-publish-dlx"),
        "%s is not a valid overflow value",
    ),
    "delivery-limit": (_non_neg_int, "%s is not a valid delivery limit"),
    "consumer-timeout": (_non_neg_int, "%s is not a valid consumer timeout"),
    "max-priority": (
        lambda v: _non_neg_int(v) and v <= 255,
        "%s is not a valid max priority (must be an integer in the 1-255 range)",
    ),
    "queue-master-locator": (
        _one_of("min-masters", "client-local", "random"),
        "%s is not a valid master locator",
    ),
}

# Keys whose smaller value wins when both the policy and the queue argument set them.
MIN_WINS = frozenset(
    {
        "message-ttl",
        "expires",
        "max-length",
        "max-length-bytes",
        "max-in-memory-length",
        "max-in-memory-bytes",
        "delivery-limit",
        "consumer-timeout",
    }
)

# The keys that make sense for exchanges; everything else is a queue key.
EXCHANGE_KEYS = frozenset({"alternate-exchange"})


@dataclass(frozen=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    apply_to: str
    priority: int
    definition: Mapping[str, Any]
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def applies_to(self, kind: str, name: str) -> bool:
        """``kind`` is "queue" or "exchange"."""
        if self.apply_to != "all" and self.apply_to != kind + "s":
            return False
        return self.regex.search(name) is not None

    def as_row(self) -> dict[str, Any]:
        """The policy as ``rabbitmqctl list_policies`` / the management API show it."""
        return {
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to,
            "definition": dict(self.definition),
            "priority": self.priority,
        }


def make_policy(
    vhost: str,
    name: str,
    pattern: str,
    definition: Any,
    *,
    priority: Any = 0,
    apply_to: str = "all",
) -> Policy:
    """A validated ``Policy``; ``PolicyError`` with RabbitMQ's text otherwise."""
    if not name:
        raise PolicyError("policy name must not be empty")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise PolicyError(f"priority should be a number, actually was {erl(priority)}")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise PolicyError(f"pattern should be regular expression but is invalid: {exc}") from None
    if apply_to not in APPLY_TO:
        raise PolicyError(
            f"apply-to '{apply_to}' unrecognised; should be 'queues', 'exchanges' or 'all'"
        )
    if not isinstance(definition, dict):
        raise PolicyError(f"definition must be a dictionary: {erl(definition)}")
    if not definition:
        raise PolicyError("no policy provided")
    unknown = {k: v for k, v in definition.items() if k not in _VALIDATORS}
    if unknown:
        raise PolicyError(f"{erl(unknown)} are not recognised policy settings")
    for key, value in definition.items():
        valid, text = _VALIDATORS[key]
        if not valid(value):
            raise PolicyError(text % erl(value))
    return Policy(vhost, name, pattern, apply_to, priority, dict(definition), regex)


class PolicySet:
    """One vhost's policies by name."""

    def __init__(self) -> None:
        self.by_name: dict[str, Policy] = {}
        self._ordered: list[Policy] = []

    def __len__(self) -> int:
        return len(self.by_name)

    def __iter__(self) -> Iterator[Policy]:
        return iter(self._ordered)

    def put(self, policy: Policy) -> None:
        self.by_name[policy.name] = policy
        self._reorder()

    def remove(self, name: str) -> Policy | None:
        policy = self.by_name.pop(name, None)
        if policy is not None:
            self._reorder()
        return policy

    def _reorder(self) -> None:
        self._ordered = sorted(self.by_name.values(), key=lambda p: (-p.priority, p.name))

    def match(self, kind: str, name: str) -> Policy | None:
        """The policy that applies to the ``kind`` ("queue"/"exchange") named ``name``."""
        for policy in self._ordered:
            if policy.applies_to(kind, name):
                return policy
        return None
