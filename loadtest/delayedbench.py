"""Delayed-exchange micro-benchmark: memory per held message and release lateness.

Owns nothing the broker uses. Run: ``python -m loadtest.delayedbench [--count 1000000]
[--spread 20] [--durable]``.

One broker domain (``Broker`` with its ``DelayedScheduler``) on a uvloop event loop, a
durable ``x-delayed-message`` exchange (``x-delayed-type`` direct) bound to one queue.
``--count`` messages (16-byte bodies, ``x-delay`` header, as a client publishes them)
are put on hold with due times spread evenly over ``--spread`` seconds starting two
seconds ahead; then the loop runs until all are released. Reported:

- bytes per held message: growth of the process RSS (and of tracemalloc's traced
  Python memory with ``--trace``) while holding, divided by the count (the queue the
  messages later reach is not part of it);
- lateness: release time (when the scheduler has routed the message into its queue)
  minus due time, p50 / p99 / p99.9 / max, over all messages;
- release CPU: process CPU time while releasing, per message (independent of how busy
  the machine is, unlike the lateness);
- the queue is emptied every 10 ms, as by a consumer keeping up (a queue growing
  to a million messages would add its own garbage-collector passes to the numbers);
- ``--burst``: all messages due at the same instant instead (time to release them all,
  and the longest loop stall beyond a 10 ms sleep: the scheduler releases in slices).

With ``--durable`` the messages are persistent and go through the delayed store (in a
temporary directory, ``fsync = "off"``: the write path, not the disk, is measured):
only their due time and the location of their record stay in memory. The holding
phase calls the scheduler directly (``_push``), not the AMQP parser: the parser's cost
is the same for every publish and is measured by the suite. Numbers never gate a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import tempfile
import time
import tracemalloc

import uvloop

from shardmq.amqp.methods import BasicProperties
from shardmq.broker.broker import Broker
from shardmq.broker.delayed import pack
from shardmq.config import load_config
from shardmq.message import Message, next_seq
from shardmq.store.delayed import DelayedStore


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    broker = Broker(load_config(), storage=False)
    vh = broker.vhosts["/"]
    ex = vh.declare_exchange(
        "bench-delayed",
        "x-delayed-message",
        passive=False,
        durable=True,
        auto_delete=False,
        internal=False,
        arguments={"x-delayed-type": "direct"},
    )
    q = vh.declare_queue(
        "bench-q",
        1,
        passive=False,
        durable=False,
        exclusive=False,
        auto_delete=False,
        arguments={},
    )
    vh.bind(q, "bench-delayed", "k", {})
    sched = broker.delayed
    sched.loop = loop
    tmp = None
    if args.durable:
        tmp = tempfile.mkdtemp(prefix="delayedbench-")
        store = DelayedStore(tmp, fsync="off", loop=loop)
        store.recover()
        sched.store = store
    exrk = bytes([13]) + b"bench-delayed" + bytes([1]) + b"k"
    body = b"x" * 16
    n = args.count
    step = 0 if args.burst else args.spread * 1000 / n
    gc.collect()
    if args.trace:
        tracemalloc.start()
    rss0 = rss()
    t0 = time.perf_counter()
    props = BasicProperties(delivery_mode=2 if args.durable else 1, headers={"x-delay": 1})
    header = _header(props, len(body))
    for i in range(n):
        # each publish has its own exrk and frames, as when parsed off a socket
        msg = Message.from_parts(bytes(bytearray(exrk)), header, body, next_seq())
        due = int(i * step)  # relative: shifted once everything is held
        if args.durable:
            rid, loc = sched.store.add(  # type: ignore[union-attr]
                due, "/", ex.name, msg.exrk, msg.ch, msg.hsize, msg.fmax, msg.raw
            )
            sched._push(due, rid, ex, loc)
        else:
            sched._push(due, msg.seq, ex, pack(msg))
        if i % 100_000 == 0 and args.durable:
            sched.store.flush()  # type: ignore[union-attr]
    if args.durable:
        sched.store.flush()  # type: ignore[union-attr]
    hold_s = time.perf_counter() - t0
    gc.collect()
    grown = rss() - rss0
    traced = tracemalloc.get_traced_memory()[0] if args.trace else 0
    if args.trace:
        tracemalloc.stop()
    # the due times start one second from now (a uniform shift keeps the heap a heap)
    start = int(time.time() * 1000) + 1000
    sched.heap[:] = [(d + start, s, e, it) for d, s, e, it in sched.heap]
    sched._arm()
    # lateness: hook the scheduler's routing (the moment a released message is in its queue)
    late: list[float] = []
    orig = sched._route

    def route(e: object, m: Message, waiter: object) -> None:
        orig(e, m, waiter)  # type: ignore[arg-type]
        late.append(time.time() * 1000)

    sched._route = route  # type: ignore[method-assign]
    stall = 0.0
    cpu0 = time.process_time()
    last = time.perf_counter()
    while len(late) < n:
        await asyncio.sleep(0.01)
        q.purge()  # a consumer keeping up: the queue stays short
        now = time.perf_counter()
        stall = max(stall, now - last - 0.01)
        last = now
    cpu = time.process_time() - cpu0
    dues_sorted = [int(start + i * step) for i in range(n)]
    lat = sorted(r - d for r, d in zip(late, dues_sorted, strict=True))
    print(
        f"count={n} durable={args.durable} burst={args.burst} spread={args.spread}s "
        f"hold={n / hold_s:,.0f} msg/s"
    )
    print(
        f"memory: rss +{grown / n:.0f} B/msg"
        + (f", traced {traced / n:.0f} B/msg" if traced else "")
    )
    print(
        f"lateness ms: p50={pct(lat, 0.5):.2f} p99={pct(lat, 0.99):.2f} "
        f"p99.9={pct(lat, 0.999):.2f} max={lat[-1]:.2f}; longest loop stall {stall * 1000:.1f} ms"
    )
    print(f"release CPU: {cpu / n * 1e6:.1f} us/msg; load average {os.getloadavg()[0]:.1f}")
    if tmp is not None:
        sched.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _header(props: BasicProperties, size: int) -> bytes:
    import struct

    return struct.pack(">HHQ", 60, 0, size) + props.encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--spread", type=float, default=20.0)
    p.add_argument("--durable", action="store_true")
    p.add_argument("--burst", action="store_true")
    p.add_argument("--trace", action="store_true")
    args = p.parse_args()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
