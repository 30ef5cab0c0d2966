"""Direct reply-to: the ``amq.rabbitmq.reply-to`` pseudo-queue, as RabbitMQ has it.

Owns: ``ReplyRegistry`` (one per worker, ``Broker.replies``): the reply consumers of
this worker's channels, the reply addresses handed out for them, and where a reply
published to such an address goes; ``ReplyQueue``, the private pseudo-queue behind one
channel's reply consumer.

A channel consumes from ``amq.rabbitmq.reply-to`` (no-ack only); a publish on that
channel whose ``reply_to`` property is ``amq.rabbitmq.reply-to`` gets it rewritten to
the channel's reply address, ``amq.rabbitmq.reply-to.<id>.<key>``: ``id`` is the
base64 of (worker slot, connection gid, channel number), ``key`` 16 random bytes drawn
when the reply consumer was registered. A reply is a publish to the default exchange
with that address as routing key: it is routed (only once it matched no queue) to the
``ReplyQueue`` of the channel, here or on the address's worker (an ENQUEUE record like
any other publish: ``shardmq.broker.xshard.owner`` resolves the address there).

Invariants:
- An address reaches its channel only while the reply consumer that the address was
  made for is registered, and only with its key (compared in constant time): an
  address cannot be guessed or forged, and one from a closed channel (or a respawned
  worker) never reaches a new channel that reuses its numbers.
- A reply to a gone requester is dropped (a mandatory one is returned when the address
  is of this worker); nothing is kept for it.
- The plain publish path pays nothing: the ``reply_to`` property is looked at only
  when its flag bit is set, the routing only for a publish that matched no queue.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
from typing import TYPE_CHECKING

from shardmq.amqp.codec import FRAME_HEADER
from shardmq.amqp.errors import PRECONDITION_FAILED, SoftError
from shardmq.broker.queue import Queue, QueueConsumer
from shardmq.broker.remote import RemoteQueue
from shardmq.message import Message

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.broker.channel import Channel

REPLY_TO = "amq.rabbitmq.reply-to"
PREFIX = REPLY_TO + "."
# the reply_to property's value as it appears in a content header (shortstr)
NEEDLE = bytes((len(REPLY_TO),)) + REPLY_TO.encode()
_PREFIX_BYTES = PREFIX.encode()
_ID = struct.Struct(">HQH")  # worker slot, connection gid, channel number
_FRAME_HEAD = struct.Struct(">BHI")
KEY_BYTES = 16

# a route as ``VHost.route`` gives it: (local queues, remote queues by shard)
Route = tuple[tuple[Queue, ...], tuple[tuple[int, tuple[RemoteQueue, ...]], ...]]
_NO_ROUTE: Route = ((), ())


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def parse_address(address: str) -> tuple[int, int, int, bytes] | None:
    """(worker slot, gid, channel, key) of a reply address, or None if malformed."""
    if not address.startswith(PREFIX):
        return None
    ident, _, key = address[len(PREFIX) :].partition(".")
    try:
        raw_id = _unb64(ident)
        raw_key = _unb64(key)
    except (binascii.Error, ValueError):
        return None
    if len(raw_id) != _ID.size or len(raw_key) != KEY_BYTES:
        return None
    slot, gid, chnum = _ID.unpack(raw_id)
    return slot, gid, chnum, raw_key


class ReplyQueue(Queue):
    """The pseudo-queue of one channel's reply consumer: holds replies only while its
    channel cannot take them (flow control), forgets itself when the consumer goes."""

    __slots__ = ("registry", "key", "address", "gid", "chnum")

    def __init__(self, registry: ReplyRegistry, address: str, key: bytes, gid: int, chnum: int):
        super().__init__(address, "")
        self.registry = registry
        self.address = address
        self.key = key
        self.gid = gid
        self.chnum = chnum

    def remove_consumer(self, c: QueueConsumer) -> bool:
        super().remove_consumer(c)
        if not self.consumers:
            self.registry.drop(self)
        return False  # never auto-deleted through the sequencer: it is nobody's queue


class ReplyRegistry:
    """The reply consumers of this worker's channels (see the module block)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.by_channel: dict[tuple[int, int], ReplyQueue] = {}

    # ------------------------------------------------------------ requester side
    def open(self, ch: Channel) -> ReplyQueue:
        """Register the reply consumer of ``ch`` (406 if it has one)."""
        ident = (ch.conn.gid, ch.number)
        if ident in self.by_channel:
            raise SoftError(PRECONDITION_FAILED, "reply consumer already set", 60, 20)
        key = os.urandom(KEY_BYTES)
        address = PREFIX + _b64(_ID.pack(self.broker.slot, *ident)) + "." + _b64(key)
        q = ReplyQueue(self, address, key, *ident)
        self.by_channel[ident] = q
        return q

    def drop(self, q: ReplyQueue) -> None:
        if self.by_channel.get((q.gid, q.chnum)) is q:
            del self.by_channel[(q.gid, q.chnum)]
        q.purge()  # (releases publishers it throttled)
        q.deleted = True

    def rewrite(self, ch: Channel, msg: Message) -> Message:
        """A publish on ``ch`` whose reply_to may be ``amq.rabbitmq.reply-to``: the same
        publish with the channel's reply address instead (406 without a reply consumer)."""
        props = msg.properties()
        if props.reply_to != REPLY_TO:
            return msg
        q = self.by_channel.get((ch.conn.gid, ch.number))
        if q is None:
            raise SoftError(PRECONDITION_FAILED, "fast reply consumer does not exist", 60, 40)
        props.reply_to = q.address
        raw = msg.raw
        header = raw[7:19] + props.encode()
        new_raw = (
            _FRAME_HEAD.pack(FRAME_HEADER, msg.ch, len(header))
            + header
            + raw[7 + msg.hsize : 8 + msg.hsize]
            + raw[8 + msg.hsize :]
        )
        return Message(msg.exrk, new_raw, msg.ch, len(header), max(msg.fmax, len(header)), msg.seq)

    # ------------------------------------------------------------ replier side
    def lookup(self, address: str) -> ReplyQueue | None:
        """This worker's reply queue of ``address`` if its consumer is still there."""
        parsed = parse_address(address)
        if parsed is None:
            return None
        slot, gid, chnum, key = parsed
        if slot != self.broker.slot:
            return None
        q = self.by_channel.get((gid, chnum))
        if q is None or not hmac.compare_digest(q.key, key):
            return None
        return q

    def shard_of(self, address: str) -> int | None:
        """The worker an address belongs to, if it is well formed and not this one's."""
        parsed = parse_address(address)
        if parsed is None:
            return None
        slot = parsed[0]
        broker = self.broker
        if slot == broker.slot or slot >= broker.workers or broker.shards is None:
            return None
        return slot

    def route(self, exrk: bytes, vhost: str) -> Route:
        """Where a publish that matched no queue goes if its routing key is a reply
        address (``exrk``: the publish's exchange and routing key, wire form)."""
        if exrk[0] != 0 or not exrk.startswith(_PREFIX_BYTES, 2):
            return _NO_ROUTE
        address = exrk[2 : 2 + exrk[1]].decode("utf-8", "replace")
        q = self.lookup(address)
        if q is not None:
            return ((q,), ())
        shard = self.shard_of(address)
        if shard is None:
            return _NO_ROUTE
        rq = RemoteQueue(address, vhost, shard, router=self.broker.router())
        return ((), ((shard, (rq,)),))


def declare_ok_counts(registry: ReplyRegistry, name: str) -> tuple[int, int] | None:
    """queue.declare of ``amq.rabbitmq.reply-to`` or of a reply address of this worker,
    as RabbitMQ answers it: (messages 0, consumers 1), or None when it does not exist
    here."""
    if name == REPLY_TO or registry.lookup(name) is not None:
        return (0, 1)
    return None


def consume_args_ok(no_ack: bool) -> None:
    """basic.consume from ``amq.rabbitmq.reply-to``: no-ack only, as RabbitMQ."""
    if not no_ack:
        raise SoftError(PRECONDITION_FAILED, "reply consumer cannot acknowledge", 60, 20)
