"""The initiating side of the sans-IO AMQP 1.0 engine: a client connection.

Owns: ``ClientEngine`` — the same ``Engine`` (sessions, windows, links, credit, flow,
transfer assembly and splitting, dispositions, closing, heartbeats) with the handshake
turned round: it sends the SASL header, answers the server's mechanisms with PLAIN (or
ANONYMOUS), then the AMQP header and ``open`` pipelined; ``begin`` and ``attach``
are sent by it and completed by the peer's answers; ``send_batch`` sends many deliveries
of one payload as pre-encoded frames (the load generator's producer). ``ClientHandler``
is what it calls (the load generator's AMQP 1.0 mode, ``loadtest.amqp10``; tests).

Invariants:
- A ``Link``'s ``role`` is this side's (True: it receives), as in the engine; links
  and sessions are keyed by the peer's handle and channel once its answer arrives;
  until then they wait in ``pending_sessions`` / ``pending_links``.
- A refused attach (the peer's attach without the terminus, then its detach) is
  reported through ``on_detach`` with the peer's error; nothing here raises to the
  caller of ``feed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.engine import (
    AWAIT_AMQP_HEADER,
    AWAIT_HEADER,
    AWAIT_OPEN,
    AWAIT_SASL_INIT,
    CLOSING,
    OPEN,
    SEQ,
    Delivery,
    Engine,
    Link,
    Session,
    _is_tag,
)
from shardmq.amqp1.errors import ConnError
from shardmq.amqp1.framing import HEADER_AMQP, HEADER_SASL, TYPE_SASL
from shardmq.amqp1.transfer import write_transfers
from shardmq.amqp1.values import Symbol, UByte, UInt


class ClientHandler(Protocol):
    def on_open(self, hostname: str | None) -> None: ...
    def on_begin(self, session: Session) -> None: ...
    def on_end(self, session: Session) -> None: ...
    def after_attach(self, session: Session, link: Link) -> None: ...
    def on_detach(self, session: Session, link: Link, error: Any) -> None: ...
    def on_flow(self, session: Session, link: Link, drain: bool) -> None: ...
    def on_transfer(self, session: Session, link: Link, delivery: Delivery) -> None: ...
    def on_disposition(self, session: Session, d: Any) -> None: ...
    def on_close(self) -> None: ...


class ClientEngine(Engine):
    """A client connection (see the module block). ``start`` writes the opening bytes."""

    def __init__(
        self,
        handler: ClientHandler,
        wake: Callable[[], None],
        *,
        user: str | None,
        password: str = "",
        hostname: str | None = None,
        container_id: str = "shardmq-client",
        max_frame_size: int = 131072,
        channel_max: int = 255,
        idle_time_out: int = 0,
        session_window: int = 2048,
        max_message_size: int = 2**27,
    ) -> None:
        super().__init__(
            handler,  # type: ignore[arg-type]  # the engine asks a client handler no SASL
            wake,
            peer="server",
            container_id=container_id,
            max_frame_size=max_frame_size,
            channel_max=channel_max,
            idle_time_out=idle_time_out,
            session_window=session_window,
            max_message_size=max_message_size,
        )
        self.sasl_user = user
        self.sasl_password = password
        self.hostname = hostname
        self.pending_sessions: dict[int, Session] = {}  # by our channel
        self.pending_links: dict[tuple[int, str], Link] = {}  # (our channel, name)
        self.error: Any = None  # the peer's close error, if any

    def start(self) -> None:
        """The protocol header (SASL unless there is no user: then AMQP at once)."""
        if self.sasl_user is None:
            self.out += HEADER_AMQP
            self._send_open()
            self.state = AWAIT_AMQP_HEADER
        else:
            self.out += HEADER_SASL
            self.state = AWAIT_HEADER
        self.wake_once()

    def _send_open(self) -> None:
        self.send(
            0,
            T.Open(
                container_id=self.container_id,
                hostname=self.hostname,
                max_frame_size=UInt(self.local_max_frame),
                channel_max=self.channel_max,
                idle_time_out=UInt(self.idle_time_out) if self.idle_time_out else None,
            ),
        )

    # ------------------------------------------------------------ handshake
    def _header(self, header: bytes) -> None:
        if self.state == AWAIT_HEADER and header == HEADER_SASL:
            self.state = AWAIT_SASL_INIT
            return
        if self.state == AWAIT_AMQP_HEADER and header == HEADER_AMQP:
            self.max_frame = self.local_max_frame
            self.state = AWAIT_OPEN
            return
        raise ConnError(T.CONNECTION_ERROR_FRAMING_ERROR, f"protocol header {header!r}")

    def _sasl(self, perf: Any) -> None:
        if isinstance(perf, T.SaslMechanisms):
            offered = perf.sasl_server_mechanisms
            mechs = {str(m) for m in (offered if isinstance(offered, list) else [offered])}
            if "PLAIN" in mechs:
                resp = (
                    b"\x00" + str(self.sasl_user).encode() + b"\x00" + self.sasl_password.encode()
                )
                init = T.SaslInit(mechanism=Symbol("PLAIN"), initial_response=resp)
            elif "ANONYMOUS" in mechs:
                init = T.SaslInit(mechanism=Symbol("ANONYMOUS"))
            else:
                raise ConnError(T.AMQP_ERROR_NOT_IMPLEMENTED, f"no usable mechanism in {mechs}")
            self.send(0, init, ftype=TYPE_SASL)
            return
        if isinstance(perf, T.SaslOutcome):
            if int(perf.code) != T.SASL_CODE_OK:
                self.error = f"SASL login failed (code {int(perf.code)})"
                self._finish()
                return
            self.out += HEADER_AMQP
            self._send_open()
            self.state = AWAIT_AMQP_HEADER
            return
        raise ConnError(T.CONNECTION_ERROR_FRAMING_ERROR, "SASL frame expected")

    def _open(self, o: Any) -> None:
        self.send_max_frame = min(int(o.max_frame_size), self.local_max_frame)
        self.channel_max = min(int(o.channel_max), self.channel_max)
        self.remote_idle_time_out = int(o.idle_time_out or 0)
        self.state = OPEN
        self.handler.on_open(o.hostname)

    def _peer_close(self, c: Any) -> None:
        self.error = c.error
        super()._peer_close(c)

    def close(self) -> None:
        """Close from this side (the peer's close ends it)."""
        if self.state == OPEN:
            self.send(0, T.Close())
            self.state = CLOSING
            self._release()
        elif self.state < OPEN:
            self._release()
            self._finish()

    # ------------------------------------------------------------ sessions
    def begin(self, user: Any = None) -> Session:
        used = {s.channel for s in self.sessions.values()} | set(self.pending_sessions)
        local = next(i for i in range(65536) if i not in used)
        s = Session(local, -1, self.session_window)
        s.user = user
        self.pending_sessions[local] = s
        self.send(
            local,
            T.Begin(
                next_outgoing_id=UInt(0),
                incoming_window=UInt(self.session_window),
                outgoing_window=UInt(s.outgoing_window),
                handle_max=UInt(2**32 - 1),
            ),
        )
        return s

    def _begin(self, channel: int, b: Any) -> None:
        ours = b.remote_channel
        s = self.pending_sessions.pop(int(ours), None) if ours is not None else None
        if s is None:
            raise ConnError(T.AMQP_ERROR_NOT_IMPLEMENTED, "a client does not accept sessions")
        s.remote_channel = channel
        s.next_incoming_id = int(b.next_outgoing_id)
        s.remote_incoming_window = int(b.incoming_window)
        s.remote_outgoing_window = int(b.outgoing_window)
        self.sessions[channel] = s
        self.handler.on_begin(s)

    # ------------------------------------------------------------ links
    def attach(
        self,
        s: Session,
        name: str,
        *,
        receiver: bool,
        address: str,
        settled: bool,
        user: Any = None,
        unsettled: dict[bytes, Any] | None = None,
    ) -> Link:
        """Attach a link: ``receiver`` consumes from ``address`` (the source), else it
        sends to it (the target); ``settled``: sender settle mode settled, else
        unsettled (receiver settle mode first). ``unsettled``: this side's unsettled
        map (delivery-tag -> state) for a link re-attached under its name (recovery);
        the peer's comes back in ``Link.peer_unsettled``."""
        used = {lk.handle for lk in s.links.values()}
        used |= {lk.handle for (ch, _n), lk in self.pending_links.items() if ch == s.channel}
        handle = next(i for i in range(2**32) if i not in used)
        link = Link(name, handle, -1, receiver)
        link.user = user
        link.snd_settle_mode = (
            T.SENDER_SETTLE_MODE_SETTLED if settled else T.SENDER_SETTLE_MODE_UNSETTLED
        )
        self.pending_links[(s.channel, name)] = link
        self.send(
            s.channel,
            T.Attach(
                name=name,
                handle=UInt(handle),
                role=receiver,
                snd_settle_mode=UByte(link.snd_settle_mode),
                rcv_settle_mode=UByte(T.RECEIVER_SETTLE_MODE_FIRST),
                source=T.Source(address=address) if receiver else T.Source(),
                target=T.Target() if receiver else T.Target(address=address),
                initial_delivery_count=None if receiver else UInt(0),
                unsettled=unsettled,
            ),
        )
        return link

    # ------------------------------------------------------------ sending
    def send_batch(
        self, s: Session, link: Link, first_tag: int, payload: bytes, n: int, settled: bool
    ) -> int:
        """Send ``n`` deliveries of the same ``payload`` on ``link``, tagged with the
        8-byte big-endian integers ``first_tag``.. (the load generator's producer);
        returns the first delivery-id. Pre-encoded frames in one write when they fit
        the link's credit, the peer's incoming window and one frame each; otherwise
        one ``send_transfer`` each (the caller checked the credit)."""
        did = s.next_delivery_id
        if (
            0 < n <= link.credit
            and n <= s.remote_incoming_window
            and not s.out_queue
            and link.handle < 256
            and did + n <= SEQ
            and 0 <= first_tag
            and first_tag + n <= 2**64
            and len(payload) <= self.send_max_frame - 72  # send_transfer's one frame
        ):
            write_transfers(self.out, s.channel, link.handle, did, first_tag, settled, payload, n)
            s.next_delivery_id = (did + n) % SEQ
            link.credit -= n
            link.delivery_count = (link.delivery_count + n) % SEQ
            s.next_outgoing_id = (s.next_outgoing_id + n) % SEQ
            s.remote_incoming_window -= n
            self.wake_once()
            return did
        for i in range(n):
            self.send_transfer(s, link, (first_tag + i).to_bytes(8, "big"), payload, settled)
        return did

    def _attach(self, s: Session, a: Any) -> None:
        link = self.pending_links.pop((s.channel, str(a.name)), None)
        if link is None:
            raise ConnError(T.AMQP_ERROR_NOT_IMPLEMENTED, "a client does not accept links")
        link.remote_handle = int(a.handle)
        if isinstance(a.unsettled, dict):
            link.peer_unsettled = {bytes(k): v for k, v in a.unsettled.items() if _is_tag(k)}
        s.links[link.remote_handle] = link
        s.by_name[link.name] = link
        refused = (a.source is None) if link.role else (a.target is None)
        if refused:
            return  # the peer's detach follows, with its error
        if link.role and a.initial_delivery_count is not None:
            link.delivery_count = int(a.initial_delivery_count)
        self.handler.after_attach(s, link)  # type: ignore[attr-defined]
