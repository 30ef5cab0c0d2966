"""The metadata sequencer: one order for every exchange/queue/binding change.

Owns: ``Sequencer`` (runs in the supervisor with N workers) and ``WorkerMeta`` (a
worker's side: sends its clients' ops, applies the ordered ops it is sent). Both are
transport-agnostic: messages are plain lists handed to a ``send`` callable.

Invariants:
- One op at a time: an op is applied by the sequencer's replica (which raises the
  error a client gets), then by every live worker; the requester is answered only when
  all of them acked, so a publish after declare-ok / bind-ok on any worker sees it.
- Checks that need a queue's live state are asked of the queue's owner first ("ask"),
  and the op broadcast afterwards carries no such condition, so replicas never diverge.
  The owner reads its inbound rings before it answers (``WorkerMeta.before_ask``), so
  the answer includes the settles other workers wrote before the ask was sent.
- A worker that (re)starts gets a snapshot of the current definitions before it serves.

Messages (lists): worker -> sequencer ``["req", req, op]`` (req 0: nobody waits) and
``["ack", token, err, result]``; sequencer -> worker ``["apply", token, op]``,
``["ask", token, op]``, ``["reply", req, err, result]``, ``["snapshot", [op, ...], last]``
(a snapshot comes in chunks of at most ``SNAPSHOT_CHUNK`` encoded bytes; the worker is
ready once it applied the chunk with ``last`` true).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from shardmq.amqp.errors import INTERNAL_ERROR, PRECONDITION_FAILED, AMQPError, SoftError
from shardmq.broker import metadata as md
from shardmq.broker.exchange import Exchange
from shardmq.broker.queue import Queue
from shardmq.broker.remote import RemoteQueue

if TYPE_CHECKING:
    from shardmq.broker.durable import DefinitionsKeeper

log = logging.getLogger("shardmq.sequencer")

# A message is a plain list (see above) of str, int, bytes, lists and None: whatever the
# transport carries, hence Any.
Send = Callable[[int, list[Any]], None]
# An op's result as it crosses processes: QueueInfo as a list, a message count, or None.
PlainResult = list[Any] | int | None

SNAPSHOT_CHUNK = 32 * 1024  # encoded op bytes per snapshot message
LOCAL = -1  # the requester "slot" of ops submitted in this process (``Sequencer.request``)


def chunks(ops: list[bytes], limit: int = SNAPSHOT_CHUNK) -> list[list[bytes]]:
    """``ops`` split into consecutive lists of at most ``limit`` bytes (at least one op
    each, and at least one list, so that an empty snapshot is still sent)."""
    out: list[list[bytes]] = [[]]
    size = 0
    for op in ops:
        if out[-1] and size + len(op) > limit:
            out.append([])
            size = 0
        out[-1].append(op)
        size += len(op)
    return out


def snapshot(metadata: md.Metadata) -> list[bytes]:
    """Ops that rebuild ``metadata``'s definitions from scratch (encoded)."""
    ops: list[md.Op] = [md.AddVHost(name) for name in metadata.vhosts]
    bindings: list[md.Op] = []
    access = metadata.access
    for u in access.users.values():
        ops.append(md.AddUser("", u.name, u.password_hash, u.hashing_algorithm, list(u.tags)))
    for perm in access.permissions.values():
        ops.append(md.SetPermissions(perm.vhost, perm.user, perm.configure, perm.write, perm.read))
    for topics in access.topics.values():
        for tp in topics.values():
            ops.append(md.SetTopicPermissions(tp.vhost, tp.user, tp.exchange, tp.write, tp.read))
    for vh in metadata.vhosts.values():
        # policies first: the queues and exchanges declared below get theirs at once
        for p in vh.policies:
            ops.append(
                md.SetPolicy(
                    vh.name, p.name, p.pattern, p.apply_to, p.priority, json.dumps(p.definition)
                )
            )
        for ex in vh.exchanges.values():
            if ex.name == "" or ex.name.startswith("amq."):
                pass
            else:
                ops.append(
                    md.DeclareExchange(
                        vh.name,
                        ex.name,
                        ex.type,
                        False,
                        ex.durable,
                        ex.auto_delete,
                        ex.internal,
                        md.table_bytes(ex.arguments),
                    )
                )
            for dest, rk, args in ex.router.bindings():
                bindings.append(
                    md.Bind(
                        vh.name,
                        not isinstance(dest, Exchange),
                        dest.name,
                        ex.name,
                        rk,
                        md.table_bytes(args),
                        dest.owner if not isinstance(dest, Exchange) else 0,
                    )
                )
        for q in vh.queues.values():
            ops.append(
                md.DeclareQueue(
                    vh.name,
                    q.name,
                    False,
                    q.durable,
                    q.exclusive,
                    q.auto_delete,
                    md.table_bytes(q.arguments),
                    q.owner,
                    True,
                )
            )
    # limits last: a worker's replica never refuses a queue that exists
    limits = access.limits
    for vhost, vlimits in limits.vhosts.items():
        bindings.append(md.SetVHostLimits(vhost, json.dumps(vlimits)))
    for user, ulimits in limits.users.items():
        bindings.append(md.SetUserLimits("", user, json.dumps(ulimits)))
    return [md.encode_op(op) for op in ops + bindings]


class Sequencer:
    def __init__(self, vhosts: list[str], workers: int, send: Send) -> None:
        self.workers = workers
        self.send = send
        self.metadata = md.Metadata(vhosts, self._placeholder)
        self.live: set[int] = set()
        self._queue: deque[tuple[int, int, md.AnyOp]] = deque()
        self._tokens = itertools.count(1)
        self._current: _Current | None = None
        # durable definitions, written after each op the replica applied and before any
        # worker (or client) hears of it (synced in the background: ``defsync.py``)
        self.keeper: DefinitionsKeeper | None = None
        # ops asked for in this process (the control socket): request id -> callback
        self._local: dict[int, Callable[[AMQPError | None, Any], None]] = {}
        self._local_ids = itertools.count(1)

    def _placeholder(self, name: str, vhost: str, **kw: Any) -> RemoteQueue:
        return RemoteQueue(name, vhost, md.shard_for(vhost, name, self.workers), **kw)

    # ------------------------------------------------------------ workers
    def worker_up(self, slot: int) -> None:
        """A worker (re)started: it gets the definitions, then takes part in ops."""
        parts = chunks(snapshot(self.metadata))
        for i, part in enumerate(parts):
            self.send(slot, ["snapshot", part, i == len(parts) - 1])
        self.live.add(slot)

    def worker_down(self, slot: int) -> None:
        self.live.discard(slot)
        cur = self._current
        if cur is not None and slot in cur.waiting:
            cur.waiting.discard(slot)
            if cur.stage == "ask":
                self._finish(
                    cur, md.error_of(AMQPError(INTERNAL_ERROR, "queue owner restarted")), None
                )
                return
            self._maybe_done()
        # Its connections are gone: so are their exclusive queues.
        self.submit(slot, 0, md.DropOwners("", slot))

    # ------------------------------------------------------------ input
    def on_message(self, slot: int, message: list[Any]) -> None:
        kind = message[0]
        if kind == "req":
            self.submit(slot, message[1], md.decode_op(message[2]))
        elif kind == "ack":
            self._on_ack(slot, message[1], message[2], message[3])

    def request(self, op: md.Op, callback: Callable[[AMQPError | None, Any], None]) -> None:
        """Sequence ``op`` for a requester in this process (the control socket):
        ``callback(error, result)`` once every live worker applied it."""
        req = next(self._local_ids)
        self._local[req] = callback
        self.submit(LOCAL, req, op)  # type: ignore[arg-type]

    def submit(self, slot: int, req: int, op: md.AnyOp) -> None:
        self._queue.append((slot, req, op))
        if self._current is None:
            self._next()

    # ------------------------------------------------------------ state machine
    def _next(self) -> None:
        while self._current is None and self._queue:
            slot, req, op = self._queue.popleft()
            self._start(slot, req, op)

    def _owner(self, op: md.AnyOp) -> int | None:
        if isinstance(op, md.DeclareQueue | md.DeleteQueue):
            return md.shard_for(op.vhost, op.name, self.workers)
        return None

    def _start(self, slot: int, req: int, op: md.AnyOp) -> None:
        owner = self._owner(op)
        cur = _Current(slot, req, op, owner)
        self._current = cur
        needs_ask = (isinstance(op, md.DeclareQueue) and op.passive) or (
            isinstance(op, md.DeleteQueue)
            and (op.if_unused or op.if_empty)
            and op.name in self.metadata.vhost(op.vhost).queues
        )
        if needs_ask and owner in self.live:
            cur.stage = "ask"
            cur.token = token = next(self._tokens)
            cur.waiting = {owner}
            self.send(owner, ["ask", token, md.encode_op(op)])
            return
        self._broadcast(cur)

    def _broadcast(self, cur: _Current) -> None:
        op = cur.op
        if isinstance(op, md.DeclareQueue) and op.passive:
            # nothing changes; the owner's answer (or ours) is the reply
            try:
                result = cur.result or self.metadata.apply(op)
            except AMQPError as exc:
                self._finish(cur, md.error_of(exc), None)
                return
            self._finish(cur, None, _plain(result))
            return
        if isinstance(op, md.DeleteQueue) and (op.if_unused or op.if_empty):
            op = msgspec.structs.replace(op, if_unused=False, if_empty=False)
            cur.op = op
        try:
            result = self.metadata.apply(op)
        except AMQPError as exc:
            self._finish(cur, md.error_of(exc), None)
            return
        if self.keeper is not None:
            try:
                self.keeper.after(op)
            except OSError as exc:
                # the replica changed but the file did not: the change stands in memory
                # (workers apply it) and the client is told it failed, as with one worker
                log.error("cannot save the definitions: %s", exc)
                err = md.error_of(AMQPError(INTERNAL_ERROR, f"cannot save definitions: {exc}"))
                cur.save_error = err
        cur.stage = "apply"
        cur.result = _plain(result)
        cur.token = token = next(self._tokens)
        cur.waiting = set(self.live)
        data = md.encode_op(op)
        for w in sorted(self.live):
            self.send(w, ["apply", token, data])
        self._maybe_done()

    def _on_ack(self, slot: int, token: int, err: md.ErrorData | None, result: PlainResult) -> None:
        cur = self._current
        if cur is None or cur.token != token:
            return
        cur.waiting.discard(slot)
        if cur.stage == "ask":
            if err is not None:
                self._finish(cur, err, None)
                return
            cur.result = result
            self._broadcast(cur)
            return
        if err is not None:
            log.error("worker %d diverged applying %r: %s", slot, cur.op, err)
        elif slot == cur.owner and result is not None:
            cur.result = result
        self._maybe_done()

    def _maybe_done(self) -> None:
        cur = self._current
        if cur is not None and cur.stage == "apply" and not cur.waiting:
            err = cur.save_error
            self._finish(cur, err, None if err else cur.result)

    def _finish(self, cur: _Current, err: md.ErrorData | None, result: PlainResult) -> None:
        self._current = None
        if cur.slot == LOCAL:
            callback = self._local.pop(cur.req, None)
            if callback is not None:
                callback(md.error_from(err) if err is not None else None, result)
        elif cur.req and cur.slot in self.live:
            self.send(cur.slot, ["reply", cur.req, err, result])
        self._next()


@dataclass(slots=True)
class _Current:
    """The op being sequenced: who asked (worker ``slot``, request ``req``; 0 = nobody
    waits), the owner of its queue, its stage ("" -> "ask" -> "apply"), the token the
    workers' acks carry and the workers still to ack."""

    slot: int
    req: int
    op: md.AnyOp
    owner: int | None
    stage: str = ""
    token: int = 0  # 0: none yet (tokens start at 1)
    waiting: set[int] = field(default_factory=set)
    result: PlainResult = None
    save_error: md.ErrorData | None = None


def _plain(result: md.OpResult | PlainResult) -> PlainResult:
    if isinstance(result, md.QueueInfo):
        return [result.name, result.message_count, result.consumer_count]
    return result


class WorkerMeta:
    """A worker's end: the broker's ``sequencer`` when there are several workers."""

    synchronous = False

    def __init__(self, metadata: md.Metadata, send: Callable[[list[Any]], None]) -> None:
        self.metadata = metadata
        self.send = send
        self._reqs = itertools.count(1)
        # Any: the caller knows which result its op gets (QueueInfo for queue.declare)
        self.pending: dict[int, Callable[[AMQPError | None, Any], None]] = {}
        self.ready = False
        self.on_ready: Callable[[], None] | None = None
        # reads what other workers wrote to this one's rings before an "ask" is answered,
        # so the answer reflects every settle a client's worker sent before it asked
        # (a reject on one channel, then a passive declare on another: the declare sees it)
        self.before_ask: Callable[[], None] | None = None

    def request(self, op: md.Op, callback: Callable[[AMQPError | None, Any], None]) -> None:
        req = next(self._reqs)
        if isinstance(op, md.DeclareQueue):
            self.pending[req] = lambda err, res: callback(err, md.QueueInfo(*res) if res else res)
        else:
            self.pending[req] = callback
        self.send(["req", req, md.encode_op(op)])

    def execute(self, op: md.Op) -> md.OpResult:
        """Not synchronous: ops go through ``request`` (see ``synchronous``)."""
        raise RuntimeError("WorkerMeta.execute: several workers apply ops through request()")

    def fire(self, op: md.Op) -> None:
        self.send(["req", 0, md.encode_op(op)])

    def on_message(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == "apply":
            self._apply(message[1], message[2])
        elif kind == "ask":
            self._ask(message[1], message[2])
        elif kind == "reply":
            cb = self.pending.pop(message[1], None)
            if cb is not None:
                err, result = message[2], message[3]
                cb(md.error_from(err) if err is not None else None, result)
        elif kind == "snapshot":
            for data in message[1]:
                try:
                    self.metadata.apply(md.decode_op(data))
                except AMQPError as exc:
                    log.error("snapshot op not applied: %s", exc.reply_text)
            if len(message) < 3 or message[2]:
                self.ready = True
                if self.on_ready is not None:
                    self.on_ready()

    def _apply(self, token: int, data: bytes) -> None:
        try:
            result = self.metadata.apply(md.decode_op(data))
        except AMQPError as exc:
            self.send(["ack", token, md.error_of(exc), None])
            return
        self.send(["ack", token, None, _plain(result)])

    def _ask(self, token: int, data: bytes) -> None:
        """Owner-side checks that need live queue state (no change is made)."""
        if self.before_ask is not None:
            self.before_ask()
        op = md.decode_op(data)
        try:
            if isinstance(op, md.DeclareQueue):
                result = _plain(self.metadata.apply(op))
            else:
                assert isinstance(op, md.DeleteQueue)
                vh = self.metadata.vhost(op.vhost)
                q = vh.queues.get(op.name)
                if isinstance(q, Queue):
                    if op.requester:
                        vh.check_exclusive(q, op.requester)
                    if op.if_unused and q.consumers:
                        raise SoftError(
                            PRECONDITION_FAILED, f"queue '{q.name}' in vhost '{vh.name}' in use"
                        )
                    if op.if_empty and q.message_count:
                        raise SoftError(
                            PRECONDITION_FAILED,
                            f"queue '{q.name}' in vhost '{vh.name}' not empty",
                        )
                result = None
        except AMQPError as exc:
            self.send(["ack", token, md.error_of(exc), None])
            return
        self.send(["ack", token, None, result])
