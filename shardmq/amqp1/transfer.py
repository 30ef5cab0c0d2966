"""The transfer and disposition frames on the hot path, without the generic codec.

Owns: ``write_transfer`` (one transfer frame: handle, delivery-id, delivery-tag,
message-format 0, settled, more, then the payload), ``write_transfers`` (many one-frame
deliveries of the same payload in one join: the load generator's producer) and
``read_transfer`` (a transfer
performative in its common shape -> a ``types_gen.Transfer``), both used by the engine
for every delivery in either direction, and ``write_disposition`` (a receiver's or
sender's settlement of a range with a terminal outcome of no fields); ``transfer_head``
and ``pack_transfer_q``, the same one-frame transfer as the link's fixed bytes and one
pack (the broker's delivery path, ``Engine.send_transfer_q``).

Invariants:
- ``write_transfer`` and ``write_disposition`` write the performative the generic
  encoder writes for the same fields, without the trailing fields that hold their
  default (the spec reads an absent field as its default); a one-frame delivery with an
  8-byte tag has a fixed layout (delivery-id as a full uint) that ``read_transfer``
  recognises with one unpack (``pack_transfer_q`` writes that same layout); tests
  decode both with the generic decoder.
- ``read_transfer`` only takes the shapes it fully understands (a list8 of up to 11
  fields, each null or in the encodings the spec allows for its type); anything else
  returns None and the caller decodes generically, so malformed input still gets the
  generic decoder's ``DecodeError``.
"""

from __future__ import annotations

import struct
from itertools import repeat
from typing import Any, Literal

from shardmq.amqp1 import types_gen as T

_I = struct.Struct(">I")
_FH = struct.Struct(">IBBH")
_new = object.__new__
# frame header, then 00 53 14 (transfer) list8(size 20, 5 items): handle smalluint,
# delivery-id uint, delivery-tag binary8 of 8, message-format uint0, settled
_T8_LIST = struct.Struct(">BBBBBBIBB8xBB")  # the same list, from its 0xC0
_T8_HEAD = (0xC0, 20, 5, 0x52)
_T8 = struct.Struct(">IBBH" + "BBBBBB" + "BB" + "BI" + "BB8s" + "BB")
_TRANSFER = T.Transfer


def _uint(v: int) -> bytes:
    if v == 0:
        return b"\x43"
    if v < 256:
        return bytes((0x52, v))
    return b"\x70" + _I.pack(v)


_SMALL_UINT = [_uint(i) for i in range(256)]


def uint_bytes(v: int) -> bytes:
    return _SMALL_UINT[v] if v < 256 else b"\x70" + _I.pack(v)


# ``send_transfer_q``'s one-frame transfer: size, the link's fixed head (frame type,
# channel, 00 53 14, list8 of 5, handle, the uint code), delivery-id, 0xA0 08 (binary8
# of 8), the tag as a number, 0x43 (message-format 0) and settled (0x41 / 0x42)
pack_transfer_q = struct.Struct(">I13sIHQH").pack


def transfer_head(channel: int, handle: int) -> bytes:
    """The 13 bytes of a one-frame transfer on ``channel`` and ``handle`` that
    ``pack_transfer_q`` puts between the frame size and the delivery-id (the layout of
    ``write_transfer``'s hot path); b"" when the handle does not fit one octet."""
    if handle >= 256:
        return b""
    return (
        bytes((2, 0))
        + channel.to_bytes(2, "big")
        + bytes((0, 0x53, 0x14, 0xC0, 20, 5, 0x52, handle, 0x70))
    )


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
    if not more and handle < 256 and tag is not None and len(tag) == 8 and settled is not None:
        # the hot path: one struct for frame header and performative (delivery-id as a
        # full uint, so that the layout is fixed)
        out += _T8.pack(
            33 + len(payload),
            2,
            0,
            channel,
            0x00,
            0x53,
            0x14,
            0xC0,
            20,
            5,
            0x52,
            handle,
            0x70,
            delivery_id or 0,
            0xA0,
            8,
            tag,
            0x43,
            0x41 if settled else 0x42,
        )
        out += payload
        return
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


_PERF_TO_HANDLE = b"\x00\x53\x14\xc0\x14\x05\x52"  # transfer, list8 (20, 5 items), smalluint
_STEP = (1 << 80) + 1  # the next delivery-id and the next tag, as one 14-byte integer
_BIG: Literal["big"] = "big"


def write_transfers(
    out: bytearray,
    channel: int,
    handle: int,
    first_id: int,
    first_tag: int,
    settled: bool,
    payload: bytes,
    n: int,
) -> None:
    """Append ``n`` (>= 1) one-frame transfers of ``payload``, byte for byte what ``n``
    calls of ``write_transfer`` write for delivery-ids ``first_id``.. and 8-byte tags
    ``first_tag``.. (big-endian integers), in one join. The caller keeps ``handle``
    below 256, and the ids and tags from wrapping."""
    pre = _FH.pack(33 + len(payload), 2, 0, channel) + _PERF_TO_HANDLE + bytes((handle, 0x70))
    post = (b"\x43\x41" if settled else b"\x43\x42") + payload
    # what varies is delivery-id, A0 08, tag: 14 bytes, one more by _STEP per frame
    x0 = (first_id << 80) | (0xA008 << 64) | first_tag
    ids = map(int.to_bytes, range(x0, x0 + n * _STEP, _STEP), repeat(14, n), repeat(_BIG, n))
    out += pre
    out += (post + pre).join(ids)
    out += post


def read_transfer(buf: Any, pos: int, end: int) -> tuple[Any, int] | None:
    """The transfer performative whose list starts at ``pos`` (after ``00 53 14``):
    (Transfer, position after it), or None when it is not in the common shape (a list8
    of null, uint, boolean, ubyte and binary8 fields: no delivery state)."""
    if pos + 22 <= end:  # the layout ``write_transfer`` uses: one unpack
        v = _T8_LIST.unpack_from(buf, pos)
        if v[0:4] == _T8_HEAD and v[5] == 0x70 and v[7] == 0xA0 and v[8] == 8 and v[9] == 0x43:
            settled = v[10]
            if settled == 0x41 or settled == 0x42:
                t = _new(_TRANSFER)
                t.handle = v[4]
                t.delivery_id = v[6]
                t.delivery_tag = bytes(buf[pos + 12 : pos + 20])
                t.message_format = 0
                t.settled = settled == 0x41
                t.more = t.resume = t.aborted = t.batchable = False
                t.rcv_settle_mode = t.state = None
                return t, pos + 22
    if buf[pos] != 0xC0 or pos + 3 > end:
        return None
    stop = pos + 2 + buf[pos + 1]  # the size counts the count octet and the items
    count = buf[pos + 2]
    if stop > end or count < 1 or count > 11:
        return None
    p = pos + 3
    vals: list[Any] = [None] * 11
    i = 0
    while i < count:
        if p >= stop:
            return None
        c = buf[p]
        if c == 0x40:
            p += 1
        elif c == 0x52 or c == 0x50:
            vals[i] = buf[p + 1]
            p += 2
        elif c == 0x43:
            vals[i] = 0
            p += 1
        elif c == 0x41:
            vals[i] = True
            p += 1
        elif c == 0x42:
            vals[i] = False
            p += 1
        elif c == 0xA0:
            q = p + 2 + buf[p + 1]
            vals[i] = bytes(buf[p + 2 : q])
            p = q
        elif c == 0x70:
            vals[i] = _I.unpack_from(buf, p + 1)[0]
            p += 5
        else:
            return None
        i += 1
    if p != stop or vals[0] is None:
        return None
    t = _new(_TRANSFER)
    t.handle, t.delivery_id, t.delivery_tag, t.message_format, t.settled = vals[:5]
    t.more = vals[5] or False
    t.rcv_settle_mode = vals[6]
    t.state = None
    t.resume = vals[8] or False
    t.aborted = vals[9] or False
    t.batchable = vals[10] or False
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
