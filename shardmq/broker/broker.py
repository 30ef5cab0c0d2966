"""The broker of one worker: vhosts, users, live connections.

Owns: ``Broker`` — the root of the domain state of one shard, plus the hooks that
cross connections (a deleted queue cancels consumers on every connection, an alarm
blocks every publisher), and ``LocalSequencer`` (one worker: ops apply at once, and
durable definitions are committed before the op is answered).

Invariants:
- No socket I/O here; the net layer creates connections (through a protocol adapter,
  ``shardmq.adapter``) and flushes their output.
- Storage is on when the broker is built inside a running event loop (a real
  ``shardmq serve`` process) or with ``storage=True``: then durable, non-exclusive
  queues this worker owns are ``DurableQueue``s with a store under
  ``data_dir/queues``, opened (and recovered) when the queue is created and destroyed
  when it is deleted. With one worker the broker also keeps the durable definitions
  itself (``load_definitions`` at start-up, before accepting clients; a change is
  committed before its -ok, see ``LocalSequencer``); with several the supervisor's
  sequencer does.
- Publishers are blocked while any alarm is on (memory, disk, file descriptors);
  unblocked only once all have cleared.
- ``max_connections`` is the whole broker's: this worker's open connections plus the
  other workers' (``peer_connections``, from the control block; a heartbeat behind).
  The per-vhost and per-user limits are exact across workers (``counts``,
  ``shardmq.broker.conn_limits``).
- ``delayed`` (``shardmq.broker.delayed``) holds this worker's delayed-exchange
  messages; with storage on, ``start_storage`` (after the definitions are in place)
  recovers the durable ones, ``close_storage`` closes their store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import platform
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from shardmq import __version__
from shardmq.amqp.errors import (
    CONNECTION_FORCED,
    INTERNAL_ERROR,
    NOT_ALLOWED,
    AMQPError,
    HardError,
)
from shardmq.auth.seed import seed
from shardmq.auth.throttle import AuthThrottle
from shardmq.broker.conn_limits import ConnCounts
from shardmq.broker.connection import BrokerConnection
from shardmq.broker.consumer_timeout import AckTimeouts
from shardmq.broker.deadletter import BrokerServices
from shardmq.broker.delayed import DelayedScheduler
from shardmq.broker.durable import DefinitionsKeeper
from shardmq.broker.metadata import DeleteUser, DeleteVHost, Metadata, Op, OpResult, shard_for
from shardmq.broker.priority import max_priority
from shardmq.broker.qargs import parse_queue_args
from shardmq.broker.queue import Consumer, DurableQueue, Queue
from shardmq.broker.remote import RemoteQueue
from shardmq.broker.replyto import ReplyRegistry
from shardmq.broker.stats import MessageStats
from shardmq.broker.storage import WorkerStorage
from shardmq.broker.vhost import AnyQueue
from shardmq.config import Config
from shardmq.store.definitions import DefinitionsStore

if TYPE_CHECKING:
    from shardmq.broker.shards import ShardRouter

log = logging.getLogger("shardmq.broker")

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


# Answers a metadata op: (error, result); the caller knows which result its op gets.
OpCallback = Callable[[AMQPError | None, Any], None]


class MetadataOps(Protocol):
    """Where a worker's metadata changes go: ``LocalSequencer`` (one worker: applied at
    once) or ``sequencer.WorkerMeta`` (several: ordered by the supervisor's sequencer
    and applied by every worker before the answer)."""

    synchronous: bool  # True: ``execute`` answers at once; False: only ``request``

    def execute(self, op: Op) -> OpResult: ...

    def request(self, op: Op, callback: OpCallback) -> None: ...

    def fire(self, op: Op) -> None:
        """Apply an op nobody waits for (auto-delete, exclusive owner gone)."""


class LocalSequencer:
    """One worker: metadata ops apply at once, in this process, in call order.

    With a keeper and an event loop (``call_soon``), the durable definitions an op
    changed are committed at the end of the loop turn, one fdatasync for every op of
    the turn (group commit), and the ops' answers wait for it (``request``); so does
    the answer of any op that comes while a commit is pending, so a client never hears
    of a change that a crash could still undo. With storage the commit only writes the
    log (the fdatasync is deferred: ``DefinitionsKeeper.sync_through``), and
    ``WorkerStorage.flush`` calls ``flush`` first, so a turn's changes are written and
    their sync queued before any store job of the turn. Without a loop each op commits
    before ``execute`` returns."""

    def __init__(
        self,
        metadata: Metadata,
        keeper: DefinitionsKeeper | None = None,
        call_soon: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.metadata = metadata
        self.keeper = keeper
        self.call_soon = call_soon
        self.synchronous = keeper is None or call_soon is None
        self._waiting: list[tuple[OpCallback, AMQPError | None, OpResult]] = []
        self._scheduled = False

    def execute(self, op: Op) -> OpResult:
        result = self.metadata.apply(op)
        if self.keeper is not None:
            self._save(op)
        return result

    def request(self, op: Op, callback: OpCallback) -> None:
        keeper = self.keeper
        if self.synchronous or keeper is None:
            try:
                answer = self.execute(op)
            except AMQPError as exc:
                callback(exc, None)
                return
            callback(None, answer)
            return
        err: AMQPError | None = None
        result: OpResult = None
        try:
            result = self.metadata.apply(op)
            keeper.record(op)
        except AMQPError as exc:
            err = exc
        if not keeper.pending:
            callback(err, result)
            return
        self._waiting.append((callback, err, result))
        self._schedule()

    def fire(self, op: Op) -> None:
        """Apply an op nobody waits for (auto-delete, exclusive owner gone)."""
        try:
            self.metadata.apply(op)
        except AMQPError as exc:
            log.debug("internal op %r not applied: %s", op, exc.reply_text)
            return
        if self.keeper is None:
            return
        if self.synchronous:
            try:
                self._save(op)
            except HardError:
                pass  # logged; nobody to tell
            return
        self.keeper.record(op)
        if self.keeper.pending:
            self._schedule()

    def flush(self) -> None:
        """Commit now what the end of the turn would (``WorkerStorage.flush`` calls it
        before the stores': the definitions' sync job goes to the committer first)."""
        if self._scheduled:
            self.commit()

    @property
    def waiting(self) -> bool:
        """Answers held until the next ``commit``."""
        return bool(self._waiting)

    def _schedule(self) -> None:
        if not self._scheduled and self.call_soon is not None:
            self._scheduled = True
            self.call_soon(self.commit)

    def commit(self) -> None:
        """End of the loop turn: one commit for the changes of every op since the last
        one, then their answers, in order."""
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        failed: AMQPError | None = None
        try:
            self.keeper.commit()  # type: ignore[union-attr]
        except OSError as exc:
            log.error("cannot save the definitions: %s", exc)
            failed = HardError(INTERNAL_ERROR, f"cannot save the definitions: {exc}")
        for callback, err, result in waiting:
            err = err or failed
            callback(err, None if err else result)

    def _save(self, op: Op) -> None:
        try:
            self.keeper.after(op)  # type: ignore[union-attr]
        except OSError as exc:
            log.error("cannot save the definitions: %s", exc)
            raise HardError(INTERNAL_ERROR, f"cannot save the definitions: {exc}") from exc


class Broker:
    def __init__(
        self, config: Config, *, slot: int = 0, workers: int = 1, storage: bool | None = None
    ) -> None:
        self.config = config
        self.slot = slot
        self.workers = workers
        self.queue_services = BrokerServices(self)  # dead-lettering, x-expires
        self.metadata = Metadata(config.vhosts or ["/"], self._make_queue)
        self.metadata.on_queue_deleted = self._queue_deleted
        self.metadata.on_access_change = self._access_changed
        self.vhosts = self.metadata.vhosts
        self.storage: WorkerStorage | None = None
        self.definitions: DefinitionsKeeper | None = None
        # several workers: fdatasync the supervisor's definitions log if it is behind
        # (``defsync.WorkerLogSync.sync_now``, set by the wiring)
        self.definitions_sync: Callable[[], None] | None = None
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if storage is None:
            storage = running is not None
        if storage:
            data_dir = config.server.data_dir
            self.storage = WorkerStorage(
                data_dir, config.store, asyncio.get_event_loop(), self.set_disk_alarm
            )
            if workers == 1:
                self.definitions = DefinitionsKeeper(self.metadata, DefinitionsStore(data_dir))
        # with a running loop, definitions are committed once per loop turn
        call_soon = running.call_soon if running is not None else None
        if workers == 1 and self.definitions is None:
            # no data dir (in-process use): the config's users now; with one it is
            # after the stored definitions (load_definitions); with several workers the
            # users come with the sequencer's snapshot
            seed(self.metadata, config)
        local = LocalSequencer(self.metadata, self.definitions, call_soon)
        self.sequencer: MetadataOps = local
        if self.definitions is not None and self.storage is not None and call_soon is not None:
            # declare-ok once the log record is written; its fdatasync is a job of the
            # stores' group commit, queued before theirs (see DefinitionsKeeper.sync_through)
            assert running is not None
            self.definitions.sync_through(self.storage.committer, running)
            self.storage.before_flush = self._before_store_flush
        self.shards: ShardRouter | None = None  # the cross-worker router (workers > 1)
        self.stats = MessageStats()  # message counters, read by status reports
        self.connections: set[BrokerConnection] = set()
        self.conns_by_gid: dict[int, BrokerConnection] = {}
        self.replies = ReplyRegistry(self)  # direct reply-to consumers (replyto.py)
        self.ack_timeouts = AckTimeouts(self, config.amqp.consumer_timeout)
        self.alarm = False  # publishers blocked: memory or disk alarm
        self.memory_alarm = False  # memory high watermark passed
        self.disk_alarm = False  # free disk below store.disk_free_limit
        self.fd_alarm = False  # file descriptors nearly all in use
        # connections the other workers serve (set by the net layer with several)
        self.peer_connections: Callable[[], int] = lambda: 0
        self._conn_ids = itertools.count(1)
        self.auth_throttle = AuthThrottle()  # failed logins per address (brute force)
        # connections and channels per vhost / user, across workers (limits)
        self.counts = ConnCounts(slot, self.metadata.access.limits)
        self.delayed = DelayedScheduler(self)  # x-delayed-message exchanges' held messages
        self.server_properties = {
            "product": "shardmq",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "copyright": "shardmq authors",
            "information": "https://pypi.org/project/shardmq/",
            "cluster_name": f"shardmq@{platform.node()}",
            "capabilities": dict(CAPABILITIES),
            "worker": slot,
        }

    def join_workers(self, router: ShardRouter, sequencer: MetadataOps) -> None:
        """Several workers: queues of other workers are reached through ``router``,
        metadata changes go through the supervisor's sequencer (``sequencer``)."""
        self.shards = router
        self.sequencer = sequencer

    def router(self) -> ShardRouter:
        """The cross-worker router, for what only a queue of another worker needs."""
        if self.shards is None:
            raise HardError(INTERNAL_ERROR, "no cross-worker router (one worker)")
        return self.shards

    def new_gid(self) -> int:
        """A connection id unique across workers: the slot in the high 32 bits."""
        return (self.slot << 32) | next(self._conn_ids)

    def _make_queue(self, name: str, vhost: str, **kw: Any) -> AnyQueue:
        if self.workers > 1:
            shard = shard_for(vhost, name, self.workers)
            if shard != self.slot:
                if self.shards is None:
                    raise HardError(INTERNAL_ERROR, "another worker's queue before the mesh")
                return RemoteQueue(name, vhost, shard, router=self.shards, **kw)
        storage = self.storage
        if storage is not None and kw.get("durable") and not kw.get("exclusive"):
            try:
                args = kw.get("arguments") or {}
                quorum = parse_queue_args(args, name, vhost).quorum
                store = storage.open_queue(vhost, name, max_priority(args), quorum)
            except OSError as exc:
                log.error("cannot open the store of queue '%s' in vhost '%s': %s", name, vhost, exc)
                raise HardError(INTERNAL_ERROR, f"cannot open queue storage: {exc}") from exc
            q = DurableQueue(name, vhost, store=store, **kw)
            q.start(self.queue_services)
            self.stats.queues_created += 1
            if store.recovered:
                log.info(
                    "queue '%s' in vhost '%s': %d message(s) recovered",
                    name,
                    vhost,
                    store.recovered,
                )
            return q
        plain = Queue(name, vhost, **kw)
        plain.start(self.queue_services)
        self.stats.queues_created += 1
        return plain

    def load_definitions(self) -> int:
        """One worker, at start-up: declare the stored durable exchanges, queues and
        bindings (queues recover their messages). Returns how many were applied."""
        if self.definitions is None:
            return 0
        n = self.definitions.load()
        if seed(self.metadata, self.config, self.definitions):
            log.info("users seeded from the config (no users stored)")
        if n:
            log.info("restored %d durable definition(s) from %s", n, self.config.server.data_dir)
        return n

    def start_storage(self) -> None:
        """The worker is about to serve: start watching free disk space (and the
        unacked deliveries' age: ``consumer_timeout``); recover the held delayed
        messages (their exchanges exist by now)."""
        if self.storage is not None:
            self.storage.start()
            # after the definitions: held messages find their exchanges
            self.delayed.open(self.storage.data_dir, self.config.store.fsync, self.storage.loop)
        try:
            self.ack_timeouts.start(asyncio.get_running_loop())
        except RuntimeError:  # no loop: an in-process broker of the unit tests
            pass

    def sync_definitions(self) -> None:
        """Write and fdatasync every definitions change made so far, now (one worker;
        with several: the supervisor's log, if it is behind: ``definitions_sync``).
        Raises ``OSError``."""
        if isinstance(self.sequencer, LocalSequencer):
            self.sequencer.flush()
        if self.definitions is not None:
            self.definitions.store.sync()
        if self.definitions_sync is not None:
            self.definitions_sync()

    def _before_store_flush(self) -> None:
        """First in every ``WorkerStorage.flush``: this turn's definitions changes are
        written and their fdatasync submitted before any store job (one worker)."""
        if isinstance(self.sequencer, LocalSequencer):
            self.sequencer.flush()
        if self.definitions is not None:
            self.definitions.queue_sync()

    async def close_storage(self) -> None:
        """Clean shutdown, after the connections are closed: flush, close, last fsync."""
        self.delayed.close()
        if self.storage is not None:
            self._before_store_flush()
            await self.storage.close()
        if self.definitions is not None:
            self.definitions.store.close()  # fdatasyncs what no committer round did

    def check_password(self, user: str, password: str) -> bool:
        return self.metadata.access.authenticate(user, password) is not None

    def _access_changed(self, op: Op) -> None:
        """A user or vhost was deleted: close the connections that were using it
        (320, RabbitMQ's texts)."""
        if isinstance(op, DeleteUser):
            gone = [c for c in self.connections if c.user == op.name]
            text = f"CONNECTION_FORCED - user '{op.name}' is deleted"
        elif isinstance(op, DeleteVHost):
            gone = [c for c in self.connections if c.vhost.name == op.vhost]
            text = f"CONNECTION_FORCED - vhost '{op.vhost}' is deleted"
        else:
            return
        for conn in gone:
            log.info("closing connection %s: %s", conn.peer, text)
            conn.client.close(CONNECTION_FORCED, text)

    def _queue_deleted(self, q: AnyQueue) -> None:
        """Consumers of a deleted queue on this worker's connections get basic.cancel;
        a durable queue's store is destroyed."""
        if isinstance(q, DurableQueue) and self.storage is not None:
            self.storage.drop(q.disk)
        if isinstance(q, Queue):
            self.stats.fold(q)  # its counts stay in this worker's totals
            consumers = [c for c in q.consumers if isinstance(c, Consumer)]
            q.consumers = []
        else:
            consumers = list(q.local_consumers.values())
            q.local_consumers.clear()
        for c in consumers:
            c.channel.conn.cancel_consumer(c)

    def set_memory_alarm(self, on: bool) -> None:
        """Memory high watermark passed (or back under it)."""
        self.memory_alarm = on
        self._update_alarm()

    def set_disk_alarm(self, on: bool) -> None:
        """Free disk under data_dir below ``store.disk_free_limit`` (or back above)."""
        self.disk_alarm = on
        self._update_alarm()

    def set_fd_alarm(self, on: bool) -> None:
        """File descriptors nearly exhausted (or back under the mark)."""
        self.fd_alarm = on
        self._update_alarm()

    @property
    def alarm_reason(self) -> str:
        reasons = [
            text
            for on, text in (
                (self.memory_alarm, "low on memory"),
                (self.disk_alarm, "low on disk"),
                (self.fd_alarm, "low on file descriptors"),
            )
            if on
        ]
        return ", ".join(reasons) or "low on memory"

    def check_connection_limit(self) -> None:
        """connection.open past ``server.max_connections``: refused as RabbitMQ does."""
        limit = self.config.server.max_connections
        if limit and len(self.connections) + self.peer_connections() >= limit:
            raise HardError(
                NOT_ALLOWED,
                f"connection refused: node connection limit ({limit}) is reached",
                10,
                40,
            )

    def _update_alarm(self) -> None:
        """Block every connection that publishes while any alarm is on; unblock once
        all are off."""
        on = self.memory_alarm or self.disk_alarm or self.fd_alarm
        if on == self.alarm:
            return
        self.alarm = on
        reason = self.alarm_reason
        for conn in list(self.connections):
            if conn.published:
                conn.alarm(on, reason)

    def close_all(self, code: int, text: str) -> None:
        for conn in list(self.connections):
            conn.client.close(code, text)
