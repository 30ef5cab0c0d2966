"""In-process cluster: N brokers, a sequencer and fake rings, pumped deterministically.

Every record and control message is queued and delivered by ``pump`` in FIFO order per
(source, target) pair, as the real rings and control sockets do, so the cross-shard
protocol is tested without processes or shared memory.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from shardmq.broker.broker import Broker
from shardmq.broker.metadata import shard_for
from shardmq.broker.sequencer import Sequencer, WorkerMeta
from shardmq.broker.shards import ShardRouter
from shardmq.config import load_config
from tests.broker.harness import Client, connect


class FakeLink:
    """One worker's rings. A batch record (``open_batch``) stays open until anything else
    is sent to its target or ``pump`` takes it, as the mesh closes it at its flush."""

    def __init__(self, cluster: Cluster, slot: int) -> None:
        self.cluster = cluster
        self.slot = slot
        self.open: dict[int, tuple[object, bytearray]] = {}
        self.batch_limit = 32 * 1024

    def send(self, target: int, record: bytes) -> None:
        self.open.pop(target, None)
        self.cluster.records.append((self.slot, target, bytes(record)))

    def batch(self, target: int, key: object) -> bytearray | None:
        entry = self.open.get(target)
        if entry is None or entry[0] != key or len(entry[1]) >= self.batch_limit:
            return None
        return entry[1]

    def open_batch(self, target: int, key: object, head: bytes) -> bytearray:
        buf = bytearray(head)
        self.open[target] = (key, buf)
        self.cluster.records.append((self.slot, target, buf))  # type: ignore[arg-type]
        return buf

    def take(self, target: int, record: bytes | bytearray) -> bytes:
        """``record`` leaves for ``target``: an open batch closes."""
        entry = self.open.get(target)
        if entry is not None and entry[1] is record:
            del self.open[target]
        return bytes(record)

    def send_control(self, target: int, record: bytes) -> None:
        # the control lane: delivered before any bulk record still queued (as the mesh
        # reads a worker's control ring first), so credit can overtake its consume
        self.cluster.urgent.append((self.slot, target, bytes(record)))

    def is_blocked(self, target: int) -> bool:
        return False


class Cluster:
    def __init__(self, n: int = 3) -> None:
        self.n = n
        config = load_config()
        self.records: deque[tuple[int, int, bytes]] = deque()
        self.urgent: deque[tuple[int, int, bytes]] = deque()
        self.control: deque[tuple[str, int, list[Any]]] = deque()
        self.sequencer = Sequencer(["/"], n, lambda slot, m: self.control.append(("w", slot, m)))
        self.brokers: list[Broker] = []
        self.clients: list[Client] = []
        for slot in range(n):
            b = Broker(config, slot=slot, workers=n)
            b.shards = ShardRouter(b, FakeLink(self, slot))
            b.sequencer = WorkerMeta(
                b.metadata, lambda m, slot=slot: self.control.append(("s", slot, m))
            )
            self.brokers.append(b)
        for slot in range(n):
            self.sequencer.worker_up(slot)
        self.pump()

    def connect(self, slot: int) -> Client:
        client = connect(self.brokers[slot])
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
            while self.urgent or self.records:
                moved = True
                lane = self.urgent or self.records
                src, target, rec = lane.popleft()
                rec = self.brokers[src].shards.link.take(target, rec)  # type: ignore[attr-defined]
                self.brokers[target].shards.on_records(src, [rec])
            for c in self.clients:
                before = len(c.methods) + len(c.deliveries)
                c.pump()
                if len(c.methods) + len(c.deliveries) != before:
                    moved = True
            if not moved and not any(b.shards._settles for b in self.brokers):
                return
        raise AssertionError("cluster did not settle")

    def kill(self, slot: int) -> None:
        """Worker ``slot`` dies: the others learn it, the sequencer forgets it, and a
        fresh broker takes the slot (as the supervisor respawns it)."""
        self.records = deque(r for r in self.records if slot not in (r[0], r[1]))
        self.urgent = deque(r for r in self.urgent if slot not in (r[0], r[1]))
        self.clients = [c for c in self.clients if c.conn.broker is not self.brokers[slot]]
        for b in self.brokers:
            if b.slot != slot:
                b.shards.shard_down(slot)
        self.sequencer.worker_down(slot)
        config = load_config()
        b = Broker(config, slot=slot, workers=self.n)
        b.shards = ShardRouter(b, FakeLink(self, slot))
        b.sequencer = WorkerMeta(b.metadata, lambda m: self.control.append(("s", slot, m)))
        self.brokers[slot] = b
        self.sequencer.worker_up(slot)
        self.pump()
