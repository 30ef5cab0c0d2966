"""Quorum-queue delivery counting: the ``x-delivery-count`` header and
``x-delivery-limit`` (policy key ``delivery-limit``), as RabbitMQ 3.10 quorum queues do.

Owns: ``CountedMessage`` (a message as a quorum queue holds it: the publish with the
``x-delivery-count`` header set, its count, and the publish it came from), ``got``
(a message taken by basic.get), ``returned`` (messages handed back to a quorum
queue: nack/reject with requeue, a closed channel, a cancelled consumer) and
``to_back`` (where the ones the client returned go: the back of the queue).

Invariants (checked against RabbitMQ 3.10.8):
- A first delivery to a consumer is the message as published; a first one by
  basic.get carries ``x-delivery-count: 0`` unless the publisher set that header (then
  it is left as sent); every return adds one to the count and the next delivery
  carries the count (overwriting any value the publisher set).
- A message returned more than ``delivery_limit`` times (count > limit; a limit of 0 or
  less: after its first return) is dead-lettered with reason ``delivery_limit``, or
  dropped without a dead-letter exchange. A non-integer ``x-delivery-limit`` is ignored
  (no limit), as RabbitMQ does; policy and argument: the smaller wins (``qargs``).
- ``Message`` stays immutable: a new count is a new ``CountedMessage`` that takes the
  old one's place in the store (``MessageStore.rebind``), with the same ``seq`` and
  ``ts``, so order and deadlines are kept. A dead-lettered copy is made from the
  ``origin`` (RabbitMQ dead-letters the message as published, without the header).
- A durable quorum queue's store writes a message with its count (``CountingCodec``:
  the publish as received plus ``ts`` and the count in the record's ``b`` part; it
  loads back as the ``CountedMessage``). A return the client asked for (``to_back``)
  writes such a record, so its count survives a restart or kill -9. What a closing
  channel returns goes back to its place at the front: that count is kept in memory
  only (the record there is the one written before), so after a restart the message
  counts on from its last written count.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from shardmq.amqp.methods import BasicProperties
from shardmq.message import Message, next_seq
from shardmq.store.queue_store import RawCodec

if TYPE_CHECKING:
    from shardmq.broker.queue import Queue
    from shardmq.broker.storage import MessageStore

DELIVERY_LIMIT = "delivery_limit"  # the dead-letter reason
HEADER = "x-delivery-count"
_HEADER_CLASS = (60).to_bytes(2, "big") + b"\x00\x00"  # basic, weight 0


class CountedMessage(Message):
    """A message in a quorum queue: ``raw`` carries ``x-delivery-count``."""

    __slots__ = ("origin", "count")

    origin: Message
    count: int


_TS_COUNT = struct.Struct("<QI")  # ts, count: a counted message's record ``b`` part


class CountingCodec(RawCodec):
    """The record codec of a durable quorum queue's store: a ``CountedMessage`` is
    written as the publish it came from plus its count, and read back as one."""

    @staticmethod
    def parts(msg: Message) -> tuple[int, bytes, bytes, bytes]:
        if isinstance(msg, CountedMessage):
            o = msg.origin
            return o.ch << 32 | o.fmax, o.exrk, o.raw, _TS_COUNT.pack(msg.ts, msg.count)
        return RawCodec.parts(msg)

    @staticmethod
    def load(aux: int, exrk: bytes, a: bytes, b: bytes, seq: int) -> Message:
        msg = RawCodec.load(aux, exrk, a, b, seq)
        if len(b) < _TS_COUNT.size:
            return msg
        ts, count = _TS_COUNT.unpack_from(b)
        msg.ts = ts
        return _with_count(msg, count, msg)


def origin_of(msg: Message) -> Message:
    """The publish ``msg`` was made from (itself unless a quorum queue counted it)."""
    return msg.origin if isinstance(msg, CountedMessage) else msg


def _with_count(origin: Message, count: int, like: Message) -> CountedMessage:
    props = BasicProperties.decode(origin.raw, 19)
    headers = dict(props.headers or {})
    headers[HEADER] = count
    props.headers = headers
    body = origin.body
    header = _HEADER_CLASS + len(body).to_bytes(8, "big") + props.encode()
    new = CountedMessage.from_parts(origin.exrk, header, body, like.seq, origin.ch)
    assert isinstance(new, CountedMessage)
    new.origin = origin
    new.count = count
    new.ts = like.ts
    return new


def got(q: Queue, msg: Message) -> Message:
    """``msg`` (now unacked in ``q``'s store) goes out by basic.get: RabbitMQ 3.10 adds
    ``x-delivery-count: 0`` to a first delivery there (not to a consumer's)."""
    if isinstance(msg, CountedMessage):
        return msg
    if msg.raw[19] & 0x20:  # headers present
        headers = msg.properties().headers
        if headers and HEADER in headers:
            return msg
    c = _with_count(msg, 0, msg)
    q.store.rebind(msg, c)
    return c


def to_back(store: MessageStore, msgs: list[Message]) -> None:
    """The returned (counted) ``msgs`` go to the back of the quorum queue's ``store``,
    in this order: each is settled where it was and stored again at the end, with a new
    ``seq`` (a memory store orders requeues by it; a durable store writes a new record,
    so the place holds across a restart)."""
    for m in msgs:
        store.ack(m)
        m.seq = next_seq()
        store.push(m)


def returned(q: Queue, msgs: list[Message]) -> list[Message]:
    """``msgs`` (unacked in ``q``'s store) come back: counted, the ones over the limit
    dead-lettered (or dropped); returns the messages to requeue, which replaced the
    returned ones in the store."""
    from shardmq.broker.qfeatures import dead_letter

    limit = q.settings.delivery_limit
    store = q.store
    out: list[Message] = []
    for m in msgs:
        n = (m.count if isinstance(m, CountedMessage) else 0) + 1
        if limit is not None and n > limit:
            q.redelivered.discard(m)
            dead_letter(q, m, DELIVERY_LIMIT)
            continue
        c = _with_count(origin_of(m), n, m)
        store.rebind(m, c)
        out.append(c)
    return out


__all__ = [
    "DELIVERY_LIMIT",
    "CountedMessage",
    "CountingCodec",
    "got",
    "origin_of",
    "returned",
    "to_back",
]
