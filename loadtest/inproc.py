"""In-process AMQP clients: a broker and client connections without sockets.

Owns: ``Client`` (feeds frames to an ``AMQP091Connection`` and parses its output back
into methods and deliveries), frame builders, ``connect`` and ``make_broker``; used by
the unit tests and by ``python -m loadtest.xshard_cost``.

Frames are built with the generated method table and fed straight into the AMQP 0-9-1
adapter (``AMQP091Connection.feed``); the broker's output is parsed back into methods and
messages, so queue and channel semantics are tested without processes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from shardmq.adapter.amqp091 import AMQP091Connection
from shardmq.amqp import methods as M
from shardmq.amqp.codec import PROTOCOL_HEADER
from shardmq.broker.broker import Broker, LocalSequencer
from shardmq.broker.connection import BrokerConnection
from shardmq.config import load_config

HDR = struct.Struct(">BHI")


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return HDR.pack(ftype, channel, len(payload)) + payload + b"\xce"


def method_frame(channel: int, m: M.Method) -> bytes:
    return frame(1, channel, m.encode())


def content_frames(
    channel: int, body: bytes, props: M.BasicProperties | None = None, frame_max: int = 131072
) -> bytes:
    props = props or M.BasicProperties()
    header = struct.pack(">HHQ", 60, 0, len(body)) + props.encode()
    out = frame(2, channel, header)
    step = frame_max - 8
    for i in range(0, len(body), step):
        out += frame(3, channel, body[i : i + step])
    return out


@dataclass
class Delivery:
    channel: int
    method: M.Method
    properties: M.BasicProperties
    body: bytes


class FakeIO:
    """The I/O layer's side of a connection: records reading on/off."""

    def __init__(self) -> None:
        self.reading = True
        self.held = 0.0  # the last hold asked for (a delayed login refusal)

    def set_reading(self, active: bool) -> None:
        self.reading = active

    def tuned(self) -> None:
        pass

    def hold(self, seconds: float) -> None:
        self.held = seconds


def new_connection(
    broker: Broker, peer: str = "127.0.0.1:40000", io: FakeIO | None = None
) -> AMQP091Connection:
    """An AMQP 0-9-1 connection with no socket: feed it bytes, take its output."""
    return AMQP091Connection(broker, peer, io or FakeIO(), lambda: None)


@dataclass
class Client:
    conn: AMQP091Connection
    methods: list[tuple[int, M.Method]] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    closed: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _pending: dict[int, list[Any]] = field(default_factory=dict)

    def send(self, data: bytes) -> None:
        self.conn.feed(data)
        seq = self.conn.broker.sequencer
        if isinstance(seq, LocalSequencer) and seq.waiting:
            seq.commit()  # what the end of the loop turn does: commit, then answer
        self.pump()

    def call(self, channel: int, m: M.Method) -> None:
        self.send(method_frame(channel, m))

    def publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: M.BasicProperties | None = None,
        mandatory: bool = False,
    ) -> None:
        self.send(
            method_frame(
                channel,
                M.BasicPublish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
            )
            + content_frames(channel, body, props)
        )

    def pump(self) -> None:
        out = self.conn.take_output()
        if out:
            self.conn.after_flush()
            self._buf += out
        self.closed = self.closed or self.conn.want_close
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 8:
            ftype, ch, size = HDR.unpack_from(buf, pos)
            end = pos + 7 + size
            if end >= len(buf):
                break
            assert buf[end] == 0xCE
            payload = bytes(buf[pos + 7 : end])
            pos = end + 1
            if ftype == 1:
                m = M.decode_method(payload)
                if m.HAS_CONTENT:
                    self._pending[ch] = [m, None, 0, []]
                else:
                    self.methods.append((ch, m))
            elif ftype == 2:
                p = self._pending[ch]
                p[1] = M.BasicProperties.decode(payload, 12)
                p[2] = struct.unpack_from(">Q", payload, 4)[0]
                if p[2] == 0:
                    self._complete(ch)
            elif ftype == 3:
                p = self._pending[ch]
                p[3].append(payload)
                if sum(map(len, p[3])) >= p[2]:
                    self._complete(ch)
        del buf[:pos]
        # deliveries resumed by after_flush produce more output
        if self.conn.out:
            self.pump()

    def _complete(self, ch: int) -> None:
        m, props, _size, parts = self._pending.pop(ch)
        self.deliveries.append(Delivery(ch, m, props, b"".join(parts)))

    def last(self, cls: type[M.Method]) -> M.Method:
        for _ch, m in reversed(self.methods):
            if isinstance(m, cls):
                return m
        raise AssertionError(f"no {cls.__name__} in {self.methods}")

    def open_channel(self, n: int = 1) -> None:
        self.call(n, M.ChannelOpen())
        assert isinstance(self.methods[-1][1], M.ChannelOpenOk)

    def declare(self, channel: int, queue: str, **kw: Any) -> M.QueueDeclareOk:
        self.call(channel, M.QueueDeclare(queue=queue, **kw))
        return self.last(M.QueueDeclareOk)  # type: ignore[return-value]

    def consume(self, channel: int, queue: str, tag: str = "", no_ack: bool = False) -> str:
        self.call(channel, M.BasicConsume(queue=queue, consumer_tag=tag, no_ack=no_ack))
        return self.last(M.BasicConsumeOk).consumer_tag  # type: ignore[attr-defined]

    @property
    def domain(self) -> BrokerConnection:
        """The broker's side of this connection."""
        return self.conn.domain

    def bodies(self) -> list[bytes]:
        return [d.body for d in self.deliveries]


def make_broker(**overrides: Any) -> Broker:
    return Broker(load_config(**overrides))


def connect(
    broker: Broker, user: str = "guest", password: str = "guest", frame_max: int = 131072
) -> Client:
    client = Client(new_connection(broker))
    client.send(PROTOCOL_HEADER)
    assert isinstance(client.methods[-1][1], M.ConnectionStart)
    client.call(
        0,
        M.ConnectionStartOk(
            client_properties={
                "capabilities": {"consumer_cancel_notify": True, "connection.blocked": True}
            },
            mechanism="PLAIN",
            response=b"\0" + user.encode() + b"\0" + password.encode(),
            locale="en_US",
        ),
    )
    if client.closed:
        return client
    client.call(0, M.ConnectionTuneOk(channel_max=2047, frame_max=frame_max, heartbeat=0))
    client.call(0, M.ConnectionOpen(virtual_host="/"))
    assert isinstance(client.methods[-1][1], M.ConnectionOpenOk)
    return client
