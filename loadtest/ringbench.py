"""Ring throughput benchmark: one process writes, another reads (``python -m loadtest.ringbench``).

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
            # STOP is the writer's last record: the reader does no per-record work
            if recs[-1] == _STOP:
                done = True
                got -= 1
            got += len(recs)
        nbytes = got * size
        elapsed = time.perf_counter() - started
        proc.join(10)
        assert got == count, (got, count)
        return elapsed, nbytes
    finally:
        if proc.is_alive():
            proc.kill()
        ring.close()
        unlink_quietly(name)


def _mesh_sender(spec: str, size: int, count: int, per_turn: int) -> None:
    import asyncio

    from shardmq.ipc.mesh import Mesh

    async def go() -> None:
        mesh = Mesh.from_spec(spec, 0)
        mesh.start()
        rec = os.urandom(size)
        send = mesh.send
        left = count
        while left:
            k = min(per_turn, left)
            for _ in range(k):
                send(1, rec)
            left -= k
            await asyncio.sleep(0)  # one loop turn: the mesh flushes once
            while mesh.is_blocked(1):
                await asyncio.sleep(0.0005)
        send(1, _STOP)
        while mesh.pending(1):
            await asyncio.sleep(0.001)
        mesh.close()

    asyncio.run(go())


def run_mesh(size: int, count: int, capacity: int, per_turn: int) -> tuple[float, int]:
    """Mesh to mesh (asyncio loops, per-turn flush, doorbells) between two processes."""
    import asyncio
    import tempfile

    from shardmq.ipc.mesh import Mesh, MeshHost

    with tempfile.TemporaryDirectory() as tmp:
        host = MeshHost(tmp, 2, capacity)
        proc = None
        try:
            code = (
                "from loadtest.ringbench import _mesh_sender; "
                f"_mesh_sender({host.spec()!r}, {size}, {count}, {per_turn})"
            )
            import subprocess
            import sys

            result: dict[str, float] = {}

            async def receive() -> None:
                mesh = Mesh.from_spec(host.spec(), 1)
                done = asyncio.Event()
                got = 0

                def on_records(src: int, recs: list[bytes]) -> None:
                    nonlocal got
                    if not result:
                        result["t0"] = time.perf_counter()
                    got += len(recs)
                    if recs[-1] == _STOP:
                        got -= 1
                        result["t1"] = time.perf_counter()
                        done.set()

                mesh.on_records = on_records
                mesh.start()
                await done.wait()
                result["got"] = got
                result["bytes"] = got * size
                mesh.close()

            proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=host.pass_fds())
            asyncio.run(receive())
            proc.wait(30)
            assert result["got"] == count, result
            return result["t1"] - result["t0"], int(result["bytes"])
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
            host.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--capacity", type=int, default=1 << 20)
    ap.add_argument("--batch", type=int, default=256, help="records per write call (many/stream)")
    ap.add_argument("--sizes", default="16,1024")
    ap.add_argument("--modes", default="single,many,stream,mesh")
    ap.add_argument("--per-turn", type=int, default=256, help="mesh mode: sends per loop turn")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the best is shown")
    args = ap.parse_args(argv)
    print(f"ring capacity {args.capacity} B, {args.count} records per run, 1 writer + 1 reader")
    for size in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            count = args.count if size <= 256 else max(args.count // 4, 1)
            runs = []
            for _ in range(args.repeat):
                if mode == "mesh":
                    runs.append(run_mesh(size, count, args.capacity, args.per_turn))
                else:
                    runs.append(run(size, count, mode, args.capacity, args.batch))
            elapsed, nbytes = min(runs)  # best of: the machine is shared
            rate = count / elapsed
            print(
                f"{size:>6} B  {mode:<7} {rate / 1e6:6.2f} M records/s  "
                f"{nbytes / elapsed / 1e6:8.1f} MB/s  ({count} in {elapsed:.2f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
