"""Durable definitions: keep the definitions store in step with a ``Metadata``.

Owns: ``DefinitionsKeeper`` — reads the stored definitions back as metadata ops at
start-up (``load`` / ``ops``) and, after each op, records what it changed in the durable
exchanges, queues and bindings as puts and deletes in the ``DefinitionsStore``
(``record``), made durable by ``commit`` (one log append + fdatasync for every change
recorded since the last one: group commit). ``after(op)`` is both. With
``sync_through(committer, loop)`` ``commit`` only writes, and the fdatasync is a
batched job of a committer (``_DeferredSync``): submitted within ``SYNC_DELAY`` or by
``queue_sync``. One worker: the queue stores' committer, ``queue_sync`` called before
any store job of the turn. Several: the supervisor's own committer; the workers see
the log's state through ``on_log`` and sync it themselves when a commit round of
theirs needs it (``defsync.py``; ``synced_elsewhere`` then spares the supervisor's
sync). It works on any
``Metadata``: a worker's own (one worker, real ``Queue`` objects) or the sequencer's
replica in the supervisor (``RemoteQueue`` placeholders): it only reads ``durable`` /
``exclusive`` / ``auto_delete`` / ``arguments`` of queues and never touches messages.

Invariants:
- Durable = a durable exchange (not the default or ``amq.*`` ones, which always
  exist), a durable non-exclusive queue, a binding whose source is durable and whose
  destination is a durable exchange or a durable non-exclusive queue. Nothing else is
  ever written.
- After ``commit()`` returns, the store holds exactly the durable definitions of the
  metadata (written; fdatasynced unless deferred): call it before the client gets its
  -ok (``LocalSequencer`` and the ``Sequencer`` do). ``record`` costs O(what the op
  changed), never a walk of all the
  definitions: a declare or bind is a dict lookup (nothing at all for transient or
  exclusive things, re-declares, binds already saved); a delete removes the thing and
  its bindings through per-exchange and per-destination indexes, and checks the saved
  auto-delete exchanges of the vhost (a removal can delete those, in cascade).
- Deferred: a committer round that completes a store job submitted after
  ``queue_sync`` has synced the log (rounds go in submission order and complete after
  all their files), so nothing confirmed can depend on an unsynced declaration (with
  several workers: see ``defsync.py``).
- Definitions for vhosts this metadata does not have are kept in the store as they are
  (a vhost missing from the config does not lose its definitions).
- A stored definition that fails to apply at start-up is logged and skipped; the
  others still load, and the store is brought in line with what did (one commit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from shardmq.amqp.errors import AMQPError
from shardmq.broker import metadata as md
from shardmq.broker.durable_access import (
    ACCESS_KINDS,
    access_ops,
    drop_vhost_access,
    limit_ops,
    record_access,
)
from shardmq.broker.exchange import Exchange
from shardmq.broker.vhost import AnyQueue
from shardmq.store.commit import CommitJob, Committer
from shardmq.store.definitions import (
    BindingDef,
    DefinitionsStore,
    ExchangeDef,
    QueueDef,
    VHostDef,
)

log = logging.getLogger("shardmq.definitions")

# the longest a written definitions change waits for its fdatasync to be submitted
# (with one worker; sooner when a queue store commits: see ``sync_through``)
SYNC_DELAY = 0.02

ExKey = tuple[str, str]
BindKey = tuple[str, str, bool, str, str, bytes]  # vhost, source, to queue, dest, rk, args
DestKey = tuple[str, bool, str]  # vhost, to queue, dest
_K = TypeVar("_K", ExKey, DestKey)


class DefinitionsKeeper:
    def __init__(self, metadata: md.Metadata, store: DefinitionsStore) -> None:
        self.metadata = metadata
        self.store = store
        self.exchanges: dict[ExKey, ExchangeDef] = {}
        self.queues: dict[ExKey, QueueDef] = {}
        self.bindings: dict[BindKey, BindingDef] = {}
        self.saves = 0  # commits that wrote something
        # indexes of the saved bindings, and the saved auto-delete exchanges per vhost:
        # a removal can only change durable definitions through them
        self._by_source: dict[ExKey, set[BindKey]] = {}
        self._by_dest: dict[DestKey, set[BindKey]] = {}
        self._autodel: dict[str, set[str]] = {}
        self._vhosts_saved = False
        self._loading = False
        self._deferred: _DeferredSync | None = None
        # called after every commit that wrote and every deferred sync that returned
        # (the supervisor publishes the log's state to the workers: ``defsync.py``)
        self.on_log: Callable[[], None] | None = None
        # asked before a deferred sync is done: True = the appends up to n are on disk
        # already (another process synced the log); the sync is then skipped
        self.synced_elsewhere: Callable[[int], bool] | None = None

    # ------------------------------------------------------------ start-up
    def ops(self) -> list[md.Op]:
        """The stored definitions of this metadata's vhosts as ops (exchanges, queues,
        then bindings). The rest (other vhosts) stays in the store untouched."""
        defs = self.store.load()
        # vhosts, users, permissions and policies first: the stored vhosts are created
        ops: list[md.Op] = access_ops(defs)
        known = set(self.metadata.vhosts) | {v.name for v in defs.vhosts}
        binds: list[md.Op] = []
        skipped: set[str] = set()
        for e in defs.exchanges:
            if e.vhost not in known:
                skipped.add(e.vhost)
                continue
            args = md.table_bytes(e.arguments)
            ops.append(
                md.DeclareExchange(
                    e.vhost, e.name, e.type, False, True, e.auto_delete, e.internal, args
                )
            )
        for q in defs.queues:
            if q.vhost not in known:
                skipped.add(q.vhost)
                continue
            args = md.table_bytes(q.arguments)
            ops.append(
                md.DeclareQueue(q.vhost, q.name, False, True, False, q.auto_delete, args, 0, True)
            )
        for b in defs.bindings:
            if b.vhost not in known:
                skipped.add(b.vhost)
                continue
            binds.append(
                md.Bind(
                    b.vhost,
                    b.destination_type == "queue",
                    b.destination,
                    b.source,
                    b.routing_key,
                    md.table_bytes(b.arguments),
                    0,
                )
            )
        for name in sorted(skipped):
            log.warning("definitions for vhost '%s' kept but not loaded: no such vhost", name)
        return ops + binds + limit_ops(defs)

    def load(self) -> int:
        """Apply the stored definitions to the metadata (a worker recovers its durable
        queues' messages as they are declared). Returns how many ops applied."""
        n = 0
        self._loading = True
        try:
            for op in self.ops():
                try:
                    self.metadata.apply(op)
                    n += 1
                except AMQPError as exc:
                    log.error("stored definition not restored: %r: %s", op, exc.reply_text)
        finally:
            self._loading = False
        self._replace(*self.collect())
        self._reconcile()
        return n

    def _reconcile(self) -> None:
        """Bring the store in line with what loaded (a definition that failed to
        apply is dropped): one commit, only when something differs."""
        known = self.metadata.vhosts
        stored = self.store.definitions()
        store = self.store
        for e in stored.exchanges:
            if e.vhost in known and (e.vhost, e.name) not in self.exchanges:
                store.delete(e)
        for q in stored.queues:
            if q.vhost in known and (q.vhost, q.name) not in self.queues:
                store.delete(q)
        keys = {_binding_identity(b) for b in stored.bindings}
        wanted = {_binding_identity(b): b for b in self.bindings.values()}
        for b in stored.bindings:
            if b.vhost in known and _binding_identity(b) not in wanted:
                store.delete(b)
        present = {(e.vhost, e.name) for e in stored.exchanges}
        for key, e in self.exchanges.items():
            if key not in present:
                store.put(e)
        present = {(q.vhost, q.name) for q in stored.queues}
        for key, q in self.queues.items():
            if key not in present:
                store.put(q)
        for ident, b in wanted.items():
            if ident not in keys:
                store.put(b)
        if store.pending:
            self.commit()

    # ------------------------------------------------------------ after every op
    def after(self, op: md.Op) -> bool:
        """``op`` was applied successfully: record its changes and commit them (and any
        recorded before). Returns True when the durable definitions changed."""
        changed = self.record(op)
        if self.store.pending:
            self.commit()
        return changed

    def record(self, op: md.Op) -> bool:
        """``op`` was applied successfully: record what it changed in the durable
        definitions in the store (not yet durable: see ``commit``). Returns True when
        it changed them."""
        if self._loading:
            return False
        # type(), not isinstance: an Unbind is a Bind
        if type(op) is md.DeclareQueue:
            if op.passive or not op.durable or op.exclusive:
                return False
            key = (op.vhost, op.name)
            if key in self.queues:
                return False
            q = self.metadata.vhosts[op.vhost].queues.get(op.name)
            if q is None or not q.durable or q.exclusive:
                return False
            self._put_queue(key, _queue_def(op.vhost, q))
            return True
        if type(op) is md.DeclareExchange:
            if op.passive or not op.durable:
                return False
            key = (op.vhost, op.name)
            if key in self.exchanges or not _savable(op.name):
                return False
            ex = self.metadata.vhosts[op.vhost].exchanges.get(op.name)
            if ex is None or not ex.durable:
                return False
            self._put_exchange(key, _exchange_def(op.vhost, ex))
            return True
        if type(op) is md.Bind:
            bkey = self._durable_binding(op)
            if bkey is None or bkey in self.bindings:
                return False
            self._put_binding(bkey, _binding_def(bkey, bkey[5]))
            return True
        if isinstance(op, ACCESS_KINDS):
            self._save_vhosts()
            return record_access(self.store, self.metadata, op)
        return self._removals(op)

    def commit(self) -> bool:
        """Make every recorded change durable (one append + fdatasync). Returns True
        when something was written; raises ``OSError`` when that failed."""
        self.store.version = self.metadata.version
        if self.store.commit():
            self.saves += 1
            if self.on_log is not None:
                self.on_log()
            return True
        return False

    @property
    def pending(self) -> bool:
        """Changes recorded and not committed yet."""
        return self.store.pending

    def sync_through(self, committer: Committer, loop: asyncio.AbstractEventLoop) -> None:
        """Let ``committer`` (the worker's group commit of the queue stores) fdatasync
        the log instead of ``commit``: ``commit`` then returns once the records are
        written (survives kill -9), and their fdatasync is a job of the committer,
        submitted within ``SYNC_DELAY`` seconds (one for every commit in between: a
        batch) or by ``queue_sync``, whichever comes first. The caller must call
        ``queue_sync`` before submitting any store job that could confirm a message
        depending on a change (``WorkerStorage.flush`` does, first): a round completes
        its jobs only after syncing every file of the round, and rounds go in
        submission order, so no confirm is reported durable before the declaration it
        needs is on disk."""
        self._deferred = _DeferredSync(self, committer, loop)
        self.store.defer_sync = self._deferred.written

    def queue_sync(self) -> None:
        """Submit the log's fdatasync now if a commit is waiting for one."""
        if self._deferred is not None:
            self._deferred.submit()

    def close(self) -> None:
        """Clean stop: close the store, which fdatasyncs whatever no committer round
        synced (a deferred sync still due is not submitted)."""
        if self._deferred is not None:
            self._deferred.cancel()
        self.store.close()
        if self.on_log is not None:
            self.on_log()

    def _synced(self, upto: int, exc: OSError | None) -> None:
        self.store.synced(upto, exc)
        if self.on_log is not None:
            self.on_log()

    def _durable_binding(self, op: md.Bind) -> BindKey | None:
        vh = self.metadata.vhosts.get(op.vhost)
        if vh is None:
            return None
        src = vh.exchanges.get(op.source)
        if src is None or not src.durable:
            return None
        if op.dest_is_queue:
            q = vh.queues.get(op.dest)
            if q is None or not q.durable or q.exclusive:
                return None
        else:
            dest = vh.exchanges.get(op.dest)
            if dest is None or not dest.durable:
                return None
        return _bind_key(op)

    def _removals(self, op: md.Op) -> bool:
        """A delete / unbind / owner drop was applied: drop the saved definitions it
        removed, directly or in cascade (bindings of a deleted queue or exchange,
        auto-delete exchanges that lost their last binding, and theirs)."""
        changed = False
        metadata = self.metadata
        if isinstance(op, md.DeleteVHost):
            return self._drop_vhost(op.vhost)
        if isinstance(op, md.DropOwners):
            vhosts = list(self._autodel)
        else:
            vhosts = [op.vhost]
            vh = metadata.vhosts.get(op.vhost)
            if vh is None:
                return False
            if isinstance(op, md.DeleteQueue):
                key = (op.vhost, op.name)
                if key in self.queues and op.name not in vh.queues:
                    changed = self._drop_queue(key)
            elif isinstance(op, md.DeleteExchange):
                key = (op.vhost, op.name)
                if key in self.exchanges and op.name not in vh.exchanges:
                    changed = self._drop_exchange(key)
            elif isinstance(op, md.Unbind):
                bkey = _bind_key(op)
                if bkey in self.bindings:
                    self._drop_binding(bkey)
                    changed = True
        for vhost in vhosts:
            names = self._autodel.get(vhost)
            if not names:
                continue
            exchanges = metadata.vhosts[vhost].exchanges if vhost in metadata.vhosts else {}
            for name in [n for n in names if n not in exchanges]:
                changed = self._drop_exchange((vhost, name)) or changed
        return changed

    # ------------------------------------------------------------ state
    def _save_vhosts(self) -> None:
        if not self._vhosts_saved:
            self._vhosts_saved = True
            have = {v.name for v in self.store.definitions().vhosts}
            for name in self.metadata.vhosts:
                if name not in have:
                    self.store.put(VHostDef(name=name))

    def _put_queue(self, key: ExKey, qd: QueueDef) -> None:
        self._save_vhosts()
        self.queues[key] = qd
        self.store.put(qd)

    def _put_exchange(self, key: ExKey, ed: ExchangeDef) -> None:
        self._save_vhosts()
        self.exchanges[key] = ed
        if ed.auto_delete:
            self._autodel.setdefault(key[0], set()).add(key[1])
        self.store.put(ed)

    def _put_binding(self, bkey: BindKey, bd: BindingDef) -> None:
        self._save_vhosts()
        self._index(bkey, bd)
        self.store.put(bd)

    def _index(self, bkey: BindKey, bd: BindingDef) -> None:
        self.bindings[bkey] = bd
        self._by_source.setdefault((bkey[0], bkey[1]), set()).add(bkey)
        self._by_dest.setdefault((bkey[0], bkey[2], bkey[3]), set()).add(bkey)

    def _drop_binding(self, bkey: BindKey) -> None:
        bd = self.bindings.pop(bkey)
        _unindex(self._by_source, (bkey[0], bkey[1]), bkey)
        _unindex(self._by_dest, (bkey[0], bkey[2], bkey[3]), bkey)
        self.store.delete(bd)

    def _drop_dest(self, dkey: DestKey) -> None:
        for bkey in list(self._by_dest.get(dkey, ())):
            self._drop_binding(bkey)

    def _drop_queue(self, key: ExKey) -> bool:
        self.store.delete(self.queues.pop(key))
        self._drop_dest((key[0], True, key[1]))
        return True

    def _drop_exchange(self, key: ExKey) -> bool:
        ed = self.exchanges.pop(key, None)
        if ed is None:
            return False
        names = self._autodel.get(key[0])
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._autodel[key[0]]
        self.store.delete(ed)
        for bkey in list(self._by_source.get(key, ())):
            self._drop_binding(bkey)
        self._drop_dest((key[0], False, key[1]))
        return True

    def _drop_vhost(self, vhost: str) -> bool:
        """Vhost ``vhost`` was deleted with everything in it."""
        if vhost in self.metadata.vhosts:
            return False
        changed = False
        for key in [k for k in self.queues if k[0] == vhost]:
            changed = self._drop_queue(key) or changed
        for key in [k for k in self.exchanges if k[0] == vhost]:
            changed = self._drop_exchange(key) or changed
        for bkey in [k for k in self.bindings if k[0] == vhost]:
            self._drop_binding(bkey)
            changed = True
        self._autodel.pop(vhost, None)
        self.store.delete(VHostDef(name=vhost))
        drop_vhost_access(self.store, vhost)
        return True

    def collect(
        self,
    ) -> tuple[dict[ExKey, ExchangeDef], dict[ExKey, QueueDef], dict[BindKey, BindingDef]]:
        """The durable definitions of the metadata now (walks everything: start-up and
        tests only)."""
        exchanges: dict[ExKey, ExchangeDef] = {}
        queues: dict[ExKey, QueueDef] = {}
        bindings: dict[BindKey, BindingDef] = {}
        for vh in self.metadata.vhosts.values():
            for ex in vh.exchanges.values():
                if not ex.durable:
                    continue
                if _savable(ex.name):
                    exchanges[(vh.name, ex.name)] = _exchange_def(vh.name, ex)
                for dest, rk, args in ex.router.bindings():
                    if isinstance(dest, Exchange):
                        if not dest.durable:
                            continue
                        to_queue = False
                    else:
                        if not dest.durable or dest.exclusive:
                            continue
                        to_queue = True
                    abytes = md.table_bytes(args)
                    key = (vh.name, ex.name, to_queue, dest.name, rk, abytes)
                    bindings[key] = _binding_def(key, abytes)
            for q in vh.queues.values():
                if q.durable and not q.exclusive:
                    queues[(vh.name, q.name)] = _queue_def(vh.name, q)
        return exchanges, queues, bindings

    def _replace(
        self,
        exchanges: dict[ExKey, ExchangeDef],
        queues: dict[ExKey, QueueDef],
        bindings: dict[BindKey, BindingDef],
    ) -> None:
        self.exchanges, self.queues = exchanges, queues
        self.bindings, self._by_source, self._by_dest = {}, {}, {}
        for bkey, bd in bindings.items():
            self._index(bkey, bd)
        self._autodel = {}
        for (vhost, name), e in exchanges.items():
            if e.auto_delete:
                self._autodel.setdefault(vhost, set()).add(name)


def _unindex(index: dict[_K, set[BindKey]], ikey: _K, bkey: BindKey) -> None:
    keys = index.get(ikey)
    if keys is not None:
        keys.discard(bkey)
        if not keys:
            del index[ikey]


def _bind_key(op: md.Bind) -> BindKey:
    # the arguments as the router holds them (re-encoded), as ``collect`` sees them
    args = md.table_bytes(md.table_of(op.arguments)) if op.arguments else b""
    return (op.vhost, op.source, op.dest_is_queue, op.dest, op.routing_key, args)


def _binding_identity(b: BindingDef) -> tuple[str, str, str, str, str, bytes]:
    return (
        b.vhost,
        b.source,
        b.destination_type,
        b.destination,
        b.routing_key,
        md.table_bytes(b.arguments),
    )


def _savable(name: str) -> bool:
    return bool(name) and not name.startswith("amq.")


def _exchange_def(vhost: str, ex: Exchange) -> ExchangeDef:
    return ExchangeDef(
        vhost=vhost,
        name=ex.name,
        type=ex.type,
        durable=True,
        auto_delete=ex.auto_delete,
        internal=ex.internal,
        arguments=dict(ex.arguments),
    )


def _queue_def(vhost: str, q: AnyQueue) -> QueueDef:
    return QueueDef(
        vhost=vhost,
        name=q.name,
        durable=True,
        auto_delete=q.auto_delete,
        arguments=dict(q.arguments),
    )


def _binding_def(key: BindKey, arguments: bytes) -> BindingDef:
    vhost, source, to_queue, dest, rk, _ = key
    return BindingDef(
        vhost=vhost,
        source=source,
        destination=dest,
        destination_type="queue" if to_queue else "exchange",
        routing_key=rk,
        arguments=md.table_of(arguments),
    )


class _DeferredSync:
    """The definitions log's fdatasync as a job of a committer (the worker's, or the
    supervisor's own), batched: at most one submitted per ``SYNC_DELAY`` unless
    ``submit`` is called earlier; none when another process synced the log meanwhile
    (``DefinitionsKeeper.synced_elsewhere``)."""

    def __init__(
        self, keeper: DefinitionsKeeper, committer: Committer, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.keeper = keeper
        self.store = keeper.store
        self.committer = committer
        self.loop = loop
        self._due: tuple[str, int] | None = None  # (log path, last append) to sync
        self._timer: asyncio.TimerHandle | None = None

    def written(self, path: str, n: int) -> bool:
        """The store appended ``n`` to ``path`` without syncing: True = we sync it."""
        if self.committer.policy == "off" or getattr(self.committer, "closing", False):
            return False  # synced at once by the store (as before, whatever the policy)
        self._due = (path, n)
        if self._timer is None:
            self._timer = self.loop.call_later(SYNC_DELAY, self.submit)
        return True

    def cancel(self) -> None:
        """Forget a sync still due (the owner syncs the store itself)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due = None

    def submit(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due, self._due = self._due, None
        if due is None:
            return
        elsewhere = self.keeper.synced_elsewhere
        if elsewhere is not None and elsewhere(due[1]):
            self.keeper._synced(due[1], None)
            return
        if getattr(self.committer, "closing", False):
            self.store.sync()
            self.keeper._synced(due[1], None)
            return
        self.committer.submit(CommitJob(self, [due[1]], [due[0]], [], [], []))

    def _committed(self, job: CommitJob, exc: OSError | None) -> None:
        n = job.tokens[0]
        assert isinstance(n, int)
        self.keeper._synced(n, exc)
