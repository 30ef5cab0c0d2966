"""Hand-tuned hot-path codec: frame envelopes, publish, deliver, ack, content header.

Owns: the byte layouts that every message crosses (parsed or written per message), kept
out of the generated method table so they can be written without building objects.

Invariants:
- ``exrk`` is the wire form of ``shortstr exchange, shortstr routing-key`` exactly as the
  publisher sent it; basic.deliver / get-ok / return reuse it byte for byte.
- A message's content travels as ``raw``: the content header frame and body frame(s)
  as received; properties are never re-encoded, frames are rebuilt only when the
  consumer's channel number or frame_max differ from the publisher's.
- Writers append to a caller-owned ``bytearray`` and never allocate a frame object.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from shardmq.amqp.constants import (
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    PROTOCOL_HEADER,
)

__all__ = ["FRAME_BODY", "FRAME_END", "FRAME_HEADER", "FRAME_HEARTBEAT", "FRAME_METHOD"]
__all__ += ["PROTOCOL_HEADER"]

FRAME_END_BYTES = bytes([FRAME_END])

FRAME_HDR = struct.Struct(">BHI")  # type, channel, size
U8 = struct.Struct(">B")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
U64_BIT = struct.Struct(">QB")

_end_hdr = struct.Struct(">BBHI")  # frame-end of previous frame + next frame header
END_HDR = _end_hdr
# frame header + class id + method id: a method frame's start in one unpack
FRAME_HDR_IDS = struct.Struct(">BHIHH")
# frame header + class id, weight, body size: a content header frame's start
CONTENT_HDR = struct.Struct(">BHIHHQ")
_pack_hdr = FRAME_HDR.pack
_pack_end_hdr = _end_hdr.pack
_pack_qb = U64_BIT.pack
_pack_q = U64.pack

HEARTBEAT_FRAME = _pack_hdr(FRAME_HEARTBEAT, 0, 0) + FRAME_END_BYTES


def method_index(class_id: int, method_id: int) -> int:
    return (class_id << 16) | method_id


BASIC_PUBLISH = method_index(60, 40)
BASIC_ACK = method_index(60, 80)

_DELIVER_IDS = U32.pack(method_index(60, 60))
_GET_OK_IDS = U32.pack(method_index(60, 71))
_RETURN_IDS = U32.pack(method_index(60, 50))
_ACK_IDS = U32.pack(BASIC_ACK)
_NACK_IDS = U32.pack(method_index(60, 120))


def shortstr(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError("shortstr longer than 255 bytes")
    return bytes((len(raw),)) + raw


def write_method(out: bytearray, channel: int, payload: bytes) -> None:
    """Append one method frame whose payload (ids + arguments) is already encoded."""
    out += _pack_hdr(FRAME_METHOD, channel, len(payload))
    out += payload
    out += FRAME_END_BYTES


def write_content(out: bytearray, channel: int, header: bytes, body: bytes, frame_max: int) -> None:
    """Append the content header frame and the body frame(s) split by ``frame_max``.

    Expects the preceding method frame to be complete *without* its frame-end octet;
    writes that octet itself (saves one append per message).
    """
    out += _pack_end_hdr(FRAME_END, FRAME_HEADER, channel, len(header))
    out += header
    size = len(body)
    if size == 0:
        out += FRAME_END_BYTES
        return
    chunk = frame_max - 8
    if size <= chunk:
        out += _pack_end_hdr(FRAME_END, FRAME_BODY, channel, size)
        out += body
        out += FRAME_END_BYTES
        return
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        out += _pack_end_hdr(FRAME_END, FRAME_BODY, channel, len(piece))
        out += piece
    out += FRAME_END_BYTES


class RawContent(Protocol):
    """A message as the codec sees it: see shardmq/message.py."""

    raw: bytes  # content header frame + body frame(s), as received on channel ``ch``
    ch: int
    hsize: int  # content header payload size
    fmax: int  # largest frame payload in ``raw``


def raw_body(raw: bytes, hsize: int) -> bytes:
    """The body carried by the frames of ``raw`` after the content header frame."""
    pos = 8 + hsize
    end = len(raw)
    if pos >= end:
        return b""
    size = U32.unpack_from(raw, pos + 3)[0]
    if pos + 8 + size == end:
        return raw[pos + 7 : pos + 7 + size]
    pieces = []
    while pos < end:
        size = U32.unpack_from(raw, pos + 3)[0]
        pieces.append(raw[pos + 7 : pos + 7 + size])
        pos += 8 + size
    return b"".join(pieces)


def write_raw_content(out: bytearray, channel: int, msg: RawContent, frame_max: int) -> None:
    """Content frames of ``msg`` for ``channel``: the received frames unchanged when the
    channel and frame size allow, re-framed otherwise. Ends the preceding method frame."""
    if msg.ch == channel and msg.fmax <= frame_max - 8:
        out += FRAME_END_BYTES
        out += msg.raw
        return
    raw = msg.raw
    write_content(out, channel, raw[7 : 7 + msg.hsize], raw_body(raw, msg.hsize), frame_max)


def write_deliver(
    out: bytearray,
    channel: int,
    ctag: bytes,
    delivery_tag: int,
    redelivered: bool,
    exrk: bytes,
    msg: RawContent,
    frame_max: int,
) -> None:
    """basic.deliver + content. ``ctag`` is the consumer tag as an encoded shortstr."""
    # everything before exrk in one pack (one bytes object per delivery); ``fmax + 8``
    # stays a cached small int for small messages where ``frame_max - 8`` never does
    pack = _DELIVER_HEADS.get(len(ctag)) or _deliver_head(len(ctag))
    out += pack(
        FRAME_METHOD,
        channel,
        13 + len(ctag) + len(exrk),
        _DELIVER_IDS,
        ctag,
        delivery_tag,
        redelivered,
    )
    out += exrk
    if msg.ch == channel and msg.fmax + 8 <= frame_max:
        out += FRAME_END_BYTES
        out += msg.raw
    else:
        write_raw_content(out, channel, msg, frame_max)


# ``write_deliver``'s packs of frame header, ids, consumer tag (a shortstr of that
# length), delivery tag and redelivered, by the length of the encoded consumer tag
_DELIVER_HEADS: dict[int, Callable[..., bytes]] = {}


def _deliver_head(ctag_len: int) -> Callable[..., bytes]:
    pack = _DELIVER_HEADS[ctag_len] = struct.Struct(f">BHI4s{ctag_len}sQB").pack
    return pack


# basic.deliver method frame starts (frame header, ids, consumer tag, delivery tag,
# redelivered) as one struct, by the length of the encoded consumer tag
_DELIVER_STARTS: dict[int, struct.Struct] = {}


def deliver_start(ctag: bytes) -> tuple[Callable[..., bytes], bytes, int]:
    """For many deliveries to one consumer, what ``write_deliver`` writes before exrk in
    one pack: returns ``(pack, ids_tag, size0)``, used as ``pack(FRAME_METHOD, channel,
    size0 + len(exrk), ids_tag, delivery_tag, redelivered)``."""
    st = _DELIVER_STARTS.get(len(ctag))
    if st is None:
        st = _DELIVER_STARTS[len(ctag)] = struct.Struct(f">BHI{len(_DELIVER_IDS) + len(ctag)}sQB")
    return st.pack, _DELIVER_IDS + ctag, 13 + len(ctag)


def write_get_ok(
    out: bytearray,
    channel: int,
    delivery_tag: int,
    redelivered: bool,
    exrk: bytes,
    message_count: int,
    msg: RawContent,
    frame_max: int,
) -> None:
    out += _pack_hdr(FRAME_METHOD, channel, 17 + len(exrk))
    out += _GET_OK_IDS
    out += _pack_qb(delivery_tag, redelivered)
    out += exrk
    out += U32.pack(message_count)
    write_raw_content(out, channel, msg, frame_max)


def write_return(
    out: bytearray,
    channel: int,
    reply_code: int,
    reply_text: str,
    exrk: bytes,
    msg: RawContent,
    frame_max: int,
) -> None:
    text = shortstr(reply_text)
    out += _pack_hdr(FRAME_METHOD, channel, 6 + len(text) + len(exrk))
    out += _RETURN_IDS
    out += U16.pack(reply_code)
    out += text
    out += exrk
    write_raw_content(out, channel, msg, frame_max)


def write_confirm(out: bytearray, channel: int, tag: int, multiple: bool, ack: bool) -> None:
    """Server-sent basic.ack / basic.nack for publisher confirms."""
    if ack:
        out += _pack_hdr(FRAME_METHOD, channel, 13)
        out += _ACK_IDS
    else:
        out += _pack_hdr(FRAME_METHOD, channel, 13)
        out += _NACK_IDS
    out += _pack_qb(tag, 1 if multiple else 0)
    out += FRAME_END_BYTES


def exrk_names(exrk: bytes) -> tuple[str, str]:
    """Decode exchange and routing key from an ``exrk`` blob (only off the hot path)."""
    el = exrk[0]
    exchange = exrk[1 : 1 + el].decode("utf-8", "replace")
    rl = exrk[1 + el]
    routing_key = exrk[2 + el : 2 + el + rl].decode("utf-8", "replace")
    return exchange, routing_key


def make_exrk(exchange: str, routing_key: str) -> bytes:
    return shortstr(exchange) + shortstr(routing_key)


# Content header property flags (class basic), bit 15 first.
FLAG_HEADERS = 1 << 13
FLAG_DELIVERY_MODE = 1 << 12


def body_size(header: bytes) -> int:
    return U64.unpack_from(header, 4)[0]
