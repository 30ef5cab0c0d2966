"""Owner side: this worker's queues used by publishers and consumers on other workers.

Owns: ``OwnerSide`` (ENQUEUE in: publishes into local queues, or replies to a direct
reply-to address of this worker (``shardmq.broker.replyto``), CONFIRM out; consumers on
other workers as ``ProxyConsumer``\\ s, DELIVER out; SETTLE and CREDIT in; REQUEST in,
REPLY out) and ``RemotePublisher`` (a publisher on another worker that a backed-up
local queue throttles, THROTTLE out).

Invariants:
- One open DELIVER batch per proxy consumer (``Link.open_batch`` keyed by the proxy).
- A proxy consumer gets a message only while it has credit and the ring to its worker
  is not blocked: credit is the consumer's prefetch (returned as deliveries are settled)
  or, for no-ack and unlimited-prefetch consumers, a window returned as the consumer's
  socket accepts the data: a slow reader never makes the owner push without bound
  (the window is also bounded in bytes, ``REMOTE_INFLIGHT_BYTES``).
- Under a channel's global prefetch limit (``shared`` proxies) credit an empty queue
  cannot use goes straight back (IDLE n) and the proxy then says once when a message
  waits (IDLE 0), so an idle queue never holds a share of the channel's window.
- Every message a proxy holds unacked is in ``held`` under a ref; refs embed this
  worker's incarnation, so a settle meant for a dead incarnation never settles a
  message of this one.
- A consume request is answered before the first delivery to its proxy (same ring).
  Proxies join and leave the queue's consumer list through ``Queue.add_consumer`` /
  ``remove_consumer``, so single-active-consumer and priority order (the consumer's
  ``x-priority`` travels in the request) hold for them as for local consumers.
- When a worker dies, its proxies go and what they held goes back to the queues; its
  publishers no longer throttle our queues.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardmq.amqp.codec import FRAME_END_BYTES, shortstr
from shardmq.amqp.errors import ACCESS_REFUSED, NOT_FOUND, AMQPError, SoftError
from shardmq.broker import metadata as md
from shardmq.broker.queue import Queue
from shardmq.broker.remote import REMOTE_INFLIGHT_BYTES
from shardmq.broker.replyto import PREFIX as REPLY_PREFIX
from shardmq.broker.storage import ConfirmWaiter
from shardmq.broker.xshard import records as rec
from shardmq.broker.xshard.link import Link
from shardmq.broker.xshard.records import (
    ENQUEUE_ITEM_SIZE,
    pack_deliver_item,
    unpack_enqueue_item,
)
from shardmq.message import Message, new_message

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

# address caches are cleared past this many entries (a bound, not a working-set size)
ADDR_CACHE_MAX = 4096

SendControl = Callable[[int, bytes], None]
# a proxy consumer's key: (its worker, conn gid, channel, consumer tag)
ProxyKey = tuple[int, int, int, str]


class ProxyConsumer:
    """A consumer on another worker. Quacks like ``Consumer`` for ``Queue``
    (``channel`` is itself: ``Queue`` calls ``c.channel.deliver(c, ...)``)."""

    __slots__ = (
        "owner",
        "link",
        "blocked",
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
        "sizes",
        "inflight",
        "priority",
    )

    def __init__(
        self,
        owner: OwnerSide,
        src: int,
        gid: int,
        chnum: int,
        tag: str,
        queue: Queue,
        no_ack: bool,
        exclusive: bool,
        credit: int,
        credit_on_settle: bool,
        priority: int = 0,
    ) -> None:
        self.owner = owner
        self.link = owner.link
        self.blocked = owner.link.blocked_set
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
        self.head = rec.deliver_head(gid, chnum, self.ctag)  # of its DELIVER records
        self.flags = 2 if no_ack else 0
        # credit returned as its socket drains: sizes of the messages not credited yet
        # (their total, ``inflight``, is bounded by REMOTE_INFLIGHT_BYTES)
        # (a list: a CREDIT record's share is summed and dropped in one slice, in C)
        self.sizes: list[int] | None = [] if not credit_on_settle and not self.shared else None
        self.inflight = 0
        self.priority = priority  # x-priority (consumer_order.py)

    def ready(self) -> bool:
        if self.credit > 0 and self.inflight <= REMOTE_INFLIGHT_BYTES:
            # and the ring to its worker has room: credit bounds messages, the ring
            # bounds the bytes in flight (large messages, big windows). ``deliver``
            # asks the link whenever what is queued for the ring can have passed its
            # limit; the answer lands in ``blocked`` (the link's ``blocked_set``).
            return self.src not in self.blocked
        if self.hungry:
            self.hungry = False
            self.owner.idle(self, 0)
        return False

    def deliver(self, c: ProxyConsumer, queue: Queue, msg: Message, redelivered: bool) -> None:
        self.credit -= 1
        if self.no_ack:
            queue.settle_auto(msg)
            ref = 0
        else:
            owner = self.owner
            ref = owner.new_ref()
            owner.held[ref] = (self, queue, msg)
            self.refs.add(ref)
            queue.st_deliver_manual += 1
        link = self.link
        src = self.src
        buf = link.batch(src, self)
        if buf is None:
            buf = link.open_batch(src, self, self.head)
            link.is_blocked(src)  # closed batches grew what is queued: see ``ready``
        exrk = msg.exrk
        raw = msg.raw
        rlen = len(raw)
        sizes = self.sizes
        if sizes is not None:
            sizes.append(rlen)
            self.inflight += rlen
        buf += pack_deliver_item(
            ref,
            self.flags | redelivered,  # bit 0 redelivered, bit 1 no-ack
            len(exrk),
            msg.ch,
            msg.hsize,
            msg.fmax,
            rlen,
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

    __slots__ = ("send_control", "src", "gid")

    def __init__(self, send_control: SendControl, src: int, gid: int) -> None:
        self.send_control = send_control
        self.src = src
        self.gid = gid

    def __hash__(self) -> int:
        return hash((self.src, self.gid))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RemotePublisher) and other.src == self.src and other.gid == self.gid
        )

    def throttle(self, cause: Queue, on: bool) -> None:
        self.send_control(self.src, rec.throttle_record(self.gid, on, cause.name))


class OwnerSide:
    """The worker owning queues that publishers and consumers on other workers use."""

    def __init__(self, broker: Broker, link: Link, incarnation: int = 0) -> None:
        self.broker = broker
        self.link = link
        # credit, confirms, idle notices and throttles take the control lane: they must
        # not queue behind bulk deliveries
        self._send_ctl: SendControl = link.send_control
        # refs: the incarnation in the top 24 bits, a counter in the low 40 (a
        # trillion refs per incarnation; the incarnation wraps after 16 M respawns)
        self._refs = itertools.count(1)
        self._ref_base = (incarnation & 0xFFFFFF) << 40
        self.proxies: dict[ProxyKey, ProxyConsumer] = {}
        # credit that overtook (on the control lane) the consume request it is for
        self.early_credit: dict[ProxyKey, int] = {}
        # unacked messages of proxies (and of remote basic.gets, proxy None) by ref
        self.held: dict[int, tuple[ProxyConsumer | None, Queue, Message]] = {}
        # decoded ENQUEUE addresses by their bytes: most publishes go to a few queue
        # sets, so decode them once
        self._addr_in: dict[bytes, tuple[str, tuple[str, ...]]] = {}
        # request handlers by the request's type (each takes that type: ``Any`` only
        # because one dict holds them all)
        self.requests: dict[type[rec.Request], Callable[[int, Any], rec.Result]] = {
            rec.Consume: self._consume,
            rec.Cancel: self._cancel,
            rec.Get: self._get,
            rec.Purge: self._purge,
            rec.ReplyExists: self._reply_exists,
        }

    def handlers(self) -> dict[int, Callable[[int, bytes], None]]:
        """The record kinds this side reads, and their readers."""
        return {
            rec.ENQUEUE: self.on_enqueue,
            rec.SETTLE: self.on_settle,
            rec.CREDIT: self.on_credit,
            rec.REQUEST: self.on_request,
        }

    def new_ref(self) -> int:
        return self._ref_base | next(self._refs)

    # ---------------------------------------------------------------- ENQUEUE in
    def on_enqueue(self, src: int, data: bytes) -> None:
        gid, chnum, nq, addr, pos = rec.parse_enqueue_head(data)
        known = self._addr_in.get(addr)
        if known is None:
            if len(self._addr_in) >= ADDR_CACHE_MAX:
                self._addr_in.clear()
            known = self._addr_in[addr] = rec.parse_enqueue_address(addr, nq)
        vhost, names = known
        vh = self.broker.vhosts.get(vhost)
        queues: list[Queue] = []
        if vh is not None:
            found = vh.queues
            for name in names:
                q = found.get(name)
                if isinstance(q, Queue):
                    queues.append(q)
                elif q is None and name.startswith(REPLY_PREFIX):  # a direct reply
                    rq = self.broker.replies.lookup(name)
                    if rq is not None:
                        queues.append(rq)
        unpack_item = unpack_enqueue_item
        isize = ENQUEUE_ITEM_SIZE
        refs = self._refs
        end = len(data)
        confirmed: list[int] = []
        publisher: RemotePublisher | None = None
        single = queues[0] if len(queues) == 1 else None
        while pos < end:
            seq, exlen, rawch, hsize, fmax, rlen = unpack_item(data, pos)
            # each position summed once (past 256 every sum is a new int object)
            at = pos + isize
            rat = at + exlen
            pos = rat + rlen
            msg = new_message(data[at:rat], data[rat:pos], rawch, hsize, fmax, next(refs))
            # (an empty queue is not backed up: most publishes to a consumed queue go
            # straight out)
            if not seq and single is not None:  # the common case, spelled out
                single.publish(msg)
                if gid and single.store and single.consumers and single.backed_up(fmax):
                    publisher = self._throttle_publisher(single, publisher, src, gid)
                continue
            # durability: a persistent message stored by durable queues here is
            # confirmed only once they fsynced it (``ConfirmWaiter``, storage.py)
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
            self._send_ctl(src, rec.confirm_record(gid, chnum, True, confirmed))

    def _throttle_publisher(
        self, q: Queue, publisher: RemotePublisher | None, src: int, gid: int
    ) -> RemotePublisher:
        """``q`` backed up: stop reading the publishing connection on ``src``."""
        if publisher is None:
            publisher = RemotePublisher(self._send_ctl, src, gid)
        q.throttle(publisher)
        return publisher

    def _confirm_later(self, src: int, gid: int, chnum: int, seq: int) -> Callable[[bool], None]:
        send_ctl = self._send_ctl

        def stored(ok: bool) -> None:
            send_ctl(src, rec.confirm_record(gid, chnum, ok, [seq]))

        return stored

    # ---------------------------------------------------------------- SETTLE, CREDIT in
    def on_settle(self, src: int, data: bytes) -> None:
        action, refs = rec.parse_settle(data)
        held = self.held
        touched: dict[Queue, list[Message]] = {}
        for ref in refs:
            entry = held.pop(ref, None)
            if entry is None:
                continue  # from a consumer of a queue since deleted, or a past incarnation
            proxy, queue, msg = entry
            if proxy is not None:
                proxy.refs.discard(ref)
                if proxy.credit_on_settle:
                    proxy.credit += 1
            lst = touched.setdefault(queue, [])
            if action == rec.REQUEUE or action == rec.REQUEUE_BACK:
                lst.append(msg)
            elif action == rec.DROP:
                queue.reject(msg)  # rejected without requeue: dead-lettered if set
            else:
                queue.settle(msg)
        for queue, msgs in touched.items():
            if msgs:
                queue.requeue(msgs, action == rec.REQUEUE_BACK)
            else:
                queue.dispatch()

    def on_credit(self, src: int, data: bytes) -> None:
        gid, chnum, n, tag = rec.parse_credit(data)
        key = (src, gid, chnum, tag)
        proxy = self.proxies.get(key)
        if proxy is None:
            self.early_credit[key] = self.early_credit.get(key, 0) + n
            return
        proxy.credit += n
        sizes = proxy.sizes
        if sizes:
            proxy.inflight -= sum(sizes[:n])
            del sizes[:n]
        proxy.queue.dispatch()
        if proxy.shared and proxy.credit > 0:
            # the queue ran dry: give the rest back for the channel's other consumers
            self.idle(proxy, proxy.credit)
            proxy.credit = 0
            proxy.hungry = True

    def idle(self, proxy: ProxyConsumer, returned: int) -> None:
        self._send_ctl(
            proxy.src, rec.credit_record(rec.IDLE, proxy.gid, proxy.chnum, returned, proxy.ctag)
        )

    # ---------------------------------------------------------------- REQUEST in
    def on_request(self, src: int, data: bytes) -> None:
        request = rec.parse_request(data)
        req = request.req
        try:
            result = self.requests[type(request)](src, request)
        except AMQPError as exc:
            if req:
                self.link.send(src, rec.reply_record(rec.Reply(req, md.error_of(exc), None)))
            return
        if req:
            self.link.send(src, rec.reply_record(rec.Reply(req, None, result)))
        if isinstance(request, rec.Consume):
            # after the reply, so consume-ok reaches the client before the first delivery
            key = (src, request.gid, request.chnum, request.consumer_tag)
            self.proxies[key].queue.dispatch()

    def _local_queue(self, vhost: str, name: str) -> Queue:
        vh = self.broker.vhosts.get(vhost)
        q = vh.queues.get(name) if vh is not None else None
        if not isinstance(q, Queue):
            raise SoftError(NOT_FOUND, f"no queue '{name}' in vhost '{vhost}'")
        return q

    def _consume(self, src: int, r: rec.Consume) -> None:
        q = self._local_queue(r.vhost, r.name)
        if q.consumers and (r.exclusive or q.exclusive_consumer()):
            raise SoftError(
                ACCESS_REFUSED, f"queue '{r.name}' in vhost '{r.vhost}' in exclusive use", 60, 20
            )
        key = (src, r.gid, r.chnum, r.consumer_tag)
        early = self.early_credit.pop(key, 0)
        proxy = ProxyConsumer(
            self,
            src,
            r.gid,
            r.chnum,
            r.consumer_tag,
            q,
            r.no_ack,
            r.exclusive,
            r.credit,
            r.credit_on_settle,
            r.priority,
        )
        proxy.credit += early
        self.proxies[key] = proxy
        q.add_consumer(proxy, dispatch=False)  # dispatched after the reply

    def _cancel(self, src: int, r: rec.Cancel) -> None:
        key = (src, r.gid, r.chnum, r.consumer_tag)
        self.early_credit.pop(key, None)
        proxy = self.proxies.pop(key, None)
        if proxy is None:
            return
        q = proxy.queue
        if q.remove_consumer(proxy) and not q.deleted:
            self.broker.sequencer.fire(md.DeleteQueue(q.vhost, q.name, True, False, 0))

    def _get(self, src: int, r: rec.Get) -> rec.GetOk | int:
        q = self._local_queue(r.vhost, r.name)
        got = q.get()
        if got is None:
            return q.message_count
        msg, redelivered = got
        if r.no_ack:
            q.settle_get_auto(msg)
            ref = 0
        else:
            ref = self.new_ref()
            self.held[ref] = (None, q, msg)
        return rec.GetOk(
            ref, redelivered, q.message_count, msg.exrk, msg.ch, msg.hsize, msg.fmax, msg.raw
        )

    def _purge(self, src: int, r: rec.Purge) -> int:
        return self._local_queue(r.vhost, r.name).purge()

    def _reply_exists(self, src: int, r: rec.ReplyExists) -> int:
        return 1 if self.broker.replies.lookup(r.address) is not None else 0

    # ---------------------------------------------------------------- ring, failures
    def on_writable(self, shard: int) -> None:
        """The ring to ``shard`` drained: its consumers waited for the ring, not for
        credit: deliver again."""
        queues = {id(p.queue): p.queue for k, p in self.proxies.items() if k[0] == shard}
        for q in queues.values():
            if q.consumers:
                q.dispatch()

    def shard_down(self, shard: int) -> None:
        """Worker ``shard`` died (it is being respawned empty): its consumers of our
        queues go and what they held goes back to the queues; its publishers no longer
        throttle our queues."""
        for key in [k for k in self.early_credit if k[0] == shard]:
            del self.early_credit[key]
        for vh in self.broker.vhosts.values():
            for q in vh.queues.values():
                if isinstance(q, Queue) and q.throttled:
                    q.throttled = {
                        p
                        for p in q.throttled
                        if not (isinstance(p, RemotePublisher) and p.src == shard)
                    }
        for key, proxy in list(self.proxies.items()):
            if key[0] != shard:
                continue
            del self.proxies[key]
            q = proxy.queue
            msgs = [self.held.pop(r)[2] for r in proxy.refs if r in self.held]
            q.remove_consumer(proxy)  # (a single active consumer's successor takes over)
            if msgs:
                q.requeue(msgs)
            else:
                q.dispatch()
