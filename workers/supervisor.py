"""Process layer: run the broker as one process (N=1) or as a supervisor of N workers.

Owns: process start-up and its exit code (``workers.exitcodes``): the data directory
and ports claimed first (``workers.startup.claim_broker``; a failure is one log line
and its own exit code; the TLS context is built before, ``workers.startup.tls_server``),
systemd notifications, and with N>1 the worker lifecycle: listening
sockets (the SO_REUSEPORT group, or the claimed socket as the hand-off acceptor), shared
memory (``MeshHost``), spawn, readiness, respawn in the same slot, stall detection,
SIGTERM drain, SIGHUP reload, and the hand-off acceptor. With N=1 the broker runs in
this process (``workers.lifecycle.serve_broker``, as in every worker). It never touches
a message. No AMQP logic.

Invariants (both paths): nothing listens, and systemd hears no READY=1, before the data
dir is locked and the port is this broker's alone (port lock and a plain bind); with
N=1 the claimed socket listens only once recovery is done. The claims are held until
the last process of the broker exits (the workers inherit them).

Invariants (N>1):
- The supervisor keeps every listening socket open for its whole life, so a respawned
  worker inherits the same socket (``reuseport``) and no pending connection is dropped.
- A worker that exits (or is killed for not being ready within ``boot_timeout``) before
  it reported ready is a boot failure: the broker stops with ``ExitCode.FAILED`` and a
  message naming the slot; it is never respawned in a loop. A ready worker that dies is
  respawned at once in its slot with fresh rings to and from it; more than
  ``max_restarts`` deaths within ``restart_window`` stop the broker too.
- A ready worker whose shared-memory heartbeat does not advance for ``stall_timeout`` is
  SIGKILLed and respawned.
- SIGTERM/SIGINT: SIGTERM to every worker (each closes its clients with 320 and exits 0),
  SIGKILL after ``shutdown_timeout`` + grace; exit 0. Shared memory is unlinked on every
  exit path of this process (a SIGKILLed supervisor leaves it to the next start, which
  removes it).
- READY=1 goes to systemd once every worker is ready; RELOADING=1/READY=1 around SIGHUP.
- The AMQPS listener (``[tls]``) follows the plain one: an SO_REUSEPORT group of its
  own, or a second acceptor whose sockets are handed off as ``channel.CONN_TLS``; either
  listener may be absent (``server.tcp_listener = false``, no ``tls.certfile``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from shardmq import allocator
from shardmq.config import Config, ConfigError, load_config
from shardmq.ipc.control import F_ACCEPTED, F_CONNS
from shardmq.ipc.mesh import MeshError, MeshHost
from workers import channel
from workers.admin import AdminServer
from workers.exitcodes import ExitCode, describe_exit
from workers.lifecycle import (
    run_loop,
    serve_broker,
    set_log_level,
    setup_logging,
    unreachable_listener,
)
from workers.mgmt_http import ManagementServer, management_server
from workers.prometheus_http import PrometheusServer, prometheus_server
from workers.sdnotify import feed_watchdog, notify
from workers.settings import SupervisorConfig, parse_settings, supervisor_settings
from workers.startup import (
    FIX_TLS_PORT,
    BrokerClaim,
    PortClaim,
    StartupError,
    bind_error,
    claim_broker,
    report_startup_error,
    tls_server,
)
from workers.statusline import INTERVAL as STATUS_INTERVAL
from workers.statusline import StatusLine, supervisor_gather

if TYPE_CHECKING:
    from shardmq.net.tls import TLSServer

log = logging.getLogger("shardmq.supervisor")

SPEC_FILE = "worker-config.json"
KILL_GRACE = 5.0
CHECK_INTERVAL = 0.25


def _ignore_slot(slot: int) -> None:
    pass


# settings a reload cannot change (they need a restart)
STATIC_SERVER_FIELDS = ("host", "port", "workers", "data_dir", "tcp_listener")


def worker_count(config: Config) -> int:
    n = config.server.workers
    return n if n > 0 else (os.cpu_count() or 1)


# ---------------------------------------------------------------------- one process
async def _one_process(
    config: Config,
    sock: socket.socket | None,
    tls: TLSServer | None = None,
    tls_sock: socket.socket | None = None,
    reread: Callable[[], Config] | None = None,
) -> None:
    """``--workers 1``: the broker in this process, no supervisor, no shared memory;
    ``sock`` (and ``tls_sock``) are bound (``workers.startup.claim_port``) and listen
    once recovery is done. SIGHUP: ``reread()`` the config; new log level and TLS
    certificates."""
    from shardmq.broker.broker import Broker

    loop = asyncio.get_running_loop()
    feed_watchdog(loop)

    def ready(addrs: str) -> None:
        notify(f"READY=1\nSTATUS=accepting AMQP on {addrs}\nMAINPID={os.getpid()}")

    def reload() -> None:
        notify("RELOADING=1")
        try:
            new = reread() if reread is not None else config
        except ConfigError as exc:
            log.error("SIGHUP: %s; keeping the current configuration", exc)
        else:
            set_log_level(new.server.log_level)
            if tls is not None:
                tls.reload(new.tls)
            log.info("configuration reloaded")
        notify("READY=1")

    loop.add_signal_handler(signal.SIGHUP, reload)
    for s in (sock, tls_sock):
        if s is not None:
            s.setblocking(False)
    await serve_broker(
        config,
        Broker(config),
        sock=sock if sock is not None else unreachable_listener(),
        ready=ready,
        admin=True,
        tls=tls,
        tls_sock=tls_sock,
    )
    notify("STOPPING=1")


def run(
    config: Config,
    *,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    settings: SupervisorConfig | None = None,
    on_start: Callable[[Supervisor], None] | None = None,
) -> int:
    """Run the broker until SIGTERM/SIGINT; returns the process exit code.

    ``config_path`` and ``overrides`` (as given to ``load_config``) let SIGHUP re-read the
    configuration; ``settings`` overrides ``config.supervisor``. With N>1, ``on_start``
    is called with the ``Supervisor`` inside its event loop, after the sockets and shared
    memory exist and before the first worker is spawned (wire hooks there).
    """
    setup_logging(config.server.log_level, fmt=config.server.log_format)
    cfg = config.server
    log.info(allocator.describe(cfg.allocator))
    try:
        tls = tls_server(config)
        claim = claim_broker(
            cfg.data_dir,
            cfg.host,
            cfg.port if cfg.tcp_listener else None,
            config.tls.port if tls is not None else None,
        )
    except StartupError as err:
        return report_startup_error(err)
    try:
        n = worker_count(config)
        if n == 1:

            def reread() -> Config:
                return load_config(config_path, **(overrides or {})) if config_path else config

            plain = claim.port.take_socket() if claim.port is not None else None
            tls_sock = claim.tls.take_socket() if claim.tls is not None else None
            try:
                run_loop(_one_process(config, plain, tls, tls_sock, reread))
            except StartupError as err:  # the management port (``serve_broker``)
                return report_startup_error(err)
            return ExitCode.OK
        sup = Supervisor(
            config,
            settings or supervisor_settings(config),
            n,
            config_path=config_path,
            overrides=overrides or {},
            on_start=on_start,
            claim=claim,
        )
        return int(run_loop(sup.run()))
    finally:
        claim.release()


# ---------------------------------------------------------------------- supervisor
def listening_sockets(host: str, port: int, count: int, reuseport: bool) -> list[socket.socket]:
    """``count`` sockets listening on host:port (SO_REUSEPORT when ``reuseport``); port 0
    picks a free port once for all of them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, proto, _canon, addr = infos[0]
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(addr)
            s.listen(1024)
            s.setblocking(False)
            if addr[1] == 0:
                addr = (addr[0], s.getsockname()[1], *addr[2:])
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


class Slot:
    """One worker position: its sockets survive the processes that fill it."""

    def __init__(
        self, index: int, listen: socket.socket | None, tls_listen: socket.socket | None = None
    ) -> None:
        self.index = index
        self.listen = listen
        self.tls_listen = tls_listen
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd = -1
        self.chan: socket.socket | None = None
        self.gen = 0
        self.ready = False
        self.spawned_at = 0.0
        self.beat = -1
        self.beat_at = 0.0
        self.handed = 0
        self.stalled = False
        self.sender: channel.ChannelSender | None = None  # None while chan is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None


class Supervisor:
    """N worker processes, one per slot. Hooks for the broker layer:
    ``on_worker_message(slot, payload)``, ``send_to_worker(slot, payload)``,
    ``on_worker_up(slot)`` (a process was spawned in the slot; messages sent from then
    on reach it) and ``on_worker_down(slot)`` (its process died; called before the
    respawn's ``on_worker_up``)."""

    def __init__(
        self,
        config: Config,
        settings: SupervisorConfig,
        n: int,
        *,
        config_path: str | None = None,
        overrides: dict[str, Any] | None = None,
        on_start: Callable[[Supervisor], None] | None = None,
        claim: BrokerClaim | None = None,
    ) -> None:
        self.config = config
        self.claim = claim
        self.on_start = on_start
        self.settings = settings
        self.n = n
        self.config_path = config_path
        self.overrides = overrides or {}
        self.data_dir = Path(config.server.data_dir)
        self.spec_path = self.data_dir / SPEC_FILE
        self.mesh: MeshHost | None = None
        self.slots: list[Slot] = []
        self.acceptor: socket.socket | None = None
        self.tls_acceptor: socket.socket | None = None  # hand-off of AMQPS clients
        self.stopping = False
        self.exit_code = ExitCode.OK
        self.done = asyncio.Event()
        self.admin: AdminServer | None = None  # the control socket (``workers.admin``)
        self.management: ManagementServer | None = None  # the HTTP API (``workers.mgmt_http``)
        self.prometheus: PrometheusServer | None = None  # /metrics (``workers.prometheus_http``)
        self.all_ready_notified = False
        self.status_line: StatusLine | None = None  # systemd STATUS= (workers.statusline)
        self.deaths: deque[float] = deque()
        self.on_worker_message: Callable[[int, bytes], None] = self._default_message
        self.on_worker_up: Callable[[int], None] = _ignore_slot
        self.on_worker_down: Callable[[int], None] = _ignore_slot
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._rr = 0

    # ------------------------------------------------------------------ public hooks
    def _default_message(self, slot: int, payload: bytes) -> None:
        log.debug("message from worker %d ignored (%d bytes)", slot, len(payload))

    def send_to_worker(self, slot: int, payload: bytes) -> bool:
        """Queue a message for the worker in ``slot`` (in order; held while its channel
        is full). False when no process fills the slot."""
        sender = self.slots[slot].sender
        if sender is None:
            return False
        sender.send(channel.USER + payload)
        return True

    # ------------------------------------------------------------------ start-up
    def _write_spec(self) -> None:
        data = msgspec.json.encode({"config": self.config, "supervisor": self.settings})
        tmp = self.spec_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, self.spec_path)

    def _listeners(
        self, port: int, claim: PortClaim | None, fix: str | None = None
    ) -> tuple[socket.socket | None, list[socket.socket]]:
        """(hand-off acceptor, SO_REUSEPORT group) for ``port``: one of them is set."""
        host = self.config.server.host
        try:
            if self.settings.acceptor == "handoff":
                if claim is not None:
                    acceptor = claim.take_socket()
                    acceptor.listen(1024)
                    acceptor.setblocking(False)
                else:
                    (acceptor,) = listening_sockets(host, port, 1, reuseport=False)
                return acceptor, []
            # the port is this broker's (port lock, plain bind): now the group
            if claim is not None:
                claim.close_socket()
            return None, listening_sockets(host, port, self.n, reuseport=True)
        except OSError as exc:
            if fix is not None:
                raise bind_error(host, port, exc, fix) from None
            raise bind_error(host, port, exc) from None

    def _setup(self) -> None:
        cfg = self.config.server
        self.mesh = MeshHost(str(self.data_dir), self.n, self.settings.ring_capacity)
        if self.mesh.stale_removed:
            log.warning(
                "removed %d shared-memory segment(s) left by a previous run that crashed",
                self.mesh.stale_removed,
            )
        plain: list[socket.socket] = []
        tls: list[socket.socket] = []
        if cfg.tcp_listener:
            claim = self.claim.port if self.claim is not None else None
            self.acceptor, plain = self._listeners(cfg.port, claim)
        if self.config.tls.enabled:
            claim = self.claim.tls if self.claim is not None else None
            port = self.config.tls.port
            self.tls_acceptor, tls = self._listeners(port, claim, FIX_TLS_PORT)
        self.slots = [
            Slot(i, plain[i] if plain else None, tls[i] if tls else None) for i in range(self.n)
        ]
        self._write_spec()

    @property
    def address(self) -> tuple[str, int]:
        sock = self.acceptor or self.slots[0].listen or self.tls_acceptor
        sock = sock or self.slots[0].tls_listen
        assert sock is not None
        name = sock.getsockname()
        return name[0], name[1]

    def _spawn(self, slot: Slot, *, respawn: bool) -> None:
        assert self.mesh is not None and self._loop is not None
        slot.gen = self.mesh.begin_incarnation(slot.index, renew_rings=respawn)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.setblocking(False)
        pass_fds = [child.fileno(), *self.mesh.pass_fds()]
        if self.claim is not None:
            # the data dir and port locks stay held until the last worker exits
            pass_fds += self.claim.inherit_fds()
        cmd = [
            sys.executable,
            "-m",
            "workers.worker",
            "--slot",
            str(slot.index),
            "--workers",
            str(self.n),
            "--spec",
            str(self.spec_path),
            "--chan-fd",
            str(child.fileno()),
            "--mesh",
            self.mesh.spec(),
            "--parent",
            str(os.getpid()),
        ]
        if slot.listen is not None:
            cmd += ["--listen-fd", str(slot.listen.fileno())]
            pass_fds.append(slot.listen.fileno())
        if slot.tls_listen is not None:
            cmd += ["--tls-fd", str(slot.tls_listen.fileno())]
            pass_fds.append(slot.tls_listen.fileno())
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
        try:
            proc = subprocess.Popen(cmd, pass_fds=pass_fds, env=env, process_group=0)
        finally:
            child.close()
        self.mesh.set_pid(slot.index, proc.pid)
        slot.proc = proc
        slot.chan = parent

        def send_failed(exc: OSError, index: int = slot.index) -> None:
            log.warning("cannot write to worker %d: %s", index, exc)

        slot.sender = channel.ChannelSender(parent, send_failed)
        slot.sender.loop = self._loop
        slot.ready = False
        slot.stalled = False
        slot.spawned_at = time.monotonic()
        slot.beat = -1
        slot.beat_at = slot.spawned_at
        try:
            slot.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # kernel < 5.3: reap on SIGCHLD instead
            slot.pidfd = -1
            self._loop.add_signal_handler(signal.SIGCHLD, self._on_sigchld)
        else:
            self._loop.add_reader(slot.pidfd, self._on_exit, slot)
        self._loop.add_reader(parent.fileno(), self._on_chan, slot)
        self.on_worker_up(slot.index)
        log.info("worker %d %sstarted, pid %d", slot.index, "re" if respawn else "", proc.pid)

    # ------------------------------------------------------------------ events
    def _on_chan(self, slot: Slot) -> None:
        chan = slot.chan
        if chan is None:
            return
        while True:
            try:
                msg = chan.recv(channel.MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg = b""
            if not msg:
                # worker side closed: its exit is handled through the pidfd
                assert self._loop is not None
                self._loop.remove_reader(chan.fileno())
                return
            kind = msg[:1]
            if kind == channel.READY:
                self._on_ready(slot)
            elif kind == channel.USER:
                try:
                    self.on_worker_message(slot.index, msg[1:])
                except Exception:
                    log.exception("on_worker_message failed")

    def _on_ready(self, slot: Slot) -> None:
        if slot.ready:
            return
        slot.ready = True
        slot.beat_at = time.monotonic()
        log.info(
            "worker %d ready (pid %s) in %.2f s",
            slot.index,
            slot.pid,
            slot.beat_at - slot.spawned_at,
        )
        acceptors = self.acceptor is not None or self.tls_acceptor is not None
        if acceptors and not self._accepting and not self.stopping:
            self._start_accepting()
        if not self.all_ready_notified and all(s.ready for s in self.slots):
            self.all_ready_notified = True
            host, port = self.address
            log.info("shardmq ready: %d workers, AMQP 0-9-1 and 1.0 on %s:%d", self.n, host, port)
            notify(
                f"READY=1\nSTATUS={self.n} workers accepting AMQP on {host}:{port}\n"
                f"MAINPID={os.getpid()}"
            )
            self._start_status_line()

    def _on_sigchld(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.pidfd < 0 and slot.proc.poll() is not None:
                self._on_exit(slot)

    def _on_exit(self, slot: Slot) -> None:
        assert self._loop is not None
        proc = slot.proc
        if proc is None:
            return
        code = proc.wait()
        self._on_chan(slot)  # a "ready" it sent just before dying still counts
        if slot.pidfd >= 0:
            self._loop.remove_reader(slot.pidfd)
            os.close(slot.pidfd)
            slot.pidfd = -1
        if slot.chan is not None:
            for remove in (self._loop.remove_reader, self._loop.remove_writer):
                try:
                    remove(slot.chan.fileno())
                except (ValueError, OSError):
                    pass
            slot.chan.close()
            slot.chan = None
        if slot.sender is not None:
            slot.sender.clear()
            slot.sender = None
        slot.proc = None
        if not self.stopping:
            try:
                self.on_worker_down(slot.index)
            except Exception:
                log.exception("on_worker_down failed")
        was_ready = slot.ready
        slot.ready = False
        if self.stopping:
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(
                level, "worker %d (pid %d) stopped: %s", slot.index, proc.pid, describe_exit(code)
            )
            if not any(s.alive for s in self.slots):
                self.done.set()
            return
        if not was_ready:
            self._fatal(
                f"worker {slot.index} (pid {proc.pid}) failed to boot: {describe_exit(code)} "
                "before it was ready; stopping the broker (see the worker's messages above)"
            )
            return
        why = "killed after it stalled" if slot.stalled else f"died ({describe_exit(code)})"
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > self.settings.restart_window:
            self.deaths.popleft()
        if len(self.deaths) > self.settings.max_restarts:
            self._fatal(
                f"worker {slot.index} {why}: {len(self.deaths)} worker deaths within "
                f"{self.settings.restart_window:g} s; stopping the broker"
            )
            return
        log.error("worker %d (pid %d) %s; respawning", slot.index, proc.pid, why)
        try:
            self._spawn(slot, respawn=True)
        except (OSError, MeshError) as exc:
            self._fatal(f"cannot respawn worker {slot.index}: {exc}")

    def _fatal(self, message: str) -> None:
        log.critical("%s", message)
        self.exit_code = ExitCode.FAILED
        self.begin_stop()

    def _check(self) -> None:
        """Timer: boot timeouts, stalled workers, watchdog."""
        if self.stopping:
            return
        assert self._loop is not None and self.mesh is not None and self.mesh.control
        now = time.monotonic()
        ctl = self.mesh.control
        st = self.settings
        for slot in self.slots:
            proc = slot.proc
            if proc is None:
                continue
            if not slot.ready:
                if now - slot.spawned_at > st.boot_timeout and not slot.stalled:
                    log.error(
                        "worker %d (pid %d) not ready after %.0f s; killing it",
                        slot.index,
                        proc.pid,
                        st.boot_timeout,
                    )
                    slot.stalled = True
                    proc.kill()
                continue
            beat = ctl.heartbeat(slot.index)
            if beat != slot.beat:
                slot.beat = beat
                slot.beat_at = now
            elif st.stall_timeout and now - slot.beat_at > st.stall_timeout and not slot.stalled:
                log.error(
                    "worker %d (pid %d) stalled: no heartbeat for %.1f s; killing it",
                    slot.index,
                    proc.pid,
                    now - slot.beat_at,
                )
                slot.stalled = True
                proc.kill()
        self._loop.call_later(CHECK_INTERVAL, self._check)

    # ------------------------------------------------------------------ hand-off
    def _start_accepting(self) -> None:
        assert self._loop is not None
        if self.acceptor is not None:
            self._loop.add_reader(self.acceptor.fileno(), self._on_accept)
        if self.tls_acceptor is not None:
            self._loop.add_reader(self.tls_acceptor.fileno(), self._on_accept, True)
        self._accepting = True

    def _stop_accepting(self) -> None:
        if self._accepting and self._loop is not None:
            for acceptor in (self.acceptor, self.tls_acceptor):
                if acceptor is not None:
                    self._loop.remove_reader(acceptor.fileno())
        self._accepting = False

    def _pick(self, exclude: set[int]) -> Slot | None:
        """Least-loaded ready worker: connections it reported at its last heartbeat plus
        the sockets handed to it since then; ties go round-robin."""
        assert self.mesh is not None and self.mesh.control is not None
        ctl = self.mesh.control
        best: Slot | None = None
        best_load = 0
        n = self.n
        for k in range(n):
            slot = self.slots[(self._rr + k) % n]
            if not slot.ready or slot.chan is None or slot.index in exclude:
                continue
            i = slot.index
            load = ctl.get(i, F_CONNS) + max(0, slot.handed - ctl.get(i, F_ACCEPTED))
            if best is None or load < best_load:
                best, best_load = slot, load
        self._rr = (self._rr + 1) % n
        return best

    def _on_accept(self, tls: bool = False) -> None:
        acceptor = self.tls_acceptor if tls else self.acceptor
        assert acceptor is not None
        for _ in range(64):
            try:
                conn, _addr = acceptor.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            try:
                self._hand_off(conn, channel.CONN_TLS if tls else channel.CONN)
            finally:
                conn.close()

    def _hand_off(self, conn: socket.socket, kind: bytes = channel.CONN) -> None:
        tried: set[int] = set()
        while True:
            slot = self._pick(tried)
            if slot is None:
                log.warning("no worker can take a connection; closing it")
                if not any(s.ready for s in self.slots):
                    self._stop_accepting()
                return
            try:
                socket.send_fds(slot.chan, [kind], [conn.fileno()])  # type: ignore[arg-type]
            except OSError:
                tried.add(slot.index)
                continue
            slot.handed += 1
            return

    def _start_status_line(self) -> None:
        """STATUS= every few seconds: workers, connections, queued messages."""
        mesh = self.mesh
        if self._loop is None or mesh is None or mesh.control is None or mesh.counts is None:
            return
        ctl, counts = mesh.control, mesh.counts
        self.status_line = StatusLine(self._loop, lambda: supervisor_gather(self.n, ctl, counts))
        self.status_line.start(delay=STATUS_INTERVAL)

    # ------------------------------------------------------------------ signals
    def begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.status_line is not None:
            self.status_line.stop()
        notify("STOPPING=1")
        self._stop_accepting()
        alive = [s for s in self.slots if s.proc is not None]
        log.info("stopping %d worker(s)", len(alive))
        for s in alive:
            try:
                s.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass
        if not alive:
            self.done.set()
        elif self._loop is not None:
            # each worker closes its clients within shutdown_timeout; then no mercy
            self._loop.call_later(
                self.config.server.shutdown_timeout + KILL_GRACE, self._force_stop
            )

    def _force_stop(self) -> None:
        for s in self.slots:
            if s.proc is not None and s.proc.poll() is None:
                log.error("worker %d (pid %d) did not stop in time; killing it", s.index, s.pid)
                s.proc.kill()

    def reload(self) -> None:
        """SIGHUP: re-read the config (when a file was given), keep what cannot change at
        run time, rewrite the worker config file and forward SIGHUP to every worker."""
        if self.stopping:
            return
        notify("RELOADING=1")
        if self.config_path is not None:
            try:
                new = load_config(self.config_path, **self.overrides)
            except ConfigError as exc:
                log.error("SIGHUP: %s; keeping the current configuration", exc)
                notify("READY=1")
                return
            changed = [
                f
                for f in STATIC_SERVER_FIELDS
                if getattr(new.server, f) != getattr(self.config.server, f)
            ]
            if changed:
                log.warning("SIGHUP: %s change(s) need a restart; ignored", ", ".join(changed))
                server = msgspec.structs.replace(
                    new.server, **{f: getattr(self.config.server, f) for f in changed}
                )
                new = msgspec.structs.replace(new, server=server)
            old_tls = self.config.tls
            if new.tls.enabled != old_tls.enabled or new.tls.port != old_tls.port:
                log.warning("SIGHUP: turning TLS on or off or moving tls.port needs a restart")
                new = msgspec.structs.replace(new, tls=old_tls)
            self.config = new
            new_settings = supervisor_settings(new)
            if getattr(new, "supervisor", None) is not None:
                keep = ("acceptor", "ring_capacity")
                self.settings = msgspec.structs.replace(
                    new_settings, **{f: getattr(self.settings, f) for f in keep}
                )
            set_log_level(new.server.log_level)
            self._write_spec()
        for s in self.slots:
            if s.proc is not None:
                try:
                    s.proc.send_signal(signal.SIGHUP)
                except ProcessLookupError:
                    pass
        log.info("configuration reloaded; SIGHUP forwarded to the workers")
        notify("READY=1")

    # ------------------------------------------------------------------ main
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        # handlers first: a SIGTERM during set-up must still unlink the shared memory
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            self._setup()
            from workers.wiring import wire_supervisor

            seq = wire_supervisor(self)
            self.admin = AdminServer(self.config.server.data_dir, seq)
            await self.admin.start()
            cfg = self.config
            self.prometheus = prometheus_server(cfg, supervisor=True)
            self.management = management_server(cfg, self.prometheus)
            if self.management is not None:
                await self.management.start(seq)
            if self.prometheus is not None:
                await self.prometheus.start()
            if self.on_start is not None:
                self.on_start(self)
        except StartupError as err:
            self._cleanup()
            return report_startup_error(err)
        except (OSError, MeshError) as exc:
            log.critical("cannot start: %s", exc)
            notify(f"STATUS=cannot start: {exc}")
            self._cleanup()
            return ExitCode.FAILED
        except BaseException:
            self._cleanup()
            raise
        feed_watchdog(loop)
        try:
            for slot in self.slots:
                if not self.stopping:
                    self._spawn(slot, respawn=False)
            loop.call_later(CHECK_INTERVAL, self._check)
            await self.done.wait()
        except BaseException:
            self.begin_stop()
            raise
        finally:
            self._kill_leftovers()
            if seq.keeper is not None:
                seq.keeper.close()  # the definitions log's last fdatasync
            self._cleanup()
            if self.prometheus is not None:
                await self.prometheus.stop()
            if self.management is not None:
                await self.management.stop()
            if self.admin is not None:
                await self.admin.stop()
        log.info("shardmq stopped")
        return self.exit_code

    def _kill_leftovers(self) -> None:
        for s in self.slots:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()

    def _cleanup(self) -> None:
        for s in self.slots:
            if s.pidfd >= 0:
                if self._loop is not None:
                    try:
                        self._loop.remove_reader(s.pidfd)
                    except (ValueError, OSError):
                        pass
                os.close(s.pidfd)
                s.pidfd = -1
            if s.chan is not None:
                s.chan.close()
                s.chan = None
            s.sender = None
            for listen in (s.listen, s.tls_listen):
                if listen is not None:
                    listen.close()
        self._stop_accepting()
        for acceptor in (self.acceptor, self.tls_acceptor):
            if acceptor is not None:
                acceptor.close()
        try:
            self.spec_path.unlink()
        except OSError:
            pass
        if self.mesh is not None:
            self.mesh.close()
            self.mesh = None


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """``python -m workers.supervisor``: ``shardmq serve`` plus ``--supervisor-json``
    (settings of the ``[supervisor]`` section as JSON, until config.py includes it)."""
    ap = argparse.ArgumentParser(prog="python -m workers.supervisor")
    ap.add_argument("--config", default=None)
    ap.add_argument("--host", default=None)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--log-level", default=None)
    ap.add_argument("--supervisor-json", default=None)
    args = ap.parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "data_dir": args.data_dir,
        "log_level": args.log_level,
    }
    try:
        config = load_config(args.config, **overrides)
        settings = (
            parse_settings(msgspec.json.decode(args.supervisor_json))
            if args.supervisor_json
            else None
        )
    except (ConfigError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        print(f"shardmq: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return run(config, config_path=args.config, overrides=overrides, settings=settings)


if __name__ == "__main__":
    sys.exit(main())
