"""The message as the broker holds it.

Owns: ``Message``, an immutable record shared by every queue the message was routed to.

Invariants:
- ``exrk`` and ``header`` are the publisher's wire bytes (see amqp/codec.py); the
  broker never re-encodes properties. ``properties()`` decodes lazily, once, only for
  features that need a property (headers exchange, persistence, TTL).
- Per-queue state (redelivered, delivery tags) never lives here.
"""

from __future__ import annotations

from shardmq.amqp.codec import exrk_names
from shardmq.amqp.methods import BasicProperties


class Message:
    __slots__ = ("exrk", "header", "body", "seq", "_props")

    def __init__(self, exrk: bytes, header: bytes, body: bytes, seq: int = 0) -> None:
        self.exrk = exrk
        self.header = header
        self.body = body
        self.seq = seq
        self._props: BasicProperties | None = None

    def properties(self) -> BasicProperties:
        props = self._props
        if props is None:
            props = self._props = BasicProperties.decode(self.header, 12)
        return props

    @property
    def exchange(self) -> str:
        return exrk_names(self.exrk)[0]

    @property
    def routing_key(self) -> str:
        return exrk_names(self.exrk)[1]

    def __repr__(self) -> str:
        ex, rk = exrk_names(self.exrk)
        return f"Message(seq={self.seq}, exchange={ex!r}, routing_key={rk!r}, {len(self.body)}B)"
