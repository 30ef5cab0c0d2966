"""A trivial local AMQP 0-9-1 "broker" that measures the load generator itself.

Owns: a uvloop server that answers the handshake and the synchronous methods the
generator uses (declare, bind, qos, consume, confirm.select, delete, close) with canned
replies, counts and discards publishes (acking them with one ``basic.ack(multiple)`` per
read in confirm mode), and, after ``basic.consume``, streams pre-encoded deliveries as
fast as the consumer's socket takes them (respecting prefetch for manual-ack consumers).
It stores nothing and routes nothing: it is the ceiling of what one producer process can
emit and one consumer process can absorb.

Run standalone: ``python -m loadtest.sink --port 5673 --size 16``; or ``shardmq bench
--sink`` starts one in a child process.

Invariants: every delivery body starts with the 8-byte big-endian ``time.monotonic_ns()``
of the write that carried it (the generator's latency format); delivery tags are
consecutive per channel from 1; a frame the sink cannot parse closes that connection.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import cast

from shardmq.amqp import methods as M

_HDR = struct.Struct(">BHI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_QB = struct.Struct(">QB")
_ACK_FRAME = struct.Struct(">BHIHHQBB")
_PUBLISH = (60 << 16) | 40
_ACK = (60 << 16) | 80
monotonic_ns = time.monotonic_ns


def _frame(ftype: int, ch: int, payload: bytes) -> bytes:
    return _HDR.pack(ftype, ch, len(payload)) + payload + b"\xce"


class _Deliveries:
    """A batch of pre-encoded deliveries; tags and timestamps patched in place."""

    def __init__(self, ch: int, ctag: str, size: int, batch: int) -> None:
        size = max(8, size)
        deliver = M.BasicDeliver(consumer_tag=ctag, delivery_tag=1, exchange="", routing_key="q")
        mp = deliver.encode()
        tag_off_in_payload = 4 + 1 + len(ctag.encode())
        header = _frame(2, ch, struct.pack(">HHQ", 60, 0, size) + b"\x00\x00")
        body = _frame(3, ch, bytes(size))
        one = _frame(1, ch, mp) + header + body
        self.msg = len(one)
        self.tag_offs = [i * len(one) + 7 + tag_off_in_payload for i in range(batch)]
        self.ts_offs = [i * len(one) + len(one) - 1 - size for i in range(batch)]
        self.buf = bytearray(one * batch)
        self.batch = batch

    def render(self, first_tag: int, n: int, ts: int) -> bytes:
        buf = self.buf
        pack_into = _U64.pack_into
        tsb = _U64.pack(ts)
        for i in range(n):
            pack_into(buf, self.tag_offs[i], first_tag + i)
            o = self.ts_offs[i]
            buf[o : o + 8] = tsb
        return bytes(memoryview(buf)[: n * self.msg])


class SinkProtocol(asyncio.BufferedProtocol):
    def __init__(self, size: int, stats: dict[str, int]) -> None:
        self.size = size
        self.stats = stats
        self.buf = bytearray(1 << 20)
        self.start = 0
        self.end = 0
        # set by connection_made (uvloop's transports are not asyncio.Transport
        # subclasses, but have its methods)
        self.transport: asyncio.Transport
        self.handshake = True
        self.confirm: set[int] = set()
        self.pub_seq: dict[int, int] = {}
        self.acked_seq: dict[int, int] = {}
        self.prefetch: dict[int, int] = {}
        self.streams: dict[int, asyncio.Task] = {}
        self.sent_tag: dict[int, int] = {}
        self.client_acked: dict[int, int] = {}
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.wake: dict[int, asyncio.Event] = {}
        self.no_ack: dict[int, bool] = {}

    # -- transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=1 << 20, low=256 << 10)

    def connection_lost(self, exc: Exception | None) -> None:
        for t in self.streams.values():
            t.cancel()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buf) - self.end < 65536:
            live = self.end - self.start
            if live + 65536 <= len(self.buf):
                self.buf[0:live] = self.buf[self.start : self.end]
            else:
                nb = bytearray(max(len(self.buf) * 2, live + 65536))
                nb[0:live] = self.buf[self.start : self.end]
                self.buf = nb
            self.start, self.end = 0, live
        return memoryview(self.buf)[self.end :]

    def send(self, ch: int, method: M.Method) -> None:
        self.transport.write(_frame(1, ch, method.encode()))

    # -- input
    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        buf = self.buf
        off = self.start
        end = self.end
        if self.handshake:
            if end - off < 8:
                return
            if bytes(buf[off : off + 8]) != M.PROTOCOL_HEADER:
                self.transport.close()
                return
            off += 8
            self.handshake = False
            self.send(
                0,
                M.ConnectionStart(
                    version_major=0,
                    version_minor=9,
                    server_properties={
                        "product": "shardmq-bench-sink",
                        "capabilities": {"publisher_confirms": True, "basic.nack": True},
                    },
                    mechanisms=b"PLAIN",
                    locales=b"en_US",
                ),
            )
        unpack_hdr = _HDR.unpack_from
        unpack_u32 = _U32.unpack_from
        pubs = 0
        pub_ch = 0
        while end - off >= 8:
            ftype, ch, size = unpack_hdr(buf, off)
            fe = off + 7 + size
            if fe >= end:
                break
            if ftype == 1:
                cm = unpack_u32(buf, off + 7)[0]
                if cm == _PUBLISH:
                    pubs += 1
                    pub_ch = ch
                elif cm == _ACK:
                    tag, multiple = _QB.unpack_from(buf, off + 11)
                    self.client_acked[ch] = max(self.client_acked.get(ch, 0), tag)
                    ev = self.wake.get(ch)
                    if ev is not None:
                        ev.set()
                else:
                    try:
                        self.on_method(ch, M.decode_method(bytes(buf[off + 7 : fe])))
                    except Exception as exc:
                        print(f"sink: closing connection: {exc!r}", file=sys.stderr)
                        self.transport.close()
                        return
            off = fe + 1
        self.start, self.end = (0, 0) if off == end else (off, end)
        if pubs:
            self.stats["published"] += pubs
            seq = self.pub_seq.get(pub_ch, 0) + pubs
            self.pub_seq[pub_ch] = seq
            if pub_ch in self.confirm:
                self.transport.write(_ACK_FRAME.pack(1, pub_ch, 13, 60, 80, seq, 1, 0xCE))

    def on_method(self, ch: int, m: M.Method) -> None:
        reply = _REPLIES.get(type(m))
        if isinstance(m, M.ConnectionStartOk):
            self.send(0, M.ConnectionTune(channel_max=2047, frame_max=131072, heartbeat=0))
        elif isinstance(m, M.ConnectionTuneOk):
            pass
        elif isinstance(m, M.QueueDeclare):
            self.send(
                ch, M.QueueDeclareOk(queue=m.queue or "sink-q", message_count=0, consumer_count=0)
            )
        elif isinstance(m, M.ConfirmSelect):
            self.confirm.add(ch)
            self.send(ch, M.ConfirmSelectOk())
        elif isinstance(m, M.BasicQos):
            self.prefetch[ch] = m.prefetch_count
            self.send(ch, M.BasicQosOk())
        elif isinstance(m, M.BasicConsume):
            tag = m.consumer_tag or "sink-ctag"
            self.send(ch, M.BasicConsumeOk(consumer_tag=tag))
            self.no_ack[ch] = m.no_ack
            if ch not in self.streams:
                self.wake[ch] = asyncio.Event()
                self.streams[ch] = asyncio.get_running_loop().create_task(self.stream(ch, tag))
        elif isinstance(m, M.BasicCancel):
            t = self.streams.pop(ch, None)
            if t is not None:
                t.cancel()
            self.send(ch, M.BasicCancelOk(consumer_tag=m.consumer_tag))
        elif isinstance(m, M.ChannelClose):
            t = self.streams.pop(ch, None)
            if t is not None:
                t.cancel()
            self.send(ch, M.ChannelCloseOk())
        elif isinstance(m, M.ConnectionClose):
            for t in self.streams.values():
                t.cancel()
            self.send(0, M.ConnectionCloseOk())
            self.transport.close()
        elif reply is not None:
            self.send(ch, reply())

    async def stream(self, ch: int, ctag: str) -> None:
        batch = max(1, min(256, 65536 // (self.size + 64)))
        d = _Deliveries(ch, ctag, self.size, batch)
        tag = 0
        write = self.transport.write
        wake = self.wake[ch]
        while not self.transport.is_closing():
            if not self.can_write.is_set():
                await self.can_write.wait()
                continue
            n = batch
            pf = 0 if self.no_ack.get(ch) else self.prefetch.get(ch, 0)
            if pf:
                room = pf - (tag - self.client_acked.get(ch, 0))
                if room <= 0:
                    wake.clear()
                    await wake.wait()
                    continue
                n = min(n, room)
            write(d.render(tag + 1, n, monotonic_ns()))
            tag += n
            self.stats["delivered"] += n
            await asyncio.sleep(0)


_REPLIES: dict[type[M.Method], Callable[[], M.Method]] = {
    M.ConnectionOpen: lambda: M.ConnectionOpenOk(),
    M.ChannelOpen: lambda: M.ChannelOpenOk(),
    M.ExchangeDeclare: lambda: M.ExchangeDeclareOk(),
    M.ExchangeDelete: lambda: M.ExchangeDeleteOk(),
    M.QueueBind: lambda: M.QueueBindOk(),
    M.QueueUnbind: lambda: M.QueueUnbindOk(),
    M.QueueDelete: lambda: M.QueueDeleteOk(message_count=0),
    M.QueuePurge: lambda: M.QueuePurgeOk(message_count=0),
}


def _stop(stop: asyncio.Future[None]) -> None:
    if not stop.done():
        stop.set_result(None)


async def serve(port: int, size: int, ready: Callable[[int], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    stats = {"published": 0, "delivered": 0}
    server = await loop.create_server(
        lambda: SinkProtocol(size, stats), "127.0.0.1", port, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop, stop)
    async with server:
        await stop


def _child(conn: Connection, size: int) -> None:
    import uvloop

    def ready(port: int) -> None:
        conn.send(port)
        conn.close()

    uvloop.run(serve(0, size, ready))


class SinkProcess:
    """A sink in a child process (see :func:`start_sink_process`)."""

    def __init__(self, process: BaseProcess, port: int) -> None:
        self.process = process
        self.port = port
        self.pid = process.pid

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2)


def start_sink_process(ctx: SpawnContext, size: int = 16) -> SinkProcess:
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(child, size), daemon=True)
    p.start()
    child.close()
    if not parent.poll(30):
        p.kill()
        raise RuntimeError("sink did not start")
    port = parent.recv()
    parent.close()
    return SinkProcess(p, port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.sink", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=5673)
    ap.add_argument("--size", type=int, default=16, help="body bytes of streamed deliveries")
    a = ap.parse_args(argv)
    import uvloop

    uvloop.run(serve(a.port, a.size, lambda p: print(f"sink listening on 127.0.0.1:{p}")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
