"""Per-vhost and per-user limits (RabbitMQ's names, rules and validation texts).

Owns: ``Limits`` (the limits of every vhost and user, replicated by the metadata ops
``SetVHostLimits`` / ``ClearVHostLimits`` / ``SetUserLimits`` / ``ClearUserLimits``),
``parse_limits`` (a JSON object -> a limits dict, with rabbitmqctl's refusal texts) and
the refusal errors a limit causes (``vhost_connections_refused``,
``user_connections_refused``, ``user_channels_refused``, ``queue_limit_refused``).

Rules (RabbitMQ 3.10):
- vhost limits are ``max-connections`` and ``max-queues``; user limits
  ``max-connections`` and ``max-channels``. A value is an integer: a negative one means
  no limit, 0 refuses everything.
- ``set_vhost_limits`` replaces the vhost's whole set (``{}`` is kept as an empty set);
  the management API's PUT of one limit merges it in. ``set_user_limits`` merges.
- Deleting a vhost or a user drops its limits.
- Counting (who holds how many connections and channels, on every worker) is
  ``shardmq.broker.conn_limits``; the queue count is the replicated metadata's.
"""

from __future__ import annotations

import json
from typing import Any

from shardmq.amqp.errors import NOT_ALLOWED, PRECONDITION_FAILED, HardError, SoftError

VHOST_LIMITS = ("max-connections", "max-queues")
USER_LIMITS = ("max-channels", "max-connections")
NO_LIMIT = -1


class LimitError(ValueError):
    """A limits document refused, with rabbitmqctl's text."""


def _erl(value: Any) -> str:
    """``value`` as RabbitMQ prints the Erlang term in its refusals."""
    if isinstance(value, str):
        return f"<<{json.dumps(value)}>>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_erl(v) for v in value) + "]"
    if isinstance(value, dict):
        return "[" + ",".join(f"{{{_erl(k)},{_erl(v)}}}" for k, v in value.items()) + "]"
    return str(value)


def parse_limits(doc: str | dict[str, Any], user: bool) -> dict[str, int]:
    """A limits JSON object (text or decoded) -> ``{name: value}``; ``LimitError`` with
    RabbitMQ's text when it is not JSON, names an unknown limit or a non-integer."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            raise LimitError("JSON decoding error. Reason: badarg") from None
    if not isinstance(doc, dict):
        raise LimitError(f"limits must be a JSON object, actually was {_erl(doc)}")
    known = USER_LIMITS if user else VHOST_LIMITS
    unknown = {k: v for k, v in doc.items() if k not in known}
    if unknown:
        where = "user-limits" if user else "limits"
        raise LimitError(f"Unrecognised terms {_erl(unknown)} in {where}")
    out: dict[str, int] = {}
    for name, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise LimitError(f"{name} should be a number, actually was {_erl(value)}")
        out[name] = value
    return out


def as_json(limits: dict[str, int]) -> str:
    """rabbitmqctl's rendering: compact JSON, names sorted."""
    return json.dumps(dict(sorted(limits.items())), separators=(",", ":"))


class Limits:
    """Every vhost's and user's limits; changed only by the metadata ops."""

    def __init__(self) -> None:
        self.vhosts: dict[str, dict[str, int]] = {}
        self.users: dict[str, dict[str, int]] = {}

    def vhost(self, vhost: str, name: str) -> int:
        """The vhost's limit ``name`` (``NO_LIMIT`` when unset or negative)."""
        got = self.vhosts.get(vhost)
        value = got.get(name, NO_LIMIT) if got else NO_LIMIT
        return value if value >= 0 else NO_LIMIT

    def user(self, user: str, name: str) -> int:
        got = self.users.get(user)
        value = got.get(name, NO_LIMIT) if got else NO_LIMIT
        return value if value >= 0 else NO_LIMIT

    def set_vhost(self, vhost: str, limits: dict[str, int], merge: bool) -> None:
        if merge:
            self.vhosts[vhost] = {**self.vhosts.get(vhost, {}), **limits}
        else:
            self.vhosts[vhost] = dict(limits)

    def clear_vhost(self, vhost: str, name: str = "") -> bool:
        """Remove one limit (``name``) or all; False when the vhost had no limits set."""
        got = self.vhosts.get(vhost)
        if got is None:
            return False
        if name:
            got.pop(name, None)
        else:
            del self.vhosts[vhost]
        return True

    def set_user(self, user: str, limits: dict[str, int]) -> None:
        merged = {**self.users.get(user, {}), **limits}
        if merged:
            self.users[user] = merged

    def clear_user(self, user: str, name: str) -> None:
        """``name`` "all": every limit of ``user``."""
        got = self.users.get(user)
        if got is None:
            return
        if name == "all":
            del self.users[user]
        else:
            got.pop(name, None)
            if not got:
                del self.users[user]

    def vhost_deleted(self, vhost: str) -> None:
        self.vhosts.pop(vhost, None)

    def user_deleted(self, user: str) -> None:
        self.users.pop(user, None)


# ---------------------------------------------------------------------- refusals
def vhost_connections_refused(vhost: str, user: str, limit: int) -> HardError:
    return HardError(
        NOT_ALLOWED,
        f"access to vhost '{vhost}' refused for user '{user}': "
        f"connection limit ({limit}) is reached",
        10,
        40,
    )


def user_connections_refused(user: str, limit: int) -> HardError:
    return HardError(
        NOT_ALLOWED,
        f"connection refused for user '{user}': user connection limit ({limit}) is reached",
        10,
        40,
    )


def user_channels_refused(user: str, limit: int) -> HardError:
    return HardError(
        NOT_ALLOWED,
        f"number of channels opened for user '{user}' has reached the maximum allowed "
        f"user limit of ({limit})",
        20,
        10,
    )


def queue_limit_refused(queue: str, vhost: str, limit: int) -> SoftError:
    return SoftError(
        PRECONDITION_FAILED,
        f"cannot declare queue '{queue}': queue limit in vhost '{vhost}' ({limit}) is reached",
        50,
        10,
    )
