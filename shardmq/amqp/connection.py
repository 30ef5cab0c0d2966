"""Sans-IO AMQP 0-9-1 server connection: bytes in, frames parsed, bytes out.

Owns: the protocol header check, frame parsing with the frame_max guard, the handshake
(start / start-ok / tune / tune-ok / open), content assembly (publish + header + body
frames), channel open/close bookkeeping at protocol level, heartbeat accounting and the
close handshakes in both directions. It knows nothing about queues or exchanges: a
subclass (the broker's connection) implements the ``on_*`` hooks.

Invariants:
- ``feed`` never raises: bad peer input becomes a channel.close (``SoftError``) or a
  connection.close (``HardError``) with a log line; an unexpected exception becomes 541.
- Output goes to ``self.out``; ``self.wake(self)`` is called once when it turns non-empty,
  so the I/O layer writes once per loop turn.
- After the server sent connection.close, only close / close-ok are processed; after it
  sent channel.close on a channel, frames on that channel are dropped until close-ok.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shardmq.amqp import methods as M
from shardmq.amqp.codec import (
    BASIC_ACK,
    BASIC_PUBLISH,
    FRAME_BODY,
    FRAME_END,
    FRAME_END_BYTES,
    FRAME_HDR,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    U32,
    U64,
    U64_BIT,
)
from shardmq.amqp.errors import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_ERROR,
    INTERNAL_ERROR,
    NOT_ALLOWED,
    NOT_IMPLEMENTED,
    REPLY_SUCCESS,
    UNEXPECTED_FRAME,
    AMQPError,
    HardError,
    SoftError,
)

log = logging.getLogger("shardmq.connection")

_unpack_hdr = FRAME_HDR.unpack_from
_unpack_u32 = U32.unpack_from
_unpack_u64 = U64.unpack_from
_unpack_qb = U64_BIT.unpack_from
_pack_hdr = FRAME_HDR.pack

# Connection states.
AWAIT_HEADER, AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPEN, CLOSING, CLOSED = range(7)

# Channel content-assembly expectations.
# EXPECT_SUSPENDED: a method on the channel awaits a reply from another process (the
# metadata sequencer, a queue on another shard); later frames on the channel are kept in
# ``pending`` and processed, in order, by ``resume``.
EXPECT_METHOD, EXPECT_HEADER, EXPECT_BODY, EXPECT_SUSPENDED = 0, 1, 2, 3

_CONNECTION_CLOSE = M.ConnectionClose.INDEX
_CONNECTION_CLOSE_OK = M.ConnectionCloseOk.INDEX
_CHANNEL_OPEN = M.ChannelOpen.INDEX
_CHANNEL_CLOSE = M.ChannelClose.INDEX
_CHANNEL_CLOSE_OK = M.ChannelCloseOk.INDEX


class ChannelBase:
    """Protocol-level channel state; the broker's channel extends it."""

    __slots__ = (
        "number",
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

    def __init__(self, number: int) -> None:
        self.number = number
        self.closing = False
        self.expect = EXPECT_METHOD
        self.asm_exrk = b""
        self.asm_exlen = 0
        self.asm_flags = 0
        self.asm_parts: list[bytes] = []
        self.asm_hsize = 0
        self.asm_fmax = 0
        self.asm_remaining = 0
        self.pending = bytearray()


class AMQPConnection:
    """Server side of one AMQP connection, independent of any transport."""

    channel_class: type[ChannelBase] = ChannelBase

    def __init__(
        self,
        wake: Callable[[AMQPConnection], None],
        *,
        frame_max: int = 131072,
        channel_max: int = 2047,
        heartbeat: int = 60,
        max_message_size: int = 128 * 1024 * 1024,
        server_properties: dict[str, Any] | None = None,
        peer: str = "?",
    ) -> None:
        self.wake = wake
        self.out = bytearray()
        self.peer = peer
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
        self.channels: dict[int, ChannelBase] = {}
        self._buf = bytearray()
        self.recv_activity = True
        self.send_activity = False
        self._silent_ticks = 0
        self.want_close = False  # the I/O layer closes the transport after flushing
        self._woken = False

    # ----------------------------------------------------------------- output
    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            self.wake(self)

    wake_once = _wake

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
        self._wake()

    # ------------------------------------------------------------------ input
    def feed(self, data: bytes) -> None:
        """Process bytes from the peer. Never raises."""
        self.recv_activity = True
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
            self._hard_error(exc)
            return
        except Exception:  # a bug: never let it kill the worker
            log.exception("connection %s: internal error while parsing", self.peer)
            self._hard_error(HardError(INTERNAL_ERROR, "internal error"))
            return
        if pos >= len(buf):
            if self._buf:
                self._buf = bytearray()
        elif buf is self._buf:
            del self._buf[:pos]
        else:
            self._buf = bytearray(memoryview(buf)[pos:])

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
        # Content is copied out of ``buf`` once: slicing a bytearray copies, and bytes()
        # of that copy copies again, so take bytearray slices through a memoryview (it
        # dies with this frame, before ``feed`` resizes the buffer).
        view: bytes | memoryview = memoryview(buf) if buf.__class__ is bytearray else buf  # type: ignore[assignment]
        n = len(buf)
        limit = self.frame_max - 8
        channels = self.channels
        while n - pos >= 7:
            ftype, chnum, size = _unpack_hdr(buf, pos)
            if size > limit:
                raise HardError(
                    FRAME_ERROR,
                    f"frame size {size + 8} larger than negotiated frame_max {self.frame_max}",
                )
            end = pos + 7 + size
            if end >= n:
                break
            if buf[end] != FRAME_END:
                raise HardError(FRAME_ERROR, f"bad frame end octet {buf[end]:#x}")
            if ftype == FRAME_METHOD:
                if size < 4:
                    raise HardError(FRAME_ERROR, "method frame too short")
                idx = _unpack_u32(buf, pos + 7)[0]
                if chnum == 0 or self.state != OPEN:
                    self._channel0_method(chnum, idx, buf, pos + 11, end)
                else:
                    ch = channels.get(chnum)
                    if ch is None:
                        self._unopened_channel_method(chnum, idx, buf, pos + 11)
                    elif ch.closing:
                        if idx == _CHANNEL_CLOSE_OK or idx == _CHANNEL_CLOSE:
                            self._channel_closed_by_ok(ch, idx)
                    elif ch.expect != EXPECT_METHOD:
                        if ch.expect == EXPECT_SUSPENDED:
                            ch.pending += buf[pos : end + 1]
                            pos = end + 1
                            continue
                        raise HardError(
                            UNEXPECTED_FRAME,
                            f"expected content frame on channel {chnum}, got method frame",
                        )
                    elif idx == BASIC_PUBLISH:
                        # reserved-1 short, exchange shortstr, routing-key shortstr, bits
                        p = pos + 13
                        el = buf[p]
                        q = p + 1 + el
                        if q >= end:
                            raise HardError(FRAME_ERROR, "malformed basic.publish")
                        q = q + 1 + buf[q]
                        if q >= end:
                            raise HardError(FRAME_ERROR, "malformed basic.publish")
                        ch.asm_exrk = bytes(view[p:q])
                        ch.asm_exlen = el
                        ch.asm_flags = buf[q]
                        ch.expect = EXPECT_HEADER
                    elif idx == BASIC_ACK:
                        if size < 13:
                            raise HardError(FRAME_ERROR, "malformed basic.ack")
                        tag, bits = _unpack_qb(buf, pos + 11)
                        try:
                            self.on_ack(ch, tag, bits & 1)
                        except SoftError as exc:
                            self._soft_error(ch, exc, idx)
                    else:
                        self._channel_method(ch, idx, buf, pos + 11)
            elif ftype == FRAME_HEADER:
                ch = channels.get(chnum)
                if ch is None or ch.closing:
                    if ch is None:
                        raise HardError(
                            UNEXPECTED_FRAME, f"content header on channel {chnum} (not open)"
                        )
                elif ch.expect != EXPECT_HEADER:
                    if ch.expect == EXPECT_SUSPENDED:
                        ch.pending += buf[pos : end + 1]
                        pos = end + 1
                        continue
                    raise HardError(
                        UNEXPECTED_FRAME,
                        f"expected method frame on channel {chnum}, got content header",
                    )
                else:
                    if size < 14:
                        raise HardError(FRAME_ERROR, "content header too short")
                    if buf[pos + 7] != 0 or buf[pos + 8] != 60:
                        raise HardError(
                            UNEXPECTED_FRAME,
                            f"expected content header for class 60 on channel {chnum}",
                        )
                    bsize = _unpack_u64(buf, pos + 11)[0]
                    if bsize == 0:
                        ch.expect = EXPECT_METHOD
                        self._publish(ch, bytes(view[pos : end + 1]), size, size)
                    elif bsize > self.max_message_size:
                        ch.expect = EXPECT_METHOD
                        self._soft_error(
                            ch,
                            SoftError(
                                406,
                                f"message size {bsize} is larger than configured max size "
                                f"{self.max_message_size}",
                                60,
                                40,
                            ),
                            BASIC_PUBLISH,
                        )
                    else:
                        # Fast path: the whole body follows as one frame in this buffer;
                        # keep header + body frames as one slice, as they will go out.
                        p2 = end + 1
                        if n - p2 >= 8:
                            t2, c2, s2 = _unpack_hdr(buf, p2)
                            e2 = p2 + 7 + s2
                            if (
                                t2 == FRAME_BODY
                                and c2 == chnum
                                and s2 == bsize
                                and e2 < n
                                and buf[e2] == FRAME_END
                                and s2 <= limit
                            ):
                                ch.expect = EXPECT_METHOD
                                self._publish(ch, bytes(view[pos : e2 + 1]), size, max(size, s2))
                                pos = e2 + 1
                                continue
                        ch.asm_parts = [bytes(view[pos : end + 1])]
                        ch.asm_hsize = size
                        ch.asm_fmax = size
                        ch.asm_remaining = bsize
                        ch.expect = EXPECT_BODY
            elif ftype == FRAME_BODY:
                ch = channels.get(chnum)
                if ch is None:
                    raise HardError(UNEXPECTED_FRAME, f"content body on channel {chnum} (not open)")
                if not ch.closing:
                    if ch.expect != EXPECT_BODY:
                        if ch.expect == EXPECT_SUSPENDED:
                            ch.pending += buf[pos : end + 1]
                            pos = end + 1
                            continue
                        raise HardError(
                            UNEXPECTED_FRAME,
                            f"unexpected content body frame on channel {chnum}",
                        )
                    remaining = ch.asm_remaining - size
                    if remaining < 0:
                        raise HardError(FRAME_ERROR, "content body larger than announced")
                    ch.asm_parts.append(bytes(view[pos : end + 1]))
                    if size > ch.asm_fmax:
                        ch.asm_fmax = size
                    ch.asm_remaining = remaining
                    if remaining == 0:
                        ch.expect = EXPECT_METHOD
                        raw = b"".join(ch.asm_parts)
                        ch.asm_parts = []
                        self._publish(ch, raw, ch.asm_hsize, ch.asm_fmax)
            elif ftype == FRAME_HEARTBEAT:
                if chnum != 0:
                    raise HardError(UNEXPECTED_FRAME, "heartbeat frame on non-zero channel")
            else:
                raise HardError(FRAME_ERROR, f"unknown frame type {ftype}")
            pos = end + 1
            if self.state >= CLOSED:
                return n
        return pos

    # ------------------------------------------------------------ suspension
    def suspend(self, ch: ChannelBase) -> None:
        """Hold further frames of ``ch`` until ``resume`` (the current method awaits a
        reply from another process)."""
        ch.expect = EXPECT_SUSPENDED

    def resume(self, ch: ChannelBase) -> None:
        """Process, in order, the frames that arrived while ``ch`` was suspended."""
        if ch.expect != EXPECT_SUSPENDED:
            return
        ch.expect = EXPECT_METHOD
        if not ch.pending or self.state >= CLOSING or self.channels.get(ch.number) is not ch:
            ch.pending = bytearray()
            return
        data = bytes(ch.pending)
        ch.pending = bytearray()
        try:
            self._parse_frames(data, 0)
        except AMQPError as exc:
            self._hard_error(exc)
        except Exception:
            log.exception("connection %s: internal error while resuming", self.peer)
            self._hard_error(HardError(INTERNAL_ERROR, "internal error"))

    def _publish(self, ch: ChannelBase, raw: bytes, hsize: int, fmax: int) -> None:
        try:
            self.on_publish(ch, ch.asm_exrk, ch.asm_exlen, ch.asm_flags, raw, hsize, fmax)
        except SoftError as exc:
            self._soft_error(ch, exc, BASIC_PUBLISH)

    def _decode(self, idx: int, buf: bytes | bytearray, offset: int) -> M.Method:
        cls = M.METHODS.get(idx)
        if cls is None:
            raise HardError(
                NOT_IMPLEMENTED if (idx >> 16) in _KNOWN_CLASSES else COMMAND_INVALID,
                f"unknown method class_id={idx >> 16} method_id={idx & 0xFFFF}",
                idx >> 16,
                idx & 0xFFFF,
            )
        return cls.decode(buf, offset)

    def _channel_method(self, ch: ChannelBase, idx: int, buf: bytes | bytearray, off: int) -> None:
        method = self._decode(idx, buf, off)
        if idx == _CHANNEL_CLOSE:
            self.channels.pop(ch.number, None)
            self.on_channel_closed(ch)
            self.send_method(ch.number, M.ChannelCloseOk())
            return
        if idx == _CHANNEL_OPEN:
            raise HardError(
                CHANNEL_ERROR, f"second 'channel.open' seen on channel {ch.number}", 20, 10
            )
        try:
            self.on_method(ch, method)
        except SoftError as exc:
            self._soft_error(ch, exc, idx)
        except HardError as exc:
            if not exc.class_id:
                exc.class_id, exc.method_id = idx >> 16, idx & 0xFFFF
            raise

    def _unopened_channel_method(
        self, chnum: int, idx: int, buf: bytes | bytearray, off: int
    ) -> None:
        if idx == _CHANNEL_OPEN:
            if chnum > self.channel_max:
                raise HardError(
                    NOT_ALLOWED,
                    f"channel {chnum} is above the negotiated channel_max {self.channel_max}",
                    20,
                    10,
                )
            ch = self.channel_class(chnum)
            self.channels[chnum] = ch
            self.on_channel_open(ch)
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

    def _channel_closed_by_ok(self, ch: ChannelBase, idx: int) -> None:
        self.channels.pop(ch.number, None)
        if idx == _CHANNEL_CLOSE:
            self.send_method(ch.number, M.ChannelCloseOk())

    # ------------------------------------------------------------ channel 0
    def _channel0_method(
        self, chnum: int, idx: int, buf: bytes | bytearray, off: int, end: int
    ) -> None:
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
                mechanisms=b" ".join(m.encode() for m in self.mechanisms()),
                locales=b"en_US",
            ),
        )

    def _start_ok(self, m: M.ConnectionStartOk) -> None:
        self.client_properties = m.client_properties or {}
        caps = self.client_properties.get("capabilities")
        self.client_capabilities = caps if isinstance(caps, dict) else {}
        if m.mechanism not in self.mechanisms():
            raise HardError(
                403,
                f"unsupported authentication mechanism '{m.mechanism}'",
                10,
                11,
            )
        if not self.authenticate(m.mechanism, bytes(m.response)):
            err = HardError(
                403,
                f"Login was refused using authentication mechanism {m.mechanism}. "
                "For details see the broker logfile.",
                10,
                11,
            )
            if self.client_capabilities.get("authentication_failure_close"):
                self._hard_error(err)
            else:
                log.warning("connection %s: %s", self.peer, err.reply_text)
                self.state = CLOSED
                self.want_close = True
                self._wake()
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
        self.on_tuned()

    def _open(self, m: M.ConnectionOpen) -> None:
        self.open_vhost(m.virtual_host)
        self.state = OPEN
        self.send_method(0, M.ConnectionOpenOk())

    def _finish_close(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.want_close = True
            self._wake()

    def _bad_header(self, got: bytes) -> None:
        log.warning("connection %s: bad protocol header %r", self.peer, got)
        self.out += PROTOCOL_HEADER
        self.state = CLOSED
        self.want_close = True
        self._wake()

    # ------------------------------------------------------------ errors
    def _soft_error(self, ch: ChannelBase, exc: SoftError, idx: int) -> None:
        class_id = exc.class_id or (idx >> 16)
        method_id = exc.method_id or (idx & 0xFFFF)
        log.info("channel %s/%d closed: %s", self.peer, ch.number, exc.reply_text)
        ch.closing = True
        ch.expect = EXPECT_METHOD
        ch.asm_parts = []
        self.on_channel_closed(ch)
        self.send_method(
            ch.number,
            M.ChannelClose(
                reply_code=exc.reply_code,
                reply_text=exc.reply_text,
                class_id=class_id,
                method_id=method_id,
            ),
        )

    def _hard_error(self, exc: AMQPError) -> None:
        """Send connection.close and stop processing anything but close-ok."""
        if self.state >= CLOSING:
            return
        log.warning("connection %s closed: %s", self.peer, exc.reply_text)
        if self.state < AWAIT_TUNE_OK and self.state != AWAIT_START_OK:
            self.state = CLOSED
            self.want_close = True
            self._wake()
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
                self.on_channel_closed(ch)

    def connection_lost(self) -> None:
        """The transport is gone: release everything (requeue unacked, drop exclusives)."""
        self.state = CLOSED
        self._release_channels()
        self.on_connection_closed()

    # ------------------------------------------------------------ heartbeats
    def heartbeat_tick(self) -> bool:
        """Called every heartbeat/2 seconds. Sends a heartbeat when nothing else went
        out; returns False when the peer is dead (silent for two heartbeat intervals)."""
        if not self.send_activity and self.state < CLOSED:
            self.out += HEARTBEAT_FRAME
            self._wake()
        self.send_activity = False
        if self.recv_activity:
            self.recv_activity = False
            self._silent_ticks = 0
            return True
        self._silent_ticks += 1
        return self._silent_ticks < 4

    # ------------------------------------------------------------ hooks
    def after_flush(self) -> None:
        """The I/O layer wrote the output taken by ``take_output``."""

    def set_write_paused(self, paused: bool) -> None:
        """The socket's write buffer passed its high (True) or low (False) water mark."""

    def mechanisms(self) -> tuple[str, ...]:
        return ("PLAIN", "AMQPLAIN")

    def authenticate(self, mechanism: str, response: bytes) -> bool:
        raise NotImplementedError

    def on_tuned(self) -> None:
        pass

    def open_vhost(self, vhost: str) -> None:
        raise NotImplementedError

    def on_channel_open(self, ch: ChannelBase) -> None:
        pass

    def on_channel_closed(self, ch: ChannelBase) -> None:
        pass

    def on_connection_closed(self) -> None:
        pass

    def on_method(self, ch: ChannelBase, method: M.Method) -> None:
        raise NotImplementedError

    def on_publish(
        self,
        ch: ChannelBase,
        exrk: bytes,
        exlen: int,
        flags: int,
        raw: bytes,
        hsize: int,
        fmax: int,
    ) -> None:
        """A complete publish. ``raw`` holds the content header frame and the body
        frame(s) exactly as received (envelopes included); ``hsize`` is the header
        payload size and ``fmax`` the largest frame payload in ``raw``."""
        raise NotImplementedError

    def on_ack(self, ch: ChannelBase, delivery_tag: int, multiple: int) -> None:
        raise NotImplementedError


_KNOWN_CLASSES = {10, 20, 30, 40, 50, 60, 85, 90}
_HANDSHAKE_EXPECT = {
    AWAIT_START_OK: M.ConnectionStartOk.INDEX,
    AWAIT_TUNE_OK: M.ConnectionTuneOk.INDEX,
    AWAIT_OPEN: M.ConnectionOpen.INDEX,
}

__all__ = ["AMQPConnection", "ChannelBase", "REPLY_SUCCESS"]
