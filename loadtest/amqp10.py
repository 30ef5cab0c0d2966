"""The load generator's AMQP 1.0 mode (``shardmq bench --protocol amqp10``).

Owns: what one spawned producer or consumer process does when the run speaks AMQP 1.0
— ``Conn`` (an asyncio protocol around the project's sans-IO engine in its client role,
``shardmq.amqp1.client.ClientEngine``: one write per loop turn), the publishing loop
(``Sender``: transfers to ``/exchange/X/KEY``, or ``/queue/NAME`` on the default
exchange, RabbitMQ 3's addresses, which shardmq also takes; a batch of pre-encoded
frames per write, ``ClientEngine.send_batch``, as the 0-9-1 producer's one join) and
the consuming link (``Receiver``: ``/queue/NAME`` with link credit), and
``amqp10_worker_main``, which talks to the parent exactly as
``loadtest.worker.worker_main`` does (same messages, same result fields), so the
parent, the report and ``--vs`` need no change.

The 0-9-1 options map onto the 1.0 flow: ``--confirm N`` -> unsettled transfers, at most
N unsettled (the broker's ``accepted`` is the confirm; without it settled transfers);
``--auto-ack`` -> a receiver link with sender-settle-mode settled (else unsettled,
settled by ``accepted`` dispositions every ``--multi-ack-every`` messages, as ranges);
``--credit`` (default ``--prefetch``) -> the receiver's link credit, topped up at half.

Invariants: the body is ``--size`` bytes in one data section, its first 8 bytes the
send time (``time.monotonic_ns``) as in the 0-9-1 mode, so latency is measured the
same way; a worker answers with exactly one "result" or "error".
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from array import array
from collections import deque
from multiprocessing.connection import Connection
from typing import Any, cast

from loadtest.client import URI, tune_transport
from loadtest.stats import Histogram
from loadtest.worker import NEVER, WorkerPlan, _Ctrl, auto_batch, run_worker
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.client import ClientEngine
from shardmq.amqp1.engine import CLOSED, Delivery, Link, Session
from shardmq.amqp1.sections import data_header

_U64 = struct.Struct(">Q")
monotonic_ns = time.monotonic_ns
_ACCEPTED = T.Accepted()


class Conn(asyncio.Protocol):
    """One AMQP 1.0 connection of the load generator."""

    def __init__(self, uri: URI, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        hostname = None if uri.vhost == "/" else f"vhost:{uri.vhost}"
        self.engine = ClientEngine(
            self,
            self._wake,
            user=uri.user,
            password=uri.password,
            hostname=hostname,
            container_id=f"shardmq-bench-{os.getpid()}",
        )
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.attached: dict[str, asyncio.Future[Link]] = {}
        self.writable = asyncio.Event()
        self.writable.set()
        self.errors = 0
        self.error_texts: list[str] = []
        self.sender: Sender | None = None
        self.receiver: Receiver | None = None
        self._flush_due = False
        self.closing = False  # we asked to close: detaches are expected

    # ---------------------------------------------------------------- I/O
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        tune_transport(transport)
        self.engine.start()

    def data_received(self, data: bytes) -> None:
        self.engine.feed(data)
        if self.sender is not None and self.sender.window_shut:
            self.sender.credit_event.set()  # a session flow may have opened it
        if self.engine.state >= CLOSED:  # the peer's close (or a protocol error)
            self._flush()
            if not self.closed.done():
                self.closed.set_result(None)
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.engine.state < CLOSED and not self.closing:
            self.error(f"connection lost: {exc}" if exc else "connection closed by the broker")
        self.engine.connection_lost()
        futs: list[asyncio.Future[Any]] = [self.opened, self.closed, *self.attached.values()]
        for fut in futs:
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost"))
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _wake(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        data = self.engine.take_output()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def buffered(self) -> int:
        t = self.transport
        if t is None or t.is_closing():
            return 0
        return t.get_write_buffer_size() + len(self.engine.out)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_texts) < 10:
            self.error_texts.append(text)

    async def close(self, timeout: float = 5.0) -> None:
        self.closing = True
        self.engine.close()
        self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except (TimeoutError, ConnectionError):
            pass
        if self.transport is not None:
            self.transport.close()

    # ---------------------------------------------------------------- engine handler
    def on_open(self, hostname: str | None) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def on_begin(self, session: Session) -> None:
        pass

    def on_end(self, session: Session) -> None:
        pass

    def after_attach(self, session: Session, link: Link) -> None:
        fut = self.attached.get(link.name)
        if fut is not None and not fut.done():
            fut.set_result(link)

    def on_detach(self, session: Session, link: Link, error: Any) -> None:
        text = f"link '{link.name}' detached: {error}"
        fut = self.attached.get(link.name)
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError(text))
        elif not self.closing:
            self.error(text)

    def on_flow(self, session: Session, link: Link, drain: bool) -> None:
        if self.sender is not None:
            self.sender.credit_event.set()

    def on_transfer(self, session: Session, link: Link, d: Delivery) -> None:
        r = self.receiver
        if r is not None:
            r.on_transfer(session, link, d)

    def on_disposition(self, session: Session, d: Any) -> None:
        s = self.sender
        if s is not None and d.role:  # the broker, as the receiver, settles our transfers
            first = int(d.first)
            last = int(d.last) if d.last is not None else first
            if not isinstance(d.state, T.Accepted):
                self.error(f"publish {first}..{last} not accepted: {d.state}")
            s.on_settled(first, last)

    def on_close(self) -> None:
        err = self.engine.error
        if err is not None:
            self.error(f"closed by the broker: {err}")
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"refused: {err}"))

    # ---------------------------------------------------------------- set-up
    async def attach(self, name: str, receiver: bool, address: str, settled: bool) -> Link:
        s = self.session
        fut: asyncio.Future[Link] = self.loop.create_future()
        self.attached[name] = fut
        self.engine.attach(s, name, receiver=receiver, address=address, settled=settled)
        return await asyncio.wait_for(fut, 30)

    session: Session


async def connect10(uri_text: str, timeout: float = 30.0) -> Conn:
    uri = URI.parse(uri_text)
    if uri.tls:
        raise ValueError("the AMQP 1.0 mode speaks plain TCP only (amqp://)")
    loop = asyncio.get_running_loop()
    _t, conn = await loop.create_connection(lambda: Conn(uri, loop), uri.host, uri.port)
    await asyncio.wait_for(asyncio.shield(conn.opened), timeout)
    conn.session = conn.engine.begin()
    return conn


class Sender:
    """One publishing link."""

    def __init__(self, conn: Conn, link: Link, plan: WorkerPlan, quota: int) -> None:
        self.conn = conn
        self.link = link
        self.session = conn.session
        self.settled = not plan.confirm
        self.window = plan.confirm
        self.size = plan.size
        self.quota = quota
        self.rate = plan.rate
        head = b""
        if plan.persistent:
            head = T.Header(durable=True).to_bytes()
        self.prefix = head + data_header(plan.size)
        self.pad = b"\x00" * (plan.size - 8)
        self.msg_bytes = 8 + 24 + len(self.prefix) + plan.size
        self.batch = plan.batch or auto_batch(self.msg_bytes)
        self.sent = 0
        self.confirmed = 0
        self.credit_event = asyncio.Event()
        self.window_shut = False  # waiting for the broker's session window, not credit
        self.batches: deque[list[int]] = deque()  # [first_id, last_id, ts_ns]
        self.conf_v: list[int] = []
        self.conf_n: list[int] = []
        self.record = False
        self.first_id = -1
        conn.sender = self

    def buffered(self) -> int:
        return self.conn.buffered() // self.msg_bytes

    @property
    def outstanding(self) -> int:
        return self.sent - self.confirmed if not self.settled else 0

    def on_settled(self, first: int, last: int) -> None:
        self.confirmed += last - first + 1
        batches = self.batches
        if batches:
            now = monotonic_ns()
            while batches and batches[0][0] <= last:
                b = batches[0]
                top = min(b[1], last)
                n = top - b[0] + 1
                if b[1] <= last:
                    batches.popleft()
                else:
                    b[0] = last + 1
                if self.record:
                    self.conf_v.append(now - b[2])
                    self.conf_n.append(n)
        self.credit_event.set()

    async def run(self, t_go: int, t_stop: int, stopped: asyncio.Event) -> None:
        conn = self.conn
        engine = conn.engine
        session = self.session
        link = self.link
        send = engine.send_batch
        pack = _U64.pack
        prefix, pad = self.prefix, self.pad
        settled = self.settled
        window = self.window
        rate, quota = self.rate, self.quota
        sleep = asyncio.sleep
        now = monotonic_ns()
        if t_go > now:
            await sleep((t_go - now) / 1e9)
        while not stopped.is_set() and engine.state < CLOSED:
            if not conn.writable.is_set():
                await conn.writable.wait()
                continue
            if monotonic_ns() >= t_stop:
                break
            # no more than the credit and the broker's session window (one write of
            # pre-encoded frames: nothing waits in the engine's queue)
            room = session.remote_incoming_window
            n = min(self.batch, link.credit, room)
            if window:
                n = min(n, window - (self.sent - self.confirmed))
            if n <= 0:
                self.window_shut = room <= 0
                self.credit_event.clear()
                try:
                    await asyncio.wait_for(self.credit_event.wait(), 1.0)
                except TimeoutError:
                    pass
                self.window_shut = False
                continue
            now = monotonic_ns()
            if now >= t_stop:
                break
            if rate:
                due = int((now - t_go) * rate / 1e9) - self.sent
                if due <= 0:
                    nxt = t_go + int((self.sent + 1) * 1e9 / rate)
                    await sleep(max(0.001, (nxt - now) / 1e9))
                    continue
                n = min(n, due)
            if quota:
                left = quota - self.sent
                if left <= 0:
                    break
                n = min(n, left)
            # n pre-encoded transfers in one write: tags are the send counter
            first = send(session, link, self.sent, prefix + pack(now) + pad, n, settled)
            self.sent += n
            if not settled:
                self.batches.append([first, first + n - 1, now])
            await sleep(0)

    async def finish(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.outstanding > 0 and time.monotonic() < deadline:
            if self.conn.engine.state >= CLOSED:
                break
            self.credit_event.clear()
            try:
                await asyncio.wait_for(self.credit_event.wait(), 1.0)
            except TimeoutError:
                pass


class Receiver:
    """The consuming links of one connection."""

    def __init__(self, conn: Conn, plan: WorkerPlan) -> None:
        self.conn = conn
        self.credit = plan.credit or plan.prefetch or 1000
        self.settled = plan.auto_ack
        self.ack_every = max(1, min(plan.ack_every or self.credit // 4, self.credit // 2 or 1))
        self.size = plan.size
        self.consumed = 0
        self.last_delivery_ns = 0
        self.record = False
        self.lat_v = array("q")
        self.lat_n = array("q")
        self._run_ts = -1
        self._run_n = 0
        # unsettled deliveries not yet accepted, per link: [first delivery-id, last]
        self.pending: dict[int, list[int]] = {}
        self.last_tag = 0
        self.acked_tag = 0
        self.refill_at = self.credit // 2  # link credit topped up when down to this
        conn.receiver = self
        conn.on_transfer = self.on_transfer  # type: ignore[method-assign]  # the engine calls it
        conn.engine.on_message = self.on_message  # the hot path: no Delivery per message

    @property
    def consumed_bytes(self) -> int:
        return self.consumed * self.size

    def on_transfer(self, session: Session, link: Link, d: Delivery) -> None:
        self.on_message(session, link, d.delivery_id, d.settled, d.payload)

    def on_message(
        self, session: Session, link: Link, did: int, settled: bool, payload: bytes
    ) -> None:
        now = self.last_delivery_ns = monotonic_ns()
        self.consumed += 1
        if self.record:
            start = len(payload) - self.size
            if start >= 0:
                ts = _U64.unpack_from(payload, start)[0]
                if ts == self._run_ts:
                    self._run_n += 1
                else:
                    if self._run_n:
                        self.lat_v.append(now - self._run_ts)
                        self.lat_n.append(self._run_n)
                    self._run_ts = ts
                    self._run_n = 1
        if not settled:
            self.last_tag += 1
            p = self.pending.get(link.handle)
            if p is None:
                self.pending[link.handle] = [did, did]
            elif did == p[1] + 1:
                p[1] = did
            else:  # a gap: settle what we have, start again
                self.conn.engine.disposition(session, p[0], p[1], True, _ACCEPTED)
                p[0] = p[1] = did
            if self.last_tag - self.acked_tag >= self.ack_every:
                self.ack_pending()
        if link.credit <= self.refill_at:
            self.conn.engine.grant(session, link, self.credit)

    def flush_latency(self) -> None:
        if self._run_n and self.record:
            self.lat_v.append(monotonic_ns() - self._run_ts)
            self.lat_n.append(self._run_n)
        self._run_ts = -1
        self._run_n = 0

    def ack_pending(self) -> None:
        engine = self.conn.engine
        for p in self.pending.values():
            engine.disposition(self.conn.session, p[0], p[1], True, _ACCEPTED)
        self.pending.clear()
        self.acked_tag = self.last_tag


def _snapshot(role: str, conns: list[Conn], senders: list[Sender]) -> dict[str, Any]:
    t = os.times()
    d: dict[str, Any] = {"t": monotonic_ns(), "cpu": t.user + t.system}
    if role == "producer":
        d["published"] = sum(s.sent - s.buffered() for s in senders)
        d["confirmed"] = sum(s.confirmed for s in senders)
    else:
        recs = [c.receiver for c in conns if c.receiver is not None]
        d["consumed"] = sum(r.consumed for r in recs)
        d["bytes"] = sum(r.consumed_bytes for r in recs)
    return d


async def _run(plan: WorkerPlan, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    ctrl = _Ctrl(pipe, loop)
    role = plan.role
    if role not in ("producer", "consumer"):
        raise ValueError(f"the AMQP 1.0 mode has no {role} role")
    if plan.worker >= 0:
        raise ValueError("--producer-worker/--consumer-worker need the 0-9-1 mode")
    t0 = time.monotonic()
    n = len(plan.producers) if role == "producer" else len(plan.consumers)
    sem = asyncio.Semaphore(plan.connect_parallel)

    async def one() -> Conn:
        async with sem:
            return await connect10(plan.uri)

    conns = list(await asyncio.gather(*(one() for _ in range(n))))
    senders: list[Sender] = []
    receivers: list[Receiver] = []
    tag = f"bench-{os.getpid()}"
    if role == "producer":
        for i, (c, (exchange, keys, quota)) in enumerate(zip(conns, plan.producers, strict=True)):
            key = keys[0]  # one link per connection: the first routing key
            address = f"/queue/{key}" if exchange == "" else f"/exchange/{exchange}/{key}"
            link = await c.attach(f"{tag}-s{i}", False, address, not plan.confirm)
            senders.append(Sender(c, link, plan, quota))
    else:
        for c in conns:
            receivers.append(Receiver(c, plan))

    async def start_consuming() -> None:
        for i, (c, queues) in enumerate(zip(conns, plan.consumers, strict=True)):
            r = c.receiver
            assert r is not None
            for q in queues:
                link = await c.attach(f"{tag}-r{i}-{q}", True, f"/queue/{q}", plan.auto_ack)
                c.engine.grant(c.session, link, r.credit)

    if role == "consumer" and not plan.consume_on_go:
        await start_consuming()
    setup_s = time.monotonic() - t0
    pipe.send(("ready", {"setup_s": setup_s, "connections": n, "pid": os.getpid()}))

    _, t_go, t_warm, t_stop = await ctrl.get("go")
    if plan.consume_on_go and role == "consumer":
        wait = (t_go - monotonic_ns()) / 1e9
        if wait > 0:
            await asyncio.sleep(wait)
        await start_consuming()
    stopped = asyncio.Event()
    snaps: dict[str, dict] = {}
    lat = Histogram()
    conf = Histogram()

    def set_record(on: bool) -> None:
        for r in receivers:
            if not on:
                r.flush_latency()
            r.record = on
            if on:
                del r.lat_v[:]
                del r.lat_n[:]
        for s in senders:
            s.record = on

    def fold() -> None:
        for r in receivers:
            if r.lat_v:
                lat.record_runs(r.lat_v, r.lat_n)
                del r.lat_v[:]
                del r.lat_n[:]
        for s in senders:
            for v, k in zip(s.conf_v, s.conf_n, strict=True):
                conf.record(v, k)
            s.conf_v.clear()
            s.conf_n.clear()

    async def clock() -> None:
        now = monotonic_ns()
        if t_warm > now:
            await asyncio.sleep((t_warm - now) / 1e9)
        snaps["warm"] = _snapshot(role, conns, senders)
        set_record(True)
        now = monotonic_ns()
        if t_stop < NEVER:
            if t_stop > now:
                await asyncio.sleep((t_stop - now) / 1e9)
            set_record(False)
            snaps["stop"] = _snapshot(role, conns, senders)
            if role == "producer":
                stopped.set()

    async def progress() -> None:
        while True:
            await asyncio.sleep(0.25)
            for r in receivers:
                r.ack_pending()
            fold()
            s = _snapshot(role, conns, senders)
            s["last_delivery"] = max((r.last_delivery_ns for r in receivers), default=0)
            s["errors"] = sum(c.errors for c in conns)
            pipe.send(("progress", s))

    clock_task = loop.create_task(clock())
    progress_task = loop.create_task(progress())
    if role == "producer":
        await asyncio.gather(*(s.run(t_go, t_stop, stopped) for s in senders))
        if "stop" not in snaps and "warm" in snaps:
            set_record(False)
            snaps["stop"] = _snapshot(role, conns, senders)
        await asyncio.gather(*(s.finish(120.0) for s in senders))
    else:
        await ctrl.get("stop")
        for r in receivers:
            r.ack_pending()
        if "stop" not in snaps:
            if "warm" not in snaps:
                snaps["warm"] = _snapshot(role, conns, senders)
            snaps["stop"] = _snapshot(role, conns, senders)
    clock_task.cancel()
    progress_task.cancel()
    fold()
    final = _snapshot(role, conns, senders)
    for c in conns:
        c.closing = True
    # the broker answers our close after every transfer before it: the fence
    await asyncio.gather(*(c.close(5.0) for c in conns), return_exceptions=True)
    result: dict[str, Any] = {
        "role": role,
        "index": plan.index,
        "pid": os.getpid(),
        "setup_s": setup_s,
        "warm": snaps.get("warm"),
        "stop": snaps.get("stop"),
        "final": final,
        "first_go": t_go,
        "last_delivery": max((r.last_delivery_ns for r in receivers), default=0),
        "latency": lat.to_dict(),
        "confirm_latency": conf.to_dict(),
        "errors": sum(c.errors for c in conns),
        "returned": 0,
        "error_samples": [t for c in conns for t in c.error_texts][:10],
        "unconfirmed": sum(s.outstanding for s in senders),
        "tags": [(r.consumed, r.last_tag, r.acked_tag) for r in receivers],
    }
    pipe.send(("result", result))


def amqp10_worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """Entry point of a spawned AMQP 1.0 worker process."""
    run_worker(plan, pipe, _run)
