"""Management API and Prometheus timings with many queues, and a steady poller.

Owns: ``python -m loadtest.statsbench``:

- ``--queues N``: declares N queues (pika, one connection, names ``statsbench-<i>``,
  each with ``--messages`` messages; in ``--vhost``, made through the API and deleted
  after; with ``--connections`` idle connections open), then times ``GET /api/queues?page=1&page_size=100``,
  the full ``GET /api/queues``, ``GET /api/connections`` (a page and all),
  ``GET /metrics/per-object`` and ``GET /metrics``
  (medians of ``--repeat`` calls made back to back, and ``--gap`` seconds apart: shardmq
  reuses workers' reports for 1 s, so the second series pays a fresh gathering each
  time), prints the sizes and, given ``--pids``, the
  resident memory of those processes before and after the queues were made; then
  deletes the queues (unless ``--keep``). ``--rabbit-node``: RabbitMQ's statistics
  memory (``mgmt_db``) before and after. Works against RabbitMQ's management API too
  (without ``--metrics``).
- ``--poll SECONDS``: GETs ``/api/queues`` and ``/metrics`` every SECONDS until stopped
  (the load of a dashboard and a Prometheus server during a throughput benchmark).

- ``--inproc N``: the CPU time of each step of those calls in one process (an
  in-process broker with N queues, its report, the gathering, the real handlers with
  mocked requests): a measure that a busy machine does not distort.

Only 127.0.0.1 URLs are accepted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any
from urllib.parse import quote, urlsplit

AUTH = ("guest", "guest")


def _local(url: str) -> str:
    if urlsplit(url).hostname != "127.0.0.1":
        raise SystemExit(f"{url}: only 127.0.0.1 is allowed")
    return url.rstrip("/")


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * 4096
        except OSError:
            pass
    return total


def _time(url: str, repeat: int, gap: float) -> tuple[float, int]:
    import requests

    times: list[float] = []
    size = 0
    for _ in range(repeat):
        time.sleep(gap)
        t0 = time.perf_counter()
        r = requests.get(url, auth=AUTH, timeout=120)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, (url, r.status_code, r.text[:200])
        size = len(r.content)
    return statistics.median(times), size


def _mgmt_db(mgmt: str, node: str) -> int:
    """RabbitMQ's statistics memory (``mgmt_db`` of the node's memory breakdown)."""
    import requests

    r = requests.get(f"{mgmt}/api/nodes/{node}/memory", auth=AUTH, timeout=60)
    r.raise_for_status()
    return int(r.json()["memory"].get("mgmt_db", 0))


def _vhost(mgmt: str, vhost: str, create: bool) -> None:
    import requests

    path = f"{mgmt}/api/vhosts/{quote(vhost, safe='')}"
    r = (
        requests.put(path, auth=AUTH, timeout=60)
        if create
        else requests.delete(path, auth=AUTH, timeout=60)
    )
    assert r.status_code in (201, 204), (r.status_code, r.text)
    if create:  # RabbitMQ grants its creator nothing on a vhost made through the API
        perms = f"{mgmt}/api/permissions/{quote(vhost, safe='')}/{AUTH[0]}"
        body = {"configure": ".*", "write": ".*", "read": ".*"}
        r = requests.put(perms, json=body, auth=AUTH, timeout=60)
        assert r.status_code in (201, 204), (r.status_code, r.text)


def bench_queues(args: argparse.Namespace) -> None:
    import pika

    mgmt = _local(args.mgmt)
    parts = urlsplit(args.amqp)
    assert parts.hostname == "127.0.0.1"
    if args.vhost != "/":
        _vhost(mgmt, args.vhost, True)
    rss0 = _rss(args.pids)
    db0 = _mgmt_db(mgmt, args.rabbit_node) if args.rabbit_node else 0

    def params(heartbeat: int | None = None) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            "127.0.0.1",
            parts.port or 5672,
            args.vhost,
            credentials=pika.PlainCredentials(*AUTH),
            heartbeat=heartbeat,
            stack_timeout=120,  # a busy broker accepting its 1,000th connection
        )

    try:
        _bench_queues(args, mgmt, params, rss0, db0)
    finally:  # the vhost (and its queues) go even when a step failed
        if args.vhost != "/" and not args.keep:
            _vhost(mgmt, args.vhost, False)


def _bench_queues(args: argparse.Namespace, mgmt: str, params: Any, rss0: int, db0: int) -> None:
    import pika

    conn = pika.BlockingConnection(params())
    ch = conn.channel()
    idle: list[pika.BlockingConnection] = []
    t0 = time.perf_counter()
    for _ in range(args.connections):  # idle clients, each with a channel
        c = pika.BlockingConnection(params(heartbeat=0))
        c.channel()
        idle.append(c)
    if args.connections:
        print(f"opened {args.connections} connections in {time.perf_counter() - t0:.1f} s")
    names = [f"statsbench-{i}" for i in range(args.queues)]
    t0 = time.perf_counter()
    for name in names:
        ch.queue_declare(name)
        for _ in range(args.messages):
            ch.basic_publish("", name, b"x")
    print(f"declared {args.queues} queues in {time.perf_counter() - t0:.1f} s")
    time.sleep(args.settle)  # RabbitMQ's statistics lag (its 5 s interval)
    rss1 = _rss(args.pids)
    db1 = _mgmt_db(mgmt, args.rabbit_node) if args.rabbit_node else 0
    rows = [
        ("/api/queues?page=1&page_size=100", mgmt + "/api/queues?page=1&page_size=100"),
        ("/api/queues", mgmt + "/api/queues"),
        ("/api/connections?page=1&page_size=100", mgmt + "/api/connections?page=1&page_size=100"),
        ("/api/connections", mgmt + "/api/connections"),
    ]
    if args.metrics:
        metrics = _local(args.metrics)
        rows += [
            ("/metrics/per-object", metrics + "/metrics/per-object"),
            ("/metrics", metrics + "/metrics"),
        ]
    for label, url in rows:
        for gap, how in ((0.0, "back to back"), (args.gap, f"{args.gap:g} s apart")):
            t, size = _time(url, args.repeat, gap)
            print(f"{label:<34} {how:<14} median {t * 1000:8.1f} ms  ({size / 1024:.0f} KiB)")
    if args.pids:
        print(
            f"RSS of pids {args.pids}: {rss0 / 2**20:.1f} MiB before, {rss1 / 2**20:.1f} MiB "
            f"with the queues ({(rss1 - rss0) / max(1, args.queues):.0f} B per queue)"
        )
    if args.rabbit_node:
        print(
            f"RabbitMQ mgmt_db: {db0 / 2**20:.1f} MiB before, {db1 / 2**20:.1f} MiB with the "
            f"queues ({(db1 - db0) / max(1, args.queues):.0f} B per queue)"
        )
    for c in idle:
        c.close()
    if not args.keep:
        for name in names:
            ch.queue_delete(name)
    conn.close()


def poll(args: argparse.Namespace) -> None:
    import requests

    mgmt = _local(args.mgmt)
    metrics = _local(args.metrics) if args.metrics else None
    while True:
        t0 = time.monotonic()
        requests.get(mgmt + "/api/queues", auth=AUTH, timeout=30)
        if metrics:
            requests.get(metrics + "/metrics", timeout=30)
        time.sleep(max(0.0, args.poll - (time.monotonic() - t0)))


def cpu_inproc(args: argparse.Namespace) -> None:
    """CPU milliseconds (this process's, ``time.process_time``: not the wall clock of a
    busy machine) of each step of the same calls, in one process: an in-process broker
    with N queues (``loadtest.inproc``), its report, the gathering, and the real
    handlers called with mocked requests."""
    import asyncio
    from types import SimpleNamespace

    import msgspec
    from aiohttp.test_utils import make_mocked_request

    from loadtest.inproc import connect, make_broker
    from workers import mgmt_objects
    from workers.mgmt_http import OPS, SERVER
    from workers.mgmt_stats import StatsHistory
    from workers.prometheus_http import render
    from workers.status import WorkerReport, report

    b = make_broker()
    c = connect(b)
    c.open_channel(1)
    for i in range(args.inproc):
        c.declare(1, f"statsbench-{i}")
    h = StatsHistory("/nonexistent")
    results: dict[str, float] = {}

    def cpu(label: str, fn: object, repeat: int = args.repeat) -> object:
        times = []
        out = None
        for _ in range(repeat):
            t0 = time.process_time()
            out = fn()  # type: ignore[operator]
            times.append(time.process_time() - t0)
        results[label] = statistics.median(times) * 1000
        return out

    data = cpu("worker: report + encode", lambda: msgspec.json.encode(report(b)))

    def gather() -> None:
        h.observe([msgspec.json.decode(data, type=WorkerReport)])  # type: ignore[arg-type]

    cpu("server: decode + fold", gather)
    user = b.metadata.access.authenticate("guest", "guest")
    server = SimpleNamespace(history=h, node="shardmq@bench")
    ops = SimpleNamespace(metadata=b.metadata)

    def call(path: str, handler: object) -> None:
        app: dict[object, object] = {OPS: ops, SERVER: server}
        req = make_mocked_request("GET", path, app=app)  # type: ignore[arg-type]
        req["user"] = user
        asyncio.run(handler(req))  # type: ignore[operator]

    def fresh() -> None:
        h.fetched_at = time.monotonic()  # the handlers take the reports observed here

    for label, path in (
        ("/api/queues?page=1&page_size=100", "/api/queues?page=1&page_size=100"),
        ("/api/queues", "/api/queues"),
    ):
        cpu(f"server: {label}", lambda path=path: (fresh(), call(path, mgmt_objects.list_queues)))
    reps = [msgspec.json.decode(data, type=WorkerReport)]  # type: ignore[arg-type]
    for label, per in (("/metrics/per-object", True), ("/metrics", False)):
        cpu(
            f"server: {label}",
            lambda per=per: render(
                reps,
                h,
                node="shardmq@bench",
                per_object=per,
                memory_limit=0,
                disk_free_limit=0,
                data_dir="/",
                supervisor=False,
            ),
        )
    for label, ms in results.items():
        print(f"{label:<48} {ms:8.1f} ms CPU")
    # what statistics keep per queue: the queue's own counters (7 slots) and the
    # history's (the last report's tuple and up to two samples'), measured
    import tracemalloc

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    h2 = StatsHistory("/nonexistent", interval=0.0)
    for _ in range(3):  # three gatherings: current, last and previous sample all distinct
        h2.observe([msgspec.json.decode(data, type=WorkerReport)])  # type: ignore[arg-type]
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    slots = 7 * 8
    print(
        f"statistics memory per queue: {slots} B of counter slots on the queue's worker, "
        f"{kept / args.inproc:.0f} B in the serving process (history after 3 gatherings)"
    )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.statsbench", description=__doc__)
    p.add_argument("--mgmt", default="http://127.0.0.1:15672")
    p.add_argument("--metrics", default="", help="http://127.0.0.1:15692 (shardmq)")
    p.add_argument("--amqp", default="amqp://127.0.0.1:5672/")
    p.add_argument("--queues", type=int, default=0)
    p.add_argument("--messages", type=int, default=0, help="messages per queue")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--settle", type=float, default=6.0, help="seconds before timing")
    p.add_argument(
        "--gap", type=float, default=1.5, help="seconds between calls in the second series"
    )
    p.add_argument("--pids", type=int, nargs="*", default=[])
    p.add_argument("--connections", type=int, default=0, help="idle connections held open")
    p.add_argument("--vhost", default="/", help="made (and deleted after) through the API unless /")
    p.add_argument(
        "--rabbit-node", default="", help="RabbitMQ's node name: print its mgmt_db memory"
    )
    p.add_argument("--keep", action="store_true")
    p.add_argument("--poll", type=float, default=0.0)
    p.add_argument("--inproc", type=int, default=0, help="N queues: CPU per step, in process")
    args = p.parse_args()
    if args.inproc:
        cpu_inproc(args)
    elif args.poll:
        poll(args)
    elif args.queues:
        bench_queues(args)
    else:
        p.error("--queues N or --poll SECONDS")


if __name__ == "__main__":
    main()
