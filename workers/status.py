"""Live status of a running broker, for ``shardmq ctl status``: both of its sources and
the one way to read them.

Owns:
- the status sockets: ``StatusWriter`` (each worker, and the one-process broker,
  listens on ``data_dir/status/worker-<slot>.sock`` and answers every connection with
  a report made at that moment: its pid, connections (and of them AMQP 1.0 ones with
  their sessions and links), and the queues it owns with
  RabbitMQ's counts ``messages`` = ``messages_ready`` + ``messages_unacknowledged``,
  ``consumers``, a durable queue's store detail and its message counters, and the
  worker's own counters and gauges, ``workers.live_stats``, and the publish_in/out
  counts of the exchanges its clients published to) and ``read_reports``,
  which asks every worker at once;
- the workers' shared-memory control block, read-only (``read_workers``: pid,
  incarnation, readiness, heartbeat, connections and hand-offs per slot; N>1 only);
- ``read_broker_status(data_dir)``, which reads both (the one reading path of ``ctl
  status``), and its two renderings, ``as_table`` and ``as_json``;
- ``running_brokers`` and ``not_found_message``: where the brokers running on this
  machine keep their data (their command lines), for the error of a ctl that found none.

Invariants: a report is made when asked, so ``ctl status`` shows the state at the
moment it runs (a connection closed before it ran is not counted); nothing is written
periodically and nothing costs anything per message (a report walks the worker's
queues and its unacked deliveries once, and reads counters the message path bumps). A worker's socket is removed when it stops
cleanly; a socket left by a process that died refuses connections and is ignored, and
a worker that does not answer within ``REQUEST_TIMEOUT`` is listed as not answering.
Reading writes nothing and never attaches to the control block of a dead supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import msgspec
import posix_ipc

from shardmq.broker.queue import DurableQueue, Queue
from shardmq.broker.stats import queue_counters
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
from workers.live_stats import LagProbe, WorkerStats, worker_stats

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

log = logging.getLogger("shardmq.status")

STATUS_DIR = "status"
REQUEST_TIMEOUT = 3.0  # seconds a worker has to answer ctl
SEND_TIMEOUT = 10.0  # seconds a worker spends at most writing one report
# counts shown as columns, so not repeated from a store's stats()
_COLUMNS = frozenset({"messages", "unacked", "consumers", "expired", "dead_lettered", "dropped"})
_SUN_PATH_MAX = 107  # bytes of a unix socket path (sun_path less its NUL)


class QueueStatus(msgspec.Struct, kw_only=True):
    vhost: str
    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    messages: int  # ready + unacknowledged, as RabbitMQ's ``messages``
    messages_ready: int
    messages_unacknowledged: int  # delivered (to consumers or basic.get), not yet acked
    consumers: int
    # messages that left by TTL, were dead-lettered, were dropped by a length limit
    expired: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    policy: str = ""  # the policy that applies ("" none)
    # a durable queue's disk store: ready in memory / on disk only, bytes, segments
    store: dict[str, int] = msgspec.field(default_factory=dict)
    # publish, deliver, ack, ... (``shardmq.broker.stats.queue_counters``)
    message_stats: dict[str, int] = msgspec.field(default_factory=dict)


class ExchangeCount(msgspec.Struct, array_like=True):
    """An exchange this worker's clients published to: RabbitMQ's publish_in and
    publish_out as counted by this worker's replica (``VHost.exchange_counts``)."""

    vhost: str
    name: str
    publish_in: int
    publish_out: int


class WorkerReport(msgspec.Struct, kw_only=True):
    slot: int
    pid: int
    written_at: float  # when the report was made (at the request)
    connections: int
    queues: list[QueueStatus]
    # message counters and process gauges (``workers.live_stats``)
    stats: WorkerStats | None = None
    # AMQP 1.0 among ``connections``: connections, sessions, links (empty: none)
    amqp1: dict[str, int] = msgspec.field(default_factory=dict)
    exchanges: list[ExchangeCount] = msgspec.field(default_factory=list)


def status_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / STATUS_DIR


def socket_path(data_dir: str | os.PathLike[str], slot: int) -> Path:
    return status_dir(data_dir) / f"worker-{slot}.sock"


def _unacked_by_queue(broker: Broker) -> dict[int, int]:
    """Unacked deliveries per queue (by ``id``): this worker's channels' (to consumers
    and basic.get, of any worker's queue) and, of this worker's queues, those held by
    consumers and basic.gets on other workers."""
    counts: dict[int, int] = {}
    for conn in broker.connections:
        for ch in conn.channels.values():
            for entry in ch.unacked.values():
                key = id(entry[1])
                counts[key] = counts.get(key, 0) + 1
    if broker.shards is not None:
        for _proxy, q, _msg in broker.shards.owner.held.values():
            counts[id(q)] = counts.get(id(q), 0) + 1
    return counts


def _amqp1_counts(broker: Broker) -> dict[str, int]:
    conns = sessions = links = 0
    for conn in broker.connections:
        fields = getattr(conn.client, "management_fields", None)
        if fields is None:
            continue
        f = fields()
        conns += 1
        sessions += f["sessions"]
        links += f["links"]
    return {"connections": conns, "sessions": sessions, "links": links} if conns else {}


def report(broker: Broker, probe: LagProbe | None = None) -> WorkerReport:
    unacked = _unacked_by_queue(broker)
    queues: list[QueueStatus] = []
    owned: list[Queue] = []
    for vh in broker.vhosts.values():
        for q in vh.queues.values():
            if not isinstance(q, Queue):
                continue  # owned by another worker, which reports it
            owned.append(q)
            store: dict[str, int] = {}
            if isinstance(q, DurableQueue):
                try:
                    store = {k: int(v) for k, v in q.stats().items() if k not in _COLUMNS}
                except Exception:  # a status page must never take the worker down
                    log.exception("queue stats failed")
            ready = q.message_count
            held = unacked.get(id(q), 0)
            queues.append(
                QueueStatus(
                    vhost=vh.name,
                    name=q.name,
                    durable=q.durable,
                    exclusive=q.exclusive,
                    auto_delete=q.auto_delete,
                    messages=ready + held,
                    messages_ready=ready,
                    messages_unacknowledged=held,
                    consumers=len(q.consumers),
                    policy=q.policy.name if q.policy is not None else "",
                    store=store,
                    message_stats=queue_counters(q),
                    **q.counters(),
                )
            )
    exchanges = [
        ExchangeCount(vh.name, name, n_in, n_out)
        for vh in broker.vhosts.values()
        for name, n_in, n_out in vh.exchange_counts()
    ]
    return WorkerReport(
        slot=broker.slot,
        pid=os.getpid(),
        written_at=time.time(),
        connections=len(broker.connections),
        queues=queues,
        stats=worker_stats(broker, probe, owned),
        amqp1=_amqp1_counts(broker),
        exchanges=exchanges,
    )


@contextlib.contextmanager
def _addressable(path: Path) -> Iterator[str]:
    """``path`` as a unix socket address: itself, or when longer than sun_path allows,
    the same file reached through an O_PATH descriptor of its directory."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class StatusWriter:
    """Writes this process's report to whoever asks: listens on
    ``data_dir/status/worker-<slot>.sock`` from ``start`` to ``stop`` and answers each
    connection with ``report(broker)`` made then, and closes it."""

    def __init__(self, broker: Broker, data_dir: str) -> None:
        self.broker = broker
        self.path = socket_path(data_dir, broker.slot)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._answers: set[asyncio.Task[None]] = set()
        self.probe = LagProbe()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.probe.start(loop)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # left by a process of this slot that died
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with _addressable(self.path) as addr:
                    sock.bind(addr)
                sock.listen(16)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            log.warning("no status for shardmq ctl: cannot listen on %s: %s", self.path, exc)
            return
        self._sock = sock
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._sock is not None and self._loop is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("status socket: %s", exc)
            return
        conn.setblocking(False)
        task = self._loop.create_task(self._answer(conn))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _answer(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            data = msgspec.json.encode(report(self.broker, self.probe))
            await asyncio.wait_for(self._loop.sock_sendall(conn, data), SEND_TIMEOUT)
        except (TimeoutError, OSError):
            pass  # the reader went away or does not read: its loss
        except Exception:  # a status page must never take the worker down
            log.exception("status report failed")
        finally:
            conn.close()

    def stop(self) -> None:
        self.probe.stop()
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        for task in list(self._answers):
            task.cancel()
        with contextlib.suppress(OSError):
            self.path.unlink()


async def _ask(path: Path, timeout: float) -> bytes | bool:
    """The report behind ``path``; False when nobody listens there (a socket left by a
    process that died refuses), True when one accepted but did not answer within
    ``timeout`` (stopped, or its loop stuck)."""
    try:
        with _addressable(path) as addr:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(addr), timeout)
    except (TimeoutError, OSError):
        return False
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except (TimeoutError, OSError):
        return True
    finally:
        writer.close()


async def gather_reports(data_dir: str, timeout: float = REQUEST_TIMEOUT) -> list[WorkerReport]:
    """Every live worker's report, asked now and at once, from a running event loop (the
    management API and the control socket); a worker that does not answer is left out."""
    paths = sorted(status_dir(data_dir).glob("worker-*.sock"), key=_slot_of)
    answers = await asyncio.gather(*(_ask(p, timeout) for p in paths))
    reports: list[WorkerReport] = []
    for answer in answers:
        if isinstance(answer, bool):
            continue
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            reports.append(msgspec.json.decode(answer, type=WorkerReport))
    return reports


class _Answers(NamedTuple):
    reports: list[WorkerReport]
    silent: list[int]  # slots whose socket accepts but that did not answer


def _slot_of(path: Path) -> int:
    try:
        return int(path.stem.rpartition("-")[2])
    except ValueError:
        return -1


def _ask_all(data_dir: str, timeout: float) -> _Answers:
    """Every worker's report, asked at once (not from inside a running event loop)."""
    paths = sorted(status_dir(data_dir).glob("worker-*.sock"), key=_slot_of)
    if not paths:
        return _Answers([], [])

    async def ask_all() -> list[bytes | bool]:
        return await asyncio.gather(*(_ask(p, timeout) for p in paths))

    reports: list[WorkerReport] = []
    silent: list[int] = []
    for path, answer in zip(paths, asyncio.run(ask_all()), strict=True):
        if answer is False:
            continue  # stale
        rep: WorkerReport | None = None
        if not isinstance(answer, bool):
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                rep = msgspec.json.decode(answer, type=WorkerReport)
        if rep is None:
            silent.append(_slot_of(path))
        else:
            reports.append(rep)
    return _Answers(sorted(reports, key=lambda r: r.slot), silent)


def read_reports(data_dir: str, timeout: float = REQUEST_TIMEOUT) -> list[WorkerReport]:
    """The reports of the live workers of the broker on ``data_dir``, made now."""
    return _ask_all(data_dir, timeout).reports


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
    silent: list[int] = msgspec.field(default_factory=list)  # slots that did not answer

    @property
    def found(self) -> bool:
        return bool(self.reports or self.workers or self.silent)


def read_broker_status(data_dir: str, timeout: float = REQUEST_TIMEOUT) -> BrokerStatus:
    """What the broker on ``data_dir`` reports now (``found`` false when none runs). A
    worker's ``connections`` is its report's (current), not its last heartbeat's."""
    workers = read_workers(data_dir)
    answers = _ask_all(data_dir, timeout)
    if workers is not None:
        now = {r.slot: r.connections for r in answers.reports}
        workers = [w._replace(connections=now.get(w.slot, w.connections)) for w in workers]
    return BrokerStatus(workers=workers, reports=answers.reports, silent=answers.silent)


def as_json(status: BrokerStatus) -> str:
    return msgspec.json.encode(
        {
            "workers": [w._asdict() for w in status.workers or []],
            "reports": status.reports,
            "silent": status.silent,
        }
    ).decode()


def _flags(q: QueueStatus) -> str:
    return "".join(
        f for f, on in (("D", q.durable), ("E", q.exclusive), ("A", q.auto_delete)) if on
    )


def as_table(status: BrokerStatus) -> str:
    """Human-readable: one block per worker, then its queues (RabbitMQ's column names)."""
    lines: list[str] = []
    reports = status.reports
    by_slot = {w.slot: w for w in status.workers or []}
    for rep in reports:
        w = by_slot.get(rep.slot)
        extra = ""
        if w is not None:
            extra = f" incarnation {w.incarnation} {'ready' if w.ready else 'NOT READY'}"
        a1 = rep.amqp1
        if a1:
            extra += (
                f", {rep.connections} connection(s) ({a1['connections']} AMQP 1.0: "
                f"{a1['sessions']} session(s), {a1['links']} link(s))"
            )
        else:
            extra += f", {rep.connections} connection(s)"
        lines.append(f"worker {rep.slot}: pid {rep.pid}{extra}, {len(rep.queues)} queue(s)")
        for q in sorted(rep.queues, key=lambda q: (q.vhost, q.name)):
            store = " ".join(f"{k}={v}" for k, v in sorted(q.store.items()))
            gone = " ".join(
                f"{k}={getattr(q, k)}"
                for k in ("expired", "dead_lettered", "dropped")
                if getattr(q, k)
            )
            if q.policy:
                gone = f"policy={q.policy} {gone}".rstrip()
            if gone:
                store = f"{gone} {store}".rstrip()
            lines.append(
                f"  {q.vhost:<8} {q.name:<40} {_flags(q):<3} messages={q.messages} "
                f"messages_ready={q.messages_ready} "
                f"messages_unacknowledged={q.messages_unacknowledged} "
                f"consumers={q.consumers}{(' ' + store) if store else ''}"
            )
    answered = {r.slot for r in reports}
    for slot in sorted(set(by_slot) | set(status.silent)):
        if slot in answered:
            continue
        w = by_slot.get(slot)
        pid = f"pid {w.pid} " if w is not None else ""
        why = "not answering" if slot in status.silent else "no report yet"
        lines.append(f"worker {slot}: {pid}({why})")
    return "\n".join(lines)


# ---------------------------------------------------------------------- not found
class RunningBroker(NamedTuple):
    pid: int
    data_dir: str  # absolute when it could be resolved
    args: str  # its command line


def _serve_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``shardmq serve`` / ``-m workers.supervisor`` in ``argv``, or
    None when it is not a broker's command line."""
    for i, arg in enumerate(argv):
        base = os.path.basename(arg)
        if base == "workers.supervisor":
            return argv[i + 1 :]
        if base == "shardmq" and argv[i + 1 : i + 2] == ["serve"]:
            return argv[i + 2 :]
    return None


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def running_brokers(proc: str = "/proc") -> list[RunningBroker]:
    """The brokers running on this machine (``shardmq serve`` or ``python -m
    workers.supervisor`` command lines) and the data dir each was given: ``--data-dir``,
    else its ``--config`` file's, else the default, relative to its working directory."""
    from shardmq.config import ConfigError, load_config

    found: list[RunningBroker] = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(os.path.join(entry.path, "cmdline"), "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        args = _serve_args(argv)
        if args is None:
            continue
        try:
            cwd = os.readlink(os.path.join(entry.path, "cwd"))
        except OSError:
            cwd = ""
        data_dir = _option(args, "--data-dir")
        if data_dir is None:
            config = _option(args, "--config")
            try:
                path = os.path.join(cwd, config) if config and cwd else config
                data_dir = load_config(path).server.data_dir
            except (ConfigError, OSError):
                data_dir = f"(the data_dir of {config})"
        if cwd and not data_dir.startswith("("):
            data_dir = os.path.normpath(os.path.join(cwd, data_dir))
        found.append(RunningBroker(int(entry.name), data_dir, shlex.join(argv)))
    return sorted(found)


def not_found_message(data_dir: str, brokers: list[RunningBroker] | None = None) -> str:
    """One line: no broker answers on ``data_dir``, and where the running ones are."""
    if brokers is None:
        brokers = running_brokers()
    where = os.path.abspath(data_dir)
    if brokers:
        dirs = sorted({b.data_dir for b in brokers if b.data_dir != where})
        pids = ", ".join(str(b.pid) for b in brokers)
        if dirs:
            return (
                f"no running broker found on data dir {where}; the running broker(s) "
                f"(pid {pids}) use --data-dir {' or '.join(dirs)}: pass that as --data-dir"
            )
        return (
            f"no broker answers on data dir {where} although pid {pids} serves it "
            "(still starting, or run ctl as the user the broker runs as)"
        )
    return (
        f"no running broker found on data dir {where} and no shardmq serve process on "
        "this machine; pass the --data-dir of the running broker (its command line: "
        "pgrep -af 'shardmq serve', or ExecStart in: systemctl cat shardmq)"
    )
