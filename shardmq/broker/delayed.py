"""The ``x-delayed-message`` exchange's scheduler, built in (RabbitMQ needs a plugin).

Owns: ``DelayedScheduler`` — one per worker (``Broker.delayed``): the messages this
worker's publishers sent to a delayed exchange with a positive integer ``x-delay``
header (ms), held until due, then routed by the exchange as its ``x-delayed-type``
(``VHost.route_from``: exchange-to-exchange bindings and alternate exchanges apply).

Where delayed messages live with N workers: on the worker that received the publish
(the publisher's worker). Routing needs nothing more than that worker's replica of the
exchanges and bindings, which every worker has; the publish path stays local (no extra
hop), and the release goes out as any publish does (local queues directly, other
workers' queues through the rings). Persistent messages on a durable delayed exchange
are kept in that worker's ``DelayedStore`` (``data_dir/delayed/w<slot>/``), recovered
by the worker respawned in the same slot (and by worker ``slot % N`` if the broker
restarts with fewer workers). Transient ones are held in memory only, and die with
their worker, like transient messages in its queues.

Invariants:
- Held messages are released in due order (ties in arrival order) by one timer armed
  for the earliest due time; each timer run releases for at most ``RELEASE_SLICE_S``
  and yields the loop before the next slice, so a burst never stalls it.
- Due times are absolute wall-clock ms (``time.time``), on disk too, so a restart
  keeps them; a message already due at start-up is released at once.
- In memory a held message costs one heap entry ``(due, seq, exchange number, item)``
  made of ints and bytes only (so the garbage collector untracks it and a million held
  messages add nothing to its passes): ``item`` is the message packed into one bytes
  object for a transient one, the location of its record in the store (an int) for a
  durable one (its frames stay on disk until due).
- A durable message is removed from the store only once the routed copy is stored by
  every durable queue it reached (on this worker or another): a crash in between
  delivers it again (a duplicate), never loses it.
- ``x-delay`` absent, not an integer, zero or negative: routed at once (the plugin's
  rule). The ``x-delay`` header is delivered as published.
- ``mandatory``: a held publish is accepted and never returned (whether it will be
  routable is only known when it is due; the plugin cannot return it either: it
  returns every delayed mandatory publish as unroutable at once). At release an
  unroutable message goes to the exchange's alternate, or is dropped.
- Publisher confirms: a transient hold is confirmed at once; a durable one once the
  store has synced it.
- A message whose exchange was deleted meanwhile is dropped when due.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

from shardmq.broker.exchange import Exchange
from shardmq.broker.routing import DELAYED_TYPE
from shardmq.broker.storage import ConfirmWaiter
from shardmq.message import Message, next_seq
from shardmq.store.delayed import DelayedStore, Loc, Recovered, adopt, adoptable, delayed_dir
from shardmq.store.queue_store import RawCodec

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.broker.channel import Channel
    from shardmq.broker.connection import BrokerConnection
    from shardmq.broker.vhost import VHost

log = logging.getLogger("shardmq.delayed")

RELEASE_SLICE_S = 0.005  # a release run yields the loop after this long
_persistent = RawCodec.persistent
_PACKED = struct.Struct(">HIIH")  # ch, hsize, fmax, len(exrk); then exrk, raw


def pack(msg: Message) -> bytes:
    exrk = msg.exrk
    return _PACKED.pack(msg.ch, msg.hsize, msg.fmax, len(exrk)) + exrk + msg.raw


def unpack(item: bytes) -> Message:
    ch, hsize, fmax, n = _PACKED.unpack_from(item)
    o = _PACKED.size
    return Message(item[o : o + n], item[o + n :], ch, hsize, fmax, next_seq())


def now_ms() -> int:
    return int(time.time() * 1000)


class DelayedScheduler:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        # (due ms, seq or store id, exchange number, packed message or store location)
        self.heap: list[tuple[int, int, int, bytes | int]] = []
        self._xids: dict[Exchange, int] = {}
        self._by_xid: dict[int, Exchange] = {}
        self._next_xid = itertools.count(1).__next__
        self.store: DelayedStore | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0
        self._slice_pending = False
        self.gid = broker.new_gid()  # as a publisher to other workers' queues
        self.released = 0
        self.dropped = 0

    # ------------------------------------------------------------ life cycle
    def open(self, data_dir: str, fsync: str, loop: asyncio.AbstractEventLoop) -> None:
        """Storage on: open (and recover) this worker's store; arm the timer."""
        self.loop = loop
        slot, workers = self.broker.slot, self.broker.workers
        store = DelayedStore(delayed_dir(data_dir, slot), fsync=fsync, loop=loop)
        store.before_sync = self.broker.sync_definitions
        recovered = store.recover()
        self.store = store
        for directory in adoptable(data_dir, slot, workers):
            moved = adopt(store, directory, lambda r: self._exchange_of(r) is not None)
            log.info("adopted %d delayed message(s) from %s", len(moved), directory)
            recovered += moved
        kept = 0
        for r in recovered:
            ex = self._exchange_of(r)
            if ex is None:
                store.remove(r.id, r.loc)
                continue
            self._push(r.due, r.id, ex, r.loc)
            kept += 1
        if recovered:
            log.info("%d delayed message(s) recovered", kept)
        self._arm()

    def _exchange_of(self, r: Recovered) -> Exchange | None:
        vh = self.broker.vhosts.get(r.vhost)
        ex = vh.exchanges.get(r.exchange) if vh is not None else None
        if ex is None or ex.type != DELAYED_TYPE:
            return None
        return ex

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.store is not None:
            self.store.close()

    def __len__(self) -> int:
        return len(self.heap)

    # ------------------------------------------------------------ holding
    def hold(
        self, conn: BrokerConnection, ch: Channel, msg: Message, conf: Any, delay: int
    ) -> None:
        """A publish on ``ch`` that its delayed exchange holds for ``delay`` ms (the
        connection saw ``VHost.route`` answer ``HELD``); answers its confirm."""
        vh = conn.vhost
        ex = vh.exchanges[msg.exchange]
        due = now_ms() + delay
        target = ch if ch.confirm else conf
        store = self.store
        if store is not None and ex.durable and _persistent(msg):
            token = target.durable_token() if target is not None else None
            rid, loc = store.add(
                due, vh.name, ex.name, msg.exrk, msg.ch, msg.hsize, msg.fmax, msg.raw, token
            )
            self._push(due, rid, ex, loc)
            if ch.confirm and ch.store_pending:
                ch.store_pending = 0
                ch.confirm_later(1)
                return
        else:
            self._push(due, next_seq(), ex, pack(msg))
        if ch.confirm:
            ch.confirm_published()

    def _push(self, due: int, seq: int, ex: Exchange, item: bytes | int) -> None:
        xid = self._xids.get(ex)
        if xid is None:
            self._forget_deleted()
            xid = self._xids[ex] = self._next_xid()
            self._by_xid[xid] = ex
        heapq.heappush(self.heap, (due, seq, xid, item))
        if self.loop is None:
            try:
                self.loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (unit tests): released by ``release_due``
        if self._timer is None or due < self._timer_due:
            self._arm()

    def _forget_deleted(self) -> None:
        """Drop the numbers of deleted exchanges no held message refers to (seldom: only
        when a new exchange gets a number)."""
        dead = [x for x, ex in self._by_xid.items() if ex.deleted]
        if not dead:
            return
        used = {e[2] for e in self.heap}
        for x in dead:
            if x not in used:
                del self._xids[self._by_xid.pop(x)]

    # ------------------------------------------------------------ releasing
    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.heap or self.loop is None or self._slice_pending:
            return
        due = self.heap[0][0]
        self._timer_due = due
        delay = max(0.0, (due - time.time() * 1000) / 1000)
        self._timer = self.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._slice_pending = False
        more = self.release_due(now_ms(), time.perf_counter() + RELEASE_SLICE_S)
        if more and self.loop is not None:
            self._slice_pending = True
            self.loop.call_soon(self._fire)
        else:
            self._arm()

    def release_due(self, now: int, until: float = float("inf")) -> bool:
        """Route the messages due by ``now`` (wall-clock ms), stopping once
        ``time.perf_counter()`` passes ``until``; True if some due ones are left."""
        heap = self.heap
        n = 0
        clock = time.perf_counter
        while heap and heap[0][0] <= now:
            n += 1
            if not n & 31 and clock() > until:
                return True
            _due, seq, xid, item = heapq.heappop(heap)
            ex = self._by_xid[xid]
            if isinstance(item, bytes):
                self._route(ex, unpack(item), None)
            else:
                self._route_durable(ex, seq, item)
        return False

    def _route_durable(self, ex: Exchange, rid: int, loc: Loc) -> None:
        store = self.store
        if store is None or store.closed:
            return
        if ex.deleted:
            store.remove(rid, loc)
            self.dropped += 1
            return
        h = store.load(loc)
        msg = Message(h.exrk, h.raw, h.ch, h.hsize, h.fmax, next_seq())
        waiter = ConfirmWaiter()
        self._route(ex, msg, waiter)
        if not waiter.pending:
            store.remove(rid, loc)
        else:

            def done(ok: bool) -> None:
                if ok:
                    store.remove(rid, loc)
                else:
                    log.error("a delayed message was not stored by its queues; kept for retry")

            waiter.done = done

    def _route(self, ex: Exchange, msg: Message, waiter: ConfirmWaiter | None) -> None:
        if ex.deleted:
            self.dropped += 1
            return
        vh = self._vhost_of(ex)
        if vh is None:
            self.dropped += 1
            return
        local, remote = vh.route_from(ex, msg)
        for q in local:
            q.publish(msg, waiter)
        if remote:
            router = self.broker.shards
            if router is None:
                return
            seq = router.tx_seq(waiter, len(remote)) if waiter is not None else 0
            router.enqueue(remote, msg, self, 0, seq)
        if local or remote:
            self.released += 1
        else:
            self.dropped += 1

    def _vhost_of(self, ex: Exchange) -> VHost | None:
        for vh in self.broker.vhosts.values():
            if vh.exchanges.get(ex.name) is ex:
                return vh
        return None

    # ------------------------------------------------------------ as a publisher
    def throttle(self, cause: object, on: bool) -> None:
        """A ring to another worker is full: the release goes on (records are buffered
        by the link until it drains)."""
