"""Producer and consumer worker processes of the load generator.

Owns: what runs inside one spawned process: its AMQP connections (one channel each), the
publish loops (batched pre-encoded frames, optional per-connection rate, confirm window,
optional quota for backlog filling), the consumers (qos, consume, multi-acks), the
measurement clock (counter snapshots at the start and end of the measured window, latency
recording only inside it) and the control conversation with the parent over a pipe.

Protocol with the parent (tuples over a ``multiprocessing`` Connection):
  worker -> parent: ("ready", info) | ("progress", counts) | ("result", result) |
                    ("error", text)
  parent -> worker: ("go", t_go_ns, t_warm_ns, t_stop_ns) | ("stop",)

Invariants: all times are ``time.monotonic_ns()`` (one clock for every process on the
host); a worker always answers with exactly one "result" or "error" and then exits; it
never declares or deletes topology (the parent owns that).
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from loadtest.client import AMQPClientError, Client, PublishTemplate, connect
from loadtest.stats import Histogram
from shardmq.amqp import methods as M

_U64 = struct.Struct(">Q")
monotonic_ns = time.monotonic_ns
NEVER = 1 << 62


@dataclass
class WorkerPlan:
    role: str  # "producer" | "consumer" | "rejecter" (a consumer that nacks, --dead-letter)
    index: int
    uri: str
    # producer: one entry per connection: (exchange, routing keys, quota (0 = none))
    producers: list[tuple[str, list[str], int]] = field(default_factory=list)
    # consumer: one entry per connection: queue names to consume from
    consumers: list[list[str]] = field(default_factory=list)
    size: int = 16
    rate: float = 0.0  # per connection, msg/s, 0 = unlimited
    confirm: int = 0  # window, 0 = no confirms
    persistent: bool = False
    priorities: int = 0  # > 0: message priorities cycle over 0..priorities-1
    batch: int = 0  # 0 = automatic
    prefetch: int = 0
    auto_ack: bool = False
    ack_every: int = 1
    heartbeat: int = 0
    consume_on_go: bool = False  # backlog mode: basic.consume only at "go"
    connect_parallel: int = 32
    reject: bool = False  # acks are basic.nack(multiple, requeue=False)
    worker: int = -1  # shardmq only: reconnect until the server says this worker took it
    protocol: str = "amqp091"  # or "amqp10" (loadtest/amqp10.py runs the process)
    credit: int = 0  # amqp10: a receiver's link credit (0: prefetch, else 1000)


# connections tried to land one on a chosen worker (the kernel spreads them by port)
PIN_ATTEMPTS = 400


def auto_batch(msg_bytes: int) -> int:
    """Messages per write: about 64 KiB, between 1 and 512."""
    return max(1, min(512, 65536 // max(1, msg_bytes)))


class Producer:
    """One publishing connection."""

    def __init__(self, client: Client, plan: WorkerPlan, spec: tuple[str, list[str], int]):
        self.client = client
        exchange, keys, quota = spec
        mode = 2 if plan.persistent else None
        props: bytes | list[bytes] = M.BasicProperties(delivery_mode=mode).encode()
        if plan.priorities:
            props = [
                M.BasicProperties(delivery_mode=mode, priority=p).encode()
                for p in range(plan.priorities)
            ]
        probe = PublishTemplate(1, exchange, keys[:1], plan.size, props, client.frame_max, 1)
        self.batch = plan.batch or auto_batch(probe.msg_bytes)
        self.tmpl = PublishTemplate(
            1, exchange, keys, plan.size, props, client.frame_max, self.batch
        )
        self.quota = quota
        self.rate = plan.rate
        self.window = plan.confirm
        self.sent = 0
        self.confirmed = 0  # contiguous prefix of confirmed sequence numbers
        self.ooo: set[int] = set()  # confirmed out of order (single acks above the prefix)
        self.batches: deque[list[int]] = deque()  # [first_seq, last_seq, ts_ns]
        self.conf_v: list[int] = []
        self.conf_n: list[int] = []
        self.record = False
        self._waiter: asyncio.Future | None = None
        if self.window:
            client.on_confirm = self.on_confirm

    def buffered(self) -> int:
        """Messages written to the transport but not yet to the socket (an estimate)."""
        t = self.client.transport
        if t is None or t.is_closing():
            return 0
        return t.get_write_buffer_size() // self.tmpl.msg_bytes

    @property
    def outstanding(self) -> int:
        return self.sent - self.confirmed - len(self.ooo)

    @property
    def confirmed_total(self) -> int:
        return self.confirmed + len(self.ooo)

    def on_confirm(self, tag: int, multiple: bool, ack: bool) -> None:
        if multiple:
            if tag > self.confirmed:
                self.confirmed = tag
                if self.ooo:
                    self.ooo = {t for t in self.ooo if t > tag}
        elif tag == self.confirmed + 1:
            self.confirmed = tag
            ooo = self.ooo
            while ooo and self.confirmed + 1 in ooo:
                self.confirmed += 1
                ooo.discard(self.confirmed)
        elif tag > self.confirmed:
            self.ooo.add(tag)
        upto = self.confirmed
        batches = self.batches
        if batches and batches[0][0] <= upto:
            now = monotonic_ns()
            rec = self.record
            while batches:
                b = batches[0]
                if b[0] > upto:
                    break
                if b[1] <= upto:
                    n = b[1] - b[0] + 1
                    batches.popleft()
                else:
                    n = upto - b[0] + 1
                    b[0] = upto + 1
                if rec:
                    self.conf_v.append(now - b[2])
                    self.conf_n.append(n)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait_confirms(self) -> None:
        self._waiter = self.client.loop.create_future()
        try:
            await asyncio.wait_for(self._waiter, 1.0)
        except TimeoutError:
            pass
        finally:
            self._waiter = None

    async def run(self, t_go: int, t_stop: int, stopped: asyncio.Event) -> None:
        c = self.client
        tmpl = self.tmpl
        transport = c.transport
        if transport is None:
            raise AMQPClientError("not connected")
        write = transport.write
        pack = _U64.pack
        batch = self.batch
        window = self.window
        rate = self.rate
        quota = self.quota
        cursor = 0
        count = tmpl.count
        batches = self.batches
        sleep = asyncio.sleep
        now = monotonic_ns()
        if t_go > now:
            await sleep((t_go - now) / 1e9)
        while not stopped.is_set():
            if not c.writable:
                await c.wait_writable()
                continue
            if transport.is_closing():
                break
            n = batch
            if window:
                room = window - (self.sent - self.confirmed - len(self.ooo))
                if room <= 0:
                    await self._wait_confirms()
                    continue
                if room < n:
                    n = room
            now = monotonic_ns()
            if now >= t_stop:
                break
            if rate:
                due = int((now - t_go) * rate / 1e9) - self.sent
                if due <= 0:
                    # tick at most once per millisecond: several messages per write at
                    # high rates, one timer per message at low ones
                    nxt = t_go + int((self.sent + 1) * 1e9 / rate)
                    await sleep(max(0.001, (nxt - now) / 1e9))
                    continue
                if due < n:
                    n = due
            if quota:
                left = quota - self.sent
                if left <= 0:
                    break
                if left < n:
                    n = left
            write(tmpl.batch(cursor, n, pack(now)))
            if window:
                batches.append([self.sent + 1, self.sent + n, now])
            self.sent += n
            cursor = (cursor + n) % count
            await sleep(0)

    async def finish(self, timeout: float) -> None:
        """Fence, then wait for outstanding confirms (confirm mode), up to ``timeout``.

        The fence is a synchronous no-op (basic.qos) written behind the last publish: its
        reply means the broker has read every publish, so closing the connection now
        cannot discard publishes still sitting in socket buffers.
        """
        deadline = time.monotonic() + timeout
        try:
            await self.client.rpc(1, M.BasicQos(prefetch_count=0), timeout)
        except (TimeoutError, AMQPClientError, ConnectionError) as exc:
            self.client._error(f"fence after publishing failed: {exc!r}")
        if not self.window:
            return
        while self.outstanding > 0 and time.monotonic() < deadline:
            if self.client.transport is None or self.client.transport.is_closing():
                break
            await self._wait_confirms()


class _Ctrl:
    """Receives parent messages on the event loop."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.queue: asyncio.Queue = asyncio.Queue()
        loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                self.queue.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            self.queue.put_nowait(("stop",))
            self.queue.put_nowait(("eof",))

    async def get(self, *kinds: str) -> tuple:
        while True:
            msg = await self.queue.get()
            if msg[0] in kinds or msg[0] == "eof":
                return msg


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _snapshot(role: str, clients: list[Client], producers: list[Producer]) -> dict[str, Any]:
    d: dict[str, Any] = {"t": monotonic_ns(), "cpu": _cpu()}
    if role == "producer":
        # what actually left the process: not what still sits in the transport buffer
        d["published"] = sum(p.sent - p.buffered() for p in producers)
        d["confirmed"] = sum(p.confirmed_total for p in producers)
    else:
        d["consumed"] = sum(c.consumed for c in clients)
        d["bytes"] = sum(c.consumed_bytes for c in clients)
    return d


async def _connect_all(plan: WorkerPlan, n: int) -> list[Client]:
    sem = asyncio.Semaphore(plan.connect_parallel)

    async def one(i: int) -> Client:
        async with sem:
            for _ in range(PIN_ATTEMPTS):
                c = await connect(plan.uri, heartbeat=plan.heartbeat, product="shardmq-bench")
                if plan.worker < 0:
                    return c
                got = c.server_properties.get("worker")
                if got is None:
                    c.abort()
                    raise RuntimeError("the broker does not say which worker took a connection")
                if got == plan.worker:
                    return c
                await c.close()
            raise RuntimeError(f"no connection landed on worker {plan.worker}")

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _start_consuming(plan: WorkerPlan, clients: list[Client]) -> None:
    for ci, (c, queues) in enumerate(zip(clients, plan.consumers, strict=True)):
        for q in queues:
            await c.basic_consume(q, f"bench-{plan.index}-{ci}-{q}", plan.auto_ack)


async def _run(plan: WorkerPlan, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    ctrl = _Ctrl(conn, loop)
    role = plan.role
    n = len(plan.producers) if role == "producer" else len(plan.consumers)
    t0 = time.monotonic()
    clients = await _connect_all(plan, n)
    producers: list[Producer] = []
    if role == "producer":
        for c, spec in zip(clients, plan.producers, strict=True):
            if plan.confirm:
                await c.confirm_select()
            producers.append(Producer(c, plan, spec))
    else:
        for c in clients:
            if not plan.auto_ack:
                if plan.prefetch:
                    await c.basic_qos(plan.prefetch)
                c.ack_every = max(1, plan.ack_every)
                c.reject = plan.reject
        if not plan.consume_on_go:
            await _start_consuming(plan, clients)
    setup_s = time.monotonic() - t0
    conn.send(("ready", {"setup_s": setup_s, "connections": n, "pid": os.getpid()}))

    _, t_go, t_warm, t_stop = await ctrl.get("go")
    if plan.consume_on_go and role == "consumer":
        wait = (t_go - monotonic_ns()) / 1e9
        if wait > 0:
            await asyncio.sleep(wait)
        await _start_consuming(plan, clients)
    stopped = asyncio.Event()
    snaps: dict[str, dict] = {}

    def start_recording() -> None:
        snaps["warm"] = _snapshot(role, clients, producers)
        for c in clients:
            c.record = True
            del c.lat_v[:]
            del c.lat_n[:]
        for p in producers:
            p.record = True

    def stop_recording() -> None:
        snaps["stop"] = _snapshot(role, clients, producers)
        for c in clients:
            c.record = False
        for p in producers:
            p.record = False

    lat = Histogram()
    conf = Histogram()

    def fold() -> None:
        for c in clients:
            if c.lat_v:
                lat.record_runs(c.lat_v, c.lat_n)
                del c.lat_v[:]
                del c.lat_n[:]
        for p in producers:
            if p.conf_v:
                for v, k in zip(p.conf_v, p.conf_n, strict=True):
                    conf.record(v, k)
                p.conf_v.clear()
                p.conf_n.clear()

    async def clock() -> None:
        now = monotonic_ns()
        if t_warm > now:
            await asyncio.sleep((t_warm - now) / 1e9)
        start_recording()
        now = monotonic_ns()
        if t_stop < NEVER:
            if t_stop > now:
                await asyncio.sleep((t_stop - now) / 1e9)
            stop_recording()
            if role == "producer":
                stopped.set()

    async def progress() -> None:
        while True:
            await asyncio.sleep(0.25)
            if plan.reject:  # nothing else settles the last few deliveries of a burst
                for c in clients:
                    c.ack_pending()
            fold()
            s = _snapshot(role, clients, producers)
            s["last_delivery"] = max((c.last_delivery_ns for c in clients), default=0)
            s["errors"] = sum(c.errors for c in clients)
            conn.send(("progress", s))

    clock_task = loop.create_task(clock())
    progress_task = loop.create_task(progress())
    if role == "producer":
        await asyncio.gather(*(p.run(t_go, t_stop, stopped) for p in producers))
        if "stop" not in snaps and "warm" in snaps:
            stop_recording()  # finished early (quota)
        await asyncio.gather(*(p.finish(120.0) for p in producers))
    else:
        await ctrl.get("stop")
        for c in clients:
            c.ack_pending()
        if "stop" not in snaps:
            if "warm" not in snaps:
                start_recording()
            stop_recording()
    clock_task.cancel()
    progress_task.cancel()
    fold()
    final = _snapshot(role, clients, producers)
    # close before counting errors: a broker objecting to our last frames says so here
    await asyncio.gather(*(c.close(2.0) for c in clients), return_exceptions=True)
    result: dict[str, Any] = {
        "role": role,
        "index": plan.index,
        "pid": os.getpid(),
        "setup_s": setup_s,
        "warm": snaps.get("warm"),
        "stop": snaps.get("stop"),
        "final": final,
        "first_go": t_go,
        "last_delivery": max((c.last_delivery_ns for c in clients), default=0),
        "latency": lat.to_dict(),
        "confirm_latency": conf.to_dict(),
        "errors": sum(c.errors for c in clients),
        "returned": sum(c.returned for c in clients),
        "error_samples": [t for c in clients for t in c.error_texts][:10],
        "unconfirmed": sum(p.outstanding for p in producers),
        "tags": [(c.consumed, c.last_tag, c.acked_tag) for c in clients if role == "consumer"],
    }
    conn.send(("result", result))


def worker_main(plan: WorkerPlan, conn: Connection) -> None:
    """Entry point of a spawned worker process."""
    run_worker(plan, conn, _run)


def run_worker(
    plan: WorkerPlan,
    conn: Connection,
    run: Callable[[WorkerPlan, Connection], Coroutine[Any, Any, None]],
) -> None:
    """Run ``run(plan, conn)`` on uvloop; anything it raises goes to the parent as an
    ``("error", text)`` message (both protocols' worker processes)."""
    import uvloop

    try:
        uvloop.run(run(plan, conn))
    except BaseException as exc:  # report anything to the parent, then exit
        try:
            conn.send(("error", f"{plan.role} {plan.index}: {exc!r}\n{traceback.format_exc()}"))
        except OSError:
            pass
    finally:
        conn.close()
