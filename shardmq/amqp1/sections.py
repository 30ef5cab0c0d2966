"""The sections of an AMQP 1.0 message as slices of its bytes: found, not decoded.

Owns: ``skip`` (the position after one encoded value, by its constructor's width
category, without building it), ``split`` (the sections of a transfer's payload as
(descriptor code, start, end), or None when a descriptor is not a small ulong) and
``data_body`` (the bytes of the one data section of a message, if it has exactly one
and no other body section).

Invariants:
- Nothing here builds Python values or raises on malformed input other than through
  its return value: a slice beyond the payload or an unknown constructor makes
  ``split`` return None, and the caller then decodes generically (which reports the
  error precisely).
"""

from __future__ import annotations

import struct

_I = struct.Struct(">I")

# width of the fixed types by the constructor's high nibble (0x4_ .. 0x9_)
_FIXED_WIDTH = {0x4: 0, 0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}

HEADER, DELIVERY_ANN, MESSAGE_ANN, PROPERTIES, APP_PROPERTIES = 0x70, 0x71, 0x72, 0x73, 0x74
DATA, SEQUENCE, VALUE, FOOTER = 0x75, 0x76, 0x77, 0x78


def skip(buf: bytes | bytearray, pos: int, end: int) -> int:
    """The position after the value at ``pos``; -1 when it is not well-formed."""
    if pos >= end:
        return -1
    c = buf[pos]
    if c == 0x00:  # described: the descriptor, then the value
        p = skip(buf, pos + 1, end)
        return -1 if p < 0 else skip(buf, p, end)
    hi = c >> 4
    w = _FIXED_WIDTH.get(hi)
    if w is not None:
        p = pos + 1 + w
    elif hi in (0xA, 0xC, 0xE):
        if pos + 2 > end:
            return -1
        p = pos + 2 + buf[pos + 1]
    elif hi in (0xB, 0xD, 0xF):
        if pos + 5 > end:
            return -1
        p = pos + 5 + _I.unpack_from(buf, pos + 1)[0]
    else:
        return -1
    return p if p <= end else -1


def split(payload: bytes | bytearray) -> list[tuple[int, int, int]] | None:
    """(code, start, end) of every section; None when a section is not ``00 53 code``
    or does not fit."""
    out = []
    pos = 0
    n = len(payload)
    while pos < n:
        if pos + 3 > n or payload[pos] != 0 or payload[pos + 1] != 0x53:
            return None
        end = skip(payload, pos + 3, n)
        if end < 0:
            return None
        out.append((payload[pos + 2], pos, end))
        pos = end
    return out


def data_body(payload: bytes | bytearray, start: int, end: int) -> bytes | None:
    """The binary of the data section ``payload[start:end]`` (None if not a binary)."""
    c = payload[start + 3]
    if c == 0xA0:
        return bytes(payload[start + 5 : end])
    if c == 0xB0:
        return bytes(payload[start + 8 : end])
    return None


def data_header(n: int) -> bytes:
    """The bytes before an ``n``-byte body in a data section."""
    if n < 256:
        return b"\x00\x53\x75\xa0" + bytes((n,))
    return b"\x00\x53\x75\xb0" + _I.pack(n)
