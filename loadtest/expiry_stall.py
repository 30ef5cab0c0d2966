"""How long the event loop stalls while many messages expire at once.

Owns: ``python -m loadtest.expiry_stall``: one in-process broker (no sockets, no
disk) on a running event loop; ``--messages`` messages are published to a queue with
``x-message-ttl`` (optionally dead-lettering them to a second queue through a fanout
exchange, ``--dlx``), all due at the same instant; a ticker task yields to the loop
continuously and records the longest gap between two of its turns, i.e. the longest
stretch the loop spent on anything else (the expiry slices), in wall-clock time and in
the process's CPU time (the latter leaves out the time other processes of a busy
machine took the core). Prints both maxima, the time until every message was gone, and
how many the dead-letter queue got.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from loadtest.inproc import Client, connect
from shardmq.amqp import methods as M
from shardmq.broker.broker import Broker
from shardmq.config import load_config


async def run(n: int, dlx: bool, ttl_ms: int) -> dict[str, float]:
    broker = Broker(load_config(), storage=False)
    c: Client = connect(broker)
    c.open_channel(1)
    args: dict[str, object] = {"x-message-ttl": ttl_ms}
    if dlx:
        c.call(1, M.ExchangeDeclare(exchange="dlx", type="fanout"))
        c.declare(1, "dead")
        c.call(1, M.QueueBind(queue="dead", exchange="dlx"))
        args["x-dead-letter-exchange"] = "dlx"
    c.declare(1, "src", arguments=args)
    vh = broker.vhosts["/"]
    src = vh.queues["src"]
    for _ in range(n):
        c.publish(1, "", "src", b"x" * 16)
    assert src.message_count == n, src.message_count  # type: ignore[union-attr]
    worst = worst_cpu = 0.0
    start = time.perf_counter()
    last, last_cpu = start, time.process_time()
    while src.message_count:  # type: ignore[union-attr]
        await asyncio.sleep(0)
        now, cpu = time.perf_counter(), time.process_time()
        worst = max(worst, now - last)
        worst_cpu = max(worst_cpu, cpu - last_cpu)
        last, last_cpu = now, cpu
        if now - start > 120:
            raise SystemExit("messages did not expire within 120 s")
    gone = time.perf_counter() - start
    dead = vh.queues["dead"].message_count if dlx else 0  # type: ignore[union-attr]
    return {
        "max_stall_ms": worst * 1000,
        "max_stall_cpu_ms": worst_cpu * 1000,
        "all_gone_s": gone,
        "dead_lettered": dead,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.expiry_stall", description=__doc__)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--ttl", type=int, default=500, help="x-message-ttl in ms")
    ap.add_argument("--dlx", action="store_true", help="dead-letter the expired messages")
    args = ap.parse_args(argv)
    res = asyncio.run(run(args.messages, args.dlx, args.ttl))
    print(
        f"{args.messages} messages, dlx={args.dlx}: max loop stall {res['max_stall_ms']:.1f} ms "
        f"(CPU {res['max_stall_cpu_ms']:.1f} ms), all gone after {res['all_gone_s']:.2f} s, "
        f"dead-lettered {int(res['dead_lettered'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
