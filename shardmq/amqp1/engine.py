"""Sans-IO AMQP 1.0 connection, the accepting side: bytes in, performatives out
(``shardmq.amqp1.client.ClientEngine`` is the same engine turned round: the initiating
side).

Owns: ``Engine`` — the protocol header exchange (SASL first, or plain AMQP when the
handler allows it), SASL (mechanisms, init, outcome), open/close with max-frame-size,
channel-max and idle-time-out (empty frames as heartbeats), sessions (``Session``:
begin/end, the incoming and outgoing windows, next-incoming-id / next-outgoing-id,
flow frames), links (``Link``: attach/detach, handles, delivery-count and link-credit
on both roles), transfer assembly (multi-frame, aborted) and splitting outgoing
transfers over max-frame-size. It knows nothing about queues: it calls a ``Handler``
(the broker's AMQP 1.0 adapter, ``shardmq.adapter.amqp10``) and keeps the handler's
own object per link (``Link.user``).

Invariants:
- ``feed`` never raises: bad input becomes a detach (``LinkError``), an end
  (``SessionError``) or a close (``ConnError``) with one log line; after a decode or
  framing error the stream cannot be read on, so the close is followed by the end of
  the socket; an unexpected exception becomes amqp:internal-error on the connection.
- The broker's incoming window per session is ``session_window`` transfer frames; it
  is topped up (a flow frame) once half of it is used, at the end of a delivery (the
  frames of one still being assembled stay counted: they are held in memory); a peer that sends past it gets
  amqp:session:window-violation. Outgoing transfers wait while the peer's incoming
  window is 0 and leave, in order, when its flow opens it.
- A sending link sends only while it has credit; each delivery takes one credit and
  adds one to delivery-count. Drain with nothing left to send advances delivery-count
  by the remaining credit and answers with a flow.
- Receiver settle mode second on a link the peer sends on (exactly-once): an unsettled
  delivery leaves a ``Received`` record under its delivery-tag until the peer settles
  every delivery-id it came under; the broker's outcome (``settle_received``) goes out
  unsettled; a delivery with the tag of a record is a duplicate: never passed to the
  handler, answered with the record's outcome. A link's records end with it.
- A link that ends without being closed (the peer's detach with closed=false, or the
  connection lost without a close) has ``lost`` set before the handler's ``on_detach``:
  the handler may keep its unsettled deliveries for a re-attach (link recovery). The
  peer's attach keeps its ``unsettled`` map in ``Link.peer_unsettled``;
  ``resume_transfer`` resumes a delivery under its old delivery-tag (resume=true).
- Output goes to ``out``; ``wake`` is called once when it turns non-empty.
- Transfers and accepted/released dispositions are written by ``shardmq.amqp1.transfer``
  (no performative object); a delivery in one frame skips the assembly list; a
  one-frame delivery sent with ``send_transfer_q`` is the link's fixed frame head
  (``Link.thead``: channel and handle, computed once) and one pack.
- While open, a read's one-frame transfers in the layout ``write_transfer`` writes are
  taken by the hot loop ``shardmq.amqp1.inbound.transfers_in`` (the same bookkeeping,
  no ``Transfer`` or ``Delivery`` object: the handler's optional ``on_message``); any
  other frame, or one that gets an error, goes through ``_frame``. A read is parsed in
  place unless the start of a frame is left over from the previous one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.codec import DecodeError
from shardmq.amqp1.errors import AmqpError, ConnError, LinkError, SessionError
from shardmq.amqp1.framing import (
    EMPTY_FRAME,
    HEADER_AMQP,
    HEADER_SASL,
    MIN_MAX_FRAME_SIZE,
    TYPE_AMQP,
    TYPE_SASL,
    FramingError,
    parse_frame,
    write_frame,
)
from shardmq.amqp1.inbound import transfers_in
from shardmq.amqp1.transfer import (
    outcome_bytes,
    pack_transfer_q,
    transfer_head,
    write_disposition,
    write_transfer,
)
from shardmq.amqp1.values import Symbol, UInt

log = logging.getLogger("shardmq.amqp1")

# Connection states, ordered as the 0-9-1 engine's (OPEN = 4, CLOSING = 5, CLOSED = 6),
# which the I/O layer compares against.
AWAIT_HEADER, AWAIT_SASL_INIT, AWAIT_AMQP_HEADER, AWAIT_OPEN, OPEN, CLOSING, CLOSED = range(7)
SEQ = 2**32  # sequence numbers (transfer, delivery, delivery-count) wrap here


def _is_tag(key: object) -> bool:
    """A delivery-tag of an unsettled map (binary; anything else is ignored)."""
    return isinstance(key, (bytes, bytearray, memoryview))


class Handler(Protocol):
    """What the engine asks of the broker side (``shardmq.adapter.amqp10``)."""

    def mechanisms(self) -> list[str]: ...
    def authenticate(self, mechanism: str, response: bytes) -> bool: ...
    def allow_no_sasl(self) -> bool: ...
    def on_open(self, hostname: str | None) -> None: ...
    def on_begin(self, session: Session) -> None: ...
    def on_end(self, session: Session) -> None: ...
    def on_attach(self, session: Session, link: Link, attach: Any) -> Any: ...
    def after_attach(self, session: Session, link: Link) -> None: ...
    def on_detach(self, session: Session, link: Link, error: Any) -> None: ...
    def on_flow(self, session: Session, link: Link, drain: bool) -> None: ...
    def on_transfer(self, session: Session, link: Link, delivery: Delivery) -> None: ...
    def on_message(
        self, session: Session, link: Link, delivery_id: int, settled: bool, payload: bytes
    ) -> None:
        """A complete delivery, as ``on_transfer`` without the ``Delivery`` (the hot
        path). Optional: without it the engine builds a ``Delivery`` for
        ``on_transfer``; deliveries that need their tag (receiver-settle-mode second)
        always come through ``on_transfer``."""

    def on_disposition(self, session: Session, d: Any) -> None: ...
    def on_close(self) -> None: ...


class Delivery:
    """An incoming message (complete) on a link the peer sends on."""

    __slots__ = ("delivery_id", "tag", "settled", "payload", "rcv_settle_mode")

    def __init__(self, delivery_id: int, tag: bytes, settled: bool, payload: bytes) -> None:
        self.delivery_id = delivery_id
        self.tag = tag
        self.settled = settled
        self.payload = payload
        self.rcv_settle_mode: int | None = None


class Link:
    """One attached link. ``role`` is the broker's: False (sender: the broker sends,
    the peer receives) or True (receiver: the peer publishes)."""

    __slots__ = (
        "name",
        "handle",
        "remote_handle",
        "role",
        "snd_settle_mode",
        "rcv_settle_mode",
        "delivery_count",
        "credit",
        "drain",
        "user",
        "_partial",
        "_partial_size",
        "_partial_id",
        "_partial_tag",
        "_partial_settled",
        "detached",
        "received",
        "lost",
        "thead",
        "peer_unsettled",
    )

    def __init__(self, name: str, handle: int, remote_handle: int, role: bool) -> None:
        self.name = name
        self.handle = handle
        self.remote_handle = remote_handle
        self.role = role
        self.snd_settle_mode = T.SENDER_SETTLE_MODE_MIXED
        self.rcv_settle_mode = T.RECEIVER_SETTLE_MODE_FIRST
        self.delivery_count = 0
        self.credit = 0
        self.drain = False
        self.user: Any = None
        self._partial: list[bytes] | None = None
        self._partial_size = 0
        self._partial_id = 0
        self._partial_tag = b""
        self._partial_settled = False
        self.detached = False
        # receiver-settle-mode second, a link the peer sends on: delivery-tag -> the
        # record of a delivery received but not yet settled by the peer
        self.received: dict[bytes, Received] = {}
        # the link ended without being closed (connection lost, detach closed=false):
        # it may be resumed (the handler decides)
        self.lost = False
        # the fixed bytes of this link's one-frame transfers (``transfer.transfer_head``;
        # None until the first, b"" when the handle does not fit one octet)
        self.thead: bytes | None = None
        # the peer's attach: its unsettled map (delivery-tag -> state), link recovery
        self.peer_unsettled: dict[bytes, Any] | None = None


class Received:
    """An unsettled delivery received in receiver-settle-mode second: the broker's
    outcome (None until decided) and the delivery-ids it came under (a re-sent
    duplicate adds one)."""

    __slots__ = ("state", "ids")

    def __init__(self, delivery_id: int) -> None:
        self.state: Any = None
        self.ids = [delivery_id]


class Session:
    __slots__ = (
        "channel",
        "remote_channel",
        "next_incoming_id",
        "incoming_window",
        "next_outgoing_id",
        "outgoing_window",
        "remote_incoming_window",
        "remote_outgoing_window",
        "next_delivery_id",
        "links",
        "by_name",
        "out_queue",
        "user",
        "ending",
        "received_ids",
    )

    def __init__(self, channel: int, remote_channel: int, window: int) -> None:
        self.channel = channel
        self.remote_channel = remote_channel
        self.next_incoming_id = 0
        self.incoming_window = window
        self.next_outgoing_id = 0
        self.outgoing_window = 2**31 - 1
        self.remote_incoming_window = 0
        self.remote_outgoing_window = 0
        self.next_delivery_id = 0
        self.links: dict[int, Link] = {}  # by the peer's handle
        self.by_name: dict[str, Link] = {}
        # transfer frames waiting for the peer's incoming window: (link, frame bytes)
        self.out_queue: deque[tuple[Link, bytes]] = deque()
        self.user: Any = None
        self.ending = False  # the broker sent end
        # delivery-id -> (link, delivery-tag) of the ``Link.received`` records
        self.received_ids: dict[int, tuple[Link, bytes]] = {}


class Engine:
    def __init__(
        self,
        handler: Handler,
        wake: Callable[[], None],
        *,
        peer: str,
        container_id: str,
        max_frame_size: int,
        channel_max: int,
        idle_time_out: int,
        session_window: int,
        max_message_size: int,
    ) -> None:
        self.handler = handler
        self.wake = wake
        self.peer = peer
        self.container_id = container_id
        self.state = AWAIT_HEADER
        self.out = bytearray()
        self._woken = False
        self._buf = bytearray()
        self.local_max_frame = max_frame_size
        self.max_frame = MIN_MAX_FRAME_SIZE  # until open: what the peer may send us
        self.send_max_frame = MIN_MAX_FRAME_SIZE  # what we may send
        self.channel_max = channel_max
        self.idle_time_out = idle_time_out  # ms, ours
        self.remote_idle_time_out = 0  # ms, the peer's
        self.session_window = session_window
        self.max_message_size = max_message_size
        self.sessions: dict[int, Session] = {}  # by the peer's channel
        self.want_close = False
        self.recv_activity = True
        self.send_activity = False
        self._silent_ticks = 0
        self.out_hold = 0  # the I/O layer's output bound (this engine does not hold input)
        self.input_held = False
        self.user: str | None = None  # authenticated user (the handler sets it)
        self.remote_container_id = ""  # the peer's, from its open
        # the handler's hot-path entry for a complete delivery, if it has one
        self.on_message: Callable[[Session, Link, int, bool, bytes], None] | None = getattr(
            handler, "on_message", None
        )

    # ------------------------------------------------------------ output
    def wake_once(self) -> None:
        if not self._woken:
            self._woken = True
            self.wake()

    def take_output(self) -> bytearray | None:
        self._woken = False
        if not self.out:
            return None
        data, self.out = self.out, bytearray()
        if data != EMPTY_FRAME:  # our own heartbeat does not reset the send timer
            self.send_activity = True
        return data

    def send(self, channel: int, performative: Any, payload: bytes = b"", ftype: int = 0) -> None:
        write_frame(self.out, channel, performative, payload, ftype)
        self.wake_once()

    # ------------------------------------------------------------ input
    def continue_input(self) -> None:
        self.feed(b"")

    def feed(self, data: bytes) -> None:
        """Bytes from the peer. Never raises."""
        self.recv_activity = True
        if self.state >= CLOSED:
            return
        kept = self._buf
        if kept:  # the start of a frame waits for its end
            kept += data
            buf: bytes | bytearray = kept
        else:
            buf = data
        try:
            pos = self._parse(buf)
        except Exception as exc:
            if buf is not kept:
                self._buf = bytearray(buf)  # kept whole, as a buffered read would be
            self._parse_failed(exc)
            return
        if pos >= len(buf):
            if kept:
                self._buf = bytearray()
        elif buf is kept:
            del kept[:pos]
        else:
            self._buf = bytearray(buf[pos:])

    def _parse_failed(self, exc: Exception) -> None:
        if isinstance(exc, DecodeError | FramingError):
            cond = (
                T.AMQP_ERROR_DECODE_ERROR
                if isinstance(exc, DecodeError)
                else T.CONNECTION_ERROR_FRAMING_ERROR
            )
            # the byte stream cannot be read further: close, then the socket at once
            self.connection_error(ConnError(cond, str(exc)))
            self._finish()
        elif isinstance(exc, ConnError):
            self.connection_error(exc)
        elif isinstance(exc, AmqpError):  # a session or link error outside a session
            self.connection_error(ConnError(exc.condition, exc.description))
        else:  # a bug: never let it kill the worker
            from shardmq.amqp.connection import log_internal_error

            log_internal_error(log, f"amqp1 connection {self.peer}: internal error", exc)
            self.connection_error(ConnError(T.AMQP_ERROR_INTERNAL_ERROR, "internal error"))

    def _parse(self, buf: bytes | bytearray) -> int:
        pos = 0
        while self.state < CLOSED:
            if self.state == OPEN:
                pos = transfers_in(self, buf, pos)  # the hot loop: one-frame transfers
                if self.state != OPEN:
                    continue
            elif self.state in (AWAIT_HEADER, AWAIT_AMQP_HEADER):
                if len(buf) - pos < 8:
                    return pos
                header = bytes(buf[pos : pos + 8])
                pos += 8
                self._header(header)
                continue
            got = parse_frame(buf, pos, self.max_frame)
            if got is None:
                return pos
            ftype, channel, perf, payload, pos = got
            if perf is None:
                continue  # an empty frame: a heartbeat
            if self.state == AWAIT_SASL_INIT:
                if ftype != TYPE_SASL:
                    raise ConnError(T.CONNECTION_ERROR_FRAMING_ERROR, "SASL frame expected")
                self._sasl(perf)
                continue
            if ftype != TYPE_AMQP:
                raise ConnError(T.CONNECTION_ERROR_FRAMING_ERROR, f"frame type {ftype}")
            self._frame(channel, perf, payload)
        return len(buf)

    # ------------------------------------------------------------ header, SASL
    def _header(self, header: bytes) -> None:
        if self.state == AWAIT_HEADER and header == HEADER_SASL:
            self.out += HEADER_SASL
            mechs = [Symbol(m) for m in self.handler.mechanisms()]
            self.send(0, T.SaslMechanisms(sasl_server_mechanisms=mechs), ftype=TYPE_SASL)
            self.state = AWAIT_SASL_INIT
            return
        if header == HEADER_AMQP and (
            self.state == AWAIT_AMQP_HEADER or self.handler.allow_no_sasl()
        ):
            self.out += HEADER_AMQP
            self.wake_once()
            self.max_frame = self.local_max_frame
            self.state = AWAIT_OPEN
            return
        # not one we accept here: our preferred header, then close
        log.warning("amqp1 connection %s: protocol header %r refused", self.peer, header)
        self.out += HEADER_SASL if self.state == AWAIT_HEADER else HEADER_AMQP
        self._finish()

    def _sasl(self, perf: Any) -> None:
        if not isinstance(perf, T.SaslInit):
            raise ConnError(T.CONNECTION_ERROR_FRAMING_ERROR, "sasl-init expected")
        mech = str(perf.mechanism)
        ok = mech in self.handler.mechanisms() and self.handler.authenticate(
            mech, bytes(perf.initial_response or b"")
        )
        self.send(0, T.SaslOutcome(code=T.SASL_CODE_OK if ok else T.SASL_CODE_AUTH), ftype=1)
        if ok:
            self.state = AWAIT_AMQP_HEADER
        else:
            self._finish()

    # ------------------------------------------------------------ frames
    def _frame(self, channel: int, perf: Any, payload: bytes) -> None:
        if self.state == AWAIT_OPEN:
            if not isinstance(perf, T.Open):
                raise ConnError(T.AMQP_ERROR_ILLEGAL_STATE, "open expected")
            self._open(perf)
            return
        if self.state == CLOSING:
            if isinstance(perf, T.Close):
                self._finish()
            return  # after our close, only the peer's close counts
        if isinstance(perf, T.Close):
            self._peer_close(perf)
            return
        if isinstance(perf, T.Begin):
            self._begin(channel, perf)
            return
        session = self.sessions.get(channel)
        if session is None:
            raise ConnError(T.CONNECTION_ERROR_FRAMING_ERROR, f"channel {channel} has no session")
        try:
            self._session_frame(session, perf, payload)
        except SessionError as exc:
            self.end_session(session, exc)

    def _session_frame(self, session: Session, perf: Any, payload: bytes) -> None:
        if session.ending:
            if isinstance(perf, T.End):
                del self.sessions[session.remote_channel]
            return
        if isinstance(perf, T.Transfer):
            self._transfer(session, perf, payload)
        elif isinstance(perf, T.Disposition):
            if not perf.role and perf.settled:
                last = perf.first if perf.last is None else perf.last
                self._peer_settled(session, int(perf.first), int(last))
            self.handler.on_disposition(session, perf)
        elif isinstance(perf, T.Flow):
            self._flow(session, perf)
        elif isinstance(perf, T.Attach):
            self._attach(session, perf)
        elif isinstance(perf, T.Detach):
            self._detach(session, perf)
        elif isinstance(perf, T.End):
            self._peer_end(session, perf)
        elif isinstance(perf, T.Open):
            raise ConnError(T.AMQP_ERROR_ILLEGAL_STATE, "connection already open")
        else:
            raise ConnError(T.AMQP_ERROR_DECODE_ERROR, f"unexpected {type(perf).__name__}")

    def _open(self, o: Any) -> None:
        peer_max = int(o.max_frame_size)
        if peer_max < MIN_MAX_FRAME_SIZE:
            self._open_reply()
            raise ConnError(
                T.AMQP_ERROR_FRAME_SIZE_TOO_SMALL, f"max-frame-size {peer_max} is below 512"
            )
        self.send_max_frame = min(peer_max, self.local_max_frame)
        self.channel_max = min(int(o.channel_max), self.channel_max)
        self.remote_idle_time_out = int(o.idle_time_out or 0)
        self.remote_container_id = str(o.container_id)
        try:
            self.handler.on_open(o.hostname)
        except AmqpError as exc:
            self._open_reply()
            raise ConnError(exc.condition, exc.description) from None
        self._open_reply()
        self.state = OPEN

    def _open_reply(self) -> None:
        self.send(
            0,
            T.Open(
                container_id=self.container_id,
                max_frame_size=UInt(self.local_max_frame),
                channel_max=self.channel_max,
                idle_time_out=UInt(self.idle_time_out) if self.idle_time_out else None,
                properties={Symbol("product"): "shardmq"},
            ),
        )

    def _peer_close(self, c: Any) -> None:
        if c.error is not None:
            log.info("amqp1 connection %s: closed by peer: %s", self.peer, c.error)
        self.send(0, T.Close())
        self._release()
        self._finish()

    def _begin(self, channel: int, b: Any) -> None:
        if channel in self.sessions:
            raise ConnError(T.AMQP_ERROR_ILLEGAL_STATE, f"channel {channel} already has a session")
        if len(self.sessions) > self.channel_max:
            raise ConnError(
                T.AMQP_ERROR_RESOURCE_LIMIT_EXCEEDED, f"more than {self.channel_max} sessions"
            )
        if b.remote_channel is not None:
            raise ConnError(T.AMQP_ERROR_NOT_IMPLEMENTED, "the broker does not begin sessions")
        used = {s.channel for s in self.sessions.values()}
        local = channel if channel not in used else next(i for i in range(65536) if i not in used)
        s = Session(local, channel, self.session_window)
        s.next_incoming_id = int(b.next_outgoing_id)
        s.remote_incoming_window = int(b.incoming_window)
        s.remote_outgoing_window = int(b.outgoing_window)
        self.sessions[channel] = s
        self.handler.on_begin(s)
        self.send(
            local,
            T.Begin(
                remote_channel=channel,
                next_outgoing_id=UInt(s.next_outgoing_id),
                incoming_window=UInt(s.incoming_window),
                outgoing_window=UInt(s.outgoing_window),
                handle_max=UInt(2**32 - 1),
            ),
        )

    def _peer_end(self, s: Session, e: Any) -> None:
        self._drop_session(s)
        self.send(s.channel, T.End())

    def end_session(self, s: Session, exc: AmqpError) -> None:
        """End ``s`` from the broker's side with ``exc`` (its links go with it)."""
        log.warning("amqp1 connection %s: session %d ended: %s", self.peer, s.channel, exc)
        self._drop_session(s, keep=True)
        s.ending = True
        self.send(s.channel, T.End(error=exc.error()))

    def _drop_session(self, s: Session, keep: bool = False) -> None:
        for link in list(s.links.values()):
            self._forget_link(s, link, None)
        if not keep:
            self.sessions.pop(s.remote_channel, None)
        self.handler.on_end(s)

    # ------------------------------------------------------------ links
    def _attach(self, s: Session, a: Any) -> None:
        handle = int(a.handle)
        if handle in s.links:
            raise SessionError(T.SESSION_ERROR_HANDLE_IN_USE, f"handle {handle} is in use")
        role = not a.role  # the broker's role is the opposite of the peer's
        used = {lk.handle for lk in s.links.values()}
        local = handle if handle not in used else next(i for i in range(2**32) if i not in used)
        link = Link(str(a.name), local, handle, role)
        link.snd_settle_mode = int(a.snd_settle_mode)
        link.rcv_settle_mode = int(a.rcv_settle_mode)
        if not role and a.initial_delivery_count is not None:
            pass  # the peer receives: the broker's delivery-count starts at 0
        elif role:
            if a.initial_delivery_count is None:
                self._refuse_attach(
                    s,
                    link,
                    a,
                    LinkError(T.AMQP_ERROR_INVALID_FIELD, "initial-delivery-count is missing"),
                )
                return
            link.delivery_count = int(a.initial_delivery_count)
        if isinstance(a.unsettled, dict):
            link.peer_unsettled = {bytes(k): v for k, v in a.unsettled.items() if _is_tag(k)}
        s.links[handle] = link
        s.by_name[link.name] = link
        try:
            reply = self.handler.on_attach(s, link, a)
        except AmqpError as exc:
            del s.links[handle]
            s.by_name.pop(link.name, None)
            self._refuse_attach(s, link, a, exc)
            return
        if reply is None:
            return  # answered later (``complete_attach``): it waits for another process
        self.send(s.channel, reply)
        self.handler.after_attach(s, link)

    def complete_attach(self, s: Session, link: Link, reply: Any) -> None:
        """Answer an attach the handler left pending (no-op if the link is gone)."""
        if s.links.get(link.remote_handle) is not link or link.detached:
            return
        if self.sessions.get(s.remote_channel) is not s or self.state != OPEN:
            return
        self.send(s.channel, reply)
        self.handler.after_attach(s, link)

    def refuse_pending(self, s: Session, link: Link, a: Any, exc: AmqpError) -> None:
        """Refuse an attach the handler left pending."""
        if s.links.get(link.remote_handle) is not link or link.detached:
            return
        if self.sessions.get(s.remote_channel) is not s or self.state != OPEN:
            return
        del s.links[link.remote_handle]
        s.by_name.pop(link.name, None)
        self._refuse_attach(s, link, a, exc)
        self.wake_once()

    def _refuse_attach(self, s: Session, link: Link, a: Any, exc: AmqpError) -> None:
        """An attach the broker cannot serve: attach with a null terminus, then detach
        with the error (as the spec's "link refused" sequence)."""
        log.warning("amqp1 connection %s: link '%s' refused: %s", self.peer, link.name, exc)
        link.detached = True  # its handle stays taken until the peer's detach
        s.links[link.remote_handle] = link
        self.send(
            s.channel,
            T.Attach(
                name=a.name,
                handle=UInt(link.handle),
                role=link.role,
                source=a.source if link.role else None,
                target=a.target if not link.role else None,
                initial_delivery_count=UInt(0) if not link.role else None,
            ),
        )
        self.send(s.channel, T.Detach(handle=UInt(link.handle), closed=True, error=exc.error()))

    def _detach(self, s: Session, d: Any) -> None:
        link = s.links.get(int(d.handle))
        if link is None:
            raise SessionError(
                T.SESSION_ERROR_UNATTACHED_HANDLE, f"handle {int(d.handle)} is not attached"
            )
        if link.detached:  # the broker detached it first: this is the answer
            del s.links[link.remote_handle]
            return
        link.lost = not d.closed  # detached, not closed: it may be resumed
        self._forget_link(s, link, d.error)
        link.detached = True
        self.send(s.channel, T.Detach(handle=UInt(link.handle), closed=d.closed))

    def detach_link(self, s: Session, link: Link, exc: AmqpError | None) -> None:
        """Detach (close) ``link`` from the broker's side."""
        if exc is not None:
            log.warning("amqp1 connection %s: link '%s' detached: %s", self.peer, link.name, exc)
        if link.detached:
            return
        self._forget_link(s, link, None, keep_handle=True)
        link.detached = True
        err = exc.error() if exc is not None else None
        self.send(s.channel, T.Detach(handle=UInt(link.handle), closed=True, error=err))

    def _forget_link(self, s: Session, link: Link, error: Any, keep_handle: bool = False) -> None:
        """The link ends for the handler (once); its handle stays taken while the
        broker waits for the peer's detach (``keep_handle``)."""
        if link.received:
            for rec in link.received.values():
                for did in rec.ids:
                    s.received_ids.pop(did, None)
            link.received.clear()
        if s.links.get(link.remote_handle) is link and not link.detached:
            if not keep_handle:
                del s.links[link.remote_handle]
            if s.by_name.get(link.name) is link:
                del s.by_name[link.name]
            self.handler.on_detach(s, link, error)
        elif not keep_handle:
            s.links.pop(link.remote_handle, None)

    # ------------------------------------------------------------ flow
    def _flow(self, s: Session, f: Any) -> None:
        # the peer's view of the session: its incoming window over our outgoing ids
        nid = int(f.next_incoming_id) if f.next_incoming_id is not None else 0
        s.remote_incoming_window = (nid + int(f.incoming_window) - s.next_outgoing_id) % SEQ
        s.remote_outgoing_window = int(f.outgoing_window)
        self._send_queued(s)
        if f.handle is None:
            if f.echo:
                self.session_flow(s)
            return
        link = s.links.get(int(f.handle))
        if link is None:
            raise SessionError(
                T.SESSION_ERROR_UNATTACHED_HANDLE, f"handle {int(f.handle)} is not attached"
            )
        if link.detached:
            return  # the broker detached it; the peer's detach is on its way
        if not link.role:  # the broker sends on this link: the peer grants credit
            dc = int(f.delivery_count) if f.delivery_count is not None else 0
            credit = int(f.link_credit or 0)
            link.credit = max(0, (dc + credit - link.delivery_count) % SEQ)
            if link.credit > 2**31:
                link.credit = 0  # the peer's count ahead of ours: no credit
            link.drain = bool(f.drain)
            self.handler.on_flow(s, link, link.drain)
            if f.echo and not link.drain:
                self.link_flow(s, link)
        elif f.echo:
            self.link_flow(s, link)

    def session_flow(self, s: Session, link: Link | None = None) -> None:
        self.send(
            s.channel,
            T.Flow(
                next_incoming_id=UInt(s.next_incoming_id),
                incoming_window=UInt(s.incoming_window),
                next_outgoing_id=UInt(s.next_outgoing_id),
                outgoing_window=UInt(s.outgoing_window),
                handle=UInt(link.handle) if link is not None else None,
                delivery_count=UInt(link.delivery_count) if link is not None else None,
                link_credit=UInt(link.credit) if link is not None else None,
                drain=link.drain if link is not None else None,
            ),
        )

    def link_flow(self, s: Session, link: Link) -> None:
        self.session_flow(s, link)

    def grant(self, s: Session, link: Link, credit: int) -> None:
        """Give the peer's sending ``link`` ``credit`` (the broker receives on it)."""
        link.credit = credit
        self.link_flow(s, link)

    def drained(self, s: Session, link: Link) -> None:
        """The broker has nothing more for a draining link: use up the credit."""
        link.delivery_count = (link.delivery_count + link.credit) % SEQ
        link.credit = 0
        self.link_flow(s, link)

    # ------------------------------------------------------------ transfers in
    def _transfer(self, s: Session, t: Any, payload: bytes) -> None:
        if s.incoming_window <= 0:
            raise SessionError(
                T.SESSION_ERROR_WINDOW_VIOLATION, "transfer beyond the session's incoming window"
            )
        s.incoming_window -= 1
        s.next_incoming_id = (s.next_incoming_id + 1) % SEQ
        if not t.more and s.incoming_window <= self.session_window // 2:
            # the frames held so far were all processed (none is part of a delivery
            # still being assembled on this link): the window opens again
            s.incoming_window = self.session_window
            self.session_flow(s)
        link = s.links.get(int(t.handle))
        if link is None:
            raise SessionError(
                T.SESSION_ERROR_UNATTACHED_HANDLE, f"handle {int(t.handle)} is not attached"
            )
        if link.detached:
            return
        if not link.role:
            raise SessionError(T.AMQP_ERROR_ILLEGAL_STATE, "transfer on a link the broker sends on")
        try:
            self._link_transfer(s, link, t, payload)
        except LinkError as exc:
            self.detach_link(s, link, exc)

    def _link_transfer(self, s: Session, link: Link, t: Any, payload: bytes) -> None:
        if link._partial is None and not t.more and not t.aborted:
            # the hot path: a delivery in one frame
            if t.delivery_id is None:
                raise SessionError(T.AMQP_ERROR_INVALID_FIELD, "delivery-id is missing")
            if link.credit <= 0:
                raise LinkError(
                    T.LINK_ERROR_TRANSFER_LIMIT_EXCEEDED, "transfer without link credit"
                )
            if len(payload) > self.max_message_size:
                raise LinkError(
                    T.LINK_ERROR_MESSAGE_SIZE_EXCEEDED,
                    f"message larger than {self.max_message_size} bytes",
                )
            link.credit -= 1
            link.delivery_count = (link.delivery_count + 1) % SEQ
            tag = t.delivery_tag
            d = Delivery(
                int(t.delivery_id),
                tag if type(tag) is bytes else bytes(tag or b""),
                bool(t.settled),
                payload,
            )
            d.rcv_settle_mode = None if t.rcv_settle_mode is None else int(t.rcv_settle_mode)
            self._deliver(s, link, d)  # duplicate detection (receiver settle mode second)
            return
        if link._partial is None:
            if t.delivery_id is None:
                raise SessionError(T.AMQP_ERROR_INVALID_FIELD, "delivery-id is missing")
            if link.credit <= 0:
                raise LinkError(
                    T.LINK_ERROR_TRANSFER_LIMIT_EXCEEDED, "transfer without link credit"
                )
            link._partial = []
            link._partial_size = 0
            link._partial_id = int(t.delivery_id)
            link._partial_tag = bytes(t.delivery_tag or b"")
            link._partial_settled = False
        if t.settled is not None:
            link._partial_settled = bool(t.settled)
        if t.aborted:
            link._partial = None  # nothing of it is kept; it took no credit
            return
        link._partial.append(payload)
        link._partial_size += len(payload)
        if link._partial_size > self.max_message_size:
            link._partial = None
            raise LinkError(
                T.LINK_ERROR_MESSAGE_SIZE_EXCEEDED,
                f"message larger than {self.max_message_size} bytes",
            )
        if t.more:
            return
        parts, link._partial = link._partial, None
        link.credit -= 1
        link.delivery_count = (link.delivery_count + 1) % SEQ
        d = Delivery(
            link._partial_id,
            link._partial_tag,
            link._partial_settled,
            parts[0] if len(parts) == 1 else b"".join(parts),
        )
        d.rcv_settle_mode = None if t.rcv_settle_mode is None else int(t.rcv_settle_mode)
        self._deliver(s, link, d)

    def deliver_one(
        self, s: Session, link: Link, did: int, tag: bytes, settled: bool, payload: bytes
    ) -> None:
        """A complete one-frame delivery from the hot loop (``inbound``) that needs a
        ``Delivery``: to ``_deliver``."""
        self._deliver(s, link, Delivery(did, tag, settled, payload))

    def _deliver(self, s: Session, link: Link, d: Delivery) -> None:
        """A complete incoming delivery to the handler, unless it is a duplicate (every
        path that completes a delivery ends here)."""
        mode = link.rcv_settle_mode if d.rcv_settle_mode is None else d.rcv_settle_mode
        if not d.settled and mode == T.RECEIVER_SETTLE_MODE_SECOND:
            rec = link.received.get(d.tag)
            s.received_ids[d.delivery_id] = (link, d.tag)
            if rec is not None:
                # the same delivery-tag again while the first is not settled: a
                # duplicate (the exactly-once handshake): dropped, answered as the first
                log.info(
                    "amqp1 connection %s: link '%s': duplicate delivery-tag %r dropped",
                    self.peer,
                    link.name,
                    d.tag,
                )
                rec.ids.append(d.delivery_id)
                if rec.state is not None:
                    self.disposition(s, d.delivery_id, d.delivery_id, False, rec.state)
                return
            link.received[d.tag] = Received(d.delivery_id)
        self.handler.on_transfer(s, link, d)

    def settle_received(self, s: Session, link: Link, delivery_id: int, state: Any) -> None:
        """The broker's outcome for a delivery received on ``link``: settled at once,
        or in receiver-settle-mode second sent unsettled (to each delivery-id the
        delivery came under) and kept until the peer settles."""
        entry = s.received_ids.get(delivery_id)
        if entry is None or entry[0] is not link:
            self.disposition(s, delivery_id, delivery_id, True, state)
            return
        rec = link.received.get(entry[1])
        if rec is None:
            return
        rec.state = state
        for did in rec.ids:
            self.disposition(s, did, did, False, state)

    def _peer_settled(self, s: Session, first: int, last: int) -> None:
        """The peer (the sender) settled deliveries it sent: their records go."""
        ids = s.received_ids
        if not ids:
            return
        span = (last - first) % SEQ
        if span < len(ids):
            dids = [(first + i) % SEQ for i in range(span + 1)]
        else:
            dids = [did for did in ids if (did - first) % SEQ <= span]
        for did in dids:
            entry = ids.pop(did, None)
            if entry is None:
                continue
            link, tag = entry
            rec = link.received.get(tag)
            if rec is not None:
                rec.ids.remove(did)
                if not rec.ids:
                    del link.received[tag]

    # ------------------------------------------------------------ transfers out
    def send_transfer(
        self, s: Session, link: Link, tag: bytes, payload: bytes, settled: bool
    ) -> int:
        """Send one delivery on ``link`` (the caller checked its credit); returns its
        delivery-id. Split over frames of the negotiated size; frames past the peer's
        incoming window wait in the session's queue."""
        did = s.next_delivery_id
        s.next_delivery_id = (did + 1) % SEQ
        link.credit -= 1
        link.delivery_count = (link.delivery_count + 1) % SEQ
        room = self.send_max_frame - 64 - len(tag)
        channel = s.channel
        handle = link.handle
        if len(payload) <= room and not s.out_queue and s.remote_incoming_window > 0:
            # the hot path: one frame, straight out
            write_transfer(self.out, channel, handle, did, tag, settled, False, payload)
            s.next_outgoing_id = (s.next_outgoing_id + 1) % SEQ
            s.remote_incoming_window -= 1
            self.wake_once()
            return did
        first = True
        pos = 0
        n = len(payload)
        while True:
            chunk = payload[pos : pos + room]
            pos += len(chunk)
            more = pos < n
            frame = bytearray()
            if first:
                write_transfer(frame, channel, handle, did, tag, settled, more, chunk)
                first = False
            else:
                write_transfer(frame, channel, handle, None, None, None, more, chunk)
            if s.out_queue or s.remote_incoming_window <= 0:
                s.out_queue.append((link, bytes(frame)))
            else:
                self._emit(s, frame)
            if not more:
                break
        return did

    def send_transfer_q(
        self, s: Session, link: Link, tag: int, settled: bool, head: bytes, body: bytes
    ) -> int:
        """``send_transfer`` with the delivery-tag as an 8-byte number and the payload
        in two pieces (``head + body``, not joined here): a delivery that fits one
        frame is one ``struct.pack`` after the link's fixed frame head."""
        th = link.thead
        if th is None:
            th = link.thead = transfer_head(s.channel, link.handle)
        n = len(head) + len(body)
        if th and n <= self.send_max_frame - 72 and s.remote_incoming_window > 0:
            if not s.out_queue:
                did = s.next_delivery_id
                s.next_delivery_id = (did + 1) % SEQ
                link.credit -= 1
                link.delivery_count = (link.delivery_count + 1) % SEQ
                out = self.out
                out += pack_transfer_q(33 + n, th, did, 0xA008, tag, 0x4341 if settled else 0x4342)
                out += head
                out += body
                s.next_outgoing_id = (s.next_outgoing_id + 1) % SEQ
                s.remote_incoming_window -= 1
                if not self._woken:
                    self._woken = True
                    self.wake()
                return did
        return self.send_transfer(s, link, tag.to_bytes(8, "big"), head + body, settled)

    def resume_transfer(
        self,
        s: Session,
        link: Link,
        tag: bytes,
        payload: bytes = b"",
        *,
        settled: bool = False,
        state: Any = None,
        aborted: bool = False,
    ) -> int:
        """Resume an unsettled delivery of a recovered link under its delivery-tag
        (transfer with resume=true; spec 2.6.13): its message again (``payload``), or
        no message with ``settled`` and the ``state`` both ends agree on, or
        ``aborted`` (the peer discards it). Takes a credit, as a delivery (not when
        aborted: as a receiving engine counts an aborted delivery); returns the
        delivery-id it gets on this link."""
        did = s.next_delivery_id
        s.next_delivery_id = (did + 1) % SEQ
        if not aborted:
            link.credit -= 1
            link.delivery_count = (link.delivery_count + 1) % SEQ
        room = max(1, self.send_max_frame - 160 - len(tag))
        pos = 0
        first = True
        while True:
            chunk = payload[pos : pos + room]
            pos += len(chunk)
            more = pos < len(payload)
            perf = (
                T.Transfer(
                    handle=UInt(link.handle),
                    delivery_id=UInt(did),
                    delivery_tag=tag,
                    message_format=UInt(0),
                    settled=settled or aborted,
                    more=more,
                    state=state,
                    resume=True,
                    aborted=aborted,
                )
                if first
                else T.Transfer(handle=UInt(link.handle), more=more)
            )
            first = False
            frame = bytearray()
            write_frame(frame, s.channel, perf, chunk)
            if s.out_queue or s.remote_incoming_window <= 0:
                s.out_queue.append((link, bytes(frame)))
            else:
                self._emit(s, frame)
            if not more:
                return did

    def _emit(self, s: Session, frame: bytes | bytearray) -> None:
        self.out += frame
        s.next_outgoing_id = (s.next_outgoing_id + 1) % SEQ
        s.remote_incoming_window -= 1
        self.wake_once()

    def _send_queued(self, s: Session) -> None:
        q = s.out_queue
        while q and s.remote_incoming_window > 0:
            link, frame = q.popleft()
            if not link.detached:
                self._emit(s, frame)

    def session_blocked(self, s: Session) -> bool:
        """Transfers of ``s`` wait for the peer's window."""
        return bool(s.out_queue)

    def disposition(
        self, s: Session, first: int, last: int, settled: bool, state: Any, role: bool = True
    ) -> None:
        enc = outcome_bytes(state)
        if enc is not None:  # accepted, released: the hot path
            write_disposition(self.out, s.channel, role, first, last, settled, enc)
            self.wake_once()
            return
        self.send(
            s.channel,
            T.Disposition(
                role=role,
                first=UInt(first),
                last=UInt(last) if last != first else None,
                settled=settled,
                state=state,
            ),
        )

    # ------------------------------------------------------------ closing
    def connection_error(self, exc: AmqpError) -> None:
        """Close the connection with ``exc`` (one log line)."""
        if self.state >= CLOSING:
            return
        log.warning("amqp1 connection %s: closing: %s", self.peer, exc)
        if self.state < AWAIT_OPEN:
            self._release()
            self._finish()
            return
        if self.state == AWAIT_OPEN:
            self._open_reply()
        self.send(0, T.Close(error=exc.error()))
        self.state = CLOSING
        self._release()

    def server_close(self, condition: str, text: str) -> None:
        """Close from the broker's side (shutdown, admin action)."""
        if self.state >= CLOSING:
            return
        if self.state < OPEN:
            self._release()
            self._finish()
            return
        self.send(0, T.Close(error=T.Error(condition=Symbol(condition), description=text)))
        self.state = CLOSING
        self._release()

    def _release(self) -> None:
        for s in list(self.sessions.values()):
            self._drop_session(s)
        self.sessions.clear()
        if self.handler is not None:
            self.handler.on_close()

    def _finish(self) -> None:
        self.state = CLOSED
        self.want_close = True
        self.wake_once()

    def connection_lost(self) -> None:
        if self.state < CLOSED:
            if self.state < CLOSING:  # gone without a close: its links may be resumed
                for s in self.sessions.values():
                    for link in s.links.values():
                        link.lost = True
            self.state = CLOSED
            self._release()
        elif self.sessions:
            self._release()

    # ------------------------------------------------------------ idle time-out
    def tick_seconds(self) -> float:
        """How often ``heartbeat_tick`` must run (0: never)."""
        ticks = [t / 2000 for t in (self.idle_time_out, self.remote_idle_time_out) if t]
        return min(ticks) if ticks else 0.0

    def heartbeat_tick(self) -> bool:
        """Send an empty frame if nothing went out since the last tick; False when the
        peer was silent for twice our idle-time-out."""
        if not self.send_activity and self.state == OPEN and self.remote_idle_time_out:
            self.out += EMPTY_FRAME
            self.wake_once()
        self.send_activity = False
        if self.recv_activity:
            self.recv_activity = False
            self._silent_ticks = 0
            return True
        self._silent_ticks += 1
        if not self.idle_time_out:
            return True
        tick = self.tick_seconds()
        alive = self._silent_ticks * tick < 2 * self.idle_time_out / 1000
        if not alive:
            log.warning(
                "amqp1 connection %s: nothing received for twice the idle time-out (%d ms)",
                self.peer,
                self.idle_time_out,
            )
        return alive
