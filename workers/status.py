"""Live status of a running broker, for ``shardmq ctl status``: both of its sources and
the one way to read them.

Owns:
- the status files: ``StatusWriter`` (each worker, and the one-process broker, rewrites
  ``data_dir/status/worker-<slot>.json`` every ``interval`` seconds: its pid,
  connections, and the queues it owns with their counts) and ``read_reports``;
- the workers' shared-memory control block, read-only (``read_workers``: pid,
  incarnation, readiness, heartbeat, connections and hand-offs per slot; N>1 only);
- ``read_broker_status(data_dir)``, which reads both (the one reading path of ``ctl
  status``), and its two renderings, ``as_table`` and ``as_json``.

Invariants: a status file is replaced atomically (write to a temporary name, then
rename), so a reader sees a whole snapshot or the previous one; a worker's file is
removed when it stops cleanly, and a file whose process is gone is ignored. Writing
costs one pass over the worker's own queues per interval, never anything per message.
Reading writes nothing and never attaches to the control block of a dead supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

import msgspec
import posix_ipc

from shardmq.broker.broker import Broker
from shardmq.broker.queue import Queue
from shardmq.ipc.control import (
    F_ACCEPTED,
    F_CONNS,
    F_GEN,
    F_HEARTBEAT,
    F_PID,
    ControlBlock,
    control_name,
)
from shardmq.ipc.mesh import INSTANCE_FILE, _read_instance_file

log = logging.getLogger("shardmq.status")

STATUS_DIR = "status"


class QueueStatus(msgspec.Struct, kw_only=True):
    vhost: str
    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    messages: int  # ready
    consumers: int
    # durable queues: what the disk store reports (messages on disk, in memory, ...)
    store: dict[str, int] = msgspec.field(default_factory=dict)


class WorkerReport(msgspec.Struct, kw_only=True):
    slot: int
    pid: int
    written_at: float
    connections: int
    queues: list[QueueStatus]


def status_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / STATUS_DIR


def report(broker: Broker) -> WorkerReport:
    queues: list[QueueStatus] = []
    for vh in broker.vhosts.values():
        for q in vh.queues.values():
            if not isinstance(q, Queue):
                continue  # owned by another worker, which reports it
            stats = getattr(q, "stats", None)
            store: dict[str, int] = {}
            if callable(stats):
                try:
                    store = {k: int(v) for k, v in stats().items()}
                except Exception:  # a status page must never take the worker down
                    log.exception("queue stats failed")
            queues.append(
                QueueStatus(
                    vhost=vh.name,
                    name=q.name,
                    durable=q.durable,
                    exclusive=q.exclusive,
                    auto_delete=q.auto_delete,
                    messages=q.message_count,
                    consumers=len(q.consumers),
                    store=store,
                )
            )
    return WorkerReport(
        slot=broker.slot,
        pid=os.getpid(),
        written_at=time.time(),
        connections=len(broker.connections),
        queues=queues,
    )


class StatusWriter:
    def __init__(self, broker: Broker, data_dir: str, interval: float = 1.0) -> None:
        self.broker = broker
        self.dir = status_dir(data_dir)
        self.path = self.dir / f"worker-{broker.slot}.json"
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.dir.mkdir(parents=True, exist_ok=True)
        self._tick()

    def write(self) -> None:
        data = msgspec.json.encode(report(self.broker))
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)

    def _tick(self) -> None:
        self.write()
        assert self._loop is not None
        self._handle = self._loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        try:
            self.path.unlink()
        except OSError:
            pass


def read_reports(data_dir: str) -> list[WorkerReport]:
    """The reports of the workers of the broker on ``data_dir`` whose process lives."""
    out: list[WorkerReport] = []
    d = status_dir(data_dir)
    if not d.is_dir():
        return out
    for path in sorted(d.glob("worker-*.json")):
        try:
            rep = msgspec.json.decode(path.read_bytes(), type=WorkerReport)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            continue
        try:
            os.kill(rep.pid, 0)
        except ProcessLookupError:
            continue  # left by a process that died
        except PermissionError:
            pass
        out.append(rep)
    return sorted(out, key=lambda r: r.slot)


# ---------------------------------------------------------------------- control block
class WorkerStatus(NamedTuple):
    slot: int
    pid: int
    incarnation: int  # 1 for the first process of the slot, +1 per respawn
    ready: bool
    heartbeat: int
    connections: int  # as of the worker's last heartbeat
    handed_off: int  # sockets received from the hand-off acceptor


def read_workers(data_dir: str) -> list[WorkerStatus] | None:
    """Workers of the broker running on ``data_dir``, or None when there is none (none
    started, its supervisor died, or it runs a single process, which uses no shared
    memory)."""
    found = _read_instance_file(os.path.join(data_dir, INSTANCE_FILE))
    if found is None:
        return None
    try:
        os.kill(found[1], 0)
    except ProcessLookupError:
        return None  # left by a supervisor that died: stale
    except PermissionError:
        pass
    try:
        ctl = ControlBlock.attach(control_name(found[0]))
    except (posix_ipc.ExistentialError, ValueError, OSError):
        return None
    try:
        return [
            WorkerStatus(
                slot=s,
                pid=ctl.get(s, F_PID),
                incarnation=ctl.get(s, F_GEN),
                ready=ctl.is_ready(s),
                heartbeat=ctl.get(s, F_HEARTBEAT),
                connections=ctl.get(s, F_CONNS),
                handed_off=ctl.get(s, F_ACCEPTED),
            )
            for s in range(ctl.n)
        ]
    finally:
        ctl.close()


# ---------------------------------------------------------------------- both
class BrokerStatus(msgspec.Struct, kw_only=True):
    workers: list[WorkerStatus] | None  # None: no supervisor (none, or --workers 1)
    reports: list[WorkerReport]

    @property
    def found(self) -> bool:
        return bool(self.reports or self.workers)


def read_broker_status(data_dir: str) -> BrokerStatus:
    """What the broker on ``data_dir`` reports (``found`` false when none runs)."""
    return BrokerStatus(workers=read_workers(data_dir), reports=read_reports(data_dir))


def as_json(status: BrokerStatus) -> str:
    return msgspec.json.encode(
        {"workers": [w._asdict() for w in status.workers or []], "reports": status.reports}
    ).decode()


def as_table(status: BrokerStatus) -> str:
    """Human-readable: one block per worker, then its queues."""
    lines: list[str] = []
    reports = status.reports
    by_slot = {w.slot: w for w in status.workers or []}
    for rep in reports:
        w = by_slot.get(rep.slot)
        extra = ""
        if w is not None:
            extra = f" incarnation {w.incarnation} {'ready' if w.ready else 'NOT READY'}"
        lines.append(
            f"worker {rep.slot}: pid {rep.pid}{extra}, {rep.connections} connection(s), "
            f"{len(rep.queues)} queue(s)"
        )
        for q in sorted(rep.queues, key=lambda q: (q.vhost, q.name)):
            flags = "".join(
                f for f, on in (("D", q.durable), ("E", q.exclusive), ("A", q.auto_delete)) if on
            )
            store = " ".join(f"{k}={v}" for k, v in sorted(q.store.items()))
            lines.append(
                f"  {q.vhost:<8} {q.name:<40} {flags:<3} ready={q.messages} "
                f"consumers={q.consumers}{(' ' + store) if store else ''}"
            )
    for slot, w in sorted(by_slot.items()):
        if slot not in {r.slot for r in reports}:
            lines.append(f"worker {slot}: pid {w.pid} (no report yet)")
    return "\n".join(lines)
