"""Instructions (or Python bytecodes, or CPU) per message of a real broker process,
through real sockets.

Owns: ``python -m loadtest.sockcost``: starts a one-worker broker of a given source tree
(``--tree``, its PYTHONPATH; management and Prometheus on free ports) under ``valgrind
--tool=callgrind``, declares one of the plain-path scenarios of the suite (``1-1``:
direct exchange, one queue, one no-ack consumer; ``fanout-4``: fanout exchange, 4
queues, 4 no-ack consumers, one connection each; ``topic-100``: topic exchange, one
queue bound with 100 patterns, keys cycling over them), then for each of
``--messages`` (e.g. 10000 20000) zeroes the counters, pushes that many 16-byte
messages and dumps the counters. Prints the instructions of each phase and
``(last - first) / (difference in messages)``: the per-message cost with start-up,
connection set-up and anything per phase cancelled. The dumps stay in ``--out`` for
``callgrind_annotate``.

How the messages go: by default in lock-step batches of ``--batch`` (one write of
``batch`` publishes, then wait until every consumer has them all: each message goes
straight to a consumer); with ``--flood`` as the suite's publisher does (512 per
write, as fast as the socket takes them: the broker reads 256 KiB at a time and the
queue builds a backlog, so messages take the store path and the publisher is
throttled now and then; the counts then vary by a few percent run to run).
``--trace`` counts Python bytecodes per function instead (``loadtest.optrace``, files
``optrace.<tag>.<scenario>...``), ``--cpu N`` runs the broker natively and prints its
user and system CPU per message N times.

What it does not measure: time-based work (timers, samplers) is counted in proportion
to the wall time of a phase, which callgrind stretches ~50x; read those functions off
the annotated dumps.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.client import Client, PublishTemplate, connect
from shardmq.amqp import methods as M

SCENARIOS = ("1-1", "fanout-4", "topic-100")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(
    tree: Path, port: int, out: Path, tag: str, native: bool = False, trace: bool = False
) -> subprocess.Popen[bytes]:
    data = Path(tempfile.mkdtemp(prefix=f"sockcost-{tag}-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env["PYTHONHASHSEED"] = "0"
    env.setdefault("SHARDMQ_MANAGEMENT_PORT", "0")
    env.setdefault("SHARDMQ_PROMETHEUS_PORT", "0")
    env["OPTRACE_OUT"] = str(out / f"optrace.{tag}.{port}")
    # the tracer is this tree's module, the broker the other tree's
    tracer = [str(Path(__file__).resolve()).replace("sockcost.py", "optrace.py")]
    grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.{tag}.%p"]
    cmd = [
        *([] if native or trace else grind),
        sys.executable,
        *(tracer if trace else []),
        "-m",
        "shardmq",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--data-dir",
        str(data),
    ]
    log = open(out / f"broker.{tag}.{port}.log", "wb")  # noqa: SIM115 (lives with the process)
    return subprocess.Popen(cmd, cwd=str(tree), env=env, stdout=log, stderr=subprocess.STDOUT)


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


async def wait_port(port: int, broker: subprocess.Popen[bytes], timeout: float = 600.0) -> None:
    """Until the broker listens; raises if it exited first (a start-up error: the port
    taken meanwhile), so that nothing talks to another process on that port."""
    deadline = time.monotonic() + timeout
    while True:
        if broker.poll() is not None:
            raise RuntimeError(f"broker exited with {broker.returncode} (see its log)")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            if broker.poll() is None:
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def setup(uri: str, scenario: str) -> tuple[Client, list[Client], PublishTemplate]:
    admin = await connect(uri, product="sockcost-admin")
    tag = f"sc{os.getpid()}"
    if scenario == "1-1":
        ex, queues, keys = f"{tag}-x", [f"{tag}-q0"], ["k.0.0"]
        await admin.exchange_declare(ex, "direct")
        await admin.queue_declare(queues[0])
        await admin.queue_bind(queues[0], ex, "k.0.0")
    elif scenario == "fanout-4":
        ex, queues, keys = f"{tag}-x", [f"{tag}-q{i}" for i in range(4)], [""]
        await admin.exchange_declare(ex, "fanout")
        for q in queues:
            await admin.queue_declare(q)
            await admin.queue_bind(q, ex, "")
    else:
        ex, queues = f"{tag}-x", [f"{tag}-q0"]
        keys = [f"b.0.{j}.x" for j in range(100)]
        await admin.exchange_declare(ex, "topic")
        await admin.queue_declare(queues[0])
        for j in range(100):
            await admin.queue_bind(queues[0], ex, f"b.0.{j}.*")
    await admin.close()
    consumers = []
    for q in queues:
        c = await connect(uri, product="sockcost-consumer")
        await c.basic_consume(q, f"{tag}-{q}", True)
        consumers.append(c)
    pub = await connect(uri, product="sockcost-publisher")
    props = M.BasicProperties().encode()
    tmpl = PublishTemplate(1, ex, keys, 16, props, pub.frame_max, 512)
    return pub, consumers, tmpl


async def push(
    pub: Client,
    consumers: list[Client],
    tmpl: PublishTemplate,
    n: int,
    batch: int,
    flood: bool = False,
) -> None:
    assert pub.transport is not None
    write = pub.transport.write
    pack = struct.Struct(">Q").pack
    cursor = 0
    sent = 0
    base = [c.consumed for c in consumers]
    while sent < n:
        k = min(batch, n - sent)
        if flood and not pub.writable:
            await pub.wait_writable()
            continue
        write(tmpl.batch(cursor, k, pack(time.monotonic_ns())))
        sent += k
        cursor = (cursor + k) % tmpl.count
        if flood:
            await asyncio.sleep(0)
            continue
        while any(c.consumed - b < sent for c, b in zip(consumers, base, strict=True)):
            await asyncio.sleep(0.0005)
    while any(c.consumed - b < sent for c, b in zip(consumers, base, strict=True)):
        await asyncio.sleep(0.001)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def total_instructions(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"no totals in {path}")


async def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tag = args.tag or Path(args.tree).name
    broker = start_broker(Path(args.tree).resolve(), port, out, tag, args.cpu > 0, args.trace)
    try:
        await wait_port(port, broker)
        uri = f"amqp://guest:guest@127.0.0.1:{port}/"
        pub, consumers, tmpl = await setup(uri, args.scenario)
        await push(pub, consumers, tmpl, 2 * args.batch, args.batch)  # warm-up
        counts: list[tuple[int, int]] = []
        for _ in range(args.cpu):  # native: CPU microseconds per message, user + system
            for n in args.messages:
                u0, s0 = cpu_times(broker.pid)
                await push(pub, consumers, tmpl, n, args.batch, args.flood)
                u1, s1 = cpu_times(broker.pid)
                print(
                    f"{tag} {args.scenario} cpu: {n} messages user {(u1 - u0) / n * 1e6:.2f} "
                    f"sys {(s1 - s0) / n * 1e6:.2f} us/msg",
                    flush=True,
                )
        for i, n in enumerate(args.messages if args.trace else []):
            broker.send_signal(signal.SIGUSR2)  # counting on
            await asyncio.sleep(0.5)
            await push(pub, consumers, tmpl, n, args.batch, args.flood)
            broker.send_signal(signal.SIGUSR2)  # off: optrace.<tag>.<i+1>
            await asyncio.sleep(2)
            final = (
                out / f"optrace.{tag}.{args.scenario}.b{args.batch}{'f' if args.flood else ''}.n{n}"
            )
            shutil.move(out / f"optrace.{tag}.{port}.{i + 1}", final)
            total = sum(int(line.rsplit(" ", 1)[1]) for line in final.read_text().splitlines())
            print(f"{tag} {args.scenario}: {n} messages {total:,} bytecodes", flush=True)
        for n in args.messages if not (args.cpu or args.trace) else []:
            before = set(out.glob(f"callgrind.{tag}.{broker.pid}*"))
            control(broker.pid, "-z")
            await push(pub, consumers, tmpl, n, args.batch, args.flood)
            control(broker.pid, "-d")
            new = sorted(set(out.glob(f"callgrind.{tag}.{broker.pid}*")) - before)
            dump = new[-1]
            final = (
                out
                / f"callgrind.{tag}.{args.scenario}.b{args.batch}{'f' if args.flood else ''}.n{n}"
            )
            shutil.move(dump, final)
            counts.append((n, total_instructions(final)))
            print(
                f"{tag} {args.scenario} batch {args.batch}{' flood' if args.flood else ''}: {n} messages {counts[-1][1]:,} Ir"
            )
        if len(counts) >= 2:
            (n0, i0), (n1, i1) = counts[0], counts[-1]
            print(
                f"{tag} {args.scenario} batch {args.batch}{' flood' if args.flood else ''}: {(i1 - i0) / (n1 - n0):,.0f} Ir/msg"
            )
        for c in [pub, *consumers]:
            await c.close()
    finally:
        broker.terminate()
        try:
            broker.wait(60)
        except subprocess.TimeoutExpired:
            broker.kill()
    for leftover in out.glob(f"callgrind.{tag}.{broker.pid}*"):
        leftover.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.sockcost", description=__doc__)
    p.add_argument("--tree", required=True, help="source tree of the broker (its PYTHONPATH)")
    p.add_argument("--scenario", choices=SCENARIOS, default="1-1")
    p.add_argument("--messages", type=int, nargs="+", default=[20000, 40000])
    p.add_argument("--batch", type=int, default=512, help="publishes per write")
    p.add_argument(
        "--flood",
        action="store_true",
        help="publish as fast as the socket takes it (a backlog builds, as in the timed "
        "suite) instead of lock-step batches",
    )
    p.add_argument(
        "--cpu",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="no valgrind: print the broker's user and system CPU per message, ROUNDS times",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="no valgrind: count Python bytecodes per function (loadtest.optrace)",
    )
    p.add_argument("--out", default="/tmp/sockcost")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[\w.-]*", args.tag):
        p.error("--tag: letters, digits, . _ -")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
