"""One broker process's life, written once for both paths: the one-process broker
(``--workers 1``, ``workers.supervisor.run``) and every worker of N (``workers.worker``).

Owns, each step once:
- ``setup_logging`` / ``set_log_level``: stderr, one format (text, or JSON with
  ``server.log_format = "json"``; a worker tags its lines with its slot), the level a
  SIGHUP reload changes;
- ``run_loop``: the event loop a process runs on (uvloop);
- ``stop_on_signals``: SIGTERM and SIGINT set the process's ``stop`` event;
- ``MemoryWatch`` (with ``rss_bytes`` and ``memory_limit``): the broker-wide memory
  alarm, every ``MEMORY_CHECK_INTERVAL`` seconds: each worker publishes its RSS in the
  control block and compares the sum over the ready workers (the broker's RSS, less
  the supervisor's) with the one broker budget, ``server.memory_high_watermark`` of
  physical memory or ``server.memory_high_watermark_absolute``; any worker's growth
  thus blocks publishers on every worker within one interval;
- ``serve_broker``: the order of a broker's life around ``shardmq.net.server.serve``
  (the listener and the connections): definitions and durable queues recovered and the
  disk alarm started (``Broker.load_definitions``, ``Broker.start_storage``), the status
  socket (``workers.status.StatusWriter``), the ops socket (``workers.worker_ops``) and
  the memory alarm started, then serve until ``stop``; after the connections are closed,
  the ops and status sockets and memory alarm stopped and the stores flushed and closed
  (``Broker.close_storage``).

What differs between the two paths stays with them: the supervisor of one process tells
systemd it is ready; a worker attaches to the mesh, waits for the definitions snapshot,
reports ready on its channel, beats its heartbeat and handles SIGHUP.

Invariants:
- A client never finds the broker listening before every durable queue is recovered.
- The stores are closed (last flush and fsync) only after every connection is closed
  or aborted, so no delivery is written after its queue's store closed; a clean stop
  removes the worker's status socket.
- SIGTERM and SIGINT are handled from before recovery on: a stop asked during start-up
  is a clean stop (exit 0), never a kill.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from shardmq.ipc.control import F_RSS, ControlBlock

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.config import Config
    from shardmq.net.tls import TLSServer

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
T = TypeVar("T")

log = logging.getLogger("shardmq.lifecycle")

MEMORY_CHECK_INTERVAL = 0.5  # seconds between two RSS checks


# ---------------------------------------------------------------------- logging, loop
def setup_logging(level: str, tag: str = "", fmt: str = "text") -> None:
    """Log to stderr at ``level``; ``tag`` (a worker's ``w<slot>``) prefixes the name;
    ``fmt`` "json": one JSON object per line (``shardmq.oplog``)."""
    from shardmq.oplog import formatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, tag))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def set_log_level(level: str) -> None:
    """A reload's new ``server.log_level``."""
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a new event loop (uvloop) and close the loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(main)
    return uvloop.run(main)


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (a clean stop: connections closed, exit 0)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass


# ---------------------------------------------------------------------- memory alarm
def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_limit(fraction: float, absolute: int = 0) -> int:
    """The broker's memory budget in bytes: ``absolute`` when set (the server's
    ``memory_high_watermark_absolute``), else ``fraction`` of the physical memory (0
    where unknown: no alarm)."""
    if absolute:
        return absolute
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
    return int(total * fraction)


def worker_control(broker: Broker) -> ControlBlock | None:
    """The control block of a worker of N (None with one worker)."""
    from shardmq.ipc.mesh import Mesh

    link = broker.shards.link if broker.shards is not None else None
    return link.control if isinstance(link, Mesh) else None


class MemoryWatch:
    """Sets the broker's memory alarm while the broker's RSS (every ready worker's,
    summed through the control block; this process's alone with one worker) is above
    ``limit`` bytes, and clears it once back under; checks every
    ``MEMORY_CHECK_INTERVAL`` seconds from ``start`` to ``stop``."""

    def __init__(
        self,
        broker: Broker,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        control: ControlBlock | None = None,
    ) -> None:
        self.broker = broker
        self.loop = loop
        self.limit = limit
        self.control = control  # several workers: where the others' RSS is
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.check()

    def total(self, rss: int) -> int:
        """The broker's RSS given this process's: the ready workers' sum."""
        ctl = self.control
        if ctl is None:
            return rss
        slot = self.broker.slot
        ctl.put(slot, F_RSS, rss)
        return ctl.total(F_RSS) + (0 if ctl.is_ready(slot) else rss)

    def check(self) -> None:
        rss = rss_bytes()
        limit = self.limit
        if rss and limit:
            total = self.total(rss)
            on = total > limit
            if on != self.broker.memory_alarm:
                log.warning(
                    "memory alarm %s: broker RSS %d MiB (this worker %d MiB), limit %d MiB",
                    "set" if on else "cleared",
                    total >> 20,
                    rss >> 20,
                    limit >> 20,
                )
                self.broker.set_memory_alarm(on)
        self._handle = self.loop.call_later(MEMORY_CHECK_INTERVAL, self.check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


# ---------------------------------------------------------------------- the broker's life
def unreachable_listener() -> socket.socket:
    """A listener nobody can reach (an autobound abstract Unix socket), for a process
    whose plain AMQP listener is off or whose clients are handed off."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("")
    sock.listen(1)
    sock.setblocking(False)
    return sock


async def serve_broker(
    config: Config,
    broker: Broker,
    *,
    sock: socket.socket | None = None,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    wrap_factory: Callable[[ProtocolFactory], ProtocolFactory] | None = None,
    admin: bool = False,
    tls: TLSServer | None = None,
    tls_sock: socket.socket | None = None,
) -> None:
    """Recover ``broker``'s storage, serve AMQP on ``sock`` (or ``server.host:port``)
    until SIGTERM/SIGINT or ``stop``, then close the connections and the storage.

    ``ready(addresses)`` is called once the listener accepts; ``wrap_factory`` receives
    the protocol factory and returns the one the listener uses (a worker keeps it to
    serve handed-off sockets and to count connections). ``admin``: this process orders
    metadata changes (one worker), so it serves the control socket (``workers.admin``).
    ``tls`` and ``tls_sock``: the AMQPS listener (``shardmq.net.tls``), served beside
    ``sock``."""
    from shardmq.broker.broker import LocalSequencer
    from shardmq.net.server import serve
    from workers.status import StatusWriter
    from workers.worker_ops import OpsServer

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    stop_on_signals(loop, stop)
    mgmt = prom = None
    if admin and isinstance(broker.sequencer, LocalSequencer):
        from workers.mgmt_http import management_server
        from workers.prometheus_http import prometheus_server

        # claimed before recovery: a port in use is a start-up error, nothing served
        prom = prometheus_server(config, supervisor=False)
        mgmt = management_server(config, prom)
    # Recover before listening: a client must find every durable queue with its messages.
    broker.load_definitions()
    broker.start_storage()
    status = StatusWriter(broker, config.server.data_dir)
    server = config.server
    limit = memory_limit(server.memory_high_watermark, server.memory_limit_absolute)
    memory = MemoryWatch(broker, loop, limit, worker_control(broker))
    status.start(loop)
    memory.start()
    # systemd's STATUS= line: a worker of N publishes its queued messages for the
    # supervisor; the one-process broker sends the line itself (workers.statusline)
    from workers.statusline import INTERVAL, StatusLine, WorkerTotals, queued_messages

    totals: WorkerTotals | StatusLine
    if worker_control(broker) is not None:
        totals = WorkerTotals(broker, loop)
        totals.start()
    else:
        totals = StatusLine(loop, lambda: (1, len(broker.connections), queued_messages(broker)))
        totals.start(delay=INTERVAL)
    control = None
    ops = OpsServer(broker, config.server.data_dir)
    from workers.amqp1_links import install as amqp1_links

    amqp1_links(broker, config.server.data_dir)  # AMQP 1.0 link recovery across workers
    try:
        await ops.start()
        if admin and isinstance(broker.sequencer, LocalSequencer):
            from workers.admin import AdminServer

            control = AdminServer(config.server.data_dir, broker.sequencer)
            await control.start()
            if mgmt is not None:
                await mgmt.start(broker.sequencer)
            if prom is not None:
                await prom.start()
        await serve(
            config,
            broker,
            sock=sock,
            ready=ready,
            stop=stop,
            wrap_factory=wrap_factory,
            tls=tls,
            tls_sock=tls_sock,
        )
    finally:
        if prom is not None:
            await prom.stop()
        if mgmt is not None:
            await mgmt.stop()
        if control is not None:
            await control.stop()
        await ops.stop()
        memory.stop()
        status.stop()
        totals.stop()
    await broker.close_storage()
    log.info("shardmq stopped")
