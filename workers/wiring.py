"""Glue between the process layer and the broker: who talks to whom, with N workers.

Owns: ``wire_worker`` (a worker's ``Broker`` gets the cross-shard router on the mesh and
a ``WorkerMeta`` on the supervisor channel) and ``wire_supervisor`` (the supervisor
runs the metadata ``Sequencer``, feeds it worker messages and worker births/deaths).
Control messages are msgpack-encoded lists (see ``shardmq.broker.sequencer``).

Invariants:
- A worker serves clients only after it applied the whole definitions snapshot
  (``wire_worker`` returns an event set at that moment).
- The sequencer hears ``worker_down(slot)`` before ``worker_up(slot)`` of the respawned
  process, so a dead worker's exclusive queues are dropped before the new one starts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from shardmq.auth.seed import seed
from shardmq.broker.broker import Broker
from shardmq.broker.defsync import WorkerLogSync, publish_log
from shardmq.broker.durable import DefinitionsKeeper
from shardmq.broker.sequencer import Sequencer, WorkerMeta
from shardmq.broker.shards import ShardRouter
from shardmq.ipc.counts import SharedCounts, counts_name
from shardmq.store.commit import ThreadCommitter
from shardmq.store.definitions import DefinitionsStore

if TYPE_CHECKING:
    from workers.supervisor import Supervisor
    from workers.worker import Worker

log = logging.getLogger("shardmq.wiring")

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode


def wire_worker(worker: Worker, broker: Broker, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """Connect ``broker`` (slot ``worker.slot`` of ``worker.n``) to the mesh and the
    sequencer. Returns an event set once the definitions snapshot is applied."""
    synced = asyncio.Event()
    mesh = worker.mesh
    assert mesh is not None, "several workers need the mesh"
    router = ShardRouter(broker, mesh, loop.call_soon)
    mesh.on_records = router.on_records
    mesh.on_writable = router.on_writable
    mesh.on_peer_restart = router.shard_down

    def send(message: list[Any]) -> None:
        worker.send_message(_encode(message))

    # connections per vhost / user, published for the other workers (limits)
    broker.counts.attach(SharedCounts.attach(counts_name(mesh.instance)), mesh.control.is_ready)
    meta = WorkerMeta(broker.metadata, send)
    meta.on_ready = synced.set

    def drain_rings() -> None:
        for _ in range(16):  # bounded: a ring written to without pause cannot hold it up
            if not mesh.poll():
                break

    meta.before_ask = drain_rings
    broker.join_workers(router, meta)
    storage = broker.storage
    if storage is not None and mesh.control is not None:
        # the supervisor's definitions log is synced before any commit round of this
        # worker's stores that could confirm something depending on a declaration
        log_sync = WorkerLogSync(mesh.control, storage.data_dir, storage.committer)
        storage.before_flush = log_sync.queue_sync
        broker.definitions_sync = log_sync.sync_now

    def on_message(payload: bytes) -> None:
        meta.on_message(_decode(payload))

    worker.on_message = on_message
    return synced


def wire_supervisor(sup: Supervisor) -> Sequencer:
    """Run the metadata sequencer in the supervisor ``sup`` (called before any spawn)."""

    def send(slot: int, message: list[Any]) -> None:
        sup.send_to_worker(slot, _encode(message))

    seq = Sequencer(sup.config.vhosts or ["/"], sup.n, send)
    # durable definitions: loaded into the replica before any worker starts (each gets
    # them in its snapshot and recovers its own queues' messages), saved on change
    keeper = DefinitionsKeeper(seq.metadata, DefinitionsStore(sup.config.server.data_dir))
    n = keeper.load()
    if n:
        log.info("restored %d durable definition(s)", n)
    seq.keeper = keeper
    if seed(seq.metadata, sup.config, keeper):  # users from the config on a fresh data dir
        log.info("users seeded from the config (no users stored)")
    control = sup.mesh.control if sup.mesh is not None else None
    if control is not None:
        # -ok once a change is written; the log's fdatasync is batched on a thread of
        # the supervisor, or done first by a worker whose commit round needs it
        loop = asyncio.get_running_loop()
        keeper.sync_through(ThreadCommitter.from_settings(sup.config.store, loop), loop)
        publish_log(keeper, control)

    def on_worker_message(slot: int, payload: bytes) -> None:
        seq.on_message(slot, _decode(payload))

    sup.on_worker_message = on_worker_message
    sup.on_worker_up = seq.worker_up
    sup.on_worker_down = seq.worker_down
    return seq
