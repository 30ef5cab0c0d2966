"""Cross-shard data plane: publish, deliver, settle, credit and requests between workers.

Owns: ``ShardRouter`` — the record formats that cross the rings and both ends of every
exchange: the publishing/consuming side (this worker's connections using a queue that
lives elsewhere) and the owning side (``ProxyConsumer``: a consumer on another worker,
served from a local queue with credit).

Invariants:
- Records to one worker are delivered in order (one SPSC ring per ordered pair), so a
  reply always precedes the deliveries it enables. ENQUEUE and DELIVER records are
  batches (``Mesh.open_batch``): one open ENQUEUE batch per publishing channel and
  worker (a channel that changes queue sets closes it), so one channel's publishes to a
  queue stay in order; one open DELIVER batch per remote consumer.
- One copy of a message goes to each owning worker, however many of its queues match.
- A proxy consumer gets a message only while it has credit: credit is the consumer's
  prefetch (returned as deliveries are settled) or, for no-ack and unlimited-prefetch
  consumers, a window returned as the consumer's socket accepts the data — a slow
  reader never makes the owner push without bound.
- Under a channel's global prefetch limit (``shared`` proxies) the consumer's worker
  grants credit a little at a time; credit an empty queue cannot use goes straight back
  (IDLE n) and the proxy then says once when a message waits (IDLE 0), so an idle
  queue never holds a share of the channel's window and the two never ping-pong.
- Message refs embed this process's pid, so a settle meant for a dead incarnation of a
  worker can never settle a message of the new one.
- A dead worker's publishes still unconfirmed are nacked, consumers of its queues are
  cancelled, and messages it held unacked from our queues are requeued.
- A tx.commit whose publishes went to other workers' queues is answered only after each
  owner confirmed them (after its fsync for persistent messages on durable queues); a
  commit that loses an owner meanwhile fails (INTERNAL_ERROR), it is never confirmed.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from shardmq.amqp.codec import (
    FRAME_END_BYTES,
    shortstr,
)
from shardmq.amqp.errors import (
    ACCESS_REFUSED,
    NOT_FOUND,
    AMQPError,
    SoftError,
)
from shardmq.broker import metadata as md
from shardmq.broker.queue import Consumer, Queue
from shardmq.broker.remote import REMOTE_WINDOW, RemoteQueue
from shardmq.broker.storage import ConfirmWaiter
from shardmq.message import Message

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

log = logging.getLogger("shardmq.shards")

ENQUEUE, DELIVER, SETTLE, CONFIRM, CREDIT, REQUEST, REPLY, IDLE, THROTTLE = range(1, 10)
ACK, DROP, REQUEUE = 0, 1, 2

# ENQUEUE and DELIVER records are batches: a head naming the destination (queues, or a
# consumer) and then one item per message, as many as one loop turn produced for that
# destination (``Mesh.batch``); the reader looks the destination up once per record.
# ENQUEUE head: type, publisher's conn gid, channel, n queues, address len; the address
# (shortstr vhost + the queues' shortstr names) follows
_ENQ = struct.Struct(">BQHBH")
# ENQUEUE item: confirm seq (0: none), exrk len, raw's channel, header size, largest
# frame, raw len; exrk and raw follow
_ENQ_ITEM = struct.Struct(">QHHIII")
# ENQUEUE seqs of tx commits (publisher confirms count up from 1 and never get here)
TX_SEQ = 1 << 63
# address caches are cleared past this many entries (a bound, not a working-set size)
ADDR_CACHE_MAX = 4096
_DLV = struct.Struct(">BQH")  # DELIVER head: type, conn gid, channel; shortstr tag follows
# DELIVER item: ref, flags, exrk len, raw's channel, header size, largest frame, raw len;
# then exrk, a frame-end octet and raw: the tail of a basic.deliver frame and its content
# frames, which a consumer on the raw's channel number gets in one copy
DELIVER_ITEM = struct.Struct(">QBHHIII")
_SETTLE = struct.Struct(">BBI")  # type, action, count
_CONFIRM = struct.Struct(">BQHBI")  # type, conn gid, channel, ok, count; count seqs follow
_CREDIT = struct.Struct(">BQHI")  # type, conn gid, channel, credit
_Q = struct.Struct(">Q")
_THR = struct.Struct(">BQB")  # type, publisher's conn gid, on

# Credit window for consumers whose credit comes back as their socket drains.
WINDOW = REMOTE_WINDOW

Callback = Callable[[AMQPError | None, Any], None]
_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode


class Link(Protocol):
    """Ordered, reliable record delivery to another worker (the ring mesh)."""

    def send(self, target: int, record: bytes) -> None: ...

    batch_limit: int
    # the targets ``is_blocked`` last said were blocked (kept current by the link)
    blocked_set: set[int]

    def batch(self, target: int, key: object, match: object = None) -> bytearray | None: ...

    def open_batch(
        self, target: int, key: object, head: bytes, match: object = None
    ) -> bytearray: ...

    def is_blocked(self, target: int) -> bool: ...


def _shortstr_at(buf: bytes, pos: int) -> tuple[str, int]:
    n = buf[pos]
    return buf[pos + 1 : pos + 1 + n].decode(), pos + 1 + n


class ProxyConsumer:
    """Owner side: a consumer on another worker. Quacks like ``Consumer`` for ``Queue``
    (``channel`` is itself: ``Queue`` calls ``c.channel.deliver(c, ...)``)."""

    __slots__ = (
        "router",
        "src",
        "gid",
        "chnum",
        "tag",
        "ctag",
        "queue",
        "no_ack",
        "exclusive",
        "credit",
        "credit_on_settle",
        "refs",
        "channel",
        "shared",
        "hungry",
        "head",
        "flags",
    )

    def __init__(
        self,
        router: ShardRouter,
        src: int,
        gid: int,
        chnum: int,
        tag: str,
        queue: Queue,
        no_ack: bool,
        exclusive: bool,
        credit: int,
        credit_on_settle: bool,
    ) -> None:
        self.router = router
        self.src = src
        self.gid = gid
        self.chnum = chnum
        self.tag = tag
        self.ctag = shortstr(tag)
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.credit = credit
        self.credit_on_settle = credit_on_settle
        self.refs: set[int] = set()
        self.channel = self
        # credit managed by the consumer's worker under a global prefetch limit
        self.shared = credit == 0 and not credit_on_settle and not no_ack
        self.hungry = False  # shared, gave its credit back: say when a message waits
        self.head = _DLV.pack(DELIVER, gid, chnum) + self.ctag  # of its DELIVER records
        self.flags = 2 if no_ack else 0

    def ready(self) -> bool:
        if self.credit > 0:
            # and the ring to its worker has room: credit bounds messages, the ring
            # bounds the bytes in flight (large messages, big windows). ``deliver``
            # asks the link whenever what is queued for the ring can have passed its
            # limit; the answer lands in ``blocked_set``.
            return self.src not in self.router.link.blocked_set
        if self.hungry:
            self.hungry = False
            self.router.idle(self, 0)
        return False

    def deliver(self, c: ProxyConsumer, queue: Queue, msg: Message, redelivered: bool) -> None:
        router = self.router
        self.credit -= 1
        if self.no_ack:
            queue.settle(msg)
            ref = 0
        else:
            ref = router.new_ref()
            router.held[ref] = (self, queue, msg)
            self.refs.add(ref)
        link = router.link
        src = self.src
        buf = link.batch(src, self)
        if buf is None:
            buf = link.open_batch(src, self, self.head)
            link.is_blocked(src)  # closed batches grew what is queued: see ``ready``
        exrk = msg.exrk
        raw = msg.raw
        buf += DELIVER_ITEM.pack(
            ref,
            self.flags | redelivered,  # bit 0 redelivered, bit 1 no-ack
            len(exrk),
            msg.ch,
            msg.hsize,
            msg.fmax,
            len(raw),
        )
        buf += exrk
        buf += FRAME_END_BYTES
        buf += raw
        if len(buf) >= link.batch_limit:
            link.is_blocked(src)


class RemotePublisher:
    """A publishing connection on another worker as a queue here sees it: when the
    queue backs up (``Queue.throttle``) the publisher's worker stops reading it, exactly
    as a local publisher, until the backlog halves."""

    __slots__ = ("router", "src", "gid")

    def __init__(self, router: ShardRouter, src: int, gid: int) -> None:
        self.router = router
        self.src = src
        self.gid = gid

    def __hash__(self) -> int:
        return hash((self.src, self.gid))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RemotePublisher) and other.src == self.src and other.gid == self.gid
        )

    def throttle(self, cause: Queue, on: bool) -> None:
        self.router._send_ctl(
            self.src, _THR.pack(THROTTLE, self.gid, 1 if on else 0) + shortstr(cause.name)
        )


class ShardRouter:
    def __init__(
        self,
        broker: Broker,
        link: Link,
        call_soon: Callable[[Callable[[], None]], Any] | None = None,
    ) -> None:
        self.broker = broker
        self.link = link
        # credit, settles, confirms and idle notices take the control lane when the link
        # has one (the mesh): they must not queue behind bulk publishes and deliveries
        self._send_ctl: Callable[[int, bytes], None] = getattr(link, "send_control", link.send)
        # credit that overtook (on the control lane) the consume request it is for
        self.early_credit: dict[tuple[int, int, int, str], int] = {}
        self._call_soon = call_soon
        self._flush_scheduled = False
        # publishing connections paused because the ring to a shard is full
        self.throttled: dict[int, set[Any]] = {}
        self.slot = broker.slot
        self._refs = itertools.count(1)
        self._ref_base = (os.getpid() & 0xFFFFFF) << 40
        self._reqs = itertools.count(1)
        self.pending: dict[int, tuple[int, Callback]] = {}  # req -> (target, callback)
        self.proxies: dict[tuple[int, int, int, str], ProxyConsumer] = {}
        self.held: dict[int, tuple[ProxyConsumer | None, Queue, Message]] = {}
        # publishes waiting for a confirm from a shard: shard -> {(gid, ch, seq)}
        self.waiting: dict[int, dict[tuple[int, int, int], None]] = {}
        self._settles: dict[tuple[int, int], list[int]] = {}
        # tx commits waiting for owners' confirms: seq (TX_SEQ bit set) -> [waiter, left]
        self.tx_waiting: dict[int, list[Any]] = {}
        self._tx_seqs = itertools.count(1)
        # encoded ENQUEUE addresses by destination queues, and decoded ones by bytes:
        # most publishes go to a few queue sets, so encode and decode them once
        self._addr_out: dict[tuple[RemoteQueue, ...], bytes] = {}
        self._addr_in: dict[bytes, tuple[str, tuple[str, ...]]] = {}
        # consumer tags of DELIVER records, by their wire form
        self._tags_in: dict[bytes, str] = {}
        self._handlers = {
            ENQUEUE: self._on_enqueue,
            DELIVER: self._on_deliver,
            SETTLE: self._on_settle,
            CONFIRM: self._on_confirm,
            CREDIT: self._on_credit,
            REQUEST: self._on_request,
            REPLY: self._on_reply,
            IDLE: self._on_idle,
            THROTTLE: self._on_throttle,
        }

    def new_ref(self) -> int:
        return self._ref_base | next(self._refs)

    # ================================================================ sending side
    def enqueue(
        self,
        groups: tuple[tuple[int, tuple[RemoteQueue, ...]], ...],
        msg: Message,
        gid: int,
        chnum: int,
        seq: int,
    ) -> None:
        """Send one copy of ``msg`` to each owning shard; ``seq`` > 0 asks for a confirm."""
        exrk = msg.exrk
        raw = msg.raw
        item = _ENQ_ITEM.pack(seq, len(exrk), msg.ch, msg.hsize, msg.fmax, len(raw))
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
                    addr = addrs[queues] = shortstr(queues[0].vhost) + b"".join(
                        shortstr(q.name) for q in queues
                    )
                head = _ENQ.pack(ENQUEUE, gid, chnum, len(queues), len(addr)) + addr
                buf = link.open_batch(shard, key, head, queues)
                # what is queued for the shard grows past its limit only by closed
                # batches, or by this one growing large: look then, not per message
                if link.is_blocked(shard):
                    self._throttle(shard)
            buf += item
            buf += exrk
            buf += raw
            if seq:
                self.waiting.setdefault(shard, {})[(gid, chnum, seq)] = None
            if len(buf) >= link.batch_limit and link.is_blocked(shard):
                self._throttle(shard)

    def _throttle(self, shard: int) -> None:
        """The ring to ``shard`` is full: stop reading from the publishing connection
        (the one whose input is being processed) until it drains."""
        conn = self.broker.current_publisher
        if conn is not None:
            waiting = self.throttled.setdefault(shard, set())
            if conn not in waiting:
                waiting.add(conn)
                conn.throttle(("shard", shard), True)

    def on_writable(self, shard: int) -> None:
        for conn in self.throttled.pop(shard, ()):
            conn.throttle(("shard", shard), False)
        # consumers on that worker waited for the ring, not for credit: deliver again
        queues = {id(p.queue): p.queue for k, p in self.proxies.items() if k[0] == shard}
        for q in queues.values():
            if q.consumers:
                q.dispatch()

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
            self._send_ctl(
                shard,
                _SETTLE.pack(SETTLE, action, len(refs)) + b"".join(_Q.pack(r) for r in refs),
            )

    def grant(self, consumer: Consumer, n: int) -> None:
        rq = consumer.queue
        assert isinstance(rq, RemoteQueue)
        ch = consumer.channel
        self._send_ctl(
            rq.shard,
            _CREDIT.pack(CREDIT, ch.conn.gid, ch.number, n) + consumer.ctag,
        )

    def request(self, shard: int, payload: list[Any], callback: Callback | None) -> None:
        req = next(self._reqs) if callback is not None else 0
        if callback is not None:
            self.pending[req] = (shard, callback)
        self.link.send(shard, bytes((REQUEST,)) + _encode([req, *payload]))

    # ---------------------------------------------------------------- consumer API
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
        rq.local_consumers[(ch.conn.gid, ch.number, c.tag)] = c
        self.request(
            rq.shard,
            [
                "consume",
                rq.vhost,
                rq.name,
                ch.conn.gid,
                ch.number,
                c.tag,
                c.no_ack,
                c.exclusive,
                credit,
                credit_on_settle,
            ],
            cb,
        )

    def cancel(self, rq: RemoteQueue, c: Consumer) -> None:
        ch = c.channel
        rq.local_consumers.pop((ch.conn.gid, ch.number, c.tag), None)
        self.request(rq.shard, ["cancel", rq.vhost, rq.name, ch.conn.gid, ch.number, c.tag], None)

    def get(self, rq: RemoteQueue, no_ack: bool, cb: Callback) -> None:
        self.request(rq.shard, ["get", rq.vhost, rq.name, no_ack], cb)

    def purge(self, rq: RemoteQueue, cb: Callback) -> None:
        self.request(rq.shard, ["purge", rq.vhost, rq.name], cb)

    # ================================================================ receiving
    def on_records(self, src: int, records: list[bytes | memoryview]) -> None:
        handlers = self._handlers
        for rec in records:
            data = bytes(rec)
            try:
                handlers[data[0]](src, data)
            except Exception:
                log.exception("bad record type %d from worker %d", data[0] if data else -1, src)

    # ---------------------------------------------------------------- owner side
    def _on_enqueue(self, src: int, data: bytes) -> None:
        _t, gid, chnum, nq, alen = _ENQ.unpack_from(data, 0)
        pos = _ENQ.size + alen
        addr = data[_ENQ.size : pos]
        known = self._addr_in.get(addr)
        if known is None:
            vhost, p = _shortstr_at(data, _ENQ.size)
            parsed = []
            for _ in range(nq):
                name, p = _shortstr_at(data, p)
                parsed.append(name)
            if len(self._addr_in) >= ADDR_CACHE_MAX:
                self._addr_in.clear()
            known = self._addr_in[addr] = (vhost, tuple(parsed))
        vhost, names = known
        vh = self.broker.vhosts.get(vhost)
        queues: list[Queue] = []
        if vh is not None:
            found = vh.queues
            for name in names:
                q = found.get(name)
                if isinstance(q, Queue):
                    queues.append(q)
        unpack_item = _ENQ_ITEM.unpack_from
        isize = _ENQ_ITEM.size
        refs = self._refs
        end = len(data)
        confirmed: list[int] = []
        publisher: RemotePublisher | None = None
        single = queues[0] if len(queues) == 1 else None
        while pos < end:
            seq, exlen, rawch, hsize, fmax, rlen = unpack_item(data, pos)
            pos += isize
            exrk = data[pos : pos + exlen]
            pos += exlen
            msg = Message(exrk, data[pos : pos + rlen], rawch, hsize, fmax, next(refs))
            pos += rlen
            # (an empty queue is not backed up: most publishes to a consumed queue go
            # straight out)
            if not seq and single is not None:  # the common case, spelled out
                single.publish(msg)
                if gid and single.store and single.consumers and single.backed_up(fmax):
                    publisher = self._throttle_publisher(single, publisher, src, gid)
                continue
            # durability: a persistent message stored by durable queues here is
            # confirmed only once they fsynced it (``ConfirmWaiter``, store.py)
            waiter = ConfirmWaiter() if seq else None
            for q in queues:
                q.publish(msg, waiter)
                if gid and q.store and q.consumers and q.backed_up(fmax):
                    publisher = self._throttle_publisher(q, publisher, src, gid)
            if waiter is not None:
                if waiter.pending:
                    waiter.done = self._confirm_later(src, gid, chnum, seq)
                else:
                    confirmed.append(seq)
        if confirmed:
            self._send_ctl(
                src,
                _CONFIRM.pack(CONFIRM, gid, chnum, 1, len(confirmed))
                + b"".join(map(_Q.pack, confirmed)),
            )

    def _throttle_publisher(
        self, q: Queue, publisher: RemotePublisher | None, src: int, gid: int
    ) -> RemotePublisher:
        """``q`` backed up: stop reading the publishing connection on ``src``."""
        if publisher is None:
            publisher = RemotePublisher(self, src, gid)
        q.throttle(publisher)
        return publisher

    def _confirm_later(self, src: int, gid: int, chnum: int, seq: int) -> Callable[[bool], None]:
        send_ctl = self._send_ctl

        def stored(ok: bool) -> None:
            send_ctl(src, _CONFIRM.pack(CONFIRM, gid, chnum, 1 if ok else 0, 1) + _Q.pack(seq))

        return stored

    def _on_settle(self, src: int, data: bytes) -> None:
        _t, action, count = _SETTLE.unpack_from(data, 0)
        held = self.held
        touched: dict[Queue, list[Message]] = {}
        for i in range(count):
            ref = _Q.unpack_from(data, _SETTLE.size + 8 * i)[0]
            entry = held.pop(ref, None)
            if entry is None:
                continue  # from a consumer of a queue since deleted, or a past incarnation
            proxy, queue, msg = entry
            if proxy is not None:
                proxy.refs.discard(ref)
                if proxy.credit_on_settle:
                    proxy.credit += 1
            lst = touched.setdefault(queue, [])
            if action == REQUEUE:
                lst.append(msg)
            else:
                queue.settle(msg)
        for queue, msgs in touched.items():
            if msgs:
                queue.requeue(msgs)
            else:
                queue.dispatch()

    def _on_credit(self, src: int, data: bytes) -> None:
        _t, gid, chnum, n = _CREDIT.unpack_from(data, 0)
        tag, _ = _shortstr_at(data, _CREDIT.size)
        proxy = self.proxies.get((src, gid, chnum, tag))
        if proxy is None:
            key = (src, gid, chnum, tag)
            self.early_credit[key] = self.early_credit.get(key, 0) + n
            return
        if proxy is not None:
            proxy.credit += n
            proxy.queue.dispatch()
            if proxy.shared and proxy.credit > 0:
                # the queue ran dry: give the rest back for the channel's other consumers
                self.idle(proxy, proxy.credit)
                proxy.credit = 0
                proxy.hungry = True

    def idle(self, proxy: ProxyConsumer, returned: int) -> None:
        self._send_ctl(proxy.src, _CREDIT.pack(IDLE, proxy.gid, proxy.chnum, returned) + proxy.ctag)

    def _on_throttle(self, src: int, data: bytes) -> None:
        """Publisher side: a queue on ``src`` backed up (or drained): stop (resume)
        reading the connection that publishes to it."""
        _t, gid, on = _THR.unpack_from(data, 0)
        name, _ = _shortstr_at(data, _THR.size)
        conn = self.broker.conns_by_gid.get(gid)
        if conn is not None and not (on and conn.consumes()):
            conn.throttle(("queue", src, name), bool(on))

    def _on_idle(self, src: int, data: bytes) -> None:
        """Consumer side: credit given back by an empty queue (n > 0), or a message now
        waits for a consumer that gave its credit back (n == 0)."""
        _t, gid, chnum, n = _CREDIT.unpack_from(data, 0)
        tag, _ = _shortstr_at(data, _CREDIT.size)
        conn = self.broker.conns_by_gid.get(gid)
        ch = conn.channels.get(chnum) if conn is not None else None
        c = ch.consumers.get(tag) if ch is not None else None
        if c is None or conn is None or c not in conn.qos.granted:
            return
        conn.qos.credit_idle(c, n)

    def _on_request(self, src: int, data: bytes) -> None:
        req, kind, *args = _decode(data[1:])
        try:
            result = getattr(self, "_req_" + kind)(src, *args)
        except AMQPError as exc:
            if req:
                self.link.send(src, bytes((REPLY,)) + _encode([req, md.error_of(exc), None]))
            return
        if req:
            self.link.send(src, bytes((REPLY,)) + _encode([req, None, result]))
        if kind == "consume":
            # after the reply, so consume-ok reaches the client before the first delivery
            self.proxies[(src, args[2], args[3], args[4])].queue.dispatch()

    def _local_queue(self, vhost: str, name: str) -> Queue:
        vh = self.broker.vhosts.get(vhost)
        q = vh.queues.get(name) if vh is not None else None
        if not isinstance(q, Queue):
            raise SoftError(NOT_FOUND, f"no queue '{name}' in vhost '{vhost}'")
        return q

    def _req_consume(
        self,
        src: int,
        vhost: str,
        name: str,
        gid: int,
        chnum: int,
        tag: str,
        no_ack: bool,
        exclusive: bool,
        credit: int,
        credit_on_settle: bool,
    ) -> None:
        q = self._local_queue(vhost, name)
        if q.consumers and (exclusive or q.exclusive_consumer()):
            raise SoftError(
                ACCESS_REFUSED, f"queue '{name}' in vhost '{vhost}' in exclusive use", 60, 20
            )
        early = self.early_credit.pop((src, gid, chnum, tag), 0)
        proxy = ProxyConsumer(
            self, src, gid, chnum, tag, q, no_ack, exclusive, credit, credit_on_settle
        )
        proxy.credit += early
        self.proxies[(src, gid, chnum, tag)] = proxy
        q.consumers.append(proxy)  # type: ignore[arg-type]
        q.had_consumers = True

    def _req_cancel(self, src: int, vhost: str, name: str, gid: int, chnum: int, tag: str) -> None:
        self.early_credit.pop((src, gid, chnum, tag), None)
        proxy = self.proxies.pop((src, gid, chnum, tag), None)
        if proxy is None:
            return
        q = proxy.queue
        if q.remove_consumer(proxy) and not q.deleted:  # type: ignore[arg-type]
            self.broker.sequencer.fire(md.DeleteQueue(q.vhost, q.name, True, False, 0))

    def _req_get(self, src: int, vhost: str, name: str, no_ack: bool) -> list[Any] | int:
        q = self._local_queue(vhost, name)
        got = q.get()
        if got is None:
            return q.message_count
        msg, redelivered = got
        if no_ack:
            q.settle(msg)
            ref = 0
        else:
            ref = self.new_ref()
            self.held[ref] = (None, q, msg)
        return [ref, redelivered, q.message_count, msg.exrk, msg.ch, msg.hsize, msg.fmax, msg.raw]

    def _req_purge(self, src: int, vhost: str, name: str) -> int:
        return self._local_queue(vhost, name).purge()

    # ---------------------------------------------------------------- consuming side
    def _on_deliver(self, src: int, data: bytes) -> None:
        _t, gid, chnum = _DLV.unpack_from(data, 0)
        pos = _DLV.size + 1 + data[_DLV.size]
        rawtag = data[_DLV.size : pos]
        tag = self._tags_in.get(rawtag)
        if tag is None:
            if len(self._tags_in) >= ADDR_CACHE_MAX:
                self._tags_in.clear()
            tag = self._tags_in[rawtag] = rawtag[1:].decode()
        conn = self.broker.conns_by_gid.get(gid)
        ch = conn.channels.get(chnum) if conn is not None else None
        consumer = ch.consumers.get(tag) if ch is not None and not ch.closing else None
        unpack_item = DELIVER_ITEM.unpack_from
        isize = DELIVER_ITEM.size
        end = len(data)
        if consumer is None or conn is None:
            # nobody to give them to any more: back to the queue
            while pos < end:
                ref, _f, exlen, _c, _h, _m, rlen = unpack_item(data, pos)
                pos += isize + exlen + 1 + rlen
                if ref:
                    self.settle(src, ref, REQUEUE)
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
            return
        queue = consumer.queue
        deliver = ch.deliver
        count_due = not shared and not consumer.prefetch
        n = 0
        while pos < end:
            ref, flags, exlen, rawch, hsize, fmax, rlen = unpack_item(data, pos)
            pos += isize
            exrk = data[pos : pos + exlen]
            pos += exlen + 1
            msg = Message(exrk, data[pos : pos + rlen], rawch, hsize, fmax, ref)
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

    def _on_confirm(self, src: int, data: bytes) -> None:
        _t, gid, chnum, ok, count = _CONFIRM.unpack_from(data, 0)
        waiting = self.waiting.get(src)
        for (seq,) in _Q.iter_unpack(data[_CONFIRM.size : _CONFIRM.size + 8 * count]):
            if waiting is not None:
                waiting.pop((gid, chnum, seq), None)
            self._confirm(gid, chnum, seq, bool(ok))

    def tx_seq(self, waiter: ConfirmWaiter, shards: int) -> int:
        """A seq for the ENQUEUE records of one committed publish to ``shards`` other
        workers: each owner confirms once its durable queues stored it (at once when
        none did), and ``waiter`` (the commit) holds a token until then."""
        seq = TX_SEQ | next(self._tx_seqs)
        for _ in range(shards):
            waiter.durable_token()
        self.tx_waiting[seq] = [waiter, shards]
        return seq

    def _confirm(self, gid: int, chnum: int, seq: int, ok: bool) -> None:
        if seq & TX_SEQ:
            entry = self.tx_waiting.get(seq)
            if entry is not None:
                entry[1] -= 1
                if not entry[1]:
                    del self.tx_waiting[seq]
                entry[0].stored(0, ok)
            return
        conn = self.broker.conns_by_gid.get(gid)
        ch = conn.channels.get(chnum) if conn is not None else None
        if ch is not None:
            ch.remote_confirmed(seq, ok)  # type: ignore[attr-defined]

    def _on_reply(self, src: int, data: bytes) -> None:
        req, err, result = _decode(data[1:])
        entry = self.pending.pop(req, None)
        if entry is None:
            return
        entry[1](md.error_from(err) if err is not None else None, result)

    # ================================================================ failures
    def shard_down(self, shard: int) -> None:
        """Worker ``shard`` died (it is being respawned empty)."""
        for key in [k for k in self.early_credit if k[0] == shard]:
            del self.early_credit[key]
        # our publishers paused by its queues: resume; its publishers paused by ours: forget
        for conn in list(self.broker.connections):
            for cause in [c for c in conn.throttled_by if isinstance(c, tuple)]:
                if cause[0] == "queue" and cause[1] == shard:
                    conn.throttle(cause, False)
        for vh in self.broker.vhosts.values():
            for q in vh.queues.values():
                if isinstance(q, Queue) and q.throttled:
                    q.throttled = {
                        p
                        for p in q.throttled
                        if not (isinstance(p, RemotePublisher) and p.src == shard)
                    }
        # publishes it never confirmed: nack
        for gid, chnum, seq in self.waiting.pop(shard, {}):
            self._confirm(gid, chnum, seq, False)
        # requests it will never answer
        for req, (target, cb) in list(self.pending.items()):
            if target == shard:
                del self.pending[req]
                cb(SoftError(NOT_FOUND, f"worker {shard} restarted; try again"), None)
        # our consumers of its queues: cancelled, like a deleted queue
        for vh in self.broker.vhosts.values():
            for q in vh.queues.values():
                if isinstance(q, RemoteQueue) and q.shard == shard and q.local_consumers:
                    consumers = list(q.local_consumers.values())
                    q.local_consumers.clear()
                    for c in consumers:
                        c.channel.conn.cancel_consumer(c)
        # its consumers of our queues: gone; what they held goes back to the queues
        for key, proxy in list(self.proxies.items()):
            if key[0] != shard:
                continue
            del self.proxies[key]
            q = proxy.queue
            msgs = [self.held.pop(r)[2] for r in proxy.refs if r in self.held]
            if proxy in q.consumers:
                q.consumers.remove(proxy)  # type: ignore[arg-type]
            if msgs:
                q.requeue(msgs)
            else:
                q.dispatch()
