"""Memory per idle AMQP 1.0 connection: ``python -m loadtest.amqp10idle``.

Owns: opening N AMQP 1.0 connections (``loadtest.amqp10.Conn``: SASL PLAIN, open, one
session, one link: a receiver on a queue with no credit, or a sender to it), holding
them idle, and reporting the broker's RSS before and after (``/proc/PID/status``, the
sum over ``--broker-pid``) divided by N.

Invariants: the queue is declared over 0-9-1 and deleted at the end; every connection
is closed before the report is printed; only 127.0.0.1 is used by the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import secrets
import sys
import time

from loadtest.amqp10 import Conn, connect10
from loadtest.client import connect
from loadtest.procstat import _cpu_rss


def _rss(pids: list[int]) -> int:
    total = 0
    for p in pids:
        got = _cpu_rss(p)
        total += got[1] if got is not None else 0
    return total


async def run(uri: str, n: int, pids: list[int], role: str, settle_s: float) -> dict:
    queue = f"shardmq-idle-{secrets.token_hex(3)}"
    admin = await connect(uri, product="shardmq-idle-admin")
    await admin.queue_declare(queue)
    conns: list[Conn] = []
    try:
        await asyncio.sleep(settle_s)
        before = _rss(pids)
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> Conn:
            async with sem:
                c = await connect10(uri)
                await c.attach(f"idle-{i}", role == "receiver", f"/queue/{queue}", False)
                return c

        t0 = time.monotonic()
        conns = list(await asyncio.gather(*(one(i) for i in range(n))))
        setup = time.monotonic() - t0
        await asyncio.sleep(settle_s)
        after = _rss(pids)
    finally:
        await asyncio.gather(*(c.close(5.0) for c in conns), return_exceptions=True)
        await admin.queue_delete(queue)
        await admin.close()
    return {
        "connections": n,
        "link": role,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "kib_per_connection": round((after - before) / n / 1024, 2),
        "setup_s": round(setup, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.amqp10idle", description=__doc__)
    p.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--connections", "-n", type=int, default=2000)
    p.add_argument("--broker-pid", type=int, action="append", required=True)
    p.add_argument("--link", choices=("receiver", "sender"), default="receiver")
    p.add_argument("--settle", type=float, default=2.0, help="seconds before each sample")
    a = p.parse_args(argv)
    import uvloop

    gc.collect()
    r = uvloop.run(run(a.uri, a.connections, a.broker_pid, a.link, a.settle))
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
