"""The message as the broker holds it.

Owns: ``Message``, an immutable record shared by every queue the message was routed to,
and ``new_message``, the same construction for the per-message paths (cheaper than
calling the class).

Invariants:
- ``raw`` is the content header frame followed by the body frame(s), envelopes and
  frame-end octets included, exactly as received on channel ``ch``; when a consumer's
  channel number is ``ch`` and its frame_max fits ``fmax``, deliveries copy ``raw``
  unchanged (no re-framing, no property re-encoding).
- ``exrk`` is the publish's ``shortstr exchange, shortstr routing-key`` wire bytes.
- ``header`` / ``body`` / ``properties()`` are derived on demand, only for features
  that need them (headers exchange, persistence, TTL). Per-queue state (redelivered,
  delivery tags) never lives here.
- ``ts`` is when the message entered a queue with a TTL (wall-clock ms; 0: never
  stamped). Set once by the first such queue (the queues of one publish take it in the
  same instant) and kept on disk with the message, so that a deadline (``ts`` + the
  queue's or the message's TTL) is absolute and survives a restart.
"""

from __future__ import annotations

import itertools
import struct

from shardmq.amqp.codec import FRAME_BODY, FRAME_END, FRAME_HEADER, exrk_names, raw_body
from shardmq.amqp.methods import BasicProperties

_HDR = struct.Struct(">BHI")

# Numbers the messages this process receives (``Message.seq`` of a new publish).
next_seq = itertools.count(1).__next__


class Message:
    __slots__ = ("exrk", "raw", "ch", "hsize", "fmax", "seq", "ts", "_props")

    def __init__(
        self, exrk: bytes, raw: bytes, ch: int, hsize: int, fmax: int, seq: int = 0
    ) -> None:
        self.exrk = exrk
        self.raw = raw
        self.ch = ch
        self.hsize = hsize
        self.fmax = fmax
        self.seq = seq
        self.ts = 0
        self._props: BasicProperties | None = None

    @classmethod
    def from_parts(
        cls,
        exrk: bytes,
        header: bytes,
        body: bytes,
        seq: int = 0,
        channel: int = 1,
        frame_max: int = 131072,
    ) -> Message:
        """Build from a content-header payload and a body (recovery, tests, IPC)."""
        parts = [_HDR.pack(FRAME_HEADER, channel, len(header)), header, b"\xce"]
        chunk = frame_max - 8
        fmax = len(header)
        for i in range(0, len(body), chunk):
            piece = body[i : i + chunk]
            parts += (_HDR.pack(FRAME_BODY, channel, len(piece)), piece, b"\xce")
            fmax = max(fmax, len(piece))
        return cls(exrk, b"".join(parts), channel, len(header), fmax, seq)

    @property
    def header(self) -> bytes:
        return self.raw[7 : 7 + self.hsize]

    @property
    def body(self) -> bytes:
        return raw_body(self.raw, self.hsize)

    @property
    def body_size(self) -> int:
        return int.from_bytes(self.raw[11:19], "big")

    def properties(self) -> BasicProperties:
        props = self._props
        if props is None:
            props = self._props = BasicProperties.decode(self.raw, 19)
        return props

    @property
    def exchange(self) -> str:
        return exrk_names(self.exrk)[0]

    @property
    def routing_key(self) -> str:
        return exrk_names(self.exrk)[1]

    def __repr__(self) -> str:
        ex, rk = exrk_names(self.exrk)
        return f"Message(seq={self.seq}, exchange={ex!r}, routing_key={rk!r}, {self.body_size}B)"


_new = object.__new__


def new_message(exrk: bytes, raw: bytes, ch: int, hsize: int, fmax: int, seq: int) -> Message:
    """``Message(exrk, raw, ch, hsize, fmax, seq)`` for the per-message paths: calling
    the class with more than four arguments costs CPython an extra heap allocation
    (the argument array of ``__init__``) besides the call machinery; this sets the same
    slots, so keep the two in step."""
    msg: Message = _new(Message)
    msg.exrk = exrk
    msg.raw = raw
    msg.ch = ch
    msg.hsize = hsize
    msg.fmax = fmax
    msg.seq = seq
    msg.ts = 0
    msg._props = None
    return msg


assert FRAME_END == 0xCE
