"""Durable definitions: keep ``data_dir/definitions.json`` in step with a ``Metadata``.

Owns: ``DefinitionsKeeper`` — reads the stored definitions back as metadata ops at
start-up (``load`` / ``ops``) and rewrites the file after an op that changed a durable
exchange, queue or binding (``after``). It works on any ``Metadata``: a worker's own
(one worker, real ``Queue`` objects) or the sequencer's replica in the supervisor
(``RemoteQueue`` placeholders): it only reads ``durable`` / ``exclusive`` /
``auto_delete`` / ``arguments`` of queues and never touches messages.

Invariants:
- Durable = a durable exchange (not the default or ``amq.*`` ones, which always
  exist), a durable non-exclusive queue, a binding whose source is durable and whose
  destination is a durable exchange or a durable non-exclusive queue. Nothing else is
  ever written.
- After ``after(op)`` returns, the file holds exactly the durable definitions of the
  metadata (written atomically by ``DefinitionsStore.save``, two fsyncs): call it
  before the client gets its -ok. ``after`` is cheap when the op cannot have changed
  them (transient or exclusive declares, re-declares, binds already saved, deletes of
  things never saved): a dict lookup, no walk, no write.
- Definitions for vhosts this metadata does not have are kept in the file as they are
  (a vhost missing from the config does not lose its definitions).
- A stored definition that fails to apply at start-up is logged and skipped; the
  others still load.
"""

from __future__ import annotations

import logging

from shardmq.amqp.errors import AMQPError
from shardmq.broker import metadata as md
from shardmq.broker.exchange import Exchange
from shardmq.broker.vhost import AnyQueue
from shardmq.store.definitions import (
    BindingDef,
    Definitions,
    DefinitionsStore,
    ExchangeDef,
    QueueDef,
    VHostDef,
)

log = logging.getLogger("shardmq.definitions")

ExKey = tuple[str, str]
BindKey = tuple[str, str, bool, str, str, bytes]  # vhost, source, to queue, dest, rk, args


class DefinitionsKeeper:
    def __init__(self, metadata: md.Metadata, store: DefinitionsStore) -> None:
        self.metadata = metadata
        self.store = store
        self.exchanges: dict[ExKey, ExchangeDef] = {}
        self.queues: dict[ExKey, QueueDef] = {}
        self.bindings: dict[BindKey, BindingDef] = {}
        self.saves = 0
        # saved sources with bindings and saved auto-delete exchanges, per vhost: a
        # removal elsewhere can only change durable definitions through them
        self._sources: set[ExKey] = set()
        self._autodel: set[str] = set()
        self._foreign: Definitions = Definitions()
        self._loading = False

    # ------------------------------------------------------------ start-up
    def ops(self) -> list[md.Op]:
        """The stored definitions of this metadata's vhosts as ops (exchanges, queues,
        then bindings). Remembers the rest (other vhosts) to write back unchanged."""
        defs = self.store.load()
        known = self.metadata.vhosts
        foreign = Definitions()
        ops: list[md.Op] = []
        binds: list[md.Op] = []
        for e in defs.exchanges:
            if e.vhost not in known:
                foreign.exchanges.append(e)
                continue
            args = md.table_bytes(e.arguments)
            ops.append(
                md.DeclareExchange(
                    e.vhost, e.name, e.type, False, True, e.auto_delete, e.internal, args
                )
            )
        for q in defs.queues:
            if q.vhost not in known:
                foreign.queues.append(q)
                continue
            args = md.table_bytes(q.arguments)
            ops.append(
                md.DeclareQueue(q.vhost, q.name, False, True, False, q.auto_delete, args, 0, True)
            )
        for b in defs.bindings:
            if b.vhost not in known:
                foreign.bindings.append(b)
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
        foreign.vhosts = [v for v in defs.vhosts if v.name not in known]
        self._foreign = foreign
        skipped = {e.vhost for e in foreign.exchanges} | {q.vhost for q in foreign.queues}
        skipped |= {b.vhost for b in foreign.bindings}
        for name in sorted(skipped):
            log.warning("definitions for vhost '%s' kept but not loaded: no such vhost", name)
        return ops + binds

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
        return n

    # ------------------------------------------------------------ after every op
    def after(self, op: md.Op) -> bool:
        """``op`` was applied successfully: save the definitions if it changed durable
        ones. Returns True when the file was rewritten."""
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
            self.queues[key] = _queue_def(op.vhost, q)
        elif type(op) is md.DeclareExchange:
            if op.passive or not op.durable:
                return False
            key = (op.vhost, op.name)
            if key in self.exchanges or not _savable(op.name):
                return False
            ex = self.metadata.vhosts[op.vhost].exchanges.get(op.name)
            if ex is None or not ex.durable:
                return False
            self.exchanges[key] = _exchange_def(op.vhost, ex)
            if ex.auto_delete:
                self._autodel.add(op.vhost)
        elif type(op) is md.Bind:
            bkey = self._durable_binding(op)
            if bkey is None or bkey in self.bindings:
                return False
            self.bindings[bkey] = _binding_def(bkey, bkey[5])
            self._sources.add((op.vhost, op.source))
        elif not self._may_remove(op):
            return False
        else:
            exchanges, queues, bindings = self.collect()
            if (exchanges, queues, bindings) == (self.exchanges, self.queues, self.bindings):
                return False
            self._replace(exchanges, queues, bindings)
        self.save()
        return True

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
        # the arguments as the router holds them (re-encoded), as ``collect`` sees them
        args = md.table_bytes(md.table_of(op.arguments)) if op.arguments else b""
        return (op.vhost, op.source, op.dest_is_queue, op.dest, op.routing_key, args)

    def _may_remove(self, op: md.Op) -> bool:
        """Could ``op`` (a delete / unbind / owner drop) have removed a saved definition?
        Removals cascade to bindings and to auto-delete exchanges only."""
        if isinstance(op, md.DropOwners):
            return bool(self._autodel)
        vhost = op.vhost
        if vhost in self._autodel:
            return True
        if isinstance(op, md.DeleteQueue):
            return (vhost, op.name) in self.queues
        if isinstance(op, md.DeleteExchange):
            return (vhost, op.name) in self.exchanges
        if isinstance(op, md.Unbind):
            return (vhost, op.source) in self._sources
        return False

    # ------------------------------------------------------------ state
    def collect(
        self,
    ) -> tuple[dict[ExKey, ExchangeDef], dict[ExKey, QueueDef], dict[BindKey, BindingDef]]:
        """The durable definitions of the metadata now (walks everything)."""
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
        self.exchanges, self.queues, self.bindings = exchanges, queues, bindings
        self._sources = {(k[0], k[1]) for k in bindings}
        self._autodel = {k[0] for k, e in exchanges.items() if e.auto_delete}

    def definitions(self) -> Definitions:
        f = self._foreign
        return Definitions(
            version=self.metadata.version,
            vhosts=[VHostDef(name=n) for n in self.metadata.vhosts] + list(f.vhosts),
            exchanges=list(self.exchanges.values()) + list(f.exchanges),
            queues=list(self.queues.values()) + list(f.queues),
            bindings=list(self.bindings.values()) + list(f.bindings),
        )

    def save(self) -> None:
        self.store.save(self.definitions())
        self.saves += 1


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
