"""A broker channel: delivery tags, unacked messages, prefetch, confirms, transactions.

Owns: ``Channel`` — everything whose scope is one channel of a client connection, in
protocol-neutral terms (an AMQP 0-9-1 channel; an AMQP 1.0 session would map onto one
too) — and ``ChannelSink``, what a protocol adapter implements so that the channel's
deliveries, publisher confirms and returned messages reach its client. Frames, channel
numbers on the wire and content assembly are the adapter's.

Invariants:
- Delivery tags start at 1 and grow by one per delivery or get-ok on this channel.
- ``unacked`` maps tag -> (consumer or None, queue, message) in tag order; every entry
  is settled exactly once: ack, reject/nack, or requeue when the channel closes.
- A requeue the client asked for (reject/nack with requeue, basic.recover) is a
  ``back`` one: a quorum queue puts those messages at its back, as RabbitMQ 3.10 does;
  what a closing channel held goes back to the front (``Queue.requeue``).
- ``consumer_unacked`` counts unacked deliveries made to consumers (not basic.get), the
  figure ``global`` qos limits; each consumer counts its own for per-consumer qos.
- Publisher confirms: ``confirm_seq`` numbers publishes from 1; confirms are coalesced
  and written once per loop turn (``multiple`` when that saves frames). A publish that
  reached queues on other workers, or a persistent message stored by durable queues of
  this worker, stays in ``unconfirmed`` until each of them has confirmed (the local
  stores through ``durable_token`` / ``stored``, after their fsync); an ack never covers
  a publish still waiting, and a failed one is nacked. A released channel forgets what
  it waited for: late answers are dropped.
- In tx mode, publishes and acks are buffered until commit and dropped on rollback.
- The delivery path keeps no time: the consumer acknowledgement timeout reads the age
  of unacked deliveries from ``ack_marks`` (``consumer_timeout.py``) and closes the
  channel through ``ChannelSink.close_channel``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from typing import TYPE_CHECKING, Protocol

from shardmq.amqp.errors import PRECONDITION_FAILED, SoftError
from shardmq.broker.queue import Consumer, Queue
from shardmq.broker.remote import RemoteQueue
from shardmq.message import Message

if TYPE_CHECKING:
    from shardmq.broker.connection import BrokerConnection
    from shardmq.broker.consumer_timeout import Marks
    from shardmq.broker.stats import MessageStats

# Deliveries written to one connection in one loop turn stop past this many bytes and
# resume after the I/O layer wrote them (bounded memory, fair turns between sockets).
OUT_LIMIT = 256 * 1024

# The queue of a delivery: this worker's, or another worker's (settles travel there)
AnyQueue = Queue | RemoteQueue
Unacked = tuple["Consumer | None", AnyQueue, Message]


class ChannelSink(Protocol):
    """How a channel's output reaches its client: implemented by a protocol adapter
    (``shardmq.adapter.amqp091.AMQP091Connection`` for AMQP 0-9-1). Each call writes to
    the connection's output for this loop turn; the adapter tells the domain
    connection ``out_full()`` when a turn's output passes ``OUT_LIMIT``."""

    def deliver(
        self, ch: Channel, consumer: Consumer, tag: int, redelivered: bool, msg: Message
    ) -> None:
        """A delivery to ``consumer`` with delivery tag ``tag``."""

    def deliver_remote(self, ch: Channel, consumer: Consumer, record: bytes, pos: int) -> int:
        """The no-ack deliveries of a DELIVER record from another worker (items from
        ``pos``, see ``shardmq.broker.xshard.records``), numbered from ``ch.next_tag + 1``
        (the sink advances it); returns how many."""
        ...

    def confirm(self, ch: Channel, seq: int, multiple: bool, ack: bool) -> None:
        """A publisher confirm: basic.ack (``ack``) or basic.nack of ``seq``."""

    def returned(self, ch: Channel, code: int, text: str, msg: Message) -> None:
        """An unroutable mandatory publish goes back to its publisher."""

    def close_channel(self, ch: Channel, code: int, text: str) -> None:
        """The broker closes the channel (a soft error not caused by a method, e.g. the
        consumer acknowledgement timeout); the channel is released as on any close."""


class Channel:
    __slots__ = (
        "number",
        "conn",
        "sink",
        "_write",
        "closing",
        "flow",
        "active",
        "next_tag",
        "unacked",
        "consumer_unacked",
        "consumers",
        "prefetch",
        "global_prefetch",
        "confirm",
        "confirm_seq",
        "confirm_done",
        "confirm_nacks",
        "unconfirmed",
        "store_pending",
        "tx",
        "tx_publishes",
        "tx_acks",
        "last_queue",
        "ack_marks",
        "stats",
    )

    def __init__(self, number: int, conn: BrokerConnection, sink: ChannelSink) -> None:
        self.number = number
        self.conn = conn
        self.sink = sink
        self._write = sink.deliver  # bound once: the delivery path's one call out
        self.closing = False  # released: takes no more deliveries
        self.flow = True
        self.active = not conn.write_paused  # flow on and the socket is writable
        self.next_tag = 0
        self.unacked: OrderedDict[int, Unacked] = OrderedDict()
        self.consumer_unacked = 0
        self.consumers: dict[str, Consumer] = {}
        self.prefetch = 0  # for consumers created from now on (global=false)
        self.global_prefetch = 0  # channel-wide limit (global=true)
        self.confirm = False
        self.confirm_seq = 0
        self.confirm_done = 0  # highest seq confirmed to the client
        self.confirm_nacks: list[int] = []
        self.unconfirmed: OrderedDict[int, int] = OrderedDict()  # seq -> answers to wait for
        self.store_pending = 0  # tokens handed to local stores for the publish in progress
        self.tx = False
        self.tx_publishes: list[tuple[Message, int, int]] = []
        self.tx_acks: list[tuple[int, int, int, bool]] = []  # (kind, tag, multiple, requeue)
        self.last_queue = ""  # for the spec's "empty queue name = last declared queue"
        self.ack_marks: Marks | None = None  # the ack timeout's marks (consumer_timeout.py)
        self.stats: MessageStats = conn.stats  # the worker's counters (stats.py)

    # ------------------------------------------------------------ delivery
    def deliver(self, consumer: Consumer, queue: AnyQueue, msg: Message, redelivered: bool) -> None:
        tag = self.next_tag + 1
        self.next_tag = tag
        if consumer.no_ack:
            queue.settle_auto(msg)  # the queue counts it (stats.py)
        else:
            self.unacked[tag] = (consumer, queue, msg)
            consumer.unacked += 1
            self.consumer_unacked += 1
            queue.st_deliver_manual += 1
        self._write(self, consumer, tag, redelivered, msg)

    def take_get(self, queue: AnyQueue, msg: Message, no_ack: bool) -> int:
        tag = self.next_tag + 1
        self.next_tag = tag
        if no_ack:
            queue.settle_get_auto(msg)
        else:
            self.unacked[tag] = (None, queue, msg)
        return tag

    def update_active(self) -> None:
        was = self.active
        conn = self.conn
        self.active = self.flow and not conn.write_paused and not conn.out_blocked
        if self.active and not was:
            self.kick()

    def kick(self, first: AnyQueue | None = None, skip: Container[AnyQueue] = ()) -> None:
        """Readiness may have grown: let every queue we consume from dispatch, once each
        (``first`` before the others, whether or not we consume from it; none in
        ``skip``, which were just dispatched)."""
        if first is not None:
            first.dispatch()
        for q in {c.queue for c in self.consumers.values()}:
            if q is not first and q not in skip:
                q.dispatch()

    # ------------------------------------------------------------ settlement
    def _collect(self, tag: int, multiple: int) -> list[Unacked]:
        unacked = self.unacked
        if multiple:
            if tag == 0:
                items = list(unacked.values())
                unacked.clear()
                return items
            if tag not in unacked:
                raise SoftError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", 60, 80)
            items = []
            while unacked:
                t, entry = unacked.popitem(last=False)
                items.append(entry)
                if t == tag:
                    break
            return items
        if tag not in unacked:
            raise SoftError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", 60, 80)
        return [unacked.pop(tag)]

    def ack(self, tag: int, multiple: int) -> None:
        if self.tx:
            self._check_tag(tag, multiple)
            self.tx_acks.append((0, tag, multiple, False))
            return
        if not multiple:
            entry: Unacked | None = self.unacked.pop(tag, None)
            if entry is None:
                raise SoftError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", 60, 80)
            consumer, queue, msg = entry
            queue.settle(msg)
            self.stats.acked += 1
            if consumer is not None:
                consumer.unacked -= 1
                self.consumer_unacked -= 1
                if self.global_prefetch:
                    # the room is the channel's: any of its queues may use it (this
                    # queue first, each queue once)
                    self.kick(queue if consumer.queue.consumers else None)
                elif consumer.queue.consumers:
                    queue.dispatch()
            return
        self._settle(self._collect(tag, multiple), requeue=None)

    def reject(self, tag: int, multiple: int, requeue: bool) -> None:
        if self.tx:
            self._check_tag(tag, multiple)
            self.tx_acks.append((1, tag, multiple, requeue))
            return
        self._settle(self._collect(tag, multiple), requeue=requeue, back=True)

    def _check_tag(self, tag: int, multiple: int) -> None:
        if (tag or not multiple) and tag not in self.unacked:
            raise SoftError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", 60, 80)

    def _settle(self, entries: list[Unacked], requeue: bool | None, back: bool = False) -> None:
        """requeue None: ack; False: drop; True: back to the queue as redelivered (at
        its back, for a quorum queue, when ``back``: the client returned them)."""
        if requeue is None:
            self.stats.acked += len(entries)
        touched: dict[AnyQueue, list[Message]] = {}
        freed = False
        for consumer, queue, msg in entries:
            if consumer is not None:
                consumer.unacked -= 1
                self.consumer_unacked -= 1
                freed = True
            if requeue:
                touched.setdefault(queue, []).append(msg)
            else:
                if requeue is None:
                    queue.settle(msg)
                else:
                    queue.reject(msg)  # dead-lettered where the queue says so
                touched.setdefault(queue, [])
        for queue, msgs in touched.items():
            if msgs:
                queue.requeue(msgs, back)
            else:
                queue.dispatch()
        if freed and self.global_prefetch:
            # the room is the channel's: its other queues may use it too
            self.kick(skip=touched)

    def requeue_all(self, back: bool = False) -> None:
        entries = list(self.unacked.values())
        self.unacked.clear()
        self._settle(entries, requeue=True, back=back)

    def recover(self) -> None:
        self.requeue_all(back=True)

    # ------------------------------------------------------------ confirms
    def confirm_published(self) -> None:
        self.confirm_seq += 1
        self.conn.confirms_pending(self)

    def confirm_later(self, shards: int) -> int:
        """A publish whose confirm waits for ``shards`` other workers; returns its seq."""
        self.confirm_seq += 1
        self.unconfirmed[self.confirm_seq] = shards
        return self.confirm_seq

    def durable_token(self) -> tuple[Channel, int]:
        """A durable queue of this worker stores the publish being routed (it gets the
        next ``confirm_seq``): its confirm waits for this token."""
        self.store_pending += 1
        return (self, self.confirm_seq + 1)

    def stored(self, seq: int, ok: bool) -> None:
        """A local store answered for a token: durable (ok) or failed (nack)."""
        self.remote_confirmed(seq, ok)

    def remote_confirmed(self, seq: int, ok: bool) -> None:
        left = self.unconfirmed.get(seq)
        if left is None:
            return
        if not ok:
            del self.unconfirmed[seq]
            self.confirm_nacks.append(seq)
        elif left <= 1:
            del self.unconfirmed[seq]
        else:
            self.unconfirmed[seq] = left - 1
        self.conn.confirms_pending(self)

    def flush_confirms(self) -> None:
        """Answer the longest run of publishes that are all settled, in order: one ack
        (``multiple`` when it covers several) per stretch of confirmed ones, a nack for
        each nacked one. Every publish gets exactly one answer: a multiple ack never
        spans a nack, and a nack behind a publish still pending waits for it."""
        confirm = self.sink.confirm
        done = start = self.confirm_done
        upto = next(iter(self.unconfirmed)) - 1 if self.unconfirmed else self.confirm_seq
        nacked = 0
        if self.confirm_nacks:
            later = []
            for n in sorted(self.confirm_nacks):
                if n > upto:
                    later.append(n)
                    continue
                if n - 1 > done:
                    confirm(self, n - 1, n - 1 > done + 1, True)
                confirm(self, n, False, False)
                nacked += 1
                done = n
            self.confirm_nacks = later
        if upto > done:
            confirm(self, upto, upto > done + 1, True)
            done = upto
        self.confirm_done = done
        self.stats.confirmed += done - start - nacked

    # ------------------------------------------------------------ teardown
    def release(self) -> None:
        """The channel is gone: cancel its consumers and requeue what it held."""
        self.closing = True
        for c in list(self.consumers.values()):
            self.conn.remove_consumer(c)
        self.consumers.clear()
        self.tx_publishes.clear()
        self.tx_acks.clear()
        self.unconfirmed.clear()
        self.requeue_all()
