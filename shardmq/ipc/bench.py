"""Ring throughput benchmark: one process writes, another reads (``python -m shardmq.ipc.bench``).

Owns: nothing the broker uses. Prints records/s and MB/s for a few record sizes and write
styles; a benchmark, never a test. The writer spins (``sched_yield``) when the ring is
full and the reader when it is empty, so the figure is the ring's and Python's cost, not a
wake-up latency.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import secrets
import time

from shardmq.ipc.ring import LEN, Ring, unlink_quietly

_STOP = b"\xff" * 8


def _writer(name: str, size: int, count: int, mode: str, batch: int) -> None:
    ring = Ring.attach(name)
    rec = os.urandom(size)
    try:
        if mode == "single":
            write = ring.try_write
            for _ in range(count):
                while not write(rec):
                    os.sched_yield()
        elif mode == "many":
            recs = [rec] * batch
            left = count
            while left:
                chunk = recs if left >= batch else recs[:left]
                k = ring.try_write_many(chunk)
                left -= k
                if not k:
                    os.sched_yield()
        else:  # "stream": what Mesh does, framed bytes staged then streamed per flush
            framed = LEN.pack(size) + rec
            left = count
            while left:
                k = min(batch, left)
                buf = framed * k
                pos = 0
                while pos < len(buf):
                    n = ring.write_bytes(buf, pos)
                    pos += n
                    if not n:
                        os.sched_yield()
                left -= k
        while not ring.try_write(_STOP):
            os.sched_yield()
    finally:
        ring.close()


def run(size: int, count: int, mode: str, capacity: int, batch: int) -> tuple[float, int]:
    name = f"/shardmq-bench.{os.getpid()}.{secrets.token_hex(3)}"
    ring = Ring.create(name, capacity)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_writer, args=(name, size, count, mode, batch))
    try:
        proc.start()
        got = 0
        nbytes = 0
        started = 0.0
        read = ring.read_all
        done = False
        while not done:
            recs = read(4096)
            if not recs:
                os.sched_yield()
                continue
            if not started:
                started = time.perf_counter()
            for r in recs:
                if r == _STOP:
                    done = True
                    break
                got += 1
                nbytes += len(r)
        elapsed = time.perf_counter() - started
        proc.join(10)
        assert got == count, (got, count)
        return elapsed, nbytes
    finally:
        if proc.is_alive():
            proc.kill()
        ring.close()
        unlink_quietly(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--capacity", type=int, default=1 << 20)
    ap.add_argument("--batch", type=int, default=256, help="records per write call (many/stream)")
    ap.add_argument("--sizes", default="16,1024")
    ap.add_argument("--modes", default="single,many,stream")
    args = ap.parse_args(argv)
    print(f"ring capacity {args.capacity} B, {args.count} records per run, 1 writer + 1 reader")
    for size in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            count = args.count if size <= 256 else max(args.count // 4, 1)
            elapsed, nbytes = run(size, count, mode, args.capacity, args.batch)
            rate = count / elapsed
            print(
                f"{size:>6} B  {mode:<7} {rate / 1e6:6.2f} M records/s  "
                f"{nbytes / elapsed / 1e6:8.1f} MB/s  ({count} in {elapsed:.2f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
