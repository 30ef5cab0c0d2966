"""Declare benchmark: N durable vs N transient queues with pika, time per 1,000, then
the deletes.

Owns nothing the broker uses. Run (the broker it starts imports ``shardmq`` from
``PYTHONPATH``, so ``PYTHONPATH=/other/tree`` measures another tree's broker)::

    python -m loadtest.declarebench --queues 10000 --workers 1 2
    python -m loadtest.declarebench --uri amqp://guest:guest@127.0.0.1:5682/   # RabbitMQ

For each worker count it starts ``shardmq serve`` on 127.0.0.1 with a fresh data dir
(unless ``--uri`` names a running broker), then declares ``--queues`` transient and as
many durable queues named ``<prefix>-<kind>-<i>`` from ``--clients`` pika connections
(each declares its share one after another, as an application does, so one client has
one declare in flight), in batches of 1,000 that alternate between the kinds (so both
see the same load on a shared machine; ``--sequential``: all of one kind first), then
deletes them the same way. Prints the seconds per 1,000 (the first and last thousands
show whether the cost grows with the number of queues) and the durable / transient
ratio. Numbers are for this machine; they never gate a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika

from loadtest.brokerenv import quiet_ports_env

HEADER = b"AMQP\x00\x00\x09\x01"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.settimeout(2.0)
            s.sendall(HEADER)
            return s.recv(1) == b"\x01"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Broker:
    """``shardmq serve`` on 127.0.0.1 with a private data dir, in its own session."""

    def __init__(self, workers: int) -> None:
        self.root = tempfile.mkdtemp(prefix="declarebench-")
        self.port = _free_port()
        self.log = open(os.path.join(self.root, "broker.log"), "wb")  # noqa: SIM115
        args = [sys.executable, "-m", "shardmq", "serve", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--workers", str(workers)]
        args += ["--data-dir", os.path.join(self.root, "data"), "--log-level", "warning"]
        # cwd: the temp dir, so PYTHONPATH (not the current directory) picks the tree
        self.proc = subprocess.Popen(
            args,
            cwd=self.root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=quiet_ports_env(),
        )
        deadline = time.monotonic() + 30
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"broker did not start; log in {self.root}/broker.log")
            time.sleep(0.05)

    @property
    def uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _run_clients(
    uri: str, names: list[str], clients: int, action: Callable[[Any, str], None]
) -> list[float]:
    """Run ``action(channel, name)`` for every name, ``clients`` connections sharing the
    list round-robin; returns the completion time of each action (monotonic), sorted."""
    done: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(part: list[str]) -> None:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(uri))
            ch = conn.channel()
            local: list[float] = []
            for name in part:
                action(ch, name)
                local.append(time.monotonic())
            conn.close()
            with lock:
                done.extend(local)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    parts = [names[i::clients] for i in range(clients)]
    threads = [threading.Thread(target=client, args=(p,)) for p in parts if p]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sorted(done)


def _per_thousand(start: float, stamps: list[float]) -> list[float]:
    """Seconds taken by each consecutive 1,000 completions."""
    out = []
    prev = start
    for i in range(999, len(stamps), 1000):
        out.append(stamps[i] - prev)
        prev = stamps[i]
    return out


def measure(uri: str, kind: str, n: int, clients: int, prefix: str) -> dict[str, Any]:
    durable = kind == "durable"
    names = [f"{prefix}-{kind}-{i}" for i in range(n)]

    def declare(ch: Any, name: str) -> None:
        ch.queue_declare(name, durable=durable)

    def delete(ch: Any, name: str) -> None:
        ch.queue_delete(name)

    t0 = time.monotonic()
    stamps = _run_clients(uri, names, clients, declare)
    declare_s = stamps[-1] - t0
    declare_k = _per_thousand(t0, stamps)
    t0 = time.monotonic()
    stamps = _run_clients(uri, names, clients, delete)
    delete_s = stamps[-1] - t0
    delete_k = _per_thousand(t0, stamps)
    return {
        "kind": kind,
        "declare_s": declare_s,
        "declare_per_1000": declare_k,
        "delete_s": delete_s,
        "delete_per_1000": delete_k,
    }


def measure_interleaved(
    uri: str, kinds: list[str], n: int, clients: int, prefix: str
) -> list[dict[str, Any]]:
    """Batches of 1,000 alternate between the kinds (transient 0-999, durable 0-999,
    transient 1000-1999, ...), then the deletes the same way: on a shared machine
    whose load drifts, both kinds see the same load, so their ratio means something.
    The k-th durable batch still runs with k x 1,000 durable queues already there."""
    names = {k: [f"{prefix}-{k}-{i}" for i in range(n)] for k in kinds}
    totals = {(k, p): 0.0 for k in kinds for p in ("declare", "delete")}
    per_1000: dict[tuple[str, str], list[float]] = {key: [] for key in totals}
    for phase in ("declare", "delete"):
        for start in range(0, n, 1000):
            for kind in kinds:
                durable = kind == "durable"

                def act(ch: Any, name: str, durable: bool = durable, phase: str = phase) -> None:
                    if phase == "declare":
                        ch.queue_declare(name, durable=durable)
                    else:
                        ch.queue_delete(name)

                t0 = time.monotonic()
                stamps = _run_clients(uri, names[kind][start : start + 1000], clients, act)
                took = stamps[-1] - t0
                totals[kind, phase] += took
                per_1000[kind, phase].append(took)
    return [
        {"kind": k}
        | {f"{p}_s": totals[k, p] for p in ("declare", "delete")}
        | {f"{p}_per_1000": per_1000[k, p] for p in ("declare", "delete")}
        for k in kinds
    ]


def _fmt(row: dict[str, Any]) -> str:
    def series(xs: list[float]) -> str:
        if len(xs) <= 6:
            return " ".join(f"{x:.2f}" for x in xs)
        return " ".join(f"{x:.2f}" for x in xs[:3]) + " .. " + " ".join(f"{x:.2f}" for x in xs[-3:])

    return (
        f"  {row['kind']:9} declare {row['declare_s']:7.2f} s  per 1,000: "
        f"{series(row['declare_per_1000'])}\n"
        f"  {'':9} delete  {row['delete_s']:7.2f} s  per 1,000: {series(row['delete_per_1000'])}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.declarebench", description=__doc__)
    p.add_argument("--queues", type=int, default=10000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--clients", type=int, default=1, help="concurrent pika connections")
    p.add_argument("--kinds", nargs="+", default=["transient", "durable"])
    p.add_argument("--uri", help="a running broker (e.g. RabbitMQ) instead of starting one")
    p.add_argument("--prefix", default="", help="queue name prefix (default: unique)")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="all of one kind, then the other (default: batches of 1,000 alternate)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    prefix = args.prefix or f"declarebench-{uuid.uuid4().hex[:8]}"
    results = []
    for workers in [0] if args.uri else args.workers:
        broker = None if args.uri else Broker(workers)
        uri = args.uri or broker.uri  # type: ignore[union-attr]
        label = args.uri if args.uri else f"shardmq, {workers} worker(s)"
        try:
            if args.sequential:
                rows = [measure(uri, k, args.queues, args.clients, prefix) for k in args.kinds]
            else:
                rows = measure_interleaved(uri, args.kinds, args.queues, args.clients, prefix)
        finally:
            if broker is not None:
                broker.stop()
        res = {"broker": label, "queues": args.queues, "clients": args.clients, "rows": rows}
        results.append(res)
        if not args.json:
            print(f"{label}: {args.queues} queues, {args.clients} client(s)")
            for row in rows:
                print(_fmt(row))
            by = {r["kind"]: r for r in rows}
            if "durable" in by and "transient" in by:
                d, t = by["durable"], by["transient"]
                print(
                    f"  durable/transient: declare {d['declare_s'] / t['declare_s']:.2f}x, "
                    f"delete {d['delete_s'] / t['delete_s']:.2f}x"
                )
            sys.stdout.flush()
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
