"""Backlog memory: does a broker give back what a consumed backlog took?

Owns: ``main`` (``python -m loadtest.backlogmem``): starts ``shardmq serve`` on a free
127.0.0.1 port (``loadtest.connflood.start_broker``, ``--allocator`` for its
``[server] allocator``), publishes ``--messages`` transient messages of
``--size`` bytes to one queue with pika, consumes them all (no-ack), and reports the RSS
of every broker process before, with the backlog held, and ``--settle`` seconds after the
last message was consumed, as one JSON line.

Invariants: only ever connects to 127.0.0.1; never a pass/fail gate (numbers for
BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import pika

from loadtest.connflood import rss, start_broker, stop_broker


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.backlogmem", description=__doc__)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=200, help="body bytes")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--allocator", choices=("malloc", "pymalloc"))
    ap.add_argument("--settle", type=float, default=8.0, help="seconds before the last reading")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backlogmem-") as tmp:
        started = start_broker(args.workers, tmp, args.allocator)
        if started is None:
            print("the broker did not start")
            return 2
        proc, port, pids = started
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
            ch = conn.channel()
            q = ch.queue_declare("backlogmem").method.queue
            time.sleep(3)
            before = rss(pids)
            body = b"m" * args.size
            for _ in range(args.messages):
                ch.basic_publish("", q, body)
            ch.queue_declare(q, passive=True)
            held = rss(pids)
            got = 0
            for _method, _props, _body in ch.consume(q, auto_ack=True, inactivity_timeout=30):
                if _method is None:
                    break
                got += 1
                if got == args.messages:
                    break
            ch.cancel()
            time.sleep(args.settle)
            after = rss(pids)
            conn.close()
        finally:
            stop_broker(proc)
    mib = 2**20
    print(
        json.dumps(
            {
                "allocator": args.allocator or "default",
                "workers": args.workers,
                "messages": args.messages,
                "consumed": got,
                "size": args.size,
                "rss_before_mib": round(before / mib, 1),
                "rss_held_mib": round(held / mib, 1),
                "rss_after_mib": round(after / mib, 1),
                "returned": round((held - after) / max(held - before, 1), 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
