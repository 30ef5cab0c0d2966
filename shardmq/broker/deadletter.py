"""Dead-lettering: the copy RabbitMQ makes of a message that leaves a queue, and where
it goes.

Owns: ``dead_letter_copy`` (the new message: ``x-death`` and ``x-first-death-*``
headers exactly as RabbitMQ 3.10 writes them, ``expiration`` removed, the DLX and
routing keys), ``is_cycle`` (RabbitMQ's cycle rule) and ``BrokerServices`` (a
worker's ``QueueServices``: routes the copy from the queue's owner through the normal
publish path, to this worker's queues and to other workers' through the rings, and
deletes queues whose ``x-expires`` passed).

Invariants:
- ``x-death`` holds one entry per (queue, reason): a repeat increments ``count`` and
  moves the entry to the front (its other fields kept, RabbitMQ's sorted layout); a
  first entry is ``count, reason, queue, time, exchange, routing-keys`` and
  ``original-expiration`` when the message had one. ``x-first-death-*`` are set once.
- With ``x-dead-letter-routing-key`` the copy goes with that key and loses its ``CC``
  header; without, with the original routing key and the ``CC`` keys (BCC never
  reaches a queue's message).
- Cycles: unless the reason is ``rejected``, a target queue the message already died
  in, with no ``rejected`` death since, is skipped (RabbitMQ logs and drops it).
- A missing dead-letter exchange drops the copy (RabbitMQ does not check at declare).
- A message without headers (the common first death) gets a headers table encoded once
  per (reason, queue, exchange, routing key, second, expiration) and spliced into its
  properties (``_first_death_table``): byte for byte what the general path builds.
- Never lost: a persistent message leaving a durable queue is settled there only
  after every durable target queue (on any worker) has stored the copy; if that fails
  it stays unacked on disk and comes back after a restart (a duplicate, not a loss).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from shardmq.amqp.codec import exrk_names, shortstr
from shardmq.amqp.fieldtable import Timestamp, encode_table
from shardmq.amqp.methods import BasicProperties
from shardmq.broker import metadata as md
from shardmq.broker.delivery_limit import origin_of
from shardmq.broker.queue import DurableQueue, Queue
from shardmq.broker.remote import RemoteQueue
from shardmq.broker.storage import ConfirmWaiter
from shardmq.message import Message, next_seq
from shardmq.store.queue_store import RawCodec

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

log = logging.getLogger("shardmq.deadletter")

_HEADER_CLASS = (60).to_bytes(2, "big") + b"\x00\x00"  # basic, weight 0


def _str(v: object) -> str | None:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else None


# A first death of a message without headers: the encoded headers table depends only on
# (reason, queue, exchange, routing key, second, expiration), so a stream of them (a
# dead-letter pipeline, a mass expiry) encodes it once per second instead of per message.
_FIRST_DEATHS: dict[tuple[str, str, str, str, int, str | None], tuple[bytes, list[Any]]] = {}
_FIRST_DEATHS_MAX = 256


def _first_death_table(
    reason: str, queue: str, exchange: str, rk: str, now_s: int, expiration: str | None
) -> tuple[bytes, list[Any]]:
    """(the encoded headers table, its ``x-death``) of a headerless message's first
    death; the same table the general path builds (and shared: read-only)."""
    key = (reason, queue, exchange, rk, now_s, expiration)
    got = _FIRST_DEATHS.get(key)
    if got is None:
        info: dict[str, Any] = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": Timestamp(now_s),
            "exchange": exchange,
            "routing-keys": [rk],
        }
        if expiration is not None:
            info["original-expiration"] = expiration
        deaths = [info]  # a first entry keeps RabbitMQ's order (a repeat is sorted)
        headers = {
            "x-death": deaths,
            "x-first-death-exchange": exchange,
            "x-first-death-queue": queue,
            "x-first-death-reason": reason,
        }
        if len(_FIRST_DEATHS) >= _FIRST_DEATHS_MAX:
            _FIRST_DEATHS.clear()
        got = _FIRST_DEATHS[key] = (encode_table(headers), deaths)
    return got


def _with_table(props: BasicProperties, table: bytes) -> bytes:
    """``props`` (headers None) encoded with the already encoded ``table`` as headers."""
    enc = props.encode()
    flags = int.from_bytes(enc[:2], "big")
    o = 2
    if flags & 0x8000:  # content-type, then content-encoding come before headers
        o += 1 + enc[o]
    if flags & 0x4000:
        o += 1 + enc[o]
    return (flags | 0x2000).to_bytes(2, "big") + enc[2:o] + table + enc[o:]


def dead_letter_copy(
    msg: Message, reason: str, queue: str, dlx: str, dlrk: str | None, now_s: int
) -> tuple[Message, list[str], list[Any]]:
    """(the dead-lettered copy of ``msg`` leaving ``queue``, the routing keys to route
    it with through ``dlx``, its ``x-death`` array)."""
    msg = origin_of(msg)  # as published (a quorum queue's count header left out)
    props = BasicProperties.decode(msg.raw, 19)  # a fresh copy: we change it
    exchange, rk = exrk_names(msg.exrk)
    if not props.headers:
        table, deaths = _first_death_table(reason, queue, exchange, rk, now_s, props.expiration)
        props.headers = props.expiration = None
        body = msg.body
        header = _HEADER_CLASS + len(body).to_bytes(8, "big") + _with_table(props, table)
        key = rk if dlrk is None else dlrk
        copy = Message.from_parts(shortstr(dlx) + shortstr(key), header, body, next_seq())
        return copy, [key], deaths
    return _general_copy(msg, props, exchange, rk, reason, queue, dlx, dlrk, now_s)


def _general_copy(
    msg: Message,
    props: BasicProperties,
    exchange: str,
    rk: str,
    reason: str,
    queue: str,
    dlx: str,
    dlrk: str | None,
    now_s: int,
) -> tuple[Message, list[str], list[Any]]:
    """``dead_letter_copy`` for any message (headers decoded, merged, encoded)."""
    headers: dict[str, Any] = dict(props.headers or {})
    cc = headers.get("CC")
    cc_keys = [k for k in (_str(v) for v in cc) if k is not None] if isinstance(cc, list) else []
    rks = [rk, *cc_keys]
    info: dict[str, Any] = {
        "reason": reason,
        "queue": queue,
        "time": Timestamp(now_s),
        "exchange": exchange,
        "routing-keys": rks,
    }
    if props.expiration is not None:
        info["original-expiration"] = props.expiration
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths:
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = exchange
        headers["x-death"] = [{"count": 1, **info}]
    else:
        match: dict[str, Any] | None = None
        others: list[Any] = []
        for d in deaths:
            if (
                match is None
                and isinstance(d, dict)
                and _str(d.get("queue")) == queue
                and _str(d.get("reason")) == reason
            ):
                match = d
            else:
                others.append(d)
        if match is None:
            entry = {"count": 1, **info}
        else:
            entry = dict(match)
            count = entry.get("count")
            entry["count"] = (count if isinstance(count, int) else 0) + 1
        headers["x-death"] = [dict(sorted(entry.items())), *others]
    if dlrk is not None:
        headers.pop("CC", None)
        keys = [dlrk]
    else:
        keys = rks
    props.headers = dict(sorted(headers.items()))
    props.expiration = None
    body = msg.body
    header = _HEADER_CLASS + len(body).to_bytes(8, "big") + props.encode()
    copy = Message.from_parts(shortstr(dlx) + shortstr(keys[0]), header, body, next_seq())
    return copy, keys, props.headers["x-death"]


def is_cycle(queue: str, deaths: list[Any]) -> bool:
    """RabbitMQ's rule: the newest deaths up to and including the first one in
    ``queue`` contain no ``rejected`` one (checked for reasons other than rejected)."""
    for d in deaths:
        if not isinstance(d, dict):
            return False
        if _str(d.get("reason")) == "rejected":
            return False
        if _str(d.get("queue")) == queue:
            return True
    return False


class _NoPublisher:
    """The publisher of dead-lettered copies sent to other workers: nobody to throttle
    (gid 0: the owner never throttles it)."""

    gid = 0

    def throttle(self, cause: object, on: bool) -> None:
        return None


_NOBODY = _NoPublisher()
_persistent = RawCodec.persistent


class BrokerServices:
    """A worker's ``QueueServices``: dead-letter routing and x-expires deletes."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._cycles_logged: set[tuple[str, str]] = set()

    def delete_expired(self, queue: Queue) -> None:
        log.info("queue '%s' in vhost '%s' expired (x-expires)", queue.name, queue.vhost)
        self.broker.sequencer.fire(md.DeleteQueue(queue.vhost, queue.name, True, False, 0))

    def dead_letter(self, queue: Queue, msg: Message, reason: str, settle: bool) -> None:
        s = queue.settings
        dlx = s.dead_letter_exchange
        store = queue.store

        def done() -> None:
            if settle and not queue.deleted:
                store.ack(msg)

        vh = self.broker.vhosts.get(queue.vhost)
        if dlx is None or vh is None or dlx not in vh.exchanges:
            done()
            return
        copy, keys, deaths = dead_letter_copy(
            msg, reason, queue.name, dlx, s.dead_letter_routing_key, int(time.time())
        )
        targets: dict[Queue | RemoteQueue, None] = {}
        for i, key in enumerate(keys):
            m = copy
            if i:  # a CC key: the same message, routed by another key
                m = Message(shortstr(dlx) + shortstr(key), copy.raw, copy.ch, copy.hsize, copy.fmax)
            try:
                local, remote = vh.lookup(m, 0)  # not counted on the exchange
            except Exception as exc:  # internal exchange etc.: RabbitMQ drops it
                log.debug("dead-letter copy not routed: %s", exc)
                continue
            for q in local:
                targets[q] = None
            for _shard, rqs in remote:
                for rq in rqs:
                    targets[rq] = None
        if reason != "rejected" and targets:
            for t in list(targets):
                if is_cycle(t.name, deaths):
                    del targets[t]
                    pair = (queue.name, t.name)
                    if pair not in self._cycles_logged:
                        self._cycles_logged.add(pair)
                        log.warning(
                            "dead-letter cycle: message from queue '%s' to '%s' for reason "
                            "'%s' dropped (logged once)",
                            queue.name,
                            t.name,
                            reason,
                        )
        safe = settle and isinstance(queue, DurableQueue) and _persistent(msg)
        waiter = ConfirmWaiter() if safe else None
        by_shard: dict[int, list[RemoteQueue]] = {}
        for t in targets:
            if isinstance(t, Queue):
                if not t.deleted:
                    t.publish(copy, waiter)
            else:
                by_shard.setdefault(t.shard, []).append(t)
        if by_shard:
            router = self.broker.shards
            if router is not None:
                groups = tuple((shard, tuple(qs)) for shard, qs in sorted(by_shard.items()))
                seq = router.tx_seq(waiter, len(groups)) if waiter is not None else 0
                router.enqueue(groups, copy, _NOBODY, 0, seq)
        if waiter is not None and waiter.pending:

            def stored(ok: bool) -> None:
                if ok:
                    done()
                else:
                    log.error(
                        "dead-lettered message of queue '%s' not stored by its target; "
                        "kept (it comes back after a restart)",
                        queue.name,
                    )

            waiter.done = stored
        else:
            done()
