"""Worker process entry point: ``python -m workers.worker --slot N ...`` (spawned by the
supervisor; a fresh interpreter, not a fork).

Owns: what only a worker of N does: inherited fds (listening sockets, plain and AMQPS,
supervisor channel, doorbells), CPU pinning, the mesh attachment, the shared-memory heartbeat, readiness,
SIGHUP (re-read the config, rebuild the TLS context), hand-off of accepted sockets, and exit when the supervisor
disappears. The steps it shares with the one-process broker (logging, event loop,
SIGTERM drain: clients get connection.close 320, exit 0; storage recovery and close,
memory alarm, status file) are ``workers.lifecycle``'s. No AMQP logic.

The supervisor channel (``--chan-fd``) is defined in ``workers.channel``; EOF on it
means the supervisor is gone, and so does ``ORPHAN_SIGNAL`` (the parent-death signal
the kernel sends when the supervisor dies, even by SIGKILL): the worker closes its
clients (320), waits at most ``ORPHAN_DRAIN`` seconds for them, flushes and closes its
stores and exits, so the port and the data dir are free within about a second.
The worker also holds, without using them, the supervisor's data dir and port locks
(``workers.startup``; inherited fds): they are released when the last process of the
broker exits.

Invariants: the worker reports ready only after its listener (or hand-off receiver) and
mesh are up; an exception before that exits non-zero, which the supervisor treats as a
boot failure. SIGHUP is ignored from the first instruction on, so an early reload signal
cannot kill a booting worker.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGHUP, signal.SIG_IGN)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import ctypes  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import weakref  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import msgspec  # noqa: E402

from shardmq.config import Config  # noqa: E402
from shardmq.ipc.control import F_ACCEPTED, F_CONNS, ControlBlock  # noqa: E402
from shardmq.ipc.mesh import Mesh  # noqa: E402
from shardmq.net.tls import TLSConfigError, TLSServer  # noqa: E402
from workers import channel  # noqa: E402
from workers.exitcodes import ExitCode  # noqa: E402
from workers.lifecycle import (  # noqa: E402
    run_loop,
    serve_broker,
    set_log_level,
    setup_logging,
    stop_on_signals,
    unreachable_listener,
)
from workers.settings import SupervisorConfig, cpu_for_slot  # noqa: E402

log = logging.getLogger("shardmq.worker")

PR_SET_PDEATHSIG = 1
# the parent-death signal: not SIGTERM, which the supervisor sends for a full drain
ORPHAN_SIGNAL = signal.SIGUSR1
# seconds an orphaned worker waits for its clients' close-ok before it aborts them
ORPHAN_DRAIN = 0.25

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class WorkerSpec(msgspec.Struct, kw_only=True):
    """What the supervisor writes to the worker config file (JSON)."""

    config: Config
    supervisor: SupervisorConfig


def load_spec(path: str) -> WorkerSpec:
    with open(path, "rb") as f:
        return msgspec.json.decode(f.read(), type=WorkerSpec)


def set_parent_death_signal(sig: int = ORPHAN_SIGNAL) -> None:
    """Linux: get ``sig`` when the supervisor dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def adopt_socket(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: ProtocolFactory,
    fd: int,
    on_error: Callable[[], None] | None = None,
) -> asyncio.Task[Any]:
    """Hand-off hook: serve an already accepted client socket (fd received by SCM_RIGHTS)
    with ``protocol_factory`` on ``loop``. Returns the task of
    ``loop.connect_accepted_socket``; errors are logged (and ``on_error`` called), never
    raised into the loop."""

    async def connect() -> None:
        sock: socket.socket | None = None
        try:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            await loop.connect_accepted_socket(protocol_factory, sock)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("could not adopt a handed-off socket: %s", exc)
            if sock is not None:
                sock.close()
            else:
                os.close(fd)
            if on_error is not None:
                on_error()

    return loop.create_task(connect())


class ConnectionCounter:
    """Wraps a protocol factory to count the live connections (for load reporting).

    Its set is rebuilt once its population fell to a quarter of its peak (a flood is
    over), so that its table does not keep the flood's size (``net.memtrim``)."""

    SHRINK_FROM = 1024  # peaks below this are not worth a rebuild

    def __init__(self) -> None:
        self.live: weakref.WeakSet[asyncio.BaseProtocol] = weakref.WeakSet()
        self.peak = 0

    def wrap(self, factory: ProtocolFactory) -> ProtocolFactory:
        def make() -> asyncio.BaseProtocol:
            proto = factory()
            self.live.add(proto)
            return proto

        return make

    def count(self) -> int:
        n = 0
        protos = list(self.live)
        for proto in protos:
            transport = getattr(proto, "transport", None)
            if transport is not None and not transport.is_closing():
                n += 1
        if len(protos) > self.peak:
            self.peak = len(protos)
        elif self.peak >= self.SHRINK_FROM and len(protos) * 4 <= self.peak:
            self.live = weakref.WeakSet(protos)
            self.peak = len(protos)
        return n


class Worker:
    """The running worker. ``on_message(payload)``, ``on_reload(config)`` and
    ``protocol_factory`` are the hooks the broker layer wires."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.slot: int = args.slot
        self.n: int = args.workers
        self.spec_path: str = args.spec
        spec = load_spec(self.spec_path)
        self.config: Config = spec.config
        self._serving: Config = spec.config  # the config serve_broker runs with
        self.settings: SupervisorConfig = spec.supervisor
        self.listen_fd: int | None = args.listen_fd
        self.chan = socket.socket(fileno=args.chan_fd)
        self.chan.setblocking(False)
        self.mesh_spec: str | None = args.mesh
        self.parent: int = args.parent
        self.mesh: Mesh | None = None
        self.control: ControlBlock | None = None
        self.protocol_factory: ProtocolFactory | None = None
        self.tls_fd: int | None = args.tls_fd
        self.tls: TLSServer | None = None  # the AMQPS listener's context (SIGHUP: rebuilt)
        self.counter = ConnectionCounter()
        self.accepted = 0  # sockets received by hand-off (monotonic)
        self._adopting = 0  # received, protocol not made yet
        self._waiting_fds: list[tuple[int, bool]] = []
        self.sender = channel.ChannelSender(self.chan, self._send_failed)
        self.stop = asyncio.Event()
        self.on_message: Callable[[bytes], None] = self._default_message
        self.on_reload: Callable[[Config], None] = self._default_reload
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = False

    # ------------------------------------------------------------------ hooks
    def _default_message(self, payload: bytes) -> None:
        log.debug("message from the supervisor ignored (%d bytes)", len(payload))

    def _default_reload(self, config: Config) -> None:
        set_log_level(config.server.log_level)

    def send_message(self, payload: bytes) -> None:
        """Send a message to the supervisor (one datagram of at most ``channel.MAX_MESSAGE``
        bytes); queued in order while the channel is full."""
        self.sender.send(channel.USER + payload)

    def _send_failed(self, exc: OSError) -> None:
        log.error("supervisor channel failed: %s; stopping", exc)
        self._supervisor_gone()

    def set_protocol_factory(self, factory: ProtocolFactory) -> ProtocolFactory:
        """Wire the AMQP protocol factory for handed-off sockets (and connection counts);
        returns the wrapped factory for the listener (``serve_broker(wrap_factory=...)``)."""
        counted = self.counter.wrap(factory)

        def make() -> asyncio.BaseProtocol:
            # in hand-off mode every protocol is made for an adopted socket
            if self._adopting:
                self._adopting -= 1
            return counted()

        self.protocol_factory = make
        waiting, self._waiting_fds = self._waiting_fds, []
        for fd, tls in waiting:
            self._adopt(fd, tls)
        return make

    # ------------------------------------------------------------------ channel
    def _on_chan(self) -> None:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(
                    self.chan, channel.MAX_MESSAGE, channel.MAX_FDS_PER_MSG
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("supervisor channel failed: %s; stopping", exc)
                self._supervisor_gone()
                return
            if not msg and not fds:
                self._supervisor_gone()
                return
            if fds:
                tls = msg[:1] == channel.CONN_TLS
                for fd in fds:
                    self._adopt(fd, tls)
            elif msg[:1] == channel.USER:
                try:
                    self.on_message(msg[1:])
                except Exception:
                    log.exception("on_message failed")

    def _supervisor_gone(self) -> None:
        if self._loop is not None and self.chan.fileno() >= 0:
            self._loop.remove_reader(self.chan.fileno())
        # nobody is left to wait for: a short drain, so the port and data dir are free
        # soon (the config object serve_broker reads its shutdown_timeout from)
        server = self._serving.server
        server.shutdown_timeout = min(server.shutdown_timeout, ORPHAN_DRAIN)
        if not self.stop.is_set():
            log.warning("supervisor is gone; stopping")
            self.stop.set()

    def _adopt(self, fd: int, tls: bool = False) -> None:
        if self.protocol_factory is None or self._loop is None:
            self._waiting_fds.append((fd, tls))
            return
        if tls and self.tls is None:
            log.warning("an AMQPS socket was handed off but TLS is off; closing it")
            os.close(fd)
            return
        self.accepted += 1
        self._adopting += 1
        if tls and self.tls is not None:
            # a failed handshake is logged there; the protocol was made (counted) already
            self.tls.adopt(self._loop, self.protocol_factory, socket.socket(fileno=fd))
        else:
            adopt_socket(self._loop, self.protocol_factory, fd, self._adopt_failed)

    def _adopt_failed(self) -> None:
        if self._adopting:
            self._adopting -= 1

    # ------------------------------------------------------------------ timers
    def _heartbeat(self) -> None:
        loop = self._loop
        ctl = self.control
        if loop is None or ctl is None or self.stop.is_set():
            return
        ctl.beat(self.slot)
        # conns counts adoptions in flight, so that at this instant conns is exactly
        # accepted - closed and the supervisor's load estimate (conns + handed since
        # this heartbeat) is exact but for closes since then
        ctl.put(self.slot, F_CONNS, self.counter.count() + self._adopting)
        ctl.put(self.slot, F_ACCEPTED, self.accepted)
        if os.getppid() != self.parent:
            self._supervisor_gone()
            return
        loop.call_later(self.settings.heartbeat_interval, self._heartbeat)

    def _on_sighup(self) -> None:
        try:
            spec = load_spec(self.spec_path)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error(
                "SIGHUP: cannot re-read %s: %s; keeping the current config", self.spec_path, exc
            )
            return
        self.config = spec.config
        try:
            self.on_reload(spec.config)
        except Exception:
            log.exception("SIGHUP: reload hook failed")
        if self.tls is not None:
            self.tls.reload(spec.config.tls)
        log.info("configuration reloaded")

    def ready(self, addrs: str) -> None:
        if self._ready:
            return
        self._ready = True
        if self.control is not None:
            self.control.set_ready(self.slot)
        try:
            self.chan.send(channel.READY)
        except OSError as exc:
            log.error("cannot report ready: %s", exc)
            self._supervisor_gone()
        log.info("worker %d ready (%s)", self.slot, addrs)

    # ------------------------------------------------------------------ main
    async def run(self) -> None:
        from shardmq.broker.broker import Broker
        from workers.wiring import wire_worker

        loop = asyncio.get_running_loop()
        self._loop = loop
        self.sender.loop = loop
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(ORPHAN_SIGNAL, self._supervisor_gone)
        stop_on_signals(loop, self.stop)  # also while waiting for the definitions
        broker = Broker(self.config, slot=self.slot, workers=self.n)
        synced: asyncio.Event | None = None
        if self.mesh_spec:
            self.mesh = Mesh.from_spec(self.mesh_spec, self.slot, idle_poll=self.settings.idle_poll)
            self.control = self.mesh.control
            synced = wire_worker(self, broker, loop)
        loop.add_reader(self.chan.fileno(), self._on_chan)
        if self.mesh is not None:
            self.mesh.start(loop)
        self._heartbeat()
        if synced is not None:
            # the definitions first: a client must see every exchange and queue
            stop_wait = loop.create_task(self.stop.wait())
            sync_wait = loop.create_task(synced.wait())
            await asyncio.wait({stop_wait, sync_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            sync_wait.cancel()
            if self.stop.is_set():
                if self.mesh is not None:
                    self.mesh.close()
                self.chan.close()
                return
        if self.listen_fd is not None:
            sock = socket.socket(fileno=self.listen_fd)
        else:
            # hand-off mode (or no plain listener): serve_broker() needs a listener; give
            # it one nobody can reach; adopted sockets use its protocol factory
            sock = unreachable_listener()
        tls_sock = socket.socket(fileno=self.tls_fd) if self.tls_fd is not None else None
        self._serving = self.config
        try:
            await serve_broker(
                self._serving,
                broker,
                sock=sock,
                ready=self.ready,
                stop=self.stop,
                wrap_factory=self.set_protocol_factory,
                tls=self.tls,
                tls_sock=tls_sock,
            )
        finally:
            if self.mesh is not None:
                self.mesh.close()
            self.chan.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m workers.worker", description=__doc__)
    ap.add_argument("--slot", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--spec", required=True, help="worker config file (JSON)")
    ap.add_argument("--chan-fd", type=int, required=True)
    ap.add_argument("--listen-fd", type=int, default=None)
    ap.add_argument("--tls-fd", type=int, default=None, help="AMQPS listening socket")
    ap.add_argument("--mesh", default=None, help="mesh spec from the supervisor")
    ap.add_argument("--parent", type=int, required=True, help="supervisor pid")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_parent_death_signal()  # until the loop handles it, its default action kills
    if os.getppid() != args.parent:
        return ExitCode.ORPHANED  # the supervisor died before we could watch it
    # a worker has its own process group: a terminal's Ctrl-C reaches the supervisor,
    # which forwards SIGTERM; a SIGINT sent to the worker is ignored until its loop runs,
    # then stops it like SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(args)
    server = worker.config.server
    setup_logging(server.log_level, f"w{args.slot}", server.log_format)
    if worker.config.tls.enabled:
        # before SIGHUP is handled, so that every reload finds the context to replace
        try:
            worker.tls = TLSServer(worker.config.tls, worker.config.amqp.handshake_timeout)
        except TLSConfigError as exc:  # the files changed since the supervisor checked
            log.critical("worker %d cannot start: %s", args.slot, exc)
            return ExitCode.TLS_CONFIG_INVALID
    cpu = cpu_for_slot(worker.settings.cpu_affinity, args.slot)
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except (OSError, ValueError) as exc:
            log.error("worker %d: cannot pin to CPU %d: %s", args.slot, cpu, exc)
            return ExitCode.FAILED
    run_loop(worker.run())
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
