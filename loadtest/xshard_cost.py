"""CPU cost per message of a local delivery vs a cross-shard one, in one process.

Owns: ``python -m loadtest.xshard_cost``: N in-process workers (the test suite's
``tests.broker.cluster.Cluster``: real brokers, real cross-shard record encoding and
decoding, records copied between workers as the rings copy them), one publisher, one
queue, one no-ack consumer, 16-byte messages; prints the CPU microseconds per message
(all workers together, ``time.process_time``) for three placements: everything on
worker 0; queue on worker 1; queue on 1 and consumer on 2. What it leaves out: the
shared-memory copy itself (a memcpy, measured by ``python -m shardmq.ipc.bench``) and
the doorbell wake-ups, which are rare under load.

Run from the repository root (it imports the test harness): medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardmq.amqp import methods as M  # noqa: E402
from tests.broker.cluster import Cluster  # noqa: E402
from tests.broker.harness import content_frames, method_frame  # noqa: E402

BATCH = 500


def one_run(pub_w: int, queue_w: int, con_w: int, n: int) -> float:
    """CPU microseconds per message for ``n`` messages with that placement."""
    cl = Cluster(3)
    q = cl.queue_on(queue_w, "cost")
    pub, con = cl.connect(pub_w), cl.connect(con_w)
    pub.open_channel(1)
    con.open_channel(1)
    pub.conn.feed(method_frame(1, M.QueueDeclare(queue=q)))
    cl.pump()
    con.conn.feed(method_frame(1, M.BasicConsume(queue=q, no_ack=True)))
    cl.pump()
    frame = method_frame(1, M.BasicPublish(routing_key=q)) + content_frames(1, b"x" * 16)
    batch = frame * BATCH
    con.deliveries.clear()
    got = 0
    t0 = time.process_time()
    for _ in range(n // BATCH):
        pub.conn.feed(batch)
        cl.pump()
        got += len(con.deliveries)
        con.deliveries.clear()
    dt = time.process_time() - t0
    if got != (n // BATCH) * BATCH:
        raise SystemExit(f"lost messages: {got} of {(n // BATCH) * BATCH}")
    return dt / got * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.xshard_cost", description=__doc__)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    placements = {
        "local (publisher, queue, consumer on w0)": (0, 0, 0),
        "cross-shard (queue on w1)": (0, 1, 0),
        "cross-shard (queue on w1, consumer on w2)": (0, 1, 2),
    }
    results: dict[str, float] = {}
    for name, (p, q, c) in placements.items():
        runs = [one_run(p, q, c, args.messages) for _ in range(args.rounds)]
        results[name] = statistics.median(runs)
    base = results["local (publisher, queue, consumer on w0)"]
    for name, us in results.items():
        print(f"{name:<45} {us:6.2f} us/msg  x{us / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
