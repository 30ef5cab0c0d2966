"""AMQP 1.0 errors raised by the engine and the broker adapter.

Owns: ``AmqpError`` and its three scopes, each closing no more than what it names:
``ConnError`` (close), ``SessionError`` (end), ``LinkError`` (detach).

Invariants: the ``condition`` is one of the spec's symbols (``types_gen`` constants);
the ``description`` is the text the peer sees (and the log line).
"""

from __future__ import annotations

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.values import Symbol


class AmqpError(Exception):
    def __init__(self, condition: str, description: str = "") -> None:
        super().__init__(f"{condition}: {description}")
        self.condition = Symbol(condition)
        self.description = description

    def error(self) -> T.Error:
        return T.Error(condition=self.condition, description=self.description or None)


class ConnError(AmqpError):
    """Closes the connection."""


class SessionError(AmqpError):
    """Ends the session."""


class LinkError(AmqpError):
    """Detaches (closes) the link."""
