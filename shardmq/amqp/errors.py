"""AMQP protocol errors.

Owns: the exception types that carry an AMQP reply code plus the class/method that
caused them. One boundary (the connection handler) turns a ``SoftError`` into
``channel.close`` and a ``HardError`` into ``connection.close``.

Invariants: every error raised by the sans-IO codec or the broker domain for bad peer
input is an ``AMQPError``; anything else escaping is a bug (and is reported as 541).
"""

from __future__ import annotations

# Reply codes (AMQP 0-9-1 plus RabbitMQ's 312 NO_ROUTE).
REPLY_SUCCESS = 200
CONTENT_TOO_LARGE = 311
NO_ROUTE = 312
NO_CONSUMERS = 313
CONNECTION_FORCED = 320
INVALID_PATH = 402
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
RESOURCE_ERROR = 506
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541

_NAMES = {
    CONTENT_TOO_LARGE: "CONTENT_TOO_LARGE",
    NO_ROUTE: "NO_ROUTE",
    NO_CONSUMERS: "NO_CONSUMERS",
    CONNECTION_FORCED: "CONNECTION_FORCED",
    INVALID_PATH: "INVALID_PATH",
    ACCESS_REFUSED: "ACCESS_REFUSED",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_LOCKED: "RESOURCE_LOCKED",
    PRECONDITION_FAILED: "PRECONDITION_FAILED",
    FRAME_ERROR: "FRAME_ERROR",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    COMMAND_INVALID: "COMMAND_INVALID",
    CHANNEL_ERROR: "CHANNEL_ERROR",
    UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    RESOURCE_ERROR: "RESOURCE_ERROR",
    NOT_ALLOWED: "NOT_ALLOWED",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    INTERNAL_ERROR: "INTERNAL_ERROR",
}


def reply_name(code: int) -> str:
    return _NAMES.get(code, str(code))


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
