"""Store micro-benchmark: persistent publishes per second through one DiskQueueStore with
group commit, a confirm window, and optionally a consumer acking everything.

Owns nothing the broker uses. Run: ``python -m loadtest.storebench [--seconds 3]``.

Model of the broker's event loop: every turn the "publisher" pushes up to ``--per-turn``
messages while fewer than ``--window`` are unconfirmed, the "consumer" takes and acks
what is ready, then ``flush()``; confirms arrive through ``on_durable`` from the fsync
thread. Confirm latency = push -> on_durable. Numbers are for this machine and disk;
they never gate a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import struct
import tempfile
import time
from typing import Any

from shardmq.amqp.methods import BasicProperties
from shardmq.message import Message
from shardmq.store.commit import ThreadCommitter
from shardmq.store.queue_store import DiskQueueStore
from shardmq.store.settings import FsyncPolicy, StoreSettings


def _message(body: bytes) -> Message:
    props = BasicProperties(delivery_mode=2, content_type="application/octet-stream")
    header = struct.pack(">HHQ", 60, 0, len(body)) + props.encode()
    exrk = b"\x00\x05bench"
    if hasattr(Message, "from_parts"):
        return Message.from_parts(exrk, header, body)  # type: ignore[attr-defined]
    return Message(exrk, header, body)  # type: ignore[call-arg]


async def run_one(
    path: str,
    size: int,
    policy: FsyncPolicy,
    seconds: float,
    window: int,
    per_turn: int,
    consume: bool,
) -> dict[str, Any]:
    settings = StoreSettings(fsync=policy, batch_interval_ms=10)
    committer = ThreadCommitter.from_settings(settings)
    pool = [_message(os.urandom(size)) for _ in range(4 * window)]
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    confirmed = 0

    def on_durable(tokens: list[Any]) -> None:
        nonlocal confirmed
        now = time.perf_counter()
        confirmed += len(tokens)
        for t in tokens:
            latencies.append(now - sent_at.pop(t))

    store = DiskQueueStore.open(path, settings=settings, committer=committer, on_durable=on_durable)
    seq = 0
    start = time.perf_counter()
    end = start + seconds
    turns = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        turns += 1
        room = min(per_turn, window - len(sent_at))
        for _ in range(room):
            seq += 1
            sent_at[seq] = now
            store.push(pool[seq % len(pool)], seq)
        if consume:
            while store:
                store.ack(store.take())
        store.flush()
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    while sent_at:
        await asyncio.sleep(0.001)
    await committer.wait_idle()
    committer.close()
    store.close()
    latencies.sort()
    st = committer.stats
    return {
        "size": size,
        "policy": policy,
        "consume": consume,
        "msgs_per_s": confirmed / elapsed if elapsed else 0.0,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
        "fsync_rounds": st.rounds,
        "msgs_per_fsync": confirmed / st.rounds if st.rounds else 0.0,
        "turns": turns,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--window", type=int, default=1000, help="unconfirmed publishes in flight")
    ap.add_argument("--per-turn", type=int, default=256, help="publishes read per loop turn")
    ap.add_argument("--sizes", default="16,1024")
    ap.add_argument("--policies", default="always,batch")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--no-consume", action="store_true", help="let the backlog build up")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    base = tempfile.mkdtemp(prefix="shardmq-bench-", dir=args.dir)
    try:
        print(
            f"{'size':>6} {'fsync':>7} {'consume':>7} {'msg/s':>10} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'fsyncs':>7} {'msg/fsync':>9}"
        )
        for size in (int(s) for s in args.sizes.split(",")):
            for policy in args.policies.split(","):
                path = os.path.join(base, f"q-{size}-{policy}")
                r = asyncio.run(
                    run_one(
                        path,
                        size,
                        policy,  # type: ignore[arg-type]
                        args.seconds,
                        args.window,
                        args.per_turn,
                        not args.no_consume,
                    )
                )
                print(
                    f"{r['size']:>6} {r['policy']:>7} {str(r['consume']):>7} "
                    f"{r['msgs_per_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                    f"{r['fsync_rounds']:>7} {r['msgs_per_fsync']:>9.1f}"
                )
                shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
