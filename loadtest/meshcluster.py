"""In-process cluster: N brokers, a sequencer and fake rings, pumped deterministically.

Owns: ``Cluster`` (fake links) and ``MeshCluster`` (real shared-memory rings), used by the
test suite (tests/broker/) and by ``python -m loadtest.xshard_cost``; importable from
the package so the load tools need nothing from tests/.

Every record and control message is queued and delivered by ``pump`` in FIFO order per
(source, target) pair, as the real rings and control sockets do, so the cross-shard
protocol is tested without processes or shared memory.
"""

from __future__ import annotations

import tempfile
from collections import deque
from typing import Any

from loadtest.inproc import Client, connect
from shardmq.auth.seed import seed
from shardmq.broker.broker import Broker
from shardmq.broker.metadata import shard_for
from shardmq.broker.sequencer import Sequencer, WorkerMeta
from shardmq.broker.shards import ShardRouter
from shardmq.config import load_config
from shardmq.ipc.mesh import Mesh, MeshHost


class FakeLink:
    """One worker's rings. Batch records (``open_batch``) stay open until anything else
    is sent to their target or ``pump`` takes them, as the mesh closes them at its
    flush; several may be open per target, under different keys."""

    def __init__(self, cluster: Cluster, slot: int, incarnation: int = 1) -> None:
        self.cluster = cluster
        self.slot = slot
        self.incarnation = incarnation
        self.open: dict[int, dict[object, tuple[bytearray, object]]] = {}
        self.batch_limit = 32 * 1024
        self.blocked_set: set[int] = set()

    def send(self, target: int, record: bytes) -> None:
        self.open.pop(target, None)
        self.cluster.records.append((self.slot, target, bytes(record)))

    def batch(self, target: int, key: object, match: object = None) -> bytearray | None:
        opened = self.open.get(target, {})
        entry = opened.get(key)
        if entry is None:
            return None
        if entry[1] != match or len(entry[0]) >= self.batch_limit:
            del opened[key]
            return None
        return entry[0]

    def open_batch(self, target: int, key: object, head: bytes, match: object = None) -> bytearray:
        buf = bytearray(head)
        self.open.setdefault(target, {})[key] = (buf, match)
        self.cluster.records.append((self.slot, target, buf))  # type: ignore[arg-type]
        return buf

    def take(self, target: int, record: bytes | bytearray) -> bytes:
        """``record`` leaves for ``target``: the batches open for it close."""
        if isinstance(record, bytearray):
            self.open.pop(target, None)
        return bytes(record)

    def send_control(self, target: int, record: bytes) -> None:
        # the control lane: delivered before any bulk record still queued (as the mesh
        # reads a worker's control ring first), so credit can overtake its consume
        self.cluster.urgent.append((self.slot, target, bytes(record)))

    def is_blocked(self, target: int) -> bool:
        return False


class Cluster:
    def _link(self, slot: int) -> Any:
        return FakeLink(self, slot)

    def __init__(self, n: int = 3) -> None:
        self.n = n
        config = load_config()
        self.records: deque[tuple[int, int, bytes]] = deque()
        self.urgent: deque[tuple[int, int, bytes]] = deque()
        self.control: deque[tuple[str, int, list[Any]]] = deque()
        self.sequencer = Sequencer(["/"], n, lambda slot, m: self.control.append(("w", slot, m)))
        seed(self.sequencer.metadata, config)  # as workers.wiring does in the supervisor
        self.brokers: list[Broker] = []
        self.clients: list[Client] = []
        for slot in range(n):
            b = Broker(config, slot=slot, workers=n)
            b.join_workers(
                ShardRouter(b, self._link(slot)),
                WorkerMeta(b.metadata, lambda m, slot=slot: self.control.append(("s", slot, m))),
            )
            self.brokers.append(b)
        for slot in range(n):
            self.sequencer.worker_up(slot)
        self.pump()

    def connect(self, slot: int, frame_max: int = 131072) -> Client:
        client = connect(self.brokers[slot], frame_max=frame_max)
        self.clients.append(client)
        return client

    def queue_on(self, slot: int, prefix: str = "q") -> str:
        """A queue name that hashes to worker ``slot``."""
        i = 0
        while shard_for("/", f"{prefix}{i}", self.n) != slot:
            i += 1
        return f"{prefix}{i}"

    def pump(self) -> None:
        for _ in range(10000):
            moved = False
            for b in self.brokers:
                b.shards.flush()
            while self.control:
                moved = True
                where, slot, msg = self.control.popleft()
                if where == "w":
                    self.brokers[slot].sequencer.on_message(msg)
                else:
                    self.sequencer.on_message(slot, msg)
            if self._move_records():
                moved = True
            for c in self.clients:
                before = len(c.methods) + len(c.deliveries)
                c.pump()
                if len(c.methods) + len(c.deliveries) != before:
                    moved = True
            if not moved and not any(b.shards.user._settles for b in self.brokers):
                return
        raise AssertionError("cluster did not settle")

    def _move_records(self) -> bool:
        moved = False
        while self.urgent or self.records:
            moved = True
            lane = self.urgent or self.records
            src, target, rec = lane.popleft()
            rec = self.brokers[src].shards.link.take(target, rec)
            self.brokers[target].shards.on_records(src, [rec])
        return moved

    def kill(self, slot: int) -> None:
        """Worker ``slot`` dies: the others learn it, the sequencer forgets it, and a
        fresh broker takes the slot (as the supervisor respawns it)."""
        self.records = deque(r for r in self.records if slot not in (r[0], r[1]))
        self.urgent = deque(r for r in self.urgent if slot not in (r[0], r[1]))
        self.clients = [c for c in self.clients if c.domain.broker is not self.brokers[slot]]
        for b in self.brokers:
            if b.slot != slot:
                b.shards.shard_down(slot)
        self.sequencer.worker_down(slot)
        config = load_config()
        b = Broker(config, slot=slot, workers=self.n)
        incarnation = self.brokers[slot].shards.link.incarnation + 1  # as the supervisor
        b.join_workers(
            ShardRouter(b, FakeLink(self, slot, incarnation)),
            WorkerMeta(b.metadata, lambda m: self.control.append(("s", slot, m))),
        )
        self.brokers[slot] = b
        self.sequencer.worker_up(slot)
        self.pump()


class MeshCluster(Cluster):
    """A ``Cluster`` whose workers talk through the real mesh: shared-memory rings,
    batch records, flushes and reads, driven by ``pump`` instead of an event loop (no
    doorbell ever sleeps). For measuring what a cross-worker message costs
    (``loadtest/xshard_cost.py``); ``close`` removes the shared memory."""

    def __init__(self, n: int = 3, ring_capacity: int = 1 << 20) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="shardmq-meshcluster-")
        self.host = MeshHost(self._dir.name, n, ring_capacity)
        self.meshes = [Mesh.from_spec(self.host.spec(), slot) for slot in range(n)]
        super().__init__(n)

    def _link(self, slot: int) -> Any:
        return self.meshes[slot]

    def _move_records(self) -> bool:
        for b, mesh in zip(self.brokers, self.meshes, strict=True):
            mesh.on_records = b.shards.on_records
            mesh.on_writable = b.shards.on_writable
            mesh.flush()
        return sum(mesh.poll() for mesh in self.meshes) > 0

    def kill(self, slot: int) -> None:
        raise NotImplementedError("MeshCluster measures; Cluster tests failures")

    def close(self) -> None:
        for mesh in self.meshes:
            mesh.close()
        self.host.close()
        self._dir.cleanup()
