"""What a doorbell wake-up costs: ``python -m loadtest.wakebench``.

Owns: nothing the broker uses; a benchmark, never a test. Two processes, each a real
``Mesh`` on uvloop: the first sends bursts of ``--burst`` small records, the second
echoes each record back. Back to back (a burst every loop turn) neither side ever runs
out of records, so neither sleeps; on a timer (a burst every ``--period`` seconds) both
go to sleep between bursts, so every burst costs a doorbell ring and a wake-up each way
(an eventfd write, an epoll wake, a loop turn). Prints the CPU time per burst of each
side (``getrusage``, user + system) in both modes; the difference is what sleeping and
waking cost, the first side's timer included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile

import uvloop

from shardmq.ipc.mesh import Mesh, MeshHost

_STOP = b"stop"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _echo(spec: str, report_fd: int) -> None:
    async def run() -> None:
        mesh = Mesh.from_spec(spec, 1)
        done = asyncio.Event()
        start = [0.0]

        def on_records(src: int, records: list[bytes]) -> None:
            for rec in records:
                if rec == _STOP:
                    done.set()
                    return
                if not start[0]:
                    start[0] = _cpu()
                mesh.send(0, rec)

        mesh.on_records = on_records  # type: ignore[assignment]
        mesh.start()
        await done.wait()
        os.write(report_fd, f"{_cpu() - start[0]:.6f} {mesh.stats_wakeups}".encode())
        mesh.close()

    uvloop.run(run())


async def _pinger(spec: str, bursts: int, burst: int, period: float) -> tuple[float, int]:
    mesh = Mesh.from_spec(spec, 0)
    got = 0
    arrived = asyncio.Event()

    def on_records(src: int, records: list[bytes]) -> None:
        nonlocal got
        got += len(records)
        arrived.set()

    mesh.on_records = on_records  # type: ignore[assignment]
    mesh.start()
    record = b"x" * 40
    await asyncio.sleep(0.2)
    cpu0 = _cpu()
    wake0 = mesh.stats_wakeups
    for _ in range(bursts):
        for _ in range(burst):
            mesh.send(1, record)
        await asyncio.sleep(period)  # 0: the next loop turn
    while got < bursts * burst:
        arrived.clear()
        await arrived.wait()
    cpu = _cpu() - cpu0
    wakes = mesh.stats_wakeups - wake0
    mesh.send(1, _STOP)
    await asyncio.sleep(0.2)
    mesh.close()
    return cpu, wakes


def run(bursts: int, burst: int, period: float) -> tuple[float, float, int, int]:
    """CPU seconds of (pinger, echo) and their doorbell wake-ups for one run."""
    with tempfile.TemporaryDirectory(prefix="shardmq-wakebench-") as data_dir:
        host = MeshHost(data_dir, 2, 1 << 20)
        try:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                try:
                    _echo(host.spec(), w)
                finally:
                    os._exit(0)
            os.close(w)
            cpu, wakes = uvloop.run(_pinger(host.spec(), bursts, burst, period))
            os.waitpid(pid, 0)
            echo_cpu, echo_wakes = os.read(r, 100).split()
            os.close(r)
        finally:
            host.close()
    return cpu, float(echo_cpu), wakes, int(echo_wakes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.wakebench", description=__doc__)
    ap.add_argument("--bursts", type=int, default=3000)
    ap.add_argument("--burst", type=int, default=20, help="records per burst, each way")
    ap.add_argument("--period", type=float, default=0.001, help="seconds between bursts")
    args = ap.parse_args(argv)
    rows = []
    for label, period in (("back to back", 0.0), (f"every {args.period * 1e3:g} ms", args.period)):
        cpu, echo_cpu, wakes, echo_wakes = run(args.bursts, args.burst, period)
        per = (cpu / args.bursts * 1e6, echo_cpu / args.bursts * 1e6)
        rows.append(per)
        print(
            f"{label:<14} first side {per[0]:7.1f} us/burst ({wakes} wake-ups)   "
            f"echo side {per[1]:7.1f} us/burst ({echo_wakes} wake-ups)"
        )
    (a0, e0), (a1, e1) = rows
    print(f"sleeping between bursts costs {a1 - a0:.1f} + {e1 - e0:.1f} us of CPU per burst")
    return 0


if __name__ == "__main__":
    sys.exit(main())
