"""The only code that touches client sockets (with ``shardmq.net.tls`` for AMQPS): the
asyncio protocol and the listener.

Owns: ``AMQPProtocol`` (one per TCP connection), ``IOHub`` (writes every dirty
connection once per loop turn, runs heartbeat and handshake timers) and ``serve`` (the
listeners until ``stop``, then every connection closed: connection.close 320 to the open
ones, the rest aborted after ``server.shutdown_timeout``). ``serve`` raises the file
descriptor limit first and admits each new connection through
``shardmq.net.limits.Admission`` (fd alarm, unauthenticated connections per address),
runs a ``shardmq.net.memtrim.MemoryTrimmer`` (memory back to the system after a flood);
with several workers it gives the broker the other workers' connection count
(``max_connections``). The AMQPS listener serves the same protocol through
``shardmq.net.tls.TLSListener`` (the handshake first, then admission); an
``AMQPProtocol`` made on a TLS transport passes its ``TLSPeer`` to the connection. Each
connection starts as AMQP 0-9-1; until its first 8 bytes are in, ``_choose_protocol``
looks at them, and an AMQP 1.0 header (``AMQP 0.1.0.0``, SASL ``AMQP 3.1.0.0``, TLS
``AMQP 2.1.0.0``) swaps in ``shardmq.adapter.amqp10.AMQP10Connection``, which offers
the same interface to this layer; after that the hot path is the 0-9-1 one unchanged.
The process around it
(signals, storage recovery and close, memory alarm, status file) is
``workers.lifecycle.serve_broker``.

Invariants:
- One ``transport.write`` per connection per loop turn: connections call ``wake`` when
  their output turns non-empty; ``IOHub.flush`` runs once via ``call_soon``.
- Durable stores are flushed (written to the OS) before the connections' output of the
  same turn: a delivery reaches a socket only after its delivered marker was written,
  so a message a client may have seen comes back redelivered=true after a kill -9.
- A socket whose write buffer is above the high-water mark pauses deliveries to its
  consumers (credit returns when it drains); nothing is dropped.
- A connection not open (connection.open-ok sent) ``amqp.handshake_timeout`` seconds
  after it was accepted is aborted, whatever it negotiated (heartbeats included).
- Replies of every kind are bounded per connection: once its unwritten output (the
  transport's buffer plus this turn's) passes ``READ_HOLD``, the engine stops parsing
  after the current frame and the socket is not read until the buffer is back under
  ``WRITE_LOW_WATER``; held frames are then parsed in order. A client that pipelines
  requests and never reads costs at most about ``READ_HOLD`` plus one reply.
- After connection.close was sent by the server, the socket is closed when the peer
  answers close-ok or after ``CLOSE_GRACE`` seconds, whichever comes first.
- Traffic counts (``recv_oct``/``recv_cnt``, ``send_oct``/``send_cnt``) cost one add
  each per socket read and per ``transport.write``, never per message (TLS: the
  application bytes).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import cast

from shardmq.adapter.amqp091 import AMQP091Connection
from shardmq.adapter.amqp10 import AMQP10Connection
from shardmq.amqp.connection import CLOSING, OPEN, log_internal_error
from shardmq.amqp.errors import CONNECTION_FORCED
from shardmq.amqp1.framing import is_amqp1_header
from shardmq.broker.broker import Broker
from shardmq.config import Config
from shardmq.ipc.control import F_CONNS, ControlBlock
from shardmq.ipc.mesh import Mesh
from shardmq.net.limits import Admission, raise_fd_limit
from shardmq.net.memtrim import MemoryTrimmer, shrink_dict, shrink_set
from shardmq.net.tls import TLSPeer, TLSServer, tls_peer

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

log = logging.getLogger("shardmq.net")

CLOSE_GRACE = 3.0
WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = 256 * 1024
# Unwritten output above which a connection is no longer read (nor its read bytes
# parsed): above WRITE_HIGH_WATER, so deliveries (paused at the high water) alone never
# stop a consumer's acks from being read.
READ_HOLD = 4 * 1024 * 1024
SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


class IOHub:
    """Collects connections with pending output and flushes them once per loop turn."""

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.loop = loop
        self._dirty: list[AMQPProtocol] = []
        self._scheduled = False
        self.protocols: set[AMQPProtocol] = set()
        self.admission: Admission | None = None  # set by ``serve``

    def wake(self, proto: AMQPProtocol) -> None:
        self._dirty.append(proto)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every dirty connection once. Output produced while flushing (deliveries
        resumed by a drained buffer) waits for the next loop turn, after socket reads."""
        self._scheduled = False
        storage = self.broker.storage
        if storage is not None and storage.pending:
            storage.flush()
        dirty, self._dirty = self._dirty, []
        for proto in dirty:
            proto.flush()


class AMQPProtocol(asyncio.Protocol):
    def __init__(self, hub: IOHub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.conn: AMQP091Connection | AMQP10Connection | None = None
        # the first bytes, until the protocol header chooses 0-9-1 or 1.0 (then None)
        self._sniff: bytearray | None = bytearray()
        self._tls: TLSPeer | None = None
        self._timer: asyncio.TimerHandle | None = None  # heartbeats
        self._hs_timer: asyncio.TimerHandle | None = None  # handshake, until open-ok
        self._close_timer: asyncio.TimerHandle | None = None
        self._want_reading = True  # the broker's flow control (alarms, throttles)
        self._address = ""  # the peer's IP (admission)
        self._admitted = False
        self._held = False  # output over READ_HOLD: not reading until it drains
        self._continue_due = False  # held input is parsed at the next loop turn
        self._hold_until = 0.0  # loop time before which nothing is written (refusal)
        # bytes and socket reads/writes (RabbitMQ's recv_oct/recv_cnt/send_oct/send_cnt):
        # one add per read or write call, read by the management listing when asked
        self.recv_oct = 0
        self.recv_cnt = 0
        self.send_oct = 0
        self.send_cnt = 0

    # ------------------------------------------------------------ transport events
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # a stream socket's transport
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        hub = self.hub
        admission = hub.admission
        if admission is not None:
            self._address = str(peer[0]) if isinstance(peer, tuple) else peer_s
            self._admitted = True
            if not admission.admit(self, self._address):
                transport.close()  # refused: no descriptor or address over its bound
                return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        ssl_object = transport.get_extra_info("ssl_object")
        tls = None
        if ssl_object is not None:
            tls = tls_peer(ssl_object, hub.broker.config.tls.ssl_cert_login_from)
        self._tls = tls
        self.conn = AMQP091Connection(hub.broker, peer_s, self, lambda: hub.wake(self), tls)
        self.hub.protocols.add(self)
        timeout = self.hub.broker.config.amqp.handshake_timeout
        self._hs_timer = self.hub.loop.call_later(timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        self.recv_oct += len(data)
        self.recv_cnt += 1
        if self._sniff is not None:
            data = self._choose_protocol(data)
            if not data:
                return
        conn = self.conn
        transport = self.transport
        engine = conn.engine  # type: ignore[union-attr]
        engine.out_hold = max(READ_HOLD - transport.get_write_buffer_size(), 1)  # type: ignore[union-attr]
        engine.feed(data)
        if engine.input_held:
            self._hold(True)

    def _choose_protocol(self, data: bytes) -> bytes:
        """Until 8 bytes are in: an AMQP 1.0 header (plain or SASL) swaps in the 1.0
        adapter; anything else stays with 0-9-1 (which refuses a bad header). Returns
        the bytes to feed (none while the header is incomplete)."""
        sniff = self._sniff
        assert sniff is not None
        sniff += data
        if len(sniff) < 8 and sniff[:4] == b"AMQP"[: len(sniff)]:
            return b""
        self._sniff = None
        if len(sniff) >= 8 and is_amqp1_header(bytes(sniff[:8])) and self.conn is not None:
            hub = self.hub
            self.conn = AMQP10Connection(
                hub.broker, self.conn.peer, self, lambda: hub.wake(self), self._tls
            )
        return bytes(sniff)

    def eof_received(self) -> bool:
        return False

    @property
    def opened(self) -> bool:
        """The client got connection.open-ok (no longer unauthenticated)."""
        return self.conn is not None and self.conn.state >= OPEN

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.protocols.discard(self)
        if self._admitted and self.hub.admission is not None:
            self.hub.admission.closed(self, self._address)
        for t in (self._timer, self._hs_timer, self._close_timer):
            if t is not None:
                t.cancel()
        conn = self.conn
        if conn is not None:
            try:
                conn.connection_lost()
            except Exception as err:
                log_internal_error(log, f"connection {conn.peer}: error while releasing", err)

    def set_reading(self, active: bool) -> None:
        """Flow control from the broker: stop or resume reading this socket."""
        self._want_reading = active
        self._apply_reading()

    def _apply_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._want_reading and not self._held:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def hold(self, seconds: float) -> None:
        """Write and read nothing for ``seconds`` (a failed login's refusal is held:
        ``shardmq.auth.throttle``); the output written then, close included."""
        if seconds <= 0:
            return
        self._hold_until = self.hub.loop.time() + seconds
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.hub.loop.call_at(self._hold_until, self._release_hold)

    def _release_hold(self) -> None:
        self._hold_until = 0.0
        self.flush()

    def _hold(self, on: bool) -> None:
        """Output over ``READ_HOLD`` (on) or drained with no held input (off)."""
        if on != self._held:
            self._held = on
            self._apply_reading()

    def pause_writing(self) -> None:
        self.conn.set_write_paused(True)  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.conn.set_write_paused(False)  # type: ignore[union-attr]
        if self._held:
            self._schedule_continue()

    def _schedule_continue(self) -> None:
        if not self._continue_due:
            self._continue_due = True
            self.hub.loop.call_soon(self._continue)

    def _continue(self) -> None:
        """The output drained: parse the held input, then read again if it all fit."""
        self._continue_due = False
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None or transport.is_closing():
            return
        engine = conn.engine
        if engine.input_held:
            engine.out_hold = max(READ_HOLD - transport.get_write_buffer_size(), 1)
            engine.continue_input()
        if not engine.input_held and transport.get_write_buffer_size() <= READ_HOLD:
            self._hold(False)

    # ------------------------------------------------------------ output
    def flush(self) -> None:
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None or self._hold_until:
            return
        data = conn.take_output()
        if transport.is_closing():
            return
        if data:
            transport.write(data)
            self.send_oct += len(data)
            self.send_cnt += 1
            conn.after_flush()
            buffered = transport.get_write_buffer_size()
            # what output may still grow by (replies completed from other workers too)
            conn.engine.out_hold = max(READ_HOLD - buffered, 1)
            if buffered > READ_HOLD or conn.engine.input_held:
                self._hold(True)
        if self._held and transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
            self._schedule_continue()  # else resume_writing (under the low water) does
        if conn.want_close:
            transport.close()
        elif conn.state == CLOSING and self._close_timer is None:
            self._close_timer = self.hub.loop.call_later(CLOSE_GRACE, transport.abort)

    # ------------------------------------------------------------ timers
    def _handshake_timeout(self) -> None:
        """Not open ``handshake_timeout`` after connect (whatever was tuned): close."""
        self._hs_timer = None
        conn = self.conn
        if conn is not None and conn.state < OPEN:
            log.warning("connection %s: handshake timeout", conn.peer)
            if self.transport is not None:
                self.transport.abort()

    def tuned(self) -> None:
        """The client accepted the tuning: heartbeats start (the handshake timer runs on
        until connection.open-ok)."""
        conn = self.conn
        if conn is not None and conn.heartbeat:
            self._timer = self.hub.loop.call_later(conn.heartbeat / 2, self._heartbeat)

    def _heartbeat(self) -> None:
        conn = self.conn
        if conn is None or self.transport is None or self.transport.is_closing():
            return
        if self._held or not self._want_reading:
            # not reading it (output held, blocked, throttled): its heartbeats wait in
            # the socket unread, as RabbitMQ pauses its monitor while it does not read
            conn.engine.recv_activity = True
        if not conn.heartbeat_tick():
            log.warning(
                "connection %s: missed heartbeats from client, timeout: %ds",
                conn.peer,
                conn.heartbeat,
            )
            self.transport.abort()
            return
        self._timer = self.hub.loop.call_later(conn.heartbeat / 2, self._heartbeat)


async def serve(
    config: Config,
    broker: Broker,
    *,
    stop: asyncio.Event,
    sock: socket.socket | None = None,
    ready: Callable[[str], None] | None = None,
    wrap_factory: Callable[[ProtocolFactory], ProtocolFactory] | None = None,
    tls: TLSServer | None = None,
    tls_sock: socket.socket | None = None,
) -> None:
    """Serve AMQP for ``broker`` on ``sock`` (or ``server.host:port``) until ``stop`` is
    set, then close every connection (``workers.lifecycle.serve_broker`` runs it, after
    the storage is recovered and before it is closed). With ``tls`` and ``tls_sock``,
    AMQPS on ``tls_sock`` too.

    ``wrap_factory`` receives the protocol factory and returns the one the listener uses
    (the worker keeps it to serve handed-off sockets and to count connections)."""
    loop = asyncio.get_running_loop()
    hub = IOHub(broker, loop)
    link = broker.shards.link if broker.shards is not None else None
    control = link.control if isinstance(link, Mesh) else None
    admission = Admission(
        broker, loop, raise_fd_limit(), config.server.max_unauthenticated_per_address, control
    )
    hub.admission = admission
    _count_peer_connections(broker, control)

    def factory() -> asyncio.BaseProtocol:
        return AMQPProtocol(hub)

    make = wrap_factory(factory) if wrap_factory is not None else factory
    if sock is not None:
        server = await loop.create_server(make, sock=sock, backlog=1024)
    else:
        server = await loop.create_server(
            make,
            host=config.server.host,
            port=config.server.port,
            backlog=1024,
            reuse_address=True,
        )
    names = [s.getsockname() for s in server.sockets or () if s.family != socket.AF_UNIX]
    tls_listener = None
    if tls is not None:
        tls.admission = admission  # handshakes count (also of handed-off sockets)
    if tls is not None and tls_sock is not None:
        tls_listener = tls.listen(loop, make, tls_sock)
        names.append((*tls_sock.getsockname()[:1], f"{tls_sock.getsockname()[1]} (TLS)"))
    addrs = ", ".join(f"{name[0]}:{name[1]}" for name in names)
    log.info("shardmq ready: AMQP 0-9-1 and 1.0 on %s", addrs)
    admission.start()
    trimmer = MemoryTrimmer(loop, lambda: len(hub.protocols), _shrinks(hub, broker))
    trimmer.start()
    if ready is not None:
        ready(addrs)
    await stop.wait()
    trimmer.stop()
    admission.stop()
    log.info("shutting down: closing %d connection(s)", len(hub.protocols))
    server.close()
    if tls_listener is not None:
        tls_listener.close()
    broker.close_all(CONNECTION_FORCED, SHUTDOWN_TEXT)
    for conn in [p.conn for p in hub.protocols if p.conn is not None and p.conn.state < OPEN]:
        conn.close(CONNECTION_FORCED, SHUTDOWN_TEXT)  # not open yet: closes the socket
    hub.flush()
    deadline = loop.time() + config.server.shutdown_timeout
    while hub.protocols and loop.time() < deadline:
        await asyncio.sleep(0.02)
    for proto in list(hub.protocols):
        if proto.transport is not None:
            proto.transport.abort()
    await asyncio.sleep(0)


def _shrinks(hub: IOHub, broker: Broker) -> list[Callable[[], None]]:
    """The containers that held one entry per connection (``memtrim``): rebuilt in
    place after a flood so their tables fit what is left."""
    return [
        lambda: shrink_set(hub.protocols),
        lambda: shrink_set(broker.connections),
        lambda: shrink_dict(broker.conns_by_gid),
        broker.metadata.access.shrink_watchers,
    ]


def _count_peer_connections(broker: Broker, ctl: ControlBlock | None) -> None:
    """With several workers, ``max_connections`` counts the other workers' connections
    too: what each reports in the control block at its heartbeat."""
    if ctl is None:
        return
    slot = broker.slot
    others = [s for s in range(ctl.n) if s != slot]

    def peers() -> int:
        return sum(ctl.get(s, F_CONNS) for s in others if ctl.is_ready(s))

    broker.peer_connections = peers
