"""CPU cost per message of a local delivery vs a cross-shard one, in one process.

Owns: ``python -m loadtest.xshard_cost``: 3 in-process workers (the test suite's
``loadtest.meshcluster.MeshCluster``: real brokers talking through the real mesh, shared-
memory rings, batch records, flushes and reads, pumped in turn instead of by event
loops), one publisher, one queue, one no-ack consumer, 16-byte messages; prints the CPU
microseconds per message (all workers together, ``time.process_time``) for three
placements: everything on worker 0; queue on worker 1 (there and back); queue on 1 and
consumer on 2. What it leaves out: the doorbell wake-ups (an eventfd write and an epoll
wake per sleeping reader), which are rare under load, and the sockets.

Medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from loadtest.inproc import Client, content_frames, method_frame
from loadtest.meshcluster import MeshCluster
from shardmq.amqp import methods as M

BATCH = 500
_DELIVER_METHOD = b"\x00\x3c\x00\x3c"  # class 60 (basic), method 60 (deliver)
LOCAL = "local (publisher, queue, consumer on w0)"
PLACEMENTS = {
    LOCAL: (0, 0, 0),
    "cross-shard (queue on w1)": (0, 1, 0),
    "cross-shard (queue on w1, consumer on w2)": (0, 1, 2),
}


def lean_client(client: Client) -> None:
    """Make the consumer's client count its deliveries instead of decoding them: what is
    measured is the broker's work, not the test client's frame parser."""
    conn = client.conn

    def pump() -> None:
        while True:
            out = conn.take_output()
            if not out:
                return
            conn.after_flush()
            # each delivery is one basic.deliver method frame; the bodies are b"x" * 16
            client.deliveries.extend([None] * bytes(out).count(_DELIVER_METHOD))  # type: ignore[list-item]

    client.pump = pump  # type: ignore[method-assign]


def one_run(
    pub_w: int, queue_w: int, con_w: int, n: int, ttl: int = -1, priorities: int = 0
) -> float:
    """CPU microseconds per message for ``n`` messages with that placement (``ttl`` >=
    0: the queue has that x-message-ttl; ``priorities`` > 0: x-max-priority, message
    priorities cycling over 0..priorities-1)."""
    cl = MeshCluster(3)
    try:
        return _measure(cl, pub_w, queue_w, con_w, n, ttl, priorities)
    finally:
        cl.close()


def _measure(
    cl: MeshCluster, pub_w: int, queue_w: int, con_w: int, n: int, ttl: int, priorities: int = 0
) -> float:
    q = cl.queue_on(queue_w, "cost")
    pub, con = cl.connect(pub_w), cl.connect(con_w)
    pub.open_channel(1)
    con.open_channel(1)
    args: dict[str, object] = {"x-message-ttl": ttl} if ttl >= 0 else {}
    if priorities:
        args["x-max-priority"] = priorities
    pub.conn.feed(method_frame(1, M.QueueDeclare(queue=q, arguments=args)))
    cl.pump()
    con.conn.feed(method_frame(1, M.BasicConsume(queue=q, no_ack=True)))
    cl.pump()
    method = method_frame(1, M.BasicPublish(routing_key=q))
    if priorities:
        frames = [
            method + content_frames(1, b"x" * 16, M.BasicProperties(priority=p))
            for p in range(priorities)
        ]
        batch = b"".join(frames[i % priorities] for i in range(BATCH))
    else:
        batch = (method + content_frames(1, b"x" * 16)) * BATCH
    con.deliveries.clear()
    lean_client(con)
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
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per message under valgrind (callgrind) instead of "
        "timing: repeatable on a busy machine; slow (about a minute)",
    )
    ap.add_argument("--only", choices=sorted(PLACEMENTS), help=argparse.SUPPRESS)
    ap.add_argument(
        "--priorities", type=int, default=0, metavar="N", help="queue with x-max-priority N"
    )
    ap.add_argument(
        "--placement",
        choices=sorted(PLACEMENTS),
        action="append",
        help="measure only this placement (repeatable; default: all)",
    )
    ap.add_argument(
        "--message-ttl", type=int, default=-1, metavar="MS", help="queue with x-message-ttl MS"
    )
    args = ap.parse_args(argv)
    if args.only:  # one run, for --instructions (the parent counts the instructions)
        one_run(*PLACEMENTS[args.only], args.messages, args.message_ttl, args.priorities)
        return 0
    results: dict[str, float] = {}
    unit = "instr/msg" if args.instructions else "us/msg"
    prio = args.priorities
    for name, (p, q, c) in PLACEMENTS.items():
        if args.placement and name not in args.placement:
            continue
        if args.instructions:
            n = min(args.messages, 20_000)
            # the difference of two runs cancels start-up and imports
            ttl = args.message_ttl
            results[name] = (
                count_instructions(name, 2 * n, ttl, prio) - count_instructions(name, n, ttl, prio)
            ) / n
        else:
            runs = [
                one_run(p, q, c, args.messages, args.message_ttl, prio) for _ in range(args.rounds)
            ]
            results[name] = statistics.median(runs)
    base = next(iter(results.values()))
    for name, v in results.items():
        print(f"{name:<45} {v:9.2f} {unit}  x{v / base:.2f}")
    return 0


def count_instructions(placement: str, n: int, ttl: int = -1, priorities: int = 0) -> int:
    """Instructions executed by one ``--only`` run of ``n`` messages under callgrind."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt install valgrind)")
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    cmd += ["-m", "loadtest.xshard_cost", "--only", placement, "--messages", str(n)]
    if ttl >= 0:
        cmd += ["--message-ttl", str(ttl)]
    if priorities:
        cmd += ["--priorities", str(priorities)]
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=True)
    found = re.search(r"Collected : (\d+)", res.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind:\n{res.stderr[-2000:]}")
    return int(found.group(1))


if __name__ == "__main__":
    sys.exit(main())
