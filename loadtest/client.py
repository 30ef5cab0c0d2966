"""A small, fast asyncio AMQP 0-9-1 client for the load generator.

Owns: one TCP connection (or TLS: ``amqps://``, with RabbitMQ's URI query parameters
``cacertfile``, ``certfile``, ``keyfile``, ``verify=verify_none``) with one channel
(number 1; ``connect(open_channel=False)`` stops at connection.open-ok): the handshake, synchronous RPCs
(declare, bind, qos, consume, confirm.select, delete, close) encoded and decoded with the
project's generated method table (``shardmq.amqp.methods``), and the hot paths written by
hand: pre-encoded publish frames (:class:`PublishTemplate`, a whole batch built with one
``bytes.join``), and a receive loop that walks frames in a bytearray with
``struct.unpack_from`` to count deliveries, read the 8-byte send timestamp at the start of
each body, send ``basic.ack(multiple=True)`` once per read when ``ack_every`` deliveries
are pending, and turn publisher confirms into callbacks.

Invariants:
- the receive buffer is never resized while a view of it may be held: it is compacted in
  place (same-length slice assignment) or replaced by a fresh, larger bytearray;
- exactly one synchronous RPC is outstanding per connection (callers await each one);
- a server ``channel.close`` / ``connection.close`` answers with close-ok, fails the
  pending RPC with :class:`AMQPClientError`, and counts an error; nothing raises out of
  ``buffer_updated``;
- latencies are recorded run-length encoded: (now - ts, count) for consecutive
  deliveries read in the same read call carrying the same timestamp.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

from shardmq.amqp import methods as M

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

_HDR = struct.Struct(">BHI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_QB = struct.Struct(">QB")
# a whole basic.ack frame: header, class, method, delivery-tag, multiple bit, frame-end
_ACK_FRAME = struct.Struct(">BHIHHQBB")
_CONTENT_HDR = struct.Struct(">HHQ")  # class-id, weight, body-size

_DELIVER = (60 << 16) | 60
_ACK = (60 << 16) | 80
_NACK = (60 << 16) | 120
_RETURN = (60 << 16) | 50
_CONNECTION_BLOCKED = (10 << 16) | 60
_CONNECTION_UNBLOCKED = (10 << 16) | 61
_BASIC_CANCEL = (60 << 16) | 30

R = TypeVar("R", bound=M.Method)  # the reply an rpc expects

monotonic_ns = time.monotonic_ns
HEARTBEAT_FRAME = _HDR.pack(FRAME_HEARTBEAT, 0, 0) + b"\xce"
CLIENT_FRAME_MAX = 131072


def tune_transport(transport: asyncio.Transport) -> None:
    """A load client's socket: TCP_NODELAY, 1 MiB / 256 KiB write-buffer marks."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    transport.set_write_buffer_limits(high=1 << 20, low=256 << 10)


class AMQPClientError(Exception):
    """A server-side close or a protocol problem seen by the client."""

    def __init__(self, text: str, reply_code: int = 0) -> None:
        super().__init__(text)
        self.reply_code = reply_code


@dataclass(slots=True)
class URI:
    host: str
    port: int
    user: str
    password: str
    vhost: str
    tls: bool = False
    cacertfile: str = ""  # empty: the system's CAs
    certfile: str = ""  # a client certificate (and keyfile) to present
    keyfile: str = ""
    verify: bool = True  # verify=verify_none: no check of the server's certificate

    @classmethod
    def parse(cls, uri: str) -> URI:
        u = urlsplit(uri)
        if u.scheme not in ("amqp", "amqps", ""):
            raise ValueError(f"unsupported URI scheme {u.scheme!r} (amqp:// or amqps://)")
        tls = u.scheme == "amqps"
        path = u.path[1:] if u.path.startswith("/") else u.path
        vhost = unquote(path) if path else "/"
        query = {k: v[-1] for k, v in parse_qs(u.query).items()}
        return cls(
            host=u.hostname or "127.0.0.1",
            port=u.port or (5671 if tls else 5672),
            user=unquote(u.username) if u.username else "guest",
            password=unquote(u.password) if u.password else "guest",
            vhost=vhost,
            tls=tls,
            cacertfile=query.get("cacertfile", ""),
            certfile=query.get("certfile", ""),
            keyfile=query.get("keyfile", ""),
            verify=query.get("verify", "verify_peer") != "verify_none",
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client context for ``amqps://`` (None for ``amqp://``)."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.cacertfile or None)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.certfile:
            ctx.load_cert_chain(self.certfile, self.keyfile or None)
        return ctx


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return _HDR.pack(ftype, channel, len(payload)) + payload + b"\xce"


def method_frame(channel: int, method: M.Method) -> bytes:
    return frame(FRAME_METHOD, channel, method.encode())


def _shortstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return bytes((len(b),)) + b


class PublishTemplate:
    """Pre-encoded publishes cycling over routing keys; batches built with one join.

    Each message is ``pre[i] + ts8 + post[i]`` where ``ts8`` is the 8-byte big-endian
    ``time.monotonic_ns()`` at the start of the body. A batch of n messages starting at
    cursor i is ``ts8.join([pre[i], mid[i], ..., mid[i+n-2], post[i+n-1]])`` with
    ``mid[k] = post[k] + pre[k+1]``: one C-level join per batch, no per-message Python.
    """

    __slots__ = ("count", "max_batch", "mids", "post", "pre", "msg_bytes")

    def __init__(
        self,
        channel: int,
        exchange: str,
        routing_keys: list[str],
        body_size: int,
        properties: bytes | list[bytes],
        frame_max: int,
        max_batch: int,
    ) -> None:
        if body_size < 8:
            raise ValueError("message size must be at least 8 bytes (send timestamp)")
        if not routing_keys:
            raise ValueError("at least one routing key")
        # several property sets (message priorities): they cycle with the routing keys
        props_list = [properties] if isinstance(properties, bytes) else properties
        if len(props_list) > 1:
            n = len(routing_keys) * len(props_list)
            pairs = [
                (routing_keys[i % len(routing_keys)], props_list[i % len(props_list)])
                for i in range(n)
            ]
        else:
            pairs = [(rk, props_list[0]) for rk in routing_keys]
        self.count = len(pairs)
        self.max_batch = max_batch
        chunk = frame_max - 8
        filler = bytes(range(256)) * (body_size // 256 + 1)
        rest = filler[: body_size - 8]
        headers = {
            p: frame(FRAME_HEADER, channel, _CONTENT_HDR.pack(60, 0, body_size) + p)
            for p in props_list
        }
        # body frames: the first carries the timestamp; split on frame_max
        first_len = min(body_size, chunk)
        body_tail = b"" + rest[: first_len - 8] + b"\xce"
        remaining = rest[first_len - 8 :]
        while remaining:
            part, remaining = remaining[:chunk], remaining[chunk:]
            body_tail += frame(FRAME_BODY, channel, part)
        first_hdr = _HDR.pack(FRAME_BODY, channel, first_len)
        pre: list[bytes] = []
        post: list[bytes] = []
        for rk, props in pairs:
            pub = M.BasicPublish(exchange=exchange, routing_key=rk).encode()
            pre.append(frame(FRAME_METHOD, channel, pub) + headers[props] + first_hdr)
            post.append(body_tail)
        self.pre = pre
        self.post = post
        # mean encoded size (routing keys may differ in length)
        self.msg_bytes = sum(len(a) + 8 + len(b) for a, b in zip(pre, post, strict=True)) // len(
            pre
        )
        n = self.count
        # mids extended so that mids[i : i + max_batch] never wraps
        self.mids = [post[k % n] + pre[(k + 1) % n] for k in range(n + max_batch)]

    def batch(self, cursor: int, n: int, ts8: bytes) -> bytes:
        """n >= 1 messages starting at routing-key index ``cursor`` (< count)."""
        if n == 1:
            return self.pre[cursor] + ts8 + self.post[cursor]
        parts = self.mids[cursor : cursor + n]
        parts[-1] = self.post[(cursor + n - 1) % self.count]
        parts.insert(0, self.pre[cursor])
        return ts8.join(parts)


class Client(asyncio.BufferedProtocol):
    """One AMQP connection with channel 1 open after :func:`connect`."""

    def __init__(self) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self._cap = 1 << 20
        self._buf = bytearray(self._cap)
        self._start = 0
        self._end = 0
        self._min_read = 65536
        self._rpc: asyncio.Future[M.Method] | None = None
        self._inbox: deque[M.Method] = deque()
        self._closed = self.loop.create_future()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._blocked = False
        self.frame_max = CLIENT_FRAME_MAX
        self.channel_max = 0
        self.server_properties: dict = {}
        self.closing = False
        # --- consumer state (hot path) ---
        self.consumed = 0
        self.consumed_bytes = 0
        self.last_tag = 0
        self.acked_tag = 0
        self.ack_every = 0  # 0 = auto-ack / no acking
        self.reject = False  # settle with basic.nack(requeue=False) instead of basic.ack
        self.last_delivery_ns = 0
        self.record = False
        self.lat_v = array("q")
        self.lat_n = array("q")
        self._in_deliver = False
        self._skip_content = False
        self._body_size = 0
        self._body_left = 0
        # --- confirms ---
        self.on_confirm: Callable[[int, bool, bool], None] | None = None
        # --- errors ---
        self.errors = 0
        self.returned = 0
        self.error_texts: list[str] = []

    # ------------------------------------------------------------- transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        tune_transport(transport)
        transport.write(PROTOCOL_HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        err = AMQPClientError(f"connection lost: {exc}" if exc else "connection closed")
        if not self.closing:
            self._error(str(err))
        if self._rpc is not None and not self._rpc.done():
            self._rpc.set_exception(err)
        if not self._closed.done():
            self._closed.set_result(None)
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        if not self._blocked:
            self._can_write.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        free = self._cap - self._end
        if free < self._min_read:
            start, end = self._start, self._end
            live = end - start
            if live + self._min_read <= self._cap:
                if live:
                    self._buf[0:live] = self._buf[start:end]
                self._start, self._end = 0, live
            else:
                cap = max(self._cap * 2, live + self._min_read)
                nb = bytearray(cap)
                nb[0:live] = self._buf[start:end]
                self._buf, self._cap = nb, cap
                self._start, self._end = 0, live
        return memoryview(self._buf)[self._end :]

    # ------------------------------------------------------------ hot receive
    def buffer_updated(self, nbytes: int) -> None:
        end = self._end + nbytes
        self._end = end
        buf = self._buf
        off = self._start
        unpack_hdr = _HDR.unpack_from
        unpack_u32 = _U32.unpack_from
        unpack_u64 = _U64.unpack_from
        in_deliver = self._in_deliver
        skip = self._skip_content
        body_size = self._body_size
        body_left = self._body_left
        consumed = self.consumed
        nbody = 0
        last_tag = self.last_tag
        rec = self.record
        now = monotonic_ns()
        run_ts = -1
        run_n = 0
        lat_v = self.lat_v
        lat_n = self.lat_n
        try:
            while end - off >= 8:
                ftype, _ch, size = unpack_hdr(buf, off)
                fe = off + 7 + size
                if fe >= end:
                    break
                if ftype == FRAME_BODY:
                    if in_deliver:
                        if body_left == body_size and size >= 8:
                            ts = unpack_u64(buf, off + 7)[0]
                            if ts == run_ts:
                                run_n += 1
                            else:
                                if run_n and rec:
                                    lat_v.append(now - run_ts)
                                    lat_n.append(run_n)
                                run_ts = ts
                                run_n = 1
                        body_left -= size
                        if body_left <= 0:
                            consumed += 1
                            nbody += body_size
                            in_deliver = False
                    elif skip:
                        body_left -= size
                        if body_left <= 0:
                            skip = False
                elif ftype == FRAME_METHOD:
                    cm = unpack_u32(buf, off + 7)[0]
                    if cm == _DELIVER:
                        last_tag = unpack_u64(buf, off + 12 + buf[off + 11])[0]
                        in_deliver = True
                    elif cm == _ACK:
                        tag, multiple = _QB.unpack_from(buf, off + 11)
                        if self.on_confirm is not None:
                            self.on_confirm(tag, bool(multiple & 1), True)
                    elif cm == _NACK:
                        tag, bits = _QB.unpack_from(buf, off + 11)
                        self._error("basic.nack from broker")
                        if self.on_confirm is not None:
                            self.on_confirm(tag, bool(bits & 1), False)
                    else:
                        if cm == _RETURN:
                            self.returned += 1
                            skip = True
                        self._slow_method(cm, bytes(buf[off + 7 : fe]))
                elif ftype == FRAME_HEADER:
                    body_size = unpack_u64(buf, off + 11)[0]
                    body_left = body_size
                    if body_size == 0:
                        if in_deliver:
                            consumed += 1
                            in_deliver = False
                        skip = False
                elif ftype == FRAME_HEARTBEAT:
                    if self.transport is not None:
                        self.transport.write(HEARTBEAT_FRAME)
                else:
                    self._error(f"unexpected frame type {ftype}")
                if buf[fe] != FRAME_END:
                    self._error("bad frame end")
                    self.abort()
                    return
                off = fe + 1
        finally:
            if run_n and rec:
                lat_v.append(now - run_ts)
                lat_n.append(run_n)
            if off == end:
                self._start = self._end = 0
            else:
                self._start = off
            self._in_deliver = in_deliver
            self._skip_content = skip
            self._body_size = body_size
            self._body_left = body_left
            self.last_tag = last_tag
            if consumed != self.consumed:
                self.consumed = consumed
                self.consumed_bytes += nbody
                self.last_delivery_ns = now
                if self.ack_every and last_tag - self.acked_tag >= self.ack_every:
                    self.ack_pending()

    def ack_pending(self) -> None:
        """Ack every delivery so far with one basic.ack(multiple=True) (manual-ack only);
        with ``reject``, one basic.nack(multiple=True, requeue=False) instead."""
        if self.ack_every and self.last_tag > self.acked_tag and self.transport is not None:
            if self.reject:
                frame_ = _ACK_FRAME.pack(1, 1, 13, 60, 120, self.last_tag, 1, FRAME_END)
            else:
                frame_ = _ACK_FRAME.pack(1, 1, 13, 60, 80, self.last_tag, 1, FRAME_END)
            self.transport.write(frame_)
            self.acked_tag = self.last_tag

    # ------------------------------------------------------------- slow path
    def _error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_texts) < 20:
            self.error_texts.append(text)

    def _slow_method(self, cm: int, payload: bytes) -> None:
        try:
            method = M.decode_method(payload)
        except Exception as exc:  # a broken frame from the peer: count it, drop it
            self._error(f"undecodable method {cm >> 16}.{cm & 0xFFFF}: {exc!r}")
            return
        if isinstance(method, M.ChannelClose):
            self._send(method_frame(1, M.ChannelCloseOk()))
            err = AMQPClientError(
                f"channel.close {method.reply_code} {_txt(method.reply_text)}", method.reply_code
            )
            self._error(str(err))
            self._fail_rpc(err)
        elif isinstance(method, M.ConnectionClose):
            self._send(method_frame(0, M.ConnectionCloseOk()))
            err = AMQPClientError(
                f"connection.close {method.reply_code} {_txt(method.reply_text)}",
                method.reply_code,
            )
            self._error(str(err))
            self._fail_rpc(err)
            self.closing = True
        elif cm == _CONNECTION_BLOCKED:
            self._blocked = True
            self._can_write.clear()
        elif cm == _CONNECTION_UNBLOCKED:
            self._blocked = False
            self._can_write.set()
        elif cm == _BASIC_CANCEL:
            self._error("consumer cancelled by broker")
        elif isinstance(method, M.ChannelFlow):
            self._send(method_frame(1, M.ChannelFlowOk(active=method.active)))
        elif cm == _RETURN:
            pass
        elif self._rpc is not None and not self._rpc.done():
            self._rpc.set_result(method)
        else:
            self._inbox.append(method)

    def _fail_rpc(self, err: Exception) -> None:
        if self._rpc is not None and not self._rpc.done():
            self._rpc.set_exception(err)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def rpc(self, channel: int, method: M.Method, timeout: float = 30.0) -> M.Method:
        """Send a synchronous method, await the server's reply method."""
        if self.transport is None or self.transport.is_closing():
            raise AMQPClientError("connection is closed")
        fut = self.loop.create_future()
        self._rpc = fut
        self.transport.write(method_frame(channel, method))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._rpc = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_writable(self) -> None:
        await self._can_write.wait()

    @property
    def writable(self) -> bool:
        return self._can_write.is_set()

    # ---------------------------------------------------------- handshake etc.
    async def _handshake(
        self, uri: URI, heartbeat: int, product: str, open_channel: bool = True
    ) -> None:
        start = await self._await_method(10.0)
        if not isinstance(start, M.ConnectionStart):
            raise AMQPClientError(f"expected connection.start, got {type(start).__name__}")
        self.server_properties = dict(start.server_properties or {})
        props = {
            "product": product,
            "platform": "Python/asyncio",
            "capabilities": {
                "publisher_confirms": True,
                "consumer_cancel_notify": True,
                "basic.nack": True,
                "connection.blocked": True,
                "exchange_exchange_bindings": True,
                "authentication_failure_close": True,
                "per_consumer_qos": True,
            },
        }
        response = b"\x00" + uri.user.encode() + b"\x00" + uri.password.encode()
        tune = await self.rpc(
            0,
            M.ConnectionStartOk(
                client_properties=props, mechanism="PLAIN", response=response, locale="en_US"
            ),
        )
        if not isinstance(tune, M.ConnectionTune):
            raise AMQPClientError(f"expected connection.tune, got {type(tune).__name__}")
        fmax = tune.frame_max or CLIENT_FRAME_MAX
        self.frame_max = min(fmax, CLIENT_FRAME_MAX)
        self.channel_max = tune.channel_max
        hb = heartbeat if tune.heartbeat == 0 else min(heartbeat, tune.heartbeat)
        self._send(
            method_frame(
                0,
                M.ConnectionTuneOk(
                    channel_max=tune.channel_max or 2047, frame_max=self.frame_max, heartbeat=hb
                ),
            )
        )
        ok = await self.rpc(0, M.ConnectionOpen(virtual_host=uri.vhost))
        if not isinstance(ok, M.ConnectionOpenOk):
            raise AMQPClientError(f"expected connection.open-ok, got {type(ok).__name__}")
        if not open_channel:
            return
        ok = await self.rpc(1, M.ChannelOpen())
        if not isinstance(ok, M.ChannelOpenOk):
            raise AMQPClientError(f"expected channel.open-ok, got {type(ok).__name__}")
        if hb:
            self.loop.create_task(self._heartbeat(hb))

    async def _await_method(self, timeout: float) -> M.Method:
        if self._inbox:
            return self._inbox.popleft()
        fut = self.loop.create_future()
        self._rpc = fut
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._rpc = None

    async def _heartbeat(self, interval: int) -> None:
        while not self._closed.done():
            await asyncio.sleep(interval / 2)
            self._send(HEARTBEAT_FRAME)

    async def close(self, timeout: float = 5.0) -> None:
        """connection.close handshake (falls back to an abort)."""
        if self.transport is None or self.transport.is_closing():
            return
        self.closing = True
        try:
            await self.rpc(0, M.ConnectionClose(reply_code=200, reply_text="bye"), timeout)
        except (TimeoutError, AMQPClientError, ConnectionError):
            pass
        if self.transport is not None:
            self.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except TimeoutError:
            self.abort()

    # ----------------------------------------------------------- convenience
    async def _call(self, method: M.Method, reply: type[R]) -> R:
        """``rpc`` on channel 1 whose answer must be a ``reply``."""
        ok = await self.rpc(1, method)
        if not isinstance(ok, reply):
            raise AMQPClientError(f"expected {reply.NAME}, got {type(ok).__name__}")
        return ok

    async def exchange_declare(
        self, name: str, type_: str, durable: bool = False, auto_delete: bool = False
    ) -> None:
        await self.rpc(
            1,
            M.ExchangeDeclare(exchange=name, type=type_, durable=durable, auto_delete=auto_delete),
        )

    async def exchange_delete(self, name: str) -> None:
        await self.rpc(1, M.ExchangeDelete(exchange=name))

    async def queue_declare(
        self, name: str, durable: bool = False, passive: bool = False, arguments: dict | None = None
    ) -> M.QueueDeclareOk:
        return await self._call(
            M.QueueDeclare(queue=name, durable=durable, passive=passive, arguments=arguments or {}),
            M.QueueDeclareOk,
        )

    async def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        await self.rpc(1, M.QueueBind(queue=queue, exchange=exchange, routing_key=routing_key))

    async def queue_delete(self, name: str) -> M.QueueDeleteOk:
        return await self._call(M.QueueDelete(queue=name), M.QueueDeleteOk)

    async def queue_purge(self, name: str) -> M.QueuePurgeOk:
        return await self._call(M.QueuePurge(queue=name), M.QueuePurgeOk)

    async def basic_qos(self, prefetch: int) -> None:
        await self.rpc(1, M.BasicQos(prefetch_count=prefetch))

    async def confirm_select(self) -> None:
        await self.rpc(1, M.ConfirmSelect())

    async def basic_consume(self, queue: str, tag: str, no_ack: bool) -> None:
        await self.rpc(1, M.BasicConsume(queue=queue, consumer_tag=tag, no_ack=no_ack))

    async def reopen_channel(self) -> None:
        """Open channel 1 again after the server closed it."""
        await self.rpc(1, M.ChannelOpen())

    async def basic_cancel(self, tag: str) -> None:
        await self.rpc(1, M.BasicCancel(consumer_tag=tag))


def _txt(v: object) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else str(v)


async def connect(
    uri: str | URI,
    heartbeat: int = 0,
    product: str = "shardmq-bench",
    timeout: float = 30.0,
    *,
    open_channel: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> Client:
    """Open a connection and channel 1; raises AMQPClientError / OSError on failure.

    ``open_channel=False`` stops at connection.open-ok (the connection set-up rate mode);
    ``ssl_context`` reuses a context made once by ``uri.ssl_context()`` (amqps:// only).
    """
    u = URI.parse(uri) if isinstance(uri, str) else uri
    loop = asyncio.get_running_loop()
    ctx = (ssl_context if u.tls else None) or u.ssl_context()
    server_hostname = u.host if ctx is not None else None
    _, proto = await asyncio.wait_for(
        loop.create_connection(Client, u.host, u.port, ssl=ctx, server_hostname=server_hostname),
        timeout,
    )
    try:
        await proto._handshake(u, heartbeat, product, open_channel)
    except BaseException:
        proto.abort()
        raise
    return proto
