"""The transfer and disposition frames on the hot path, without the generic codec.

Owns: ``write_transfer`` (one transfer frame: handle, delivery-id, delivery-tag,
message-format 0, settled, more, then the payload) and ``read_transfer`` (a transfer
performative in its common shape -> a ``types_gen.Transfer``), both used by the engine
for every delivery in either direction, and ``write_disposition`` (a receiver's or
sender's settlement of a range with a terminal outcome of no fields).

Invariants:
- ``write_transfer`` and ``write_disposition`` write the performative the generic
  encoder writes for the same fields, without the trailing fields that hold their
  default (the spec reads an absent field as its default); a test decodes both.
- ``read_transfer`` only takes the shapes it fully understands (a list8 of up to 11
  fields, each null or in the encodings the spec allows for its type); anything else
  returns None and the caller decodes generically, so malformed input still gets the
  generic decoder's ``DecodeError``.
"""

from __future__ import annotations

import struct
from typing import Any

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.values import UByte, UInt

_I = struct.Struct(">I")
_FH = struct.Struct(">IBBH")
_new = object.__new__
_TRANSFER = T.Transfer
_setattr = object.__setattr__


def _uint(v: int) -> bytes:
    if v == 0:
        return b"\x43"
    if v < 256:
        return bytes((0x52, v))
    return b"\x70" + _I.pack(v)


_SMALL_UINT = [_uint(i) for i in range(256)]


def uint_bytes(v: int) -> bytes:
    return _SMALL_UINT[v] if v < 256 else b"\x70" + _I.pack(v)


def write_transfer(
    out: bytearray,
    channel: int,
    handle: int,
    delivery_id: int | None,
    tag: bytes | None,
    settled: bool | None,
    more: bool,
    payload: bytes | bytearray | memoryview,
) -> None:
    """Append a transfer frame (the first of a delivery with ``delivery_id``; a
    continuation frame when it is None)."""
    h = _SMALL_UINT[handle] if handle < 256 else b"\x70" + _I.pack(handle)
    if delivery_id is None:  # continuation: handle [, nulls, more]
        fields = h + b"\x40\x40\x40\x40\x41" if more else h
        count = 6 if more else 1
    else:
        d = _SMALL_UINT[delivery_id] if delivery_id < 256 else b"\x70" + _I.pack(delivery_id)
        t = tag or b""
        if len(t) < 256:
            tb = b"\xa0" + bytes((len(t),)) + t
        else:
            tb = b"\xb0" + _I.pack(len(t)) + t
        if more:
            tail = (b"\x41" if settled else b"\x42" if settled is not None else b"\x40") + b"\x41"
            count = 6
        elif settled is not None:
            tail = b"\x41" if settled else b"\x42"
            count = 5
        else:
            tail = b""
            count = 4
        fields = h + d + tb + b"\x43" + tail
    n = len(fields)
    if n + 1 < 256:
        perf = b"\x00\x53\x14\xc0" + bytes((n + 1, count)) + fields
    else:
        perf = b"\x00\x53\x14\xd0" + _I.pack(n + 4) + _I.pack(count) + fields
    out += _FH.pack(8 + len(perf) + len(payload), 2, 0, channel)
    out += perf
    out += payload


def _read_uint(buf: Any, p: int, stop: int) -> tuple[Any, int] | None:
    c = buf[p]
    if c == 0x52:
        return UInt(buf[p + 1]), p + 2
    if c == 0x43:
        return UInt(0), p + 1
    if c == 0x70 and p + 5 <= stop:
        return UInt(_I.unpack_from(buf, p + 1)[0]), p + 5
    if c == 0x40:
        return None, p + 1
    return None


_NO = object()
_BOOLS: dict[int, Any] = {0x41: True, 0x42: False, 0x40: None}


def read_transfer(buf: Any, pos: int, end: int) -> tuple[Any, int] | None:
    """The transfer performative whose list starts at ``pos`` (after ``00 53 14``):
    (Transfer, position after it), or None when it is not in the common shape."""
    if pos + 2 > end or buf[pos] != 0xC0:
        return None
    size = buf[pos + 1]
    stop = pos + 2 + size  # size counts the count byte and the items
    if size < 1 or stop > end:
        return None
    count = buf[pos + 2]
    if count < 1 or count > 11:
        return None
    p = pos + 3
    vals: list[Any] = [None] * 11
    for i in range(count):
        if p >= stop:
            return None
        if i == 2:  # delivery-tag: binary
            c = buf[p]
            if c == 0xA0:
                if p + 2 > stop:
                    return None
                n = buf[p + 1]
                q = p + 2 + n
                if q > stop:
                    return None
                vals[2] = bytes(buf[p + 2 : q])
                p = q
            elif c == 0x40:
                p += 1
            else:
                return None
        elif i in (0, 1, 3):
            if buf[p] == 0x52 and p + 2 > stop:
                return None
            got = _read_uint(buf, p, stop)
            if got is None:
                return None
            vals[i], p = got
        elif i == 6:  # rcv-settle-mode: ubyte
            c = buf[p]
            if c == 0x50 and p + 2 <= stop:
                vals[6] = UByte(buf[p + 1])
                p += 2
            elif c == 0x40:
                p += 1
            else:
                return None
        elif i == 7:  # state: anything but null goes the generic way
            if buf[p] != 0x40:
                return None
            p += 1
        else:  # booleans
            v = _BOOLS.get(buf[p], _NO)
            if v is _NO:
                return None
            vals[i] = v
            p += 1
    if p != stop or vals[0] is None:
        return None
    t = _new(_TRANSFER)
    _setattr(t, "handle", vals[0])
    _setattr(t, "delivery_id", vals[1])
    _setattr(t, "delivery_tag", vals[2])
    _setattr(t, "message_format", vals[3])
    _setattr(t, "settled", vals[4])
    _setattr(t, "more", False if vals[5] is None else vals[5])
    _setattr(t, "rcv_settle_mode", vals[6])
    _setattr(t, "state", None)
    _setattr(t, "resume", False if vals[8] is None else vals[8])
    _setattr(t, "aborted", False if vals[9] is None else vals[9])
    _setattr(t, "batchable", False if vals[10] is None else vals[10])
    return t, stop


_OUTCOMES = {
    T.Accepted: b"\x00\x53\x24\x45",
    T.Released: b"\x00\x53\x26\x45",
}


def outcome_bytes(state: Any) -> bytes | None:
    """The encoding of an accepted or released state (they have no fields)."""
    return _OUTCOMES.get(type(state))


def write_disposition(
    out: bytearray, channel: int, role: bool, first: int, last: int, settled: bool, state: bytes
) -> None:
    """Append a disposition frame of ``first..last`` with the encoded ``state``."""
    fields = (
        (b"\x41" if role else b"\x42")
        + uint_bytes(first)
        + (uint_bytes(last) if last != first else b"\x40")
        + (b"\x41" if settled else b"\x42")
        + state
    )
    n = len(fields)
    perf = b"\x00\x53\x15\xc0" + bytes((n + 1, 5)) + fields
    out += _FH.pack(8 + len(perf), 2, 0, channel)
    out += perf
