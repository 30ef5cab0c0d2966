"""AMQP protocol errors.

Owns: the exception types that carry an AMQP reply code plus the class/method that
caused them. One boundary (the connection handler) turns a ``SoftError`` into
``channel.close`` and a ``HardError`` into ``connection.close``.

Invariants: every error raised by the sans-IO codec or the broker domain for bad peer
input is an ``AMQPError``; anything else escaping is a bug (and is reported as 541).
"""

from __future__ import annotations

# Reply codes (AMQP 0-9-1 plus RabbitMQ's 312 NO_ROUTE), from the generated constants.
from shardmq.amqp.constants import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    CONTENT_TOO_LARGE,
    FRAME_ERROR,
    INTERNAL_ERROR,
    INVALID_PATH,
    NO_CONSUMERS,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    REPLY_NAMES,
    REPLY_SUCCESS,
    RESOURCE_ERROR,
    RESOURCE_LOCKED,
    SYNTAX_ERROR,
    UNEXPECTED_FRAME,
)

__all__ = [
    "ACCESS_REFUSED",
    "CHANNEL_ERROR",
    "COMMAND_INVALID",
    "CONNECTION_FORCED",
    "CONTENT_TOO_LARGE",
    "FRAME_ERROR",
    "INTERNAL_ERROR",
    "INVALID_PATH",
    "NO_CONSUMERS",
    "NO_ROUTE",
    "NOT_ALLOWED",
    "NOT_FOUND",
    "NOT_IMPLEMENTED",
    "PRECONDITION_FAILED",
    "REPLY_SUCCESS",
    "RESOURCE_ERROR",
    "RESOURCE_LOCKED",
    "SYNTAX_ERROR",
    "UNEXPECTED_FRAME",
    "AMQPError",
    "HardError",
    "SoftError",
    "reply_name",
]


def reply_name(code: int) -> str:
    return REPLY_NAMES.get(code, str(code))


class AMQPError(Exception):
    """An error with an AMQP reply code. ``soft`` errors close only the channel."""

    soft: bool = False

    def __init__(self, reply_code: int, text: str, class_id: int = 0, method_id: int = 0):
        super().__init__(text)
        self.reply_code = reply_code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_text(self) -> str:
        """RabbitMQ style: ``NOT_FOUND - no queue 'x' in vhost '/'`` (at most 255 bytes)."""
        full = f"{reply_name(self.reply_code)} - {self.text}"
        raw = full.encode("utf-8")
        if len(raw) > 255:
            full = raw[:255].decode("utf-8", "ignore")
        return full

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reply_code}, {self.text!r}, {self.class_id}, {self.method_id})"


class SoftError(AMQPError):
    """Closes the channel (channel.close)."""

    soft = True


class HardError(AMQPError):
    """Closes the connection (connection.close)."""

    soft = False
