"""A tiny hand-rolled AMQP 0-9-1 client over a plain socket, for protocol-level tests.

Owns: frame and argument encoding with precompiled ``struct.Struct`` objects, a blocking
frame reader where every read has a deadline, and a minimal handshake (PLAIN or AMQPLAIN).
It exists so tests can send what no well-behaved client library would (wrong headers,
oversized frames, bad frame-end octets, unknown methods) and see the exact bytes back.

Invariants: only ever connects where it is told (tests point it at 127.0.0.1); a read never
blocks past its deadline (``TimeoutError``); EOF is reported as ``None``, never as an
exception, so tests can assert "the server closed the socket".
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE

# (class_id, method_id) pairs used by the tests.
CONNECTION_START = (10, 10)
CONNECTION_START_OK = (10, 11)
CONNECTION_TUNE = (10, 30)
CONNECTION_TUNE_OK = (10, 31)
CONNECTION_OPEN = (10, 40)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN = (20, 10)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_FLOW = (20, 20)
CHANNEL_FLOW_OK = (20, 21)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
QUEUE_DECLARE = (50, 10)
QUEUE_DECLARE_OK = (50, 11)
QUEUE_DELETE = (50, 40)
QUEUE_DELETE_OK = (50, 41)
BASIC_QOS = (60, 10)
BASIC_QOS_OK = (60, 11)
BASIC_CONSUME = (60, 20)
BASIC_CONSUME_OK = (60, 21)
BASIC_PUBLISH = (60, 40)
BASIC_DELIVER = (60, 60)
BASIC_GET = (60, 70)
BASIC_GET_OK = (60, 71)
BASIC_GET_EMPTY = (60, 72)
BASIC_ACK = (60, 80)
BASIC_NACK = (60, 120)
CONFIRM_SELECT = (85, 10)
CONFIRM_SELECT_OK = (85, 11)

_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_IDS = struct.Struct(">HH")
_OCTET = struct.Struct(">B")
_SHORT = struct.Struct(">H")
_LONG = struct.Struct(">I")
_LONGLONG = struct.Struct(">Q")
_SIGNED_LONGLONG = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_CONTENT_HEAD = struct.Struct(">HHQH")
_TUNE = struct.Struct(">HIH")
_DELIVERY_TAG_BIT = struct.Struct(">QB")


# ----------------------------------------------------------------------------- encoding


def shortstr(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _OCTET.pack(len(raw)) + raw


def longstr(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _LONG.pack(len(raw)) + raw


def _field_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"t" + _OCTET.pack(int(value))
    if isinstance(value, int):
        return b"l" + _SIGNED_LONGLONG.pack(value)
    if isinstance(value, float):
        return b"d" + _DOUBLE.pack(value)
    if isinstance(value, str):
        return b"S" + longstr(value)
    if isinstance(value, bytes):
        return b"x" + longstr(value)
    if isinstance(value, dict):
        return b"F" + table(value)
    if isinstance(value, list):
        items = b"".join(_field_value(v) for v in value)
        return b"A" + _LONG.pack(len(items)) + items
    if value is None:
        return b"V"
    raise TypeError(f"cannot encode {value!r} in a field table")


def table(values: dict[str, Any] | None = None) -> bytes:
    body = b"".join(shortstr(k) + _field_value(v) for k, v in (values or {}).items())
    return _LONG.pack(len(body)) + body


def bits(*flags: bool) -> bytes:
    packed = 0
    for i, flag in enumerate(flags):
        if flag:
            packed |= 1 << i
    return _OCTET.pack(packed)


def frame(frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    return _FRAME_HEAD.pack(frame_type, channel, len(payload)) + payload + _OCTET.pack(end)


def method(channel: int, ids: tuple[int, int], args: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, _METHOD_IDS.pack(*ids) + args)


def content_header(
    channel: int, body_size: int, flags: int = 0, props: bytes = b"", class_id: int = 60
) -> bytes:
    return frame(FRAME_HEADER, channel, _CONTENT_HEAD.pack(class_id, 0, body_size, flags) + props)


def body(channel: int, data: bytes) -> bytes:
    return frame(FRAME_BODY, channel, data)


HEARTBEAT = frame(FRAME_HEARTBEAT, 0, b"")


def publish(
    channel: int,
    exchange: str,
    routing_key: str,
    data: bytes,
    *,
    mandatory: bool = False,
    flags: int = 0,
    props: bytes = b"",
    frame_max: int = 131072,
) -> bytes:
    """basic.publish + content header + body frames split to fit ``frame_max``."""
    out = [
        method(
            channel,
            BASIC_PUBLISH,
            _SHORT.pack(0) + shortstr(exchange) + shortstr(routing_key) + bits(mandatory),
        ),
        content_header(channel, len(data), flags, props),
    ]
    chunk = frame_max - 8
    out.extend(body(channel, data[i : i + chunk]) for i in range(0, len(data), chunk))
    return b"".join(out)


def queue_declare(
    channel: int,
    name: str,
    *,
    passive: bool = False,
    exclusive: bool = False,
    auto_delete: bool = False,
) -> bytes:
    args = _SHORT.pack(0) + shortstr(name) + bits(passive, False, exclusive, auto_delete, False)
    return method(channel, QUEUE_DECLARE, args + table())


def queue_delete(channel: int, name: str) -> bytes:
    return method(channel, QUEUE_DELETE, _SHORT.pack(0) + shortstr(name) + bits())


def basic_consume(channel: int, queue: str, tag: str = "", no_ack: bool = False) -> bytes:
    args = _SHORT.pack(0) + shortstr(queue) + shortstr(tag) + bits(False, no_ack, False, False)
    return method(channel, BASIC_CONSUME, args + table())


def basic_ack(channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
    return method(channel, BASIC_ACK, _DELIVERY_TAG_BIT.pack(delivery_tag, int(multiple)))


# ----------------------------------------------------------------------------- decoding


class Reader:
    """Sequential decoder over one frame payload."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        if len(chunk) != n:
            raise ValueError("truncated payload")
        self.pos += n
        return chunk

    def octet(self) -> int:
        return self._take(1)[0]

    def short(self) -> int:
        return _SHORT.unpack(self._take(2))[0]

    def long(self) -> int:
        return _LONG.unpack(self._take(4))[0]

    def longlong(self) -> int:
        return _LONGLONG.unpack(self._take(8))[0]

    def shortstr(self) -> str:
        return self._take(self.octet()).decode()

    def longstr(self) -> bytes:
        return self._take(self.long())

    def table(self) -> dict[str, Any]:
        end = self.pos + 4 + _LONG.unpack(self.data[self.pos : self.pos + 4])[0]
        self.pos += 4
        out: dict[str, Any] = {}
        while self.pos < end:
            key = self.shortstr()
            out[key] = self.value()
        return out

    def value(self) -> Any:
        kind = self._take(1)
        if kind == b"t":
            return bool(self.octet())
        if kind == b"S":
            return self.longstr()
        if kind == b"F":
            return self.table()
        if kind == b"l":
            return _SIGNED_LONGLONG.unpack(self._take(8))[0]
        if kind == b"I":
            return struct.unpack(">i", self._take(4))[0]
        if kind == b"s":
            return struct.unpack(">h", self._take(2))[0]
        if kind == b"b":
            return struct.unpack(">b", self._take(1))[0]
        if kind == b"d":
            return _DOUBLE.unpack(self._take(8))[0]
        if kind == b"T":
            return self.longlong()
        if kind == b"x":
            return self.longstr()
        if kind == b"V":
            return None
        if kind == b"A":
            end = self.pos + 4 + _LONG.unpack(self.data[self.pos : self.pos + 4])[0]
            self.pos += 4
            items = []
            while self.pos < end:
                items.append(self.value())
            return items
        raise ValueError(f"field type {kind!r} not handled by the test reader")


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    channel: int
    payload: bytes

    @property
    def ids(self) -> tuple[int, int] | None:
        if self.type != FRAME_METHOD:
            return None
        return _METHOD_IDS.unpack_from(self.payload)  # type: ignore[return-value]

    def args(self) -> Reader:
        """Reader positioned after the class/method ids (method frames) or at 0."""
        return Reader(self.payload, 4 if self.type == FRAME_METHOD else 0)


@dataclass(frozen=True, slots=True)
class Close:
    """A decoded connection.close or channel.close."""

    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


def parse_close(f: Frame) -> Close:
    r = f.args()
    return Close(r.short(), r.shortstr(), r.short(), r.short())


# ----------------------------------------------------------------------------- connection


class RawConnection:
    """One TCP connection speaking hand-made AMQP frames."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._buf = bytearray()
        self.eof = False
        self.frame_max = 131072
        self.tune: tuple[int, int, int] | None = None  # server's proposal
        self.start_args: dict[str, Any] = {}

    # -- plumbing -----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on EOF. Raises TimeoutError past the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from broker before the deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no data from broker before the deadline") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self._buf += chunk
        return True

    def recv_exactly(self, n: int, timeout: float | None = None) -> bytes | None:
        """Raw bytes (used before framing starts); None if EOF came first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < n:
            if not self._fill(deadline):
                return None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv_frame(self, timeout: float | None = None) -> Frame | None:
        """Next frame, or None on EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < 7:
            if not self._fill(deadline):
                return None
        ftype, channel, size = _FRAME_HEAD.unpack_from(self._buf)
        while len(self._buf) < 8 + size:
            if not self._fill(deadline):
                return None
        if self._buf[7 + size] != FRAME_END:
            raise AssertionError(f"broker sent a bad frame-end octet: {self._buf[7 + size]:#x}")
        payload = bytes(self._buf[7 : 7 + size])
        del self._buf[: 8 + size]
        return Frame(ftype, channel, payload)

    def recv_method(self, timeout: float | None = None) -> Frame | None:
        """Next method frame (heartbeats skipped), or None on EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f is None or f.type == FRAME_METHOD:
                return f
            if f.type != FRAME_HEARTBEAT:
                raise AssertionError(f"expected a method frame, got {f}")

    def expect(self, ids: tuple[int, int], channel: int | None = None) -> Frame:
        f = self.recv_method()
        if f is None:
            raise AssertionError(f"broker closed the socket while we waited for {ids}")
        if f.ids != ids:
            detail = ""
            if f.ids in (CONNECTION_CLOSE, CHANNEL_CLOSE):
                detail = f" {parse_close(f)}"
            raise AssertionError(f"expected method {ids}, got {f.ids}{detail}")
        if channel is not None and f.channel != channel:
            raise AssertionError(f"expected channel {channel}, got {f.channel}")
        return f

    def expect_connection_close(
        self, timeout: float | None = None, *, await_eof: bool = True
    ) -> Close:
        """Wait for connection.close (skipping other frames), answer close-ok, await EOF.

        Pass ``await_eof=False`` after input the broker cannot resynchronise on (frame
        errors): RabbitMQ then never parses our close-ok and drops the socket on a timer.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f is None:
                raise AssertionError("broker closed the socket without connection.close")
            if f.ids == CONNECTION_CLOSE:
                break
        close = parse_close(f)
        try:
            self.send(method(0, CONNECTION_CLOSE_OK))
        except OSError:
            return close  # the broker already dropped the socket, which is fine
        if await_eof:
            self.assert_eof(max(0.5, deadline - time.monotonic()))
        return close

    def expect_channel_close(self, channel: int) -> Close:
        """Wait for channel.close on ``channel`` and answer close-ok."""
        while True:
            f = self.recv_method()
            if f is None:
                raise AssertionError("broker closed the socket while we waited for channel.close")
            if f.ids == CONNECTION_CLOSE:
                raise AssertionError(f"got connection.close instead: {parse_close(f)}")
            if f.ids == CHANNEL_CLOSE and f.channel == channel:
                break
        self.send(method(channel, CHANNEL_CLOSE_OK))
        return parse_close(f)

    def assert_eof(self, timeout: float | None = None) -> list[Frame]:
        """Read until the broker closes the socket; return what came first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen: list[Frame] = []
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f is None:
                return seen
            seen.append(f)

    # -- protocol -----------------------------------------------------------------------

    def start(self, header: bytes = PROTOCOL_HEADER) -> Frame:
        self.send(header)
        f = self.expect(CONNECTION_START, channel=0)
        r = f.args()
        version = (r.octet(), r.octet())
        props = r.table()
        mechanisms = r.longstr().decode().split()
        locales = r.longstr().decode().split()
        self.start_args = {
            "version": version,
            "server_properties": props,
            "mechanisms": mechanisms,
            "locales": locales,
        }
        return f

    def start_ok(
        self,
        user: str = "guest",
        password: str = "guest",
        mechanism: str = "PLAIN",
        capabilities: dict[str, bool] | None = None,
    ) -> None:
        if mechanism == "PLAIN":
            response = b"\x00" + user.encode() + b"\x00" + password.encode()
        elif mechanism == "AMQPLAIN":
            response = table({"LOGIN": user, "PASSWORD": password})[4:]
        else:
            raise ValueError(mechanism)
        if capabilities is None:
            capabilities = {"authentication_failure_close": True, "consumer_cancel_notify": True}
        client_props = table({"product": "shardmq-raw-test", "capabilities": capabilities})
        args = client_props + shortstr(mechanism) + longstr(response) + shortstr("en_US")
        self.send(method(0, CONNECTION_START_OK, args))

    def handshake(
        self,
        user: str = "guest",
        password: str = "guest",
        *,
        vhost: str = "/",
        channel_max: int | None = None,
        frame_max: int | None = None,
        heartbeat: int = 0,
        mechanism: str = "PLAIN",
        capabilities: dict[str, bool] | None = None,
    ) -> tuple[int, int, int]:
        """Full handshake; returns the negotiated (channel_max, frame_max, heartbeat)."""
        self.start()
        self.start_ok(user, password, mechanism, capabilities)
        tune = self.expect(CONNECTION_TUNE, channel=0)
        self.tune = _TUNE.unpack_from(tune.payload, 4)
        srv_channel_max, srv_frame_max, _srv_heartbeat = self.tune
        cmax = srv_channel_max if channel_max is None else channel_max
        fmax = srv_frame_max if frame_max is None else frame_max
        self.frame_max = fmax
        self.send(method(0, CONNECTION_TUNE_OK, _TUNE.pack(cmax, fmax, heartbeat)))
        self.send(method(0, CONNECTION_OPEN, shortstr(vhost) + shortstr("") + bits(False)))
        self.expect(CONNECTION_OPEN_OK, channel=0)
        return cmax, fmax, heartbeat

    def open_channel(self, channel: int = 1) -> None:
        self.send(method(channel, CHANNEL_OPEN, shortstr("")))
        self.expect(CHANNEL_OPEN_OK, channel=channel)

    def declare_queue(self, channel: int, name: str, **kw: bool) -> tuple[str, int, int]:
        self.send(queue_declare(channel, name, **kw))
        r = self.expect(QUEUE_DECLARE_OK, channel=channel).args()
        return r.shortstr(), r.long(), r.long()

    def delete_queue(self, channel: int, name: str) -> None:
        self.send(queue_delete(channel, name))
        self.expect(QUEUE_DELETE_OK, channel=channel)

    def read_message(self, timeout: float | None = None) -> tuple[Frame, Frame, bytes, list[int]]:
        """Next deliver/get-ok with its header and reassembled body.

        Returns (method frame, header frame, body, sizes of each body frame payload).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        m = self.recv_method(max(0.0, deadline - time.monotonic()))
        if m is None or m.ids not in (BASIC_DELIVER, BASIC_GET_OK, (60, 50)):
            raise AssertionError(f"expected a delivery, got {m and m.ids}")
        h = self.recv_frame(max(0.0, deadline - time.monotonic()))
        if h is None or h.type != FRAME_HEADER:
            raise AssertionError(f"expected a content header, got {h}")
        size = _LONGLONG.unpack_from(h.payload, 4)[0]
        parts: list[bytes] = []
        got = 0
        while got < size:
            b = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if b is None or b.type != FRAME_BODY:
                raise AssertionError(f"expected a body frame, got {b}")
            parts.append(b.payload)
            got += len(b.payload)
        return m, h, b"".join(parts), [len(p) for p in parts]
