"""User side: this worker's connections using queues that live on other workers.

Owns: ``UserSide`` (ENQUEUE out for publishes, CONFIRM in; DELIVER in to local
consumers of remote queues, SETTLE and CREDIT out; consume/cancel/get/purge/reply-exists REQUESTs
out, REPLY in; IDLE and THROTTLE in) and the backpressure of publishers whose ring to
an owner is full.

Invariants:
- Records to one worker are delivered in order (one SPSC ring per ordered pair), so a
  reply always precedes the deliveries it enables. One open ENQUEUE batch per
  publishing channel and worker (a channel that changes queue sets closes it), so one
  channel's publishes to a queue stay in order.
- One copy of a message goes to each owning worker, however many of its queues match.
- Every publish sent with a confirm seq is in ``waiting`` until its owner confirms it;
  when the owner dies, all of its waiting publishes are nacked and its requests fail.
- A tx.commit whose publishes went to other workers' queues is answered only after each
  owner confirmed them (after its fsync for persistent messages on durable queues); a
  commit that loses an owner meanwhile fails (INTERNAL_ERROR), it is never confirmed.
- Settles are collected per loop turn and leave as one record per owner and action.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from shardmq.amqp.errors import NOT_FOUND, AMQPError, SoftError
from shardmq.broker import metadata as md
from shardmq.broker.channel import Channel
from shardmq.broker.queue import Consumer
from shardmq.broker.remote import REMOTE_WINDOW, RemoteQueue
from shardmq.broker.storage import ConfirmTarget
from shardmq.broker.xshard import records as rec
from shardmq.broker.xshard.link import Link, Publisher
from shardmq.broker.xshard.owner import ADDR_CACHE_MAX
from shardmq.broker.xshard.records import (
    DELIVER_ITEM_SIZE,
    pack_enqueue_item,
    unpack_deliver_item,
)
from shardmq.message import Message, new_message

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

# Credit window for consumers whose credit comes back as their socket drains.
WINDOW = REMOTE_WINDOW

# a request's answer: (error, result as ``records.result_value`` gives it)
Callback = Callable[[AMQPError | None, rec.ResultValue], None]


class _TxWait:
    """A committed publish to ``left`` more owners; ``waiter`` is the commit."""

    __slots__ = ("waiter", "left")

    def __init__(self, waiter: ConfirmTarget, left: int) -> None:
        self.waiter = waiter
        self.left = left


class UserSide:
    """The worker of publishers and consumers using queues owned by other workers."""

    def __init__(
        self,
        broker: Broker,
        link: Link,
        call_soon: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.broker = broker
        self.link = link
        # credit and settles take the control lane: they must not queue behind bulk
        # publishes
        self._send_ctl = link.send_control
        self._call_soon = call_soon
        self._flush_scheduled = False
        # publishing connections paused because the ring to a shard is full (the same
        # dict for the side's whole life: the connection forgets itself in it)
        self.throttled: dict[int, set[Publisher]] = {}
        # publishes waiting for a confirm from a shard: shard -> {(gid, ch, seq)}
        self.waiting: dict[int, dict[tuple[int, int, int], None]] = {}
        self._settles: dict[tuple[int, int], list[int]] = {}
        self._reqs = itertools.count(1)
        self.pending: dict[int, tuple[int, Callback]] = {}  # req -> (target, callback)
        # tx commits waiting for owners' confirms, by seq (TX_SEQ bit set)
        self.tx_waiting: dict[int, _TxWait] = {}
        self._tx_seqs = itertools.count(1)
        # encoded ENQUEUE addresses by destination queues: most publishes go to a few
        # queue sets, so encode them once
        self._addr_out: dict[tuple[RemoteQueue, ...], bytes] = {}
        # consumer tags of DELIVER records, by their wire form
        self._tags_in: dict[bytes, str] = {}

    def handlers(self) -> dict[int, Callable[[int, bytes], None]]:
        """The record kinds this side reads, and their readers."""
        return {
            rec.DELIVER: self.on_deliver,
            rec.CONFIRM: self.on_confirm,
            rec.REPLY: self.on_reply,
            rec.IDLE: self.on_idle,
            rec.THROTTLE: self.on_throttle,
        }

    # ---------------------------------------------------------------- publishing
    def enqueue(
        self,
        groups: tuple[tuple[int, tuple[RemoteQueue, ...]], ...],
        msg: Message,
        publisher: Publisher,
        chnum: int,
        seq: int,
    ) -> None:
        """Send one copy of ``msg``, published by ``publisher`` on channel ``chnum``, to
        each owning shard; ``seq`` > 0 asks for a confirm. ``publisher`` is paused
        while a ring it fills is blocked."""
        exrk = msg.exrk
        raw = msg.raw
        item = pack_enqueue_item(seq, len(exrk), msg.ch, msg.hsize, msg.fmax, len(raw))
        gid = publisher.gid
        link = self.link
        key = (gid, chnum)  # one open batch per channel and shard: publish order holds
        for shard, queues in groups:
            buf = link.batch(shard, key, queues)
            if buf is None:
                addrs = self._addr_out
                addr = addrs.get(queues)
                if addr is None:
                    if len(addrs) >= ADDR_CACHE_MAX:
                        addrs.clear()
                    addr = addrs[queues] = rec.enqueue_address(
                        queues[0].vhost, [q.name for q in queues]
                    )
                head = rec.enqueue_head(gid, chnum, len(queues), addr)
                buf = link.open_batch(shard, key, head, queues)
                # what is queued for the shard grows past its limit only by closed
                # batches, or by this one growing large: look then, not per message
                if link.is_blocked(shard):
                    self._throttle(shard, publisher)
            buf += item
            buf += exrk
            buf += raw
            if seq:
                self.waiting.setdefault(shard, {})[(gid, chnum, seq)] = None
            if len(buf) >= link.batch_limit and link.is_blocked(shard):
                self._throttle(shard, publisher)

    def _throttle(self, shard: int, publisher: Publisher) -> None:
        """The ring to ``shard`` is full: stop reading from ``publisher`` until it drains."""
        waiting = self.throttled.setdefault(shard, set())
        if publisher not in waiting:
            waiting.add(publisher)
            publisher.throttle(("shard", shard), True)

    def on_writable(self, shard: int) -> None:
        for conn in self.throttled.pop(shard, ()):
            conn.throttle(("shard", shard), False)

    def tx_seq(self, waiter: ConfirmTarget, shards: int) -> int:
        """A seq for the ENQUEUE records of one committed publish to ``shards`` other
        workers: each owner confirms once its durable queues stored it (at once when
        none did), and ``waiter`` (the commit) holds a token until then."""
        seq = rec.TX_SEQ | next(self._tx_seqs)
        for _ in range(shards):
            waiter.durable_token()
        self.tx_waiting[seq] = _TxWait(waiter, shards)
        return seq

    def on_confirm(self, src: int, data: bytes) -> None:
        gid, chnum, ok, seqs = rec.parse_confirm(data)
        waiting = self.waiting.get(src)
        for seq in seqs:
            if waiting is not None:
                waiting.pop((gid, chnum, seq), None)
            self._confirm(gid, chnum, seq, ok)

    def _confirm(self, gid: int, chnum: int, seq: int, ok: bool) -> None:
        if seq & rec.TX_SEQ:
            entry = self.tx_waiting.get(seq)
            if entry is not None:
                entry.left -= 1
                if not entry.left:
                    del self.tx_waiting[seq]
                entry.waiter.stored(0, ok)
            return
        conn = self.broker.conns_by_gid.get(gid)
        ch = conn.channels.get(chnum) if conn is not None else None
        if isinstance(ch, Channel):
            ch.remote_confirmed(seq, ok)

    def on_throttle(self, src: int, data: bytes) -> None:
        """A queue on ``src`` backed up (or drained): stop (resume) reading the
        connection that publishes to it."""
        gid, on, name = rec.parse_throttle(data)
        conn = self.broker.conns_by_gid.get(gid)
        if conn is not None and not (on and conn.consumes()):
            conn.throttle(("queue", src, name), on)

    # ---------------------------------------------------------------- settling, credit
    def settle(self, shard: int, ref: int, action: int) -> None:
        if ref:
            self._settles.setdefault((shard, action), []).append(ref)
            if not self._flush_scheduled and self._call_soon is not None:
                self._flush_scheduled = True
                self._call_soon(self.flush)

    def flush(self) -> None:
        """Send the settles collected this loop turn (one record per shard and action)."""
        self._flush_scheduled = False
        if not self._settles:
            return
        settles, self._settles = self._settles, {}
        for (shard, action), refs in settles.items():
            self._send_ctl(shard, rec.settle_record(action, refs))

    def grant(self, consumer: Consumer, n: int) -> None:
        rq = consumer.queue
        assert isinstance(rq, RemoteQueue)
        ch = consumer.channel
        self._send_ctl(
            rq.shard, rec.credit_record(rec.CREDIT, ch.conn.gid, ch.number, n, consumer.ctag)
        )

    def on_idle(self, src: int, data: bytes) -> None:
        """Credit given back by an empty queue (n > 0), or a message now waits for a
        consumer that gave its credit back (n == 0)."""
        gid, chnum, n, tag = rec.parse_credit(data)
        conn = self.broker.conns_by_gid.get(gid)
        if conn is None:
            return
        ch = conn.channels.get(chnum)
        c = ch.consumers.get(tag) if isinstance(ch, Channel) else None
        if c is None or c not in conn.qos.granted:
            return
        conn.qos.credit_idle(c, n)

    # ---------------------------------------------------------------- requests
    def _request_id(self, shard: int, callback: Callback | None) -> int:
        if callback is None:
            return 0
        req = next(self._reqs)
        self.pending[req] = (shard, callback)
        return req

    def _request(self, shard: int, request: rec.Request) -> None:
        self.link.send(shard, rec.request_record(request))

    def consume(self, rq: RemoteQueue, c: Consumer, cb: Callback) -> None:
        ch = c.channel
        if not c.no_ack and ch.global_prefetch:
            # the channel's shared limit is enforced here: credit is granted one
            # delivery at a time by the connection (``GlobalQos.rebalance``)
            ch.conn.qos.track(c)
            credit_on_settle, credit = False, 0
        else:
            credit_on_settle = not c.no_ack and c.prefetch > 0
            credit = c.prefetch if credit_on_settle else WINDOW
        gid = ch.conn.gid
        rq.local_consumers[(gid, ch.number, c.tag)] = c
        req = self._request_id(rq.shard, cb)
        self._request(
            rq.shard,
            rec.Consume(
                req,
                rq.vhost,
                rq.name,
                gid,
                ch.number,
                c.tag,
                c.no_ack,
                c.exclusive,
                credit,
                credit_on_settle,
                c.priority,
            ),
        )

    def cancel(self, rq: RemoteQueue, c: Consumer) -> None:
        ch = c.channel
        gid = ch.conn.gid
        rq.local_consumers.pop((gid, ch.number, c.tag), None)
        self._request(rq.shard, rec.Cancel(0, rq.vhost, rq.name, gid, ch.number, c.tag))

    def get(self, rq: RemoteQueue, no_ack: bool, cb: Callback) -> None:
        req = self._request_id(rq.shard, cb)
        self._request(rq.shard, rec.Get(req, rq.vhost, rq.name, no_ack))

    def purge(self, rq: RemoteQueue, cb: Callback) -> None:
        req = self._request_id(rq.shard, cb)
        self._request(rq.shard, rec.Purge(req, rq.vhost, rq.name))

    def reply_exists(self, shard: int, address: str, cb: Callback) -> None:
        """Is the direct reply-to ``address`` of worker ``shard`` live (1) or not (0)?"""
        req = self._request_id(shard, cb)
        self._request(shard, rec.ReplyExists(req, address))

    def on_reply(self, src: int, data: bytes) -> None:
        reply = rec.parse_reply(data)
        entry = self.pending.pop(reply.req, None)
        if entry is None:
            return
        err = md.error_from(reply.error) if reply.error is not None else None
        entry[1](err, rec.result_value(reply.result))

    # ---------------------------------------------------------------- DELIVER in
    def on_deliver(self, src: int, data: bytes) -> None:
        gid, chnum, rawtag, pos = rec.parse_deliver_head(data)
        tag = self._tags_in.get(rawtag)
        if tag is None:
            if len(self._tags_in) >= ADDR_CACHE_MAX:
                self._tags_in.clear()
            tag = self._tags_in[rawtag] = rawtag[1:].decode()
        conn = self.broker.conns_by_gid.get(gid)
        ch = conn.channels.get(chnum) if conn is not None else None
        consumer = ch.consumers.get(tag) if isinstance(ch, Channel) and not ch.closing else None
        unpack_item = unpack_deliver_item
        isize = DELIVER_ITEM_SIZE
        end = len(data)
        if consumer is None or conn is None:
            # nobody to give them to any more: back to the queue
            while pos < end:
                ref, _f, exlen, _c, _h, _m, rlen = unpack_item(data, pos)
                pos += isize + exlen + 1 + rlen
                if ref:
                    self.settle(src, ref, rec.REQUEUE)
            return
        ch = consumer.channel
        qos = conn.qos
        gq = qos.granted
        shared = bool(gq) and consumer in gq
        if consumer.no_ack and not shared:
            # the common fast path: no Message, no unacked entry, the channel's sink
            # writes the items straight to the client
            n = ch.sink.deliver_remote(ch, consumer, data, pos)
            conn.credit_due[consumer] = conn.credit_due.get(consumer, 0) + n
            conn.credit_due_bytes += end - pos
            return
        queue = consumer.queue
        deliver = ch.deliver
        count_due = not shared and not consumer.prefetch
        if count_due:
            conn.credit_due_bytes += end - pos
        n = 0
        while pos < end:
            ref, flags, exlen, rawch, hsize, fmax, rlen = unpack_item(data, pos)
            pos += isize
            exrk = data[pos : pos + exlen]
            pos += exlen + 1
            msg = new_message(exrk, data[pos : pos + rlen], rawch, hsize, fmax, ref)
            pos += rlen
            if shared:
                gq[consumer] = max(0, gq[consumer] - 1)
                limit = ch.global_prefetch
                if qos.parked or (limit and ch.consumer_unacked >= limit):
                    # local deliveries took the room meanwhile: hold it until an ack
                    # frees some (bounded by the credit granted)
                    qos.park(consumer, msg, bool(flags & 1))
                    continue
            deliver(consumer, queue, msg, bool(flags & 1))
            n += 1
        if count_due:
            conn.credit_due[consumer] = conn.credit_due.get(consumer, 0) + n

    # ---------------------------------------------------------------- failures
    def shard_down(self, shard: int) -> None:
        """Worker ``shard`` died (it is being respawned empty): our publishers paused by
        its queues resume, publishes it never confirmed are nacked, requests it will
        never answer fail, and our consumers of its queues are cancelled."""
        for conn in list(self.broker.connections):
            for cause in [c for c in conn.throttled_by if isinstance(c, tuple)]:
                if cause[0] == "queue" and cause[1] == shard:
                    conn.throttle(cause, False)
        for gid, chnum, seq in self.waiting.pop(shard, {}):
            self._confirm(gid, chnum, seq, False)
        for req, (target, cb) in list(self.pending.items()):
            if target == shard:
                del self.pending[req]
                cb(SoftError(NOT_FOUND, f"worker {shard} restarted; try again"), None)
        for vh in self.broker.vhosts.values():
            for q in vh.queues.values():
                if isinstance(q, RemoteQueue) and q.shard == shard and q.local_consumers:
                    consumers = list(q.local_consumers.values())
                    q.local_consumers.clear()
                    for c in consumers:
                        c.channel.conn.cancel_consumer(c)
