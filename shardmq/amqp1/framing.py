"""AMQP 1.0 frames and protocol headers.

Owns: the protocol headers (AMQP, SASL, TLS), ``is_amqp1_header`` (the listener's
choice between AMQP 0-9-1 and 1.0 from the first bytes), ``write_frame`` and
``parse_frame`` (one frame: size, data offset, type, channel, the performative and
what follows it, the payload of a transfer).

Invariants:
- A frame is ``size(4) doff(1) type(1) channel(2)``, the extended header
  (``doff * 4 - 8`` bytes, ignored), then the body; an empty body is a heartbeat.
- ``parse_frame`` reads a transfer in its common shape without the generic decoder
  (``shardmq.amqp1.transfer``), everything else with it.
- ``parse_frame`` never reads past the buffer and raises ``FramingError`` for a size
  below 8, a data offset below 2 or beyond the frame, or a frame above ``max_size``.
"""

from __future__ import annotations

import struct

from shardmq.amqp1.codec import decode, encode
from shardmq.amqp1.transfer import read_transfer

HEADER_AMQP = b"AMQP\x00\x01\x00\x00"
HEADER_TLS = b"AMQP\x02\x01\x00\x00"
HEADER_SASL = b"AMQP\x03\x01\x00\x00"
TYPE_AMQP = 0
TYPE_SASL = 1
EMPTY_FRAME = b"\x00\x00\x00\x08\x02\x00\x00\x00"
MIN_MAX_FRAME_SIZE = 512

_FH = struct.Struct(">IBBH")


class FramingError(Exception):
    """The byte stream is not AMQP 1.0 frames (amqp:connection:framing-error)."""


def is_amqp1_header(first: bytes) -> bool:
    """``first`` (8 bytes) asks for AMQP 1.0, with or without SASL (or TLS, which
    is answered with the broker's preferred header)."""
    return first[:4] == b"AMQP" and first[4] in (0, 2, 3) and first[5:8] == b"\x01\x00\x00"


def write_frame(
    out: bytearray, channel: int, performative: object, payload: bytes = b"", ftype: int = 0
) -> None:
    """Append a frame: ``performative`` (a composite) then ``payload`` (a transfer's
    message bytes)."""
    start = len(out)
    out += b"\x00\x00\x00\x00\x02"
    out.append(ftype)
    out += channel.to_bytes(2, "big")
    encode(out, performative)
    if payload:
        out += payload
    out[start : start + 4] = (len(out) - start).to_bytes(4, "big")


def frame_size(buf: bytes | bytearray, pos: int) -> int:
    """The size of the frame at ``pos`` (0 if its header is not all there yet)."""
    if len(buf) - pos < 8:
        return 0
    return int(_FH.unpack_from(buf, pos)[0])


def parse_frame(
    buf: bytes | bytearray, pos: int, max_size: int
) -> tuple[int, int, object | None, bytes, int] | None:
    """The frame at ``pos``: (type, channel, performative or None for a heartbeat,
    payload, position after it); None when it is not complete yet."""
    if len(buf) - pos < 8:
        return None
    size, doff, ftype, channel = _FH.unpack_from(buf, pos)
    if size < 8:
        raise FramingError(f"frame size {size} is below 8")
    if size > max_size:
        raise FramingError(f"frame size {size} is above the negotiated {max_size}")
    if doff < 2 or doff * 4 > size:
        raise FramingError(f"bad data offset {doff}")
    end = pos + size
    if len(buf) < end:
        return None
    body = pos + doff * 4
    if body == end:
        return ftype, channel, None, b"", end
    if buf[body] == 0 and body + 3 <= end and buf[body + 1] == 0x53 and buf[body + 2] == 0x14:
        got = read_transfer(buf, body + 3, end)  # the hot path: most frames are transfers
        if got is not None:
            t, after = got
            return ftype, channel, t, bytes(buf[after:end]) if after < end else b"", end
    performative, after = decode(buf, body, end)
    payload = bytes(buf[after:end]) if after < end else b""
    return ftype, channel, performative, payload, end
