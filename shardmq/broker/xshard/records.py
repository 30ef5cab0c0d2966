"""Every record that crosses the rings between workers, byte for byte.

Owns: the record kinds (first byte of every record), their layouts (big-endian
``struct.Struct``\\ s), typed pack/parse functions for each, and the request/reply
envelopes (msgpack ``msgspec.Struct``\\ s). ``tests/broker/test_records.py`` pins the
exact bytes of every kind.

Layouts (``>``: big-endian; ``shortstr``: one length octet and the bytes)::

    ENQUEUE   head  B kind, Q publisher's conn gid, H channel, B n queues, H address len;
                    address: shortstr vhost + n shortstr queue names
              item  Q confirm seq (0: none; TX_SEQ bit: a tx commit), H exrk len,
                    H raw's channel, I header size, I largest frame, I raw len;
                    then exrk and raw (the publish's content frames)
    DELIVER   head  B kind, Q consumer's conn gid, H channel; shortstr consumer tag
              item  Q ref (0: no-ack), B flags (bit 0 redelivered, bit 1 no-ack),
                    H exrk len, H raw's channel, I header size, I largest frame,
                    I raw len; then exrk, one frame-end octet (0xCE) and raw
    SETTLE          B kind, B action (ACK, DROP, REQUEUE, REQUEUE_BACK: a requeue
                    the client asked for), I count; count Q refs
    CONFIRM         B kind, Q publisher's conn gid, H channel, B ok, I count; count Q seqs
    CREDIT, IDLE    B kind, Q consumer's conn gid, H channel, I n; shortstr consumer tag
    THROTTLE        B kind, Q publisher's conn gid, B on; shortstr queue name
    REQUEST         B kind; msgpack array [kind name, req id, fields...] (``Request``)
    REPLY           B kind; msgpack array [req id, error or nil, result] (``Reply``)

Invariants:
- ENQUEUE and DELIVER records are batches: one head, then items up to the record's end
  (``Mesh.open_batch``); every other kind is one record per message or per batch of refs.
- The hot paths (items) pack and unpack with the bound ``struct`` methods exported here
  (``pack_enqueue_item`` ...): no Python-level call and no object per message beyond
  the packed bytes or the unpacked tuple.
- A REQUEST whose req id is 0 expects no REPLY.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgspec

from shardmq.amqp.codec import shortstr

ENQUEUE, DELIVER, SETTLE, CONFIRM, CREDIT, REQUEST, REPLY, IDLE, THROTTLE = range(1, 10)
# SETTLE actions (REQUEUE_BACK: returned by reject/nack/recover, ``Queue.requeue``'s back)
ACK, DROP, REQUEUE, REQUEUE_BACK = 0, 1, 2, 3
# ENQUEUE seqs of tx commits (publisher confirms count up from 1 and never get here)
TX_SEQ = 1 << 63

ENQUEUE_HEAD = struct.Struct(">BQHBH")
ENQUEUE_ITEM = struct.Struct(">QHHIII")
DELIVER_HEAD = struct.Struct(">BQH")
DELIVER_ITEM = struct.Struct(">QBHHIII")
SETTLE_HEAD = struct.Struct(">BBI")
CONFIRM_HEAD = struct.Struct(">BQHBI")
CREDIT_HEAD = struct.Struct(">BQHI")  # CREDIT and IDLE
THROTTLE_HEAD = struct.Struct(">BQB")

# ---------------------------------------------------------------- items (hot path)
# (seq, exrk len, raw's channel, header size, largest frame, raw len)
EnqueueItem = tuple[int, int, int, int, int, int]
# (ref, flags, exrk len, raw's channel, header size, largest frame, raw len)
DeliverItem = tuple[int, int, int, int, int, int, int]
pack_enqueue_item: Callable[[int, int, int, int, int, int], bytes] = ENQUEUE_ITEM.pack
unpack_enqueue_item: Callable[[bytes, int], EnqueueItem] = ENQUEUE_ITEM.unpack_from
pack_deliver_item: Callable[[int, int, int, int, int, int, int], bytes] = DELIVER_ITEM.pack
unpack_deliver_item: Callable[[bytes, int], DeliverItem] = DELIVER_ITEM.unpack_from
ENQUEUE_ITEM_SIZE = ENQUEUE_ITEM.size
DELIVER_ITEM_SIZE = DELIVER_ITEM.size


def shortstr_at(buf: bytes, pos: int) -> tuple[str, int]:
    """The shortstr at ``pos`` and the position after it."""
    n = buf[pos]
    return buf[pos + 1 : pos + 1 + n].decode(), pos + 1 + n


# ---------------------------------------------------------------- ENQUEUE head
def enqueue_address(vhost: str, names: list[str] | tuple[str, ...]) -> bytes:
    """The address of an ENQUEUE batch: the queues' vhost and names."""
    return shortstr(vhost) + b"".join(shortstr(n) for n in names)


def enqueue_head(gid: int, chnum: int, nq: int, address: bytes) -> bytes:
    return ENQUEUE_HEAD.pack(ENQUEUE, gid, chnum, nq, len(address)) + address


def parse_enqueue_head(data: bytes) -> tuple[int, int, int, bytes, int]:
    """(publisher's gid, channel, n queues, address, position of the first item)."""
    _k, gid, chnum, nq, alen = ENQUEUE_HEAD.unpack_from(data, 0)
    end = ENQUEUE_HEAD.size + alen
    return gid, chnum, nq, data[ENQUEUE_HEAD.size : end], end


def parse_enqueue_address(address: bytes, nq: int) -> tuple[str, tuple[str, ...]]:
    """(vhost, queue names) of an ENQUEUE address."""
    vhost, pos = shortstr_at(address, 0)
    names = []
    for _ in range(nq):
        name, pos = shortstr_at(address, pos)
        names.append(name)
    return vhost, tuple(names)


# ---------------------------------------------------------------- DELIVER head
def deliver_head(gid: int, chnum: int, ctag: bytes) -> bytes:
    """``ctag``: the consumer tag as a shortstr (``Consumer.ctag``)."""
    return DELIVER_HEAD.pack(DELIVER, gid, chnum) + ctag


def parse_deliver_head(data: bytes) -> tuple[int, int, bytes, int]:
    """(consumer's gid, channel, consumer tag as a shortstr, position of the first item)."""
    _k, gid, chnum = DELIVER_HEAD.unpack_from(data, 0)
    pos = DELIVER_HEAD.size + 1 + data[DELIVER_HEAD.size]
    return gid, chnum, data[DELIVER_HEAD.size : pos], pos


# ---------------------------------------------------------------- SETTLE, CONFIRM
def settle_record(action: int, refs: list[int]) -> bytes:
    n = len(refs)
    return SETTLE_HEAD.pack(SETTLE, action, n) + struct.pack(f">{n}Q", *refs)


def parse_settle(data: bytes) -> tuple[int, tuple[int, ...]]:
    """(action, refs)."""
    _k, action, n = SETTLE_HEAD.unpack_from(data, 0)
    return action, struct.unpack_from(f">{n}Q", data, SETTLE_HEAD.size)


def confirm_record(gid: int, chnum: int, ok: bool, seqs: list[int]) -> bytes:
    n = len(seqs)
    return CONFIRM_HEAD.pack(CONFIRM, gid, chnum, 1 if ok else 0, n) + struct.pack(f">{n}Q", *seqs)


def parse_confirm(data: bytes) -> tuple[int, int, bool, tuple[int, ...]]:
    """(publisher's gid, channel, ok, seqs)."""
    _k, gid, chnum, ok, n = CONFIRM_HEAD.unpack_from(data, 0)
    return gid, chnum, bool(ok), struct.unpack_from(f">{n}Q", data, CONFIRM_HEAD.size)


# ---------------------------------------------------------------- CREDIT, IDLE, THROTTLE
def credit_record(kind: int, gid: int, chnum: int, n: int, ctag: bytes) -> bytes:
    """CREDIT (consumer's worker -> owner: ``n`` more deliveries) or IDLE (owner ->
    consumer's worker: ``n`` credits given back, or 0: a message waits again).
    ``ctag``: the consumer tag as a shortstr."""
    return CREDIT_HEAD.pack(kind, gid, chnum, n) + ctag


def parse_credit(data: bytes) -> tuple[int, int, int, str]:
    """(consumer's gid, channel, n, consumer tag) of a CREDIT or IDLE record."""
    _k, gid, chnum, n = CREDIT_HEAD.unpack_from(data, 0)
    tag, _ = shortstr_at(data, CREDIT_HEAD.size)
    return gid, chnum, n, tag


def throttle_record(gid: int, on: bool, queue: str) -> bytes:
    return THROTTLE_HEAD.pack(THROTTLE, gid, 1 if on else 0) + shortstr(queue)


def parse_throttle(data: bytes) -> tuple[int, bool, str]:
    """(publisher's gid, on, queue name)."""
    _k, gid, on = THROTTLE_HEAD.unpack_from(data, 0)
    name, _ = shortstr_at(data, THROTTLE_HEAD.size)
    return gid, bool(on), name


# ---------------------------------------------------------------- REQUEST, REPLY
class Consume(msgspec.Struct, array_like=True, tag="consume"):
    """Register a consumer of ``name`` on another worker with ``credit`` deliveries
    (returned on settle if ``credit_on_settle``, else as the socket drains)."""

    req: int
    vhost: str
    name: str
    gid: int
    chnum: int
    consumer_tag: str
    no_ack: bool
    exclusive: bool
    credit: int
    credit_on_settle: bool
    priority: int = 0  # the consumer's x-priority


class Cancel(msgspec.Struct, array_like=True, tag="cancel"):
    req: int
    vhost: str
    name: str
    gid: int
    chnum: int
    consumer_tag: str


class Get(msgspec.Struct, array_like=True, tag="get"):
    req: int
    vhost: str
    name: str
    no_ack: bool


class Purge(msgspec.Struct, array_like=True, tag="purge"):
    req: int
    vhost: str
    name: str


class ReplyExists(msgspec.Struct, array_like=True, tag="reply"):
    """Is the direct reply-to ``address`` of the owner's worker live? (1 or 0)"""

    req: int
    address: str


Request = Consume | Cancel | Get | Purge | ReplyExists


class GetOk(msgspec.Struct, array_like=True):
    """A message taken by basic.get (``ref`` 0: no-ack, already settled)."""

    ref: int
    redelivered: bool
    message_count: int
    exrk: bytes
    ch: int
    hsize: int
    fmax: int
    raw: bytes


# an AMQPError as ``metadata.error_of`` gives it: (soft, code, text, class id, method id)
ErrorTuple = tuple[bool, int, str, int, int]
# what a request returns: GetOk or the message count (get), the count purged, or nothing
Result = GetOk | int | None


class Reply(msgspec.Struct, array_like=True):
    req: int
    error: ErrorTuple | None
    result: Result


_encode = msgspec.msgpack.Encoder().encode
_decode_request = msgspec.msgpack.Decoder(Request).decode
_decode_reply = msgspec.msgpack.Decoder(Reply).decode
_REQUEST = bytes((REQUEST,))
_REPLY = bytes((REPLY,))


def request_record(request: Request) -> bytes:
    return _REQUEST + _encode(request)


def parse_request(data: bytes) -> Request:
    return _decode_request(memoryview(data)[1:])


def reply_record(reply: Reply) -> bytes:
    return _REPLY + _encode(reply)


def parse_reply(data: bytes) -> Reply:
    return _decode_reply(memoryview(data)[1:])


# a result as the broker's callbacks take it (a get's message as a list of its fields)
ResultValue = list[Any] | int | None


def result_value(result: Result) -> ResultValue:
    """A result as the broker's callbacks take it (a get's message as a list)."""
    if isinstance(result, GetOk):
        return list(msgspec.structs.astuple(result))
    return result
