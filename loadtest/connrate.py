"""Connection set-up rate: ``shardmq bench --conn-rate`` / ``python -m loadtest.connrate``.

Owns: the connection set-up rate mode of the load generator. ``--procs`` client processes
each run ``--concurrency`` tasks; every task loops: TCP connect (and the TLS handshake
for ``amqps://``), protocol header, start / start-ok (PLAIN), tune / tune-ok,
open / open-ok, then connection.close / close-ok and the socket closed, and again. A
connection counts when its open-ok arrives inside the measured window (after
``--warmup``, for ``--duration`` seconds); the rate is those connections per second, all
processes summed, and the broker's CPU in that window per connection (a local broker:
the processes listening on the URI's port) and the client processes' CPU per connection.
Several rounds per broker, with ``--vs URI`` alternating two brokers
(A B, B A, ...), report the median rate per broker and the ratio A/B, plus the median
time from connect to open-ok.

Invariants: every connection is closed (close handshake, then the socket) before the
task opens the next, so the broker never holds more than procs x concurrency of ours;
a failed connection counts as an error (first few kept as samples) and never ends the
run; each process makes its TLS context once (a full handshake per connection: no
session resumption, as a fresh client process gets); only numbers, never a pass/fail
gate on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from loadtest import procstat
from loadtest.bench import BenchConfig
from loadtest.client import URI, AMQPClientError, connect
from loadtest.stats import median

MAX_ERROR_SAMPLES = 5


@dataclass
class ConnRateConfig:
    uri: str = BenchConfig.uri
    procs: int = 2
    concurrency: int = 8
    duration: float = 5.0
    warmup: float = 1.0
    tls_ca: str = ""
    tls_insecure: bool = False

    def normalized(self) -> ConnRateConfig:
        """Validated copy, with the TLS options folded into the URI as ``bench`` does."""
        b = BenchConfig(uri=self.uri, tls_ca=self.tls_ca, tls_insecure=self.tls_insecure)
        c = ConnRateConfig(**asdict(self))
        c.uri = b.normalized().uri
        URI.parse(c.uri)  # raises ValueError on a bad scheme
        if c.procs < 1 or c.concurrency < 1:
            raise ValueError("--procs and --concurrency must be >= 1")
        if c.duration <= 0 or c.warmup < 0:
            raise ValueError("--duration must be > 0 and --warmup >= 0")
        return c


@dataclass
class ProcResult:
    opened: int = 0  # open-ok inside the window
    opened_total: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    setup_us: list[int] = field(default_factory=list)  # connect -> open-ok, in the window
    cpu_s: float = 0.0  # this process's CPU time in the window


async def _cpu_in_window(t_warm: float, t_stop: float, res: ProcResult) -> None:
    await asyncio.sleep(max(0.0, t_warm - time.monotonic()))
    c0 = time.process_time()
    await asyncio.sleep(max(0.0, t_stop - time.monotonic()))
    res.cpu_s = time.process_time() - c0


async def _task(
    u: URI, ctx: ssl.SSLContext | None, t_warm: float, t_stop: float, res: ProcResult
) -> None:
    while True:
        t0 = time.monotonic()
        if t0 >= t_stop:
            return
        try:
            c = await connect(u, open_channel=False, ssl_context=ctx, timeout=10.0)
        except (OSError, AMQPClientError, TimeoutError, ssl.SSLError) as exc:
            res.errors += 1
            if len(res.error_samples) < MAX_ERROR_SAMPLES:
                res.error_samples.append(repr(exc))
            await asyncio.sleep(0.05)  # do not spin on a broker that refuses
            continue
        t1 = time.monotonic()
        res.opened_total += 1
        if t_warm <= t1 < t_stop:
            res.opened += 1
            res.setup_us.append(int((t1 - t0) * 1e6))
        await c.close()


async def _proc_main(cfg: ConnRateConfig, t_go: float) -> ProcResult:
    u = URI.parse(cfg.uri)
    ctx = u.ssl_context()
    res = ProcResult()
    delay = t_go - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    now = time.monotonic()
    t_warm, t_stop = now + cfg.warmup, now + cfg.warmup + cfg.duration
    tasks = [_task(u, ctx, t_warm, t_stop, res) for _ in range(cfg.concurrency)]
    await asyncio.gather(_cpu_in_window(t_warm, t_stop, res), *tasks)
    return res


def _proc_entry(cfg: ConnRateConfig, go: Any, out: Any) -> None:
    import uvloop

    try:
        out.send("ready")  # imported: the parent picks t_go once every process is here
        if not go.wait(120):
            raise TimeoutError("no go from the parent")
        res = uvloop.run(_proc_main(cfg, go.t_go.value))
        out.send(asdict(res))
    except BaseException as exc:  # report, never hang the parent
        out.send({"failed": repr(exc)})
    finally:
        out.close()


class _Go:
    """The start signal: every process waits for it, then starts at ``t_go`` (wall)."""

    def __init__(self, ctx: Any) -> None:
        self.event = ctx.Event()
        self.t_go = ctx.Value("d", 0.0)

    def set(self) -> None:
        self.event.set()

    def wait(self, timeout: float) -> bool:
        return bool(self.event.wait(timeout))


def _broker_cpu(cfg: ConnRateConfig, t_go: float) -> tuple[float, float] | None:
    """The local broker's CPU over the measured window (percent of a core, seconds),
    summed over the processes listening on the URI's port; None when not local."""
    u = URI.parse(cfg.uri)
    pids = procstat.find_broker_pids(u.port) if u.host in ("127.0.0.1", "localhost") else []
    if not pids:
        return None
    time.sleep(max(0.0, t_go + cfg.warmup - time.time()))
    a = procstat.sample(pids)
    time.sleep(max(0.0, t_go + cfg.warmup + cfg.duration - time.time()))
    b = procstat.sample(pids)
    return round(procstat.cpu_percent(a, b), 1), b.cpu_s - a.cpu_s


def run_round(cfg: ConnRateConfig) -> dict[str, Any]:
    """One measurement: ``cfg.procs`` processes against ``cfg.uri``; the merged report."""
    cfg = cfg.normalized()
    ctx = mp.get_context("spawn")
    go = _Go(ctx)
    pipes, procs = [], []
    for _ in range(cfg.procs):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_proc_entry, args=(cfg, go, w), daemon=True)
        p.start()
        w.close()
        pipes.append(r)
        procs.append(p)
    early: dict[int, dict[str, Any]] = {}  # a process that failed before "ready"
    ready_by = time.monotonic() + 120.0
    for i, r in enumerate(pipes):  # every process started (spawning is slow when loaded)
        if r.poll(max(ready_by - time.monotonic(), 0.0)):
            got = r.recv()
            if got != "ready":
                early[i] = got
        else:
            early[i] = {"failed": "not started (timeout)"}
    t_go = time.time() + 0.2
    go.t_go.value = t_go
    go.set()
    broker = _broker_cpu(cfg, t_go)
    deadline = time.monotonic() + cfg.warmup + cfg.duration + 60.0
    results: list[dict[str, Any]] = []
    for i, r in enumerate(pipes):
        if i in early:
            results.append(early[i])
            continue
        left = deadline - time.monotonic()
        results.append(r.recv() if r.poll(max(left, 0.0)) else {"failed": "no result (timeout)"})
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    failed = [x["failed"] for x in results if "failed" in x]
    ok = [x for x in results if "failed" not in x]
    setup = sorted(v for x in ok for v in x["setup_us"])
    opened = sum(x["opened"] for x in ok)
    return {
        "uri": cfg.uri,
        "procs": cfg.procs,
        "concurrency": cfg.concurrency,
        "duration": cfg.duration,
        "opened": opened,
        "opened_total": sum(x["opened_total"] for x in ok),
        "conn_rate": round(opened / cfg.duration, 1),
        "setup_p50_us": setup[len(setup) // 2] if setup else None,
        "setup_p99_us": setup[min(len(setup) - 1, len(setup) * 99 // 100)] if setup else None,
        "broker_cpu_percent": broker[0] if broker else None,
        "broker_cpu_ms_per_conn": (
            round(broker[1] * 1000 / opened, 3) if broker and opened else None
        ),
        "client_cpu_ms_per_conn": (
            round(sum(x["cpu_s"] for x in ok) * 1000 / opened, 3) if opened else None
        ),
        "errors": sum(x["errors"] for x in ok) + len(failed),
        "error_samples": (failed + [s for x in ok for s in x["error_samples"]])[:MAX_ERROR_SAMPLES],
        "failed": bool(failed),
    }


def _median_of(reports: list[dict[str, Any]], key: str) -> float | None:
    values = [x[key] for x in reports if x.get(key) is not None]
    return median(values) if values else None


def run_rounds(cfg: ConnRateConfig, rounds: int, vs: str | None = None) -> dict[str, Any]:
    """``rounds`` rounds per broker, alternating with ``vs``; medians and ratio A/B."""
    targets = [("A", cfg.uri)] + ([("B", vs)] if vs else [])
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t, _ in targets}
    for r in range(rounds):
        for tag, uri in targets if r % 2 == 0 else list(reversed(targets)):
            c = ConnRateConfig(**{**asdict(cfg), "uri": uri})
            rep = run_round(c)
            rep["round"] = r + 1
            runs[tag].append(rep)
            print(
                f"conn-rate {tag} round {r + 1}/{rounds}: {rep['conn_rate']:,.0f} conn/s "
                f"(p50 {rep['setup_p50_us']} us, broker {rep['broker_cpu_ms_per_conn']} "
                f"CPU ms/conn, clients {rep['client_cpu_ms_per_conn']}, "
                f"errors {rep['errors']}) {uri}",
                file=sys.stderr,
                flush=True,
            )
    out: dict[str, Any] = {}
    for tag, uri in targets:
        good = [x for x in runs[tag] if not x["failed"]]
        out[tag] = {
            "uri": uri,
            "conn_rate": median(x["conn_rate"] for x in good) if good else None,
            "setup_p50_us": _median_of(good, "setup_p50_us"),
            "broker_cpu_ms_per_conn": _median_of(good, "broker_cpu_ms_per_conn"),
            "client_cpu_ms_per_conn": _median_of(good, "client_cpu_ms_per_conn"),
            "errors": sum(x["errors"] for x in runs[tag]),
            "rounds": runs[tag],
        }
    if vs and out["A"]["conn_rate"] and out["B"]["conn_rate"]:
        out["ratio"] = round(out["A"]["conn_rate"] / out["B"]["conn_rate"], 3)
    return out


def build_parser() -> argparse.ArgumentParser:
    d = ConnRateConfig()
    p = argparse.ArgumentParser(
        prog="shardmq bench --conn-rate",
        description="Connection set-up rate: open (to open-ok) and close connections in a loop.",
    )
    p.add_argument("--uri", default=d.uri, help="broker URI, amqp:// or amqps://")
    p.add_argument("--vs", metavar="URI", help="also measure this broker, alternating rounds")
    p.add_argument("--tls-ca", default="", metavar="PEM", help="amqps://: the broker's CA file")
    p.add_argument("--tls-insecure", action="store_true", help="amqps://: no certificate check")
    p.add_argument("--procs", type=int, default=d.procs, help="client processes")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="tasks per process")
    p.add_argument("--duration", "-z", type=float, default=d.duration, help="measured seconds")
    p.add_argument("--warmup", type=float, default=d.warmup, help="seconds before measuring")
    p.add_argument("--rounds", type=int, default=3, help="rounds per broker")
    p.add_argument("--json", action="store_true", help="print every round as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    cfg = ConnRateConfig(
        uri=ns.uri,
        procs=ns.procs,
        concurrency=ns.concurrency,
        duration=ns.duration,
        warmup=ns.warmup,
        tls_ca=ns.tls_ca,
        tls_insecure=ns.tls_insecure,
    )
    try:
        cfg.normalized()
        if ns.vs:
            ConnRateConfig(**{**asdict(cfg), "uri": ns.vs}).normalized()
    except ValueError as exc:
        print(f"conn-rate: {exc}", file=sys.stderr)
        return 2
    out = run_rounds(cfg, max(1, ns.rounds), ns.vs)
    if ns.json:
        print(json.dumps(out, indent=2))
    else:
        for tag in ("A", "B"):
            if tag in out:
                o = out[tag]
                print(
                    f"{tag} {o['uri']}: median {o['conn_rate']} conn/s, "
                    f"setup p50 {o['setup_p50_us']} us, "
                    f"broker {o['broker_cpu_ms_per_conn']} CPU ms/conn, errors {o['errors']}"
                )
        if "ratio" in out:
            print(f"A/B {out['ratio']:.2f}")
    errors = sum(out[t]["errors"] for t in ("A", "B") if t in out)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
