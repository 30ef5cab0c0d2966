"""Sans-IO AMQP 0-9-1 server connection: bytes in, frames parsed, bytes out.

Owns: ``AMQPConnection`` — the protocol header check, frame parsing with the frame_max
guard, the handshake (start / start-ok / tune / tune-ok / open), content assembly
(publish + header + body frames), channel open/close bookkeeping at protocol level,
heartbeat accounting and the close handshakes in both directions — and ``ChannelFrames``,
the per-channel protocol state (content being assembled, frames held while the channel
is suspended). It knows nothing about queues or exchanges: it calls a
``ConnectionHandler`` (the broker's 0-9-1 adapter, ``shardmq.adapter.amqp091``), which
keeps its own object per channel (``ChannelFrames.user``).

Invariants:
- ``feed`` never raises: bad peer input becomes a channel.close (``SoftError``) or a
  connection.close (``HardError``) with a log line; an unexpected exception becomes 541
  and one ERROR line (``log_internal_error``: its traceback once per process and place).
- As RabbitMQ 3.10: the negotiated channel_max bounds how many channels are open at
  once (530 past it), not their numbers (1-65535); a heartbeat frame with a payload is
  501, one on another channel than 0 is 505, with RabbitMQ's texts.
- Output goes to ``self.out``; ``self.wake()`` is called once when it turns non-empty,
  so the I/O layer writes once per loop turn.
- After the server sent connection.close, only close / close-ok are processed; after it
  sent channel.close on a channel, frames on that channel are dropped until close-ok.
- A suspended channel (its method awaits another process) keeps every later frame in
  ``pending``, in order, until ``resume``: one rule for every frame type.
- With ``out_hold`` set, parsing stops after the channel method whose reply took
  ``out`` past it; the unparsed frames keep their order (in ``_buf``, or in the
  channel's ``pending`` when it was being resumed) until ``continue_input``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import IntEnum
from typing import Any, Generic, Protocol, TypeVar

from shardmq.amqp import methods as M
from shardmq.amqp.codec import (
    BASIC_ACK,
    BASIC_PUBLISH,
    CONTENT_HDR,
    END_HDR,
    FRAME_BODY,
    FRAME_END,
    FRAME_END_BYTES,
    FRAME_HDR,
    FRAME_HDR_IDS,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    U32,
    U64,
    U64_BIT,
)
from shardmq.amqp.constants import CLASS_IDS
from shardmq.amqp.errors import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_ERROR,
    INTERNAL_ERROR,
    NOT_ALLOWED,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    REPLY_SUCCESS,
    UNEXPECTED_FRAME,
    AMQPError,
    HardError,
    SoftError,
    reply_name,
)
from shardmq.oplog import event

log = logging.getLogger("shardmq.connection")

# Where internal errors were already logged with their traceback: (type, file, line).
_TRACED: set[tuple[str, str, int]] = set()
_TRACED_MAX = 256


def log_internal_error(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """An unexpected exception while serving a client (a bug): one ERROR line each
    time, the traceback only the first time this failure (exception type and where it
    was raised) is seen in this process, and at DEBUG level. A client that can trigger
    it cannot multiply the log."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (type(exc).__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb else None
    line = f"{what}: {type(exc).__name__}: {str(exc)[:200]}"
    if where is not None and where not in _TRACED and len(_TRACED) < _TRACED_MAX:
        _TRACED.add(where)
        logger.error("%s", line, exc_info=exc)
        return
    logger.error("%s (traceback logged before, or at debug level)", line)
    logger.debug("%s", what, exc_info=exc)


_unpack_hdr = FRAME_HDR.unpack_from
_unpack_hdr_ids = FRAME_HDR_IDS.unpack_from
_unpack_content_hdr = CONTENT_HDR.unpack_from
_unpack_end_hdr = END_HDR.unpack_from
_unpack_u32 = U32.unpack_from
_unpack_u64 = U64.unpack_from
_unpack_qb = U64_BIT.unpack_from
_pack_hdr = FRAME_HDR.pack


class ConnState(IntEnum):
    """Where the connection is; ordered, so ``state >= CLOSING`` reads naturally. The
    connection stores the plain ints below (an IntEnum member would take CPython's slow
    comparison path on every frame); ``ConnState(conn.state)`` names one."""

    AWAIT_HEADER = 0  # nothing received yet
    AWAIT_START_OK = 1  # connection.start sent
    AWAIT_TUNE_OK = 2  # authenticated, connection.tune sent
    AWAIT_OPEN = 3  # tuned, waiting for connection.open
    OPEN = 4  # channels may be used
    CLOSING = 5  # the server sent connection.close, waits for close-ok
    CLOSED = 6  # done: the I/O layer closes the transport


AWAIT_HEADER, AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPEN, CLOSING, CLOSED = map(int, ConnState)


class Expect(IntEnum):
    """What a channel accepts next (stored as the plain ints below, as ``ConnState``)."""

    METHOD = 0
    HEADER = 1  # a content header (after basic.publish)
    BODY = 2  # more content body frames
    SUSPENDED = 3  # its method awaits another process: later frames wait in ``pending``


EXPECT_METHOD, EXPECT_HEADER, EXPECT_BODY, EXPECT_SUSPENDED = map(int, Expect)

_CONNECTION_CLOSE = M.ConnectionClose.INDEX
_CONNECTION_CLOSE_OK = M.ConnectionCloseOk.INDEX
_CHANNEL_OPEN = M.ChannelOpen.INDEX
_CHANNEL_CLOSE = M.ChannelClose.INDEX
_CHANNEL_CLOSE_OK = M.ChannelCloseOk.INDEX

U = TypeVar("U")  # what the handler keeps per channel


class ChannelFrames(Generic[U]):
    """Protocol-level state of one open channel; ``user`` is the handler's object."""

    __slots__ = (
        "number",
        "user",
        "closing",
        "expect",
        "asm_exrk",
        "asm_exlen",
        "asm_flags",
        "asm_parts",
        "asm_hsize",
        "asm_fmax",
        "asm_remaining",
        "pending",
    )

    def __init__(self, number: int, user: U) -> None:
        self.number = number
        self.user = user
        self.closing = False  # we sent channel.close: drop frames until close-ok
        self.expect = EXPECT_METHOD
        self.asm_exrk = b""  # the publish being assembled: exchange + routing key bytes
        self.asm_exlen = 0
        self.asm_flags = 0  # mandatory (1), immediate (2)
        self.asm_parts: list[bytes] = []
        self.asm_hsize = 0
        self.asm_fmax = 0
        self.asm_remaining = 0
        self.pending = bytearray()


class ConnectionHandler(Protocol[U]):
    """What the engine calls: the broker side of one connection (``U``: its channel)."""

    def mechanisms(self) -> tuple[str, ...]: ...

    def authenticate(self, mechanism: str, response: bytes) -> bool: ...

    def on_tuned(self) -> None: ...

    def open_vhost(self, vhost: str) -> None: ...

    def on_channel_open(self, number: int) -> U: ...

    def on_channel_closed(self, user: U) -> None: ...

    def on_connection_closed(self) -> None: ...

    def on_method(self, user: U, method: M.Method) -> None: ...

    def on_publish(
        self, user: U, exrk: bytes, exlen: int, flags: int, raw: bytes, hsize: int, fmax: int
    ) -> None:
        """A complete publish. ``raw`` holds the content header frame and the body
        frame(s) exactly as received (envelopes included); ``hsize`` is the header
        payload size and ``fmax`` the largest frame payload in ``raw``."""

    def on_ack(self, user: U, delivery_tag: int, multiple: int) -> None: ...


class AMQPConnection(Generic[U]):
    """Server side of one AMQP connection, independent of any transport and broker."""

    def __init__(
        self,
        handler: ConnectionHandler[U],
        wake: Callable[[], None],
        *,
        frame_max: int = 131072,
        channel_max: int = 2047,
        heartbeat: int = 60,
        max_message_size: int = 128 * 1024 * 1024,
        server_properties: dict[str, Any] | None = None,
        peer: str = "?",
    ) -> None:
        self.handler = handler
        self.wake = wake
        self.out = bytearray()
        self.peer = peer
        # how log lines name this connection (the adapter adds user and vhost once open)
        self.label = peer
        self.log_fields: dict[str, Any] = {"peer": peer}
        # why the connection ended ("" while it lives; see ``connection_lost``)
        self.close_reason = ""
        self.state = AWAIT_HEADER
        self.server_frame_max = frame_max
        self.server_channel_max = channel_max
        self.server_heartbeat = heartbeat
        self.max_message_size = max_message_size
        self.server_properties = server_properties or {}
        # Negotiated values (frame_max before tune-ok: the server's offer).
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = 0
        self.client_properties: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        self.channels: dict[int, ChannelFrames[U]] = {}
        self._buf = bytearray()
        self.recv_activity = True
        self.send_activity = False
        self._silent_ticks = 0
        self.want_close = False  # the I/O layer closes the transport after flushing
        self._woken = False
        # Input back-pressure: parsing stops after a channel method once ``out`` holds
        # more than ``out_hold`` bytes (0: never); the rest waits (``input_held``)
        # until the I/O layer calls ``continue_input``.
        self.out_hold = 0
        self._stopped = False  # parsing of _buf stopped at out_hold
        self._held_channels: list[ChannelFrames[U]] = []  # resumed, stopped at out_hold

    # ----------------------------------------------------------------- output
    def wake_once(self) -> None:
        """Output is waiting: ask the I/O layer for one write this loop turn."""
        if not self._woken:
            self._woken = True
            self.wake()

    def take_output(self) -> bytearray | None:
        """The I/O layer calls this once per loop turn; returns bytes to write."""
        self._woken = False
        if not self.out:
            return None
        data = self.out
        self.out = bytearray()
        self.send_activity = True
        return data

    def send_method(self, channel: int, method: M.Method) -> None:
        payload = method.encode()
        out = self.out
        out += _pack_hdr(FRAME_METHOD, channel, len(payload))
        out += payload
        out += FRAME_END_BYTES
        self.wake_once()

    # ------------------------------------------------------------------ input
    def feed(self, data: bytes) -> None:
        """Process bytes from the peer. Never raises."""
        self.recv_activity = True
        self._stopped = False
        if self.state >= CLOSED:
            return
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        try:
            pos = self._parse(buf)
        except AMQPError as exc:
            self.connection_error(exc)
            return
        except Exception as exc:  # a bug: never let it kill the worker
            log_internal_error(log, f"connection {self.peer}: internal error while parsing", exc)
            self.connection_error(HardError(INTERNAL_ERROR, "internal error"))
            return
        if pos >= len(buf):
            if self._buf:
                self._buf = bytearray()
        elif buf is self._buf:
            del self._buf[:pos]
        else:
            self._buf = bytearray(memoryview(buf)[pos:])

    @property
    def input_held(self) -> bool:
        """Received frames wait because ``out`` passed ``out_hold``: call
        ``continue_input`` once the output is written."""
        return self._stopped or bool(self._held_channels)

    def continue_input(self) -> None:
        """Parse what ``out_hold`` held back: resumed channels first, then ``_buf``
        (stopping again if the output passes ``out_hold``)."""
        held, self._held_channels = self._held_channels, []
        self._stopped = False
        for i, ch in enumerate(held):
            self.resume(ch.number, ch.user)
            if self.input_held:
                self._held_channels += held[i + 1 :]
                return
        self.feed(b"")

    def _parse(self, buf: bytes | bytearray) -> int:
        n = len(buf)
        pos = 0
        if self.state == AWAIT_HEADER:
            if n < 8:
                if PROTOCOL_HEADER[:n] != bytes(buf[:n]):
                    self._bad_header(bytes(buf[:n]))
                    return n
                return 0
            if bytes(buf[:8]) != PROTOCOL_HEADER:
                self._bad_header(bytes(buf[:8]))
                return n
            pos = 8
            self._send_start()
        return self._parse_frames(buf, pos)

    def _parse_frames(self, buf: bytes | bytearray, pos: int) -> int:
        """Parse whole frames from ``pos``; returns where the first incomplete one
        starts. Publish (method + header + body in this buffer) and ack are handled
        inline; every other frame goes to its handler.

        Shaped for few objects per message: a position past 256 is a new int object
        at every ``+``, so offsets are summed small first (``pos + (size + 7)``) and
        each position is computed once; fixed fields come in one unpack (a tuple of
        small ints); a publish whose header and single body frame follow whole is
        taken in one step."""
        # Content is copied out of ``buf`` once: slicing a bytearray copies, and bytes()
        # of that copy copies again, so take bytearray slices through a memoryview (it
        # dies with this frame, before ``feed`` resizes the buffer). A bytes buffer is
        # sliced as is (bytes() of a bytes slice would only add a call).
        is_bytes = buf.__class__ is bytes
        view: Any = buf if is_bytes else memoryview(buf)
        n = len(buf)
        last = n - 7  # a frame header starts at or before this
        last_ids = n - 11  # ... and the class and method ids too
        last_whole = n - 31  # a content header (22 bytes or more) and body frame (9 or more)
        last_body = n - 8  # a frame end octet and the next frame's header fit before this
        limit = self.frame_max - 8
        channels = self.channels
        handler = self.handler
        while pos <= last:
            if pos <= last_ids:
                ftype, chnum, size, cid, mid = _unpack_hdr_ids(buf, pos)
            else:  # no complete method frame with its ids starts here
                ftype, chnum, size = _unpack_hdr(buf, pos)
                cid = mid = 0
            if size > limit:
                raise HardError(
                    FRAME_ERROR,
                    f"frame size {size + 8} larger than negotiated frame_max {self.frame_max}",
                )
            end = pos + (size + 7)
            if end >= n:
                break
            if buf[end] != FRAME_END:
                raise HardError(FRAME_ERROR, f"bad frame end octet {buf[end]:#x}")
            ch = channels.get(chnum) if chnum else None
            if ch is None or ch.closing:
                pos = self._frame_without_channel(ch, ftype, chnum, buf, pos, end)
            elif ch.expect == EXPECT_SUSPENDED and 0 < ftype < 4:
                ch.pending += buf[pos : end + 1]
                pos = end + 1
                continue
            elif ftype == FRAME_METHOD:
                if ch.expect != EXPECT_METHOD:
                    raise HardError(
                        UNEXPECTED_FRAME,
                        f"expected content frame on channel {chnum}, got method frame",
                    )
                if size < 4:
                    raise HardError(FRAME_ERROR, "method frame too short")
                if mid == 40 and cid == 60:  # basic.publish
                    # reserved-1 short, exchange shortstr, routing-key shortstr, bits;
                    # offsets from p are small ints (the frame end octet is at p + room)
                    p = pos + 13
                    el = buf[p]
                    room = size - 6
                    r = el + 1
                    if r >= room:
                        raise HardError(FRAME_ERROR, "malformed basic.publish")
                    r = r + 1 + buf[p + r]
                    if r >= room:
                        raise HardError(FRAME_ERROR, "malformed basic.publish")
                    q = p + r
                    exrk: bytes = view[p:q] if is_bytes else bytes(view[p:q])
                    flags = buf[q]
                    pos = end + 1
                    # In one step when the content header and one body frame follow
                    # whole and pass every check the frame-by-frame path makes (which
                    # would then publish exactly this); else that path takes them.
                    if pos <= last_whole:
                        t1, c1, hsize, cls, _w, bsize = _unpack_content_hdr(buf, pos)
                        hend = pos + (hsize + 7)  # the header's frame end, then the body
                        if (
                            t1 == FRAME_HEADER
                            and c1 == chnum
                            and cls == 60
                            and 14 <= hsize <= limit
                            and 0 < bsize <= limit
                            and bsize <= self.max_message_size
                            and hend < last_body
                        ):
                            fend, t2, c2, s2 = _unpack_end_hdr(buf, hend)
                            e2 = hend + (s2 + 8)
                            if (
                                fend == FRAME_END
                                and t2 == FRAME_BODY
                                and c2 == chnum
                                and s2 == bsize
                                and e2 < n
                                and buf[e2] == FRAME_END
                            ):
                                nxt = e2 + 1
                                raw = view[pos:nxt] if is_bytes else bytes(view[pos:nxt])
                                fmax = hsize if hsize > s2 else s2
                                try:
                                    handler.on_publish(ch.user, exrk, el, flags, raw, hsize, fmax)
                                except SoftError as exc:
                                    self.channel_error(ch, exc, BASIC_PUBLISH)
                                pos = nxt
                                if self.state >= CLOSED:
                                    return n
                                continue
                    ch.asm_exrk = exrk
                    ch.asm_exlen = el
                    ch.asm_flags = flags
                    ch.expect = EXPECT_HEADER
                    continue
                elif mid == 80 and cid == 60:  # basic.ack
                    if size < 13:
                        raise HardError(FRAME_ERROR, "malformed basic.ack")
                    tag, bits = _unpack_qb(buf, pos + 11)
                    try:
                        handler.on_ack(ch.user, tag, bits & 1)
                    except SoftError as exc:
                        self.channel_error(ch, exc, BASIC_ACK)
                    pos = end + 1
                else:
                    self._channel_method(ch, (cid << 16) | mid, buf, pos + 11)
                    if self.out_hold and len(self.out) > self.out_hold:
                        self._stopped = True  # replies pile up: the rest once written
                        return end + 1
                    pos = end + 1
            elif ftype == FRAME_HEADER:
                if ch.expect != EXPECT_HEADER:
                    raise HardError(
                        UNEXPECTED_FRAME,
                        f"expected method frame on channel {chnum}, got content header",
                    )
                if size < 14:
                    raise HardError(FRAME_ERROR, "content header too short")
                if buf[pos + 7] != 0 or buf[pos + 8] != 60:
                    raise HardError(
                        UNEXPECTED_FRAME,
                        f"expected content header for class 60 on channel {chnum}",
                    )
                bsize = _unpack_u64(buf, pos + 11)[0]
                p2 = end + 1
                if 0 < bsize <= limit and n - p2 >= 8:
                    # Fast path: the whole body follows as one frame in this buffer;
                    # keep header + body frames as one slice, as they will go out.
                    t2, c2, s2 = _unpack_hdr(buf, p2)
                    e2 = p2 + (s2 + 7)
                    if (
                        t2 == FRAME_BODY
                        and c2 == chnum
                        and s2 == bsize
                        and e2 < n
                        and buf[e2] == FRAME_END
                        and bsize <= self.max_message_size
                    ):
                        ch.expect = EXPECT_METHOD
                        nxt = e2 + 1
                        raw = view[pos:nxt] if is_bytes else bytes(view[pos:nxt])
                        self._publish(ch, raw, size, size if size > s2 else s2)
                        pos = nxt
                        if self.state >= CLOSED:
                            return n
                        continue
                self._content_header(ch, bsize, bytes(view[pos : end + 1]), size)
                pos = end + 1
            elif ftype == FRAME_BODY:
                self._content_body(ch, bytes(view[pos : end + 1]), size)
                pos = end + 1
            elif ftype == FRAME_HEARTBEAT:
                raise _bad_heartbeat(chnum, bytes(view[pos + 7 : end]))
            else:
                raise HardError(FRAME_ERROR, f"unknown frame type {ftype}")
            if self.state >= CLOSED:
                return n
        return pos

    # ------------------------------------------------------------ frame handlers
    def _frame_without_channel(
        self,
        ch: ChannelFrames[U] | None,
        ftype: int,
        chnum: int,
        buf: bytes | bytearray,
        pos: int,
        end: int,
    ) -> int:
        """A frame on channel 0, on a channel that is not open, or on one we are
        closing (``ch.closing``: only its close / close-ok matter)."""
        if ftype == FRAME_METHOD:
            if end - pos - 7 < 4:
                raise HardError(FRAME_ERROR, "method frame too short")
            idx = _unpack_u32(buf, pos + 7)[0]
            if chnum == 0 or self.state != OPEN:
                self._channel0_method(chnum, idx, buf, pos + 11)
            elif ch is None:
                self._unopened_channel_method(chnum, idx)
            elif idx == _CHANNEL_CLOSE_OK or idx == _CHANNEL_CLOSE:
                self._channel_closed_by_ok(ch, idx)
        elif ftype == FRAME_HEARTBEAT:
            if chnum != 0 or end > pos + 7:
                raise _bad_heartbeat(chnum, bytes(buf[pos + 7 : end]))
        elif ftype == FRAME_HEADER or ftype == FRAME_BODY:
            if ch is None:
                what = "content header" if ftype == FRAME_HEADER else "content body"
                raise HardError(UNEXPECTED_FRAME, f"{what} on channel {chnum} (not open)")
        else:
            raise HardError(FRAME_ERROR, f"unknown frame type {ftype}")
        return end + 1

    def _content_header(self, ch: ChannelFrames[U], bsize: int, frame: bytes, size: int) -> None:
        """A content header whose body does not follow whole in this buffer."""
        if bsize == 0:
            ch.expect = EXPECT_METHOD
            self._publish(ch, frame, size, size)
        elif bsize > self.max_message_size:
            ch.expect = EXPECT_METHOD
            self.channel_error(
                ch,
                SoftError(
                    PRECONDITION_FAILED,
                    f"message size {bsize} is larger than configured max size "
                    f"{self.max_message_size}",
                    60,
                    40,
                ),
                BASIC_PUBLISH,
            )
        else:
            ch.asm_parts = [frame]
            ch.asm_hsize = size
            ch.asm_fmax = size
            ch.asm_remaining = bsize
            ch.expect = EXPECT_BODY

    def _content_body(self, ch: ChannelFrames[U], frame: bytes, size: int) -> None:
        if ch.expect != EXPECT_BODY:
            raise HardError(
                UNEXPECTED_FRAME, f"unexpected content body frame on channel {ch.number}"
            )
        remaining = ch.asm_remaining - size
        if remaining < 0:
            raise HardError(FRAME_ERROR, "content body larger than announced")
        ch.asm_parts.append(frame)
        if size > ch.asm_fmax:
            ch.asm_fmax = size
        ch.asm_remaining = remaining
        if remaining == 0:
            ch.expect = EXPECT_METHOD
            raw = b"".join(ch.asm_parts)
            ch.asm_parts = []
            self._publish(ch, raw, ch.asm_hsize, ch.asm_fmax)

    # ------------------------------------------------------------ suspension
    def suspend(self, number: int) -> None:
        """Hold further frames of channel ``number`` until ``resume`` (the current
        method awaits a reply from another process)."""
        self.channels[number].expect = EXPECT_SUSPENDED

    def resume(self, number: int, user: U) -> None:
        """Process, in order, the frames that arrived while the channel was suspended
        (nothing if ``user``'s channel is gone meanwhile)."""
        ch = self.channels.get(number)
        if ch is None or ch.user is not user or ch.expect != EXPECT_SUSPENDED:
            return
        ch.expect = EXPECT_METHOD
        if not ch.pending or self.state >= CLOSING:
            ch.pending = bytearray()
            return
        data = bytes(ch.pending)
        ch.pending = bytearray()
        try:
            pos = self._parse_frames(data, 0)
            if pos < len(data):  # stopped at out_hold: the rest waits, in order
                self._stopped = False
                ch.pending += data[pos:]
                if ch.expect != EXPECT_SUSPENDED:  # (else its answer resumes it)
                    ch.expect = EXPECT_SUSPENDED
                    self._held_channels.append(ch)
        except AMQPError as exc:
            self.connection_error(exc)
        except Exception as exc:
            log_internal_error(log, f"connection {self.peer}: internal error while resuming", exc)
            self.connection_error(HardError(INTERNAL_ERROR, "internal error"))

    def _publish(self, ch: ChannelFrames[U], raw: bytes, hsize: int, fmax: int) -> None:
        try:
            self.handler.on_publish(
                ch.user, ch.asm_exrk, ch.asm_exlen, ch.asm_flags, raw, hsize, fmax
            )
        except SoftError as exc:
            self.channel_error(ch, exc, BASIC_PUBLISH)

    def _decode(self, idx: int, buf: bytes | bytearray, offset: int) -> M.Method:
        cls = M.METHODS.get(idx)
        if cls is None:
            raise HardError(
                NOT_IMPLEMENTED if (idx >> 16) in CLASS_IDS else COMMAND_INVALID,
                f"unknown method class_id={idx >> 16} method_id={idx & 0xFFFF}",
                idx >> 16,
                idx & 0xFFFF,
            )
        return cls.decode(buf, offset)

    def _channel_method(
        self, ch: ChannelFrames[U], idx: int, buf: bytes | bytearray, off: int
    ) -> None:
        method = self._decode(idx, buf, off)
        if idx == _CHANNEL_CLOSE:
            self.channels.pop(ch.number, None)
            self.handler.on_channel_closed(ch.user)
            self.send_method(ch.number, M.ChannelCloseOk())
            return
        if idx == _CHANNEL_OPEN:
            raise HardError(
                CHANNEL_ERROR, f"second 'channel.open' seen on channel {ch.number}", 20, 10
            )
        try:
            self.handler.on_method(ch.user, method)
        except SoftError as exc:
            self.channel_error(ch, exc, idx)
        except HardError as exc:
            if not exc.class_id:
                exc.class_id, exc.method_id = idx >> 16, idx & 0xFFFF
            raise

    def _unopened_channel_method(self, chnum: int, idx: int) -> None:
        if idx == _CHANNEL_OPEN:
            # RabbitMQ 3.10 limits how many channels are open, not their numbers
            opened = len(self.channels)
            if opened >= self.channel_max:
                raise HardError(
                    NOT_ALLOWED,
                    f"number of channels opened ({opened}) has reached the negotiated "
                    f"channel_max ({self.channel_max})",
                )
            self.channels[chnum] = ChannelFrames(chnum, self.handler.on_channel_open(chnum))
            self.send_method(chnum, M.ChannelOpenOk())
            return
        if idx == _CHANNEL_CLOSE_OK:
            return  # late close-ok for a channel we already forgot
        if idx == _CHANNEL_CLOSE:
            self.send_method(chnum, M.ChannelCloseOk())
            return
        raise HardError(
            CHANNEL_ERROR, f"expected 'channel.open' on channel {chnum}", idx >> 16, idx & 0xFFFF
        )

    def _channel_closed_by_ok(self, ch: ChannelFrames[U], idx: int) -> None:
        self.channels.pop(ch.number, None)
        if idx == _CHANNEL_CLOSE:
            self.send_method(ch.number, M.ChannelCloseOk())

    # ------------------------------------------------------------ channel 0
    def _channel0_method(self, chnum: int, idx: int, buf: bytes | bytearray, off: int) -> None:
        state = self.state
        if state == CLOSING:
            if idx == _CONNECTION_CLOSE_OK:
                self._finish_close()
            elif idx == _CONNECTION_CLOSE:
                self.send_method(0, M.ConnectionCloseOk())
                self._finish_close()
            return
        if chnum != 0:
            # a channel method before the connection is open
            raise HardError(CHANNEL_ERROR, "channel methods are not allowed before connection.open")
        method = self._decode(idx, buf, off)
        if idx == _CONNECTION_CLOSE:
            self.close_reason = "closed by the client"
            self.send_method(0, M.ConnectionCloseOk())
            self._finish_close()
            return
        expected = _HANDSHAKE_EXPECT.get(state)
        if expected is not None:
            if idx != expected:
                raise HardError(
                    COMMAND_INVALID,
                    f"expected {M.METHODS[expected].NAME}, got {method.NAME}",
                    idx >> 16,
                    idx & 0xFFFF,
                )
            if state == AWAIT_START_OK:
                self._start_ok(method)  # type: ignore[arg-type]
            elif state == AWAIT_TUNE_OK:
                self._tune_ok(method)  # type: ignore[arg-type]
            else:
                self._open(method)  # type: ignore[arg-type]
            return
        if idx == _CONNECTION_CLOSE_OK:
            return
        if isinstance(method, M.ConnectionUpdateSecret):
            self.send_method(0, M.ConnectionUpdateSecretOk())
            return
        if isinstance(method, M.ConnectionBlocked | M.ConnectionUnblocked):
            return
        raise HardError(
            CHANNEL_ERROR,
            f"method {method.NAME} is not allowed on channel 0",
            idx >> 16,
            idx & 0xFFFF,
        )

    def _send_start(self) -> None:
        self.state = AWAIT_START_OK
        self.send_method(
            0,
            M.ConnectionStart(
                version_major=0,
                version_minor=9,
                server_properties=self.server_properties,
                mechanisms=b" ".join(m.encode() for m in self.handler.mechanisms()),
                locales=b"en_US",
            ),
        )

    def _start_ok(self, m: M.ConnectionStartOk) -> None:
        self.client_properties = m.client_properties or {}
        caps = self.client_properties.get("capabilities")
        self.client_capabilities = caps if isinstance(caps, dict) else {}
        if m.mechanism not in self.handler.mechanisms():
            raise HardError(
                403,
                f"unsupported authentication mechanism '{m.mechanism}'",
                10,
                11,
            )
        if not self.handler.authenticate(m.mechanism, bytes(m.response)):
            err = HardError(
                403,
                f"Login was refused using authentication mechanism {m.mechanism}. "
                "For details see the broker logfile.",
                10,
                11,
            )
            if self.client_capabilities.get("authentication_failure_close"):
                self.connection_error(err)
            else:
                self.close_reason = f"{err.reply_code} {err.reply_text}"
                event(
                    log,
                    logging.WARNING,
                    "connection_error",
                    f"connection {self.peer}: {err.reply_text}",
                    **self.log_fields,
                    code=403,
                    reason=err.reply_text,
                )
                self.state = CLOSED
                self.want_close = True
                self.wake_once()
            return
        self.state = AWAIT_TUNE_OK
        self.send_method(
            0,
            M.ConnectionTune(
                channel_max=self.server_channel_max,
                frame_max=self.server_frame_max,
                heartbeat=self.server_heartbeat,
            ),
        )

    def _tune_ok(self, m: M.ConnectionTuneOk) -> None:
        cmax = m.channel_max or 65535
        self.channel_max = min(cmax, self.server_channel_max or 65535)
        fmax = m.frame_max or self.server_frame_max
        if fmax < M.FRAME_MIN_SIZE:
            raise HardError(
                NOT_ALLOWED,
                f"frame_max={fmax} < {M.FRAME_MIN_SIZE} min size",
                10,
                31,
            )
        if self.server_frame_max and fmax > self.server_frame_max:
            raise HardError(
                NOT_ALLOWED,
                f"frame_max={fmax} > {self.server_frame_max} max size",
                10,
                31,
            )
        self.frame_max = fmax
        self.heartbeat = m.heartbeat
        self.state = AWAIT_OPEN
        self.handler.on_tuned()

    def _open(self, m: M.ConnectionOpen) -> None:
        self.handler.open_vhost(m.virtual_host)
        self.state = OPEN
        self.send_method(0, M.ConnectionOpenOk())

    def _finish_close(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.want_close = True
            self.wake_once()

    def _bad_header(self, got: bytes) -> None:
        log.warning("connection %s: bad protocol header %r", self.peer, got)
        self.out += PROTOCOL_HEADER
        self.state = CLOSED
        self.want_close = True
        self.wake_once()

    # ------------------------------------------------------------ errors
    def channel_error(self, ch: ChannelFrames[U], exc: SoftError, idx: int) -> None:
        class_id = exc.class_id or (idx >> 16)
        method_id = exc.method_id or (idx & 0xFFFF)
        event(
            log,
            logging.WARNING,
            "channel_error",
            f"channel error on connection {self.label}, channel {ch.number}: "
            f"{exc.reply_code} {exc.reply_text}",
            **self.log_fields,
            channel=ch.number,
            code=exc.reply_code,
            reason=exc.reply_text,
        )
        ch.closing = True
        ch.expect = EXPECT_METHOD
        ch.asm_parts = []
        self.handler.on_channel_closed(ch.user)
        self.send_method(
            ch.number,
            M.ChannelClose(
                reply_code=exc.reply_code,
                reply_text=exc.reply_text,
                class_id=class_id,
                method_id=method_id,
            ),
        )

    def connection_error(self, exc: AMQPError) -> None:
        """Send connection.close and stop processing anything but close-ok."""
        if self.state >= CLOSING:
            return
        # the text is in the error line below: the closing line names the code only
        self.close_reason = f"closed by the server: {exc.reply_code} {reply_name(exc.reply_code)}"
        event(
            log,
            logging.WARNING,
            "connection_error",
            f"connection {self.label} closed: {exc.reply_code} {exc.reply_text}",
            **self.log_fields,
            code=exc.reply_code,
            reason=exc.reply_text,
        )
        if self.state < AWAIT_TUNE_OK and self.state != AWAIT_START_OK:
            self.state = CLOSED
            self.want_close = True
            self.wake_once()
            return
        self.send_method(
            0,
            M.ConnectionClose(
                reply_code=exc.reply_code,
                reply_text=exc.reply_text,
                class_id=exc.class_id,
                method_id=exc.method_id,
            ),
        )
        self.state = CLOSING
        self._release_channels()

    def server_close(self, code: int = CONNECTION_FORCED, text: str = "") -> None:
        """Initiate a close from the server side (shutdown, admin action)."""
        if self.state >= CLOSING:
            return
        self.close_reason = f"{code} {text}"
        if self.state < OPEN:
            self._finish_close()
            self._release_channels()
            return
        self.send_method(
            0,
            M.ConnectionClose(reply_code=code, reply_text=text, class_id=0, method_id=0),
        )
        self.state = CLOSING
        self._release_channels()

    def _release_channels(self) -> None:
        channels = list(self.channels.values())
        self.channels.clear()
        for ch in channels:
            if not ch.closing:
                self.handler.on_channel_closed(ch.user)

    def connection_lost(self) -> None:
        """The transport is gone: release everything (requeue unacked, drop exclusives)."""
        if not self.close_reason:
            self.close_reason = "client unexpectedly closed TCP connection"
        self.state = CLOSED
        self._release_channels()
        self.handler.on_connection_closed()

    # ------------------------------------------------------------ heartbeats
    def heartbeat_tick(self) -> bool:
        """Called every heartbeat/2 seconds. Sends a heartbeat when nothing else went
        out; returns False when the peer is dead (silent for two heartbeat intervals)."""
        if not self.send_activity and self.state < CLOSED:
            self.out += HEARTBEAT_FRAME
            self.wake_once()
        self.send_activity = False
        if self.recv_activity:
            self.recv_activity = False
            self._silent_ticks = 0
            return True
        self._silent_ticks += 1
        return self._silent_ticks < 4


def _bad_heartbeat(chnum: int, payload: bytes) -> HardError:
    """A heartbeat with a payload (501) or on a channel other than 0 (505), with
    RabbitMQ's text: ``type 8, all octets = <<"xyz">>: unknown_frame``."""
    if payload:
        return HardError(FRAME_ERROR, f"type 8, {payload_snippet(payload)}: unknown_frame")
    return HardError(UNEXPECTED_FRAME, f"type 8, {payload_snippet(payload)}")


def payload_snippet(payload: bytes) -> str:
    """``all octets = <<...>>`` or ``first 16 octets = <<...>>``, the binary as Erlang
    prints it: a quoted string when every byte is printable ASCII, else the numbers."""
    what = "all" if len(payload) <= 16 else "first 16"
    snippet = payload[:16]
    if snippet and all(32 <= b < 127 or b in _ERL_ESCAPES for b in snippet):
        text = "".join(_ERL_ESCAPES.get(b, chr(b)) for b in snippet)
        return f'{what} octets = <<"{text}">>'
    return f"{what} octets = <<{','.join(map(str, snippet))}>>"


_ERL_ESCAPES = {
    8: "\\b",
    9: "\\t",
    10: "\\n",
    11: "\\v",
    12: "\\f",
    13: "\\r",
    27: "\\e",
    34: '\\"',
    92: "\\\\",
}

_HANDSHAKE_EXPECT = {
    AWAIT_START_OK: M.ConnectionStartOk.INDEX,
    AWAIT_TUNE_OK: M.ConnectionTuneOk.INDEX,
    AWAIT_OPEN: M.ConnectionOpen.INDEX,
}

__all__ = ["AMQPConnection", "ChannelFrames", "ConnectionHandler", "REPLY_SUCCESS"]
