"""``shardmq bench`` / ``python -m loadtest.bench``: a load generator for AMQP 0-9-1 brokers
(and AMQP 1.0 ones with ``--protocol amqp10``: the worker processes run
``loadtest.amqp10`` instead of ``loadtest.worker``, same pipe protocol and results).

Owns: the command line (plain argparse; entry point :func:`main`), the benchmark
configuration (:class:`BenchConfig`), the topology plan (exchange, queues, bindings,
which producer publishes which routing keys, which consumer consumes which queues), the
orchestration of spawned producer and consumer processes, broker CPU/RSS sampling, the
merge of worker results into one report, and clean-up of everything it declared.

Run timeline: declare topology -> spawn workers, wait until all connected ("ready") ->
"go" at t_go -> warm-up -> measured window [t_warm, t_stop] (rates, latencies, broker
CPU) -> producers stop at t_stop and wait for outstanding confirms -> consumers drain
until they consumed every routed message (or go idle / time out) -> delete topology.
With ``--backlog N`` producers first publish N messages, then consumers start and the
drain rate is measured.

Invariants: the parent alone declares and deletes topology; every queue and exchange
it declares carries the run id and is deleted in a ``finally``; a worker that dies is
reported as an error, never a hang (every wait has a deadline).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import secrets
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar, cast
from urllib.parse import quote

from loadtest import procstat
from loadtest.client import URI, AMQPClientError, connect
from loadtest.queuefeatures import (
    BURST_SUFFIX,
    dead_queue,
    fill_allowance_s,
    fill_expiring,
    queue_arguments,
)
from loadtest.stats import Histogram
from loadtest.worker import NEVER, WorkerPlan, worker_main
from shardmq.broker.metadata import shard_for

T = TypeVar("T")

DEFAULT_URI = "amqp://guest:guest@127.0.0.1:5672/"
EXCHANGE_TYPES = ("direct", "fanout", "topic", "default")


@dataclass
class BenchConfig:
    """One benchmark run. Field names are the long options (``-`` -> ``_``)."""

    uri: str = DEFAULT_URI
    producers: int = 1
    consumers: int = 1
    queues: int = 1
    size: int = 16
    rate: float = 0.0
    confirm: int = 0
    persistent: bool = False
    durable: bool = False
    auto_ack: bool = False
    prefetch: int = 1000
    multi_ack_every: int = 0
    exchange_type: str = "direct"
    bindings: int = 1
    fanout: int = 0
    backlog: int = 0
    duration: float = 10.0
    warmup: float = 2.0
    producer_procs: int = 0
    consumer_procs: int = 0
    batch: int = 0
    heartbeat: int = 0
    drain_timeout: float = 60.0
    drain_idle: float = 3.0
    broker_pid: list[int] = field(default_factory=list)
    broker_stats: bool = True
    sink: bool = False
    queue_prefix: str = "shardmq-bench"
    quiet: bool = False
    # shardmq placement, for measuring cross-worker costs: the worker that producer and
    # consumer connections must land on (-1 = anywhere) and "N/W": queues owned by
    # worker N of W (names chosen by shardmq's placement hash)
    producer_worker: int = -1
    consumer_worker: int = -1
    queue_worker: str = ""
    # amqps:// only: the CA file that signed the broker's certificate, or no check
    tls_ca: str = ""
    tls_insecure: bool = False
    # queue features: x-message-ttl of the benchmark's queues in ms (-1 = none); the
    # reject -> dead-letter -> consume pipeline; N messages expiring at one instant
    # mid-window in a queue of their own (loadtest/queuefeatures.py)
    message_ttl: int = -1
    dead_letter: bool = False
    expire_burst: int = 0
    # priority queues: x-max-priority N of the benchmark's queues, producers cycle the
    # message priority over 0..N-1 message by message (0 = plain queues)
    priorities: int = 0
    # the protocol the producers and consumers speak (the parent declares and deletes
    # the topology over 0-9-1 either way); amqp10: loadtest/amqp10.py, where --confirm
    # means unsettled transfers, --auto-ack a settled receiver and --credit its credit
    protocol: str = "amqp091"
    credit: int = 0  # amqp10 receivers' link credit (0: --prefetch, or 1000 with --auto-ack)

    def normalized(self) -> BenchConfig:
        c = dataclasses.replace(self)
        if c.tls_ca or c.tls_insecure:
            if not c.uri.startswith("amqps://"):
                raise ValueError("--tls-ca/--tls-insecure need an amqps:// --uri")
            extra = [f"cacertfile={quote(c.tls_ca)}"] if c.tls_ca else []
            extra += ["verify=verify_none"] if c.tls_insecure else []
            for param in extra:  # as URI query parameters: every process gets them
                if param not in c.uri:
                    c.uri += ("&" if "?" in c.uri else "?") + param
        if c.fanout:
            c.exchange_type = "fanout"
            c.queues = c.fanout
        if c.exchange_type not in EXCHANGE_TYPES:
            raise ValueError(f"--exchange-type must be one of {', '.join(EXCHANGE_TYPES)}")
        if c.size < 8:
            raise ValueError("--size must be >= 8 (the body carries an 8-byte timestamp)")
        if c.producers < 0 or c.consumers < 0 or c.queues < 1 or c.bindings < 1:
            raise ValueError("producers/consumers >= 0, queues/bindings >= 1")
        if c.exchange_type == "default" and c.bindings != 1:
            raise ValueError("the default exchange takes exactly one binding per queue")
        if c.persistent and not c.durable:
            c.durable = True  # persistence needs a durable queue to mean anything
        if c.auto_ack:
            c.multi_ack_every = 0
        else:
            every = c.multi_ack_every or max(1, (c.prefetch or 1000) // 4)
            if c.prefetch:
                every = min(every, c.prefetch)
            c.multi_ack_every = every
        if c.backlog and c.producers < 1:
            raise ValueError("--backlog needs at least one producer")
        if c.queue_worker:
            queue_worker_of(c.queue_worker)  # raises ValueError when malformed
        if c.dead_letter and (c.consumers < 1 or c.backlog):
            raise ValueError("--dead-letter needs consumers and no --backlog")
        if c.expire_burst < 0:
            raise ValueError("--expire-burst must be >= 0")
        if c.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
        if c.protocol == "amqp10":
            for flag, on in (
                ("--dead-letter", c.dead_letter),
                ("--priorities", c.priorities),
                ("--sink", c.sink),
                (
                    "--producer-worker/--consumer-worker",
                    c.producer_worker >= 0 or c.consumer_worker >= 0,
                ),
                ("amqps://", c.uri.startswith("amqps://")),
            ):
                if on:
                    raise ValueError(f"{flag} is not available with --protocol amqp10")
            if c.credit <= 0:
                c.credit = c.prefetch or 1000
        return c


PROTOCOLS = ("amqp091", "amqp10")


def queue_worker_of(spec: str) -> tuple[int, int]:
    """``"N/W"`` -> (N, W): queues owned by worker N of a W-worker shardmq."""
    try:
        n, w = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--queue-worker wants N/W (worker N of W), not {spec!r}") from None
    if not 0 <= n < w:
        raise ValueError(f"--queue-worker {spec}: N must be in 0..W-1")
    return n, w


# --------------------------------------------------------------------------- topology
@dataclass
class Topology:
    run_id: str
    exchange: str
    exchange_type: str
    queues: list[str]
    bindings: list[tuple[str, str]]  # (queue, binding key)
    producer_keys: list[list[str]]  # per producer connection
    consumer_queues: list[list[str]]  # per consumer connection
    fanout_factor: int  # deliveries per published message
    # --dead-letter: each queue's dead-letter target, and the queues each rejecter
    # connection takes (and nacks) while the consumers consume the dead queues
    dead_queues: list[str] = field(default_factory=list)
    rejecter_queues: list[list[str]] = field(default_factory=list)
    burst_queue: str = ""  # --expire-burst: the queue whose messages expire at once


def plan_topology(cfg: BenchConfig, run_id: str) -> Topology:
    base = f"{cfg.queue_prefix}-{run_id}"
    queues = [f"{base}-q{i}" for i in range(cfg.queues)]
    if cfg.queue_worker:
        slot, workers = queue_worker_of(cfg.queue_worker)
        vhost = URI.parse(cfg.uri).vhost
        for i, q in enumerate(queues):
            k = 0
            while shard_for(vhost, f"{q}-{k}", workers) != slot:
                k += 1
            queues[i] = f"{q}-{k}"
    et = cfg.exchange_type
    exchange = "" if et == "default" else f"{base}-x"
    nb = cfg.bindings

    def key(qi: int, j: int) -> str:
        if et == "default":
            return queues[qi]
        if et == "topic":
            return f"b.{qi}.{j}.*"
        return f"k.{qi}.{j}"

    def pub_key(qi: int, j: int) -> str:
        if et == "topic":
            return f"b.{qi}.{j}.x"
        return key(qi, j)

    bindings: list[tuple[str, str]] = []
    if et == "fanout":
        bindings = [(q, "") for q in queues]
    elif et != "default":
        bindings = [(queues[qi], key(qi, j)) for qi in range(len(queues)) for j in range(nb)]

    def share(n_clients: int, i: int) -> list[int]:
        nq = len(queues)
        if nq >= n_clients:
            return list(range(i, nq, n_clients))
        return [i % nq]

    producer_keys: list[list[str]] = []
    for p in range(cfg.producers):
        if et == "fanout":
            producer_keys.append([""])
        else:
            mine = share(cfg.producers, p)
            producer_keys.append([pub_key(qi, j) for j in range(nb) for qi in mine])
    consumer_queues = [[queues[qi] for qi in share(cfg.consumers, c)] for c in range(cfg.consumers)]
    topo = Topology(
        run_id=run_id,
        exchange=exchange,
        exchange_type=et,
        queues=queues,
        bindings=bindings,
        producer_keys=producer_keys,
        consumer_queues=consumer_queues,
        fanout_factor=len(queues) if et == "fanout" else 1,
    )
    if cfg.dead_letter:
        topo.dead_queues = [dead_queue(q) for q in queues]
        topo.rejecter_queues = consumer_queues
        topo.consumer_queues = [[dead_queue(q) for q in qs] for qs in consumer_queues]
    if cfg.expire_burst:
        topo.burst_queue = base + BURST_SUFFIX
    return topo


async def _declare(cfg: BenchConfig, topo: Topology) -> None:
    c = await connect(cfg.uri, product="shardmq-bench-admin")
    try:
        if topo.exchange:
            await c.exchange_declare(topo.exchange, topo.exchange_type, durable=cfg.durable)
        for q in topo.dead_queues:
            await c.queue_declare(q, durable=cfg.durable)
        for q in topo.queues:
            args = queue_arguments(cfg.message_ttl, cfg.dead_letter, q)
            if cfg.priorities:
                args = {**(args or {}), "x-max-priority": cfg.priorities}
            await c.queue_declare(q, durable=cfg.durable, arguments=args)
        if topo.burst_queue:
            await c.queue_declare(topo.burst_queue)
        for q, k in topo.bindings:
            await c.queue_bind(q, topo.exchange, k)
    finally:
        await c.close()


async def _cleanup(cfg: BenchConfig, topo: Topology) -> list[str]:
    """Delete what we declared; returns problems (empty when all went)."""
    problems: list[str] = []
    c = await connect(cfg.uri, product="shardmq-bench-admin")
    try:
        for q in topo.queues + topo.dead_queues + ([topo.burst_queue] if topo.burst_queue else []):
            try:
                ok = await c.queue_delete(q)
                if ok.message_count:
                    problems.append(f"{q} still held {ok.message_count} messages")
            except AMQPClientError as exc:
                problems.append(f"delete {q}: {exc}")
                await c.reopen_channel()
        if topo.exchange:
            try:
                await c.exchange_delete(topo.exchange)
            except AMQPClientError as exc:
                problems.append(f"delete {topo.exchange}: {exc}")
    finally:
        await c.close()
    return problems


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    import uvloop

    return uvloop.run(coro)


# ------------------------------------------------------------------------ processes
def _split(items: list[T], parts: int) -> list[list[T]]:
    parts = max(1, min(parts, len(items))) if items else 0
    return [items[i::parts] for i in range(parts)]


def _procs(asked: int, n: int) -> int:
    if n == 0:
        return 0
    return min(n, asked if asked > 0 else (os.cpu_count() or 1))


@dataclass
class _Proc:
    plan: WorkerPlan
    process: BaseProcess
    conn: Connection
    ready: dict | None = None
    progress: dict | None = None
    result: dict | None = None
    error: str | None = None


class _Sampler:
    """Broker CPU/RSS over the run (no-op without pids)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.samples: dict[str, procstat.ProcSample] = {}
        self.rss_max = 0

    def take(self, name: str | None = None) -> None:
        if not self.pids:
            return
        s = procstat.sample(self.pids)
        self.rss_max = max(self.rss_max, s.rss)
        if name:
            self.samples[name] = s


def _resolve_broker_pids(cfg: BenchConfig, sink_pid: int | None) -> list[int]:
    if not cfg.broker_stats:
        return []
    if sink_pid:
        return [sink_pid]
    if cfg.broker_pid:
        return procstat.with_descendants(list(cfg.broker_pid))
    u = URI.parse(cfg.uri)
    if u.host in ("127.0.0.1", "localhost", "::1"):
        return procstat.find_broker_pids(u.port)
    return []


class Bench:
    """One run: :meth:`run` returns the report dict."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg.normalized()
        self.ctx = mp.get_context("spawn")
        self.procs: list[_Proc] = []
        self.log = (lambda *a: None) if self.cfg.quiet else _stderr

    # ---- worker plumbing
    def _spawn(self, plan: WorkerPlan) -> _Proc:
        parent, child = self.ctx.Pipe()
        target: Callable[..., None] = worker_main
        if plan.protocol == "amqp10":
            from loadtest.amqp10 import amqp10_worker_main

            target = amqp10_worker_main
        p = self.ctx.Process(target=target, args=(plan, child), daemon=True)
        p.start()
        child.close()
        wp = _Proc(plan, p, parent)
        self.procs.append(wp)
        return wp

    def _pump(self, timeout: float) -> None:
        """Receive whatever the workers sent within ``timeout`` seconds."""
        live = {wp.conn: wp for wp in self.procs if wp.result is None and wp.error is None}
        if not live:
            time.sleep(max(0.0, timeout))
            return
        # wait() returns some of the objects it was given: these connections
        for conn in cast(list[Connection], wait(list(live), timeout)):
            wp = live[conn]
            try:
                while conn.poll():
                    kind, payload = conn.recv()
                    if kind == "ready":
                        wp.ready = payload
                    elif kind == "progress":
                        wp.progress = payload
                    elif kind == "result":
                        wp.result = payload
                        break
                    elif kind == "error":
                        wp.error = payload
                        break
            except (EOFError, OSError):
                if wp.result is None and wp.error is None:
                    wp.error = f"{wp.plan.role} {wp.plan.index}: worker exited without a result"

    def _wait_for(
        self, procs: list[_Proc], pred: Callable[[_Proc], bool], deadline: float, what: str
    ) -> None:
        while True:
            pending = [wp for wp in procs if not pred(wp) and wp.error is None]
            if not pending:
                return
            if time.monotonic() > deadline:
                for wp in pending:
                    wp.error = f"{wp.plan.role} {wp.plan.index}: timed out waiting for {what}"
                return
            for wp in pending:
                if not wp.process.is_alive() and not wp.conn.poll():
                    wp.error = (
                        f"{wp.plan.role} {wp.plan.index}: process died (exit {wp.process.exitcode})"
                    )
            self._pump(0.1)

    @staticmethod
    def _send(procs: list[_Proc], msg: tuple) -> None:
        for wp in procs:
            if wp.error is None:
                try:
                    wp.conn.send(msg)
                except OSError as exc:
                    wp.error = f"{wp.plan.role} {wp.plan.index}: {exc}"

    # ---- the run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        sink = None
        if cfg.sink:
            from loadtest.sink import start_sink_process

            sink = start_sink_process(self.ctx, size=cfg.size)
            cfg.uri = f"amqp://guest:guest@127.0.0.1:{sink.port}/"
        try:
            return self._run(sink.pid if sink else None)
        finally:
            if sink is not None:
                sink.stop()

    def _run(self, sink_pid: int | None) -> dict[str, Any]:
        cfg = self.cfg
        run_id = secrets.token_hex(3)
        topo = plan_topology(cfg, run_id)
        sampler = _Sampler(_resolve_broker_pids(cfg, sink_pid))
        report: dict[str, Any] = {"config": dataclasses.asdict(cfg), "run_id": run_id}
        errors: list[str] = []
        declared = False
        try:
            t_decl = time.monotonic()
            _run_async(_declare(cfg, topo))
            declared = True
            report["declare_s"] = round(time.monotonic() - t_decl, 3)
            sampler.take("before_connections")
            report.update(self._drive(topo, sampler, errors))
        finally:
            self._reap()
            if declared:
                try:
                    problems = _run_async(_cleanup(cfg, topo))
                except Exception as exc:  # the broker went away: report, don't mask
                    problems = [f"cleanup failed: {exc!r}"]
                errors.extend(problems)
                report["cleanup_ok"] = not problems
        report["queues"] = (
            topo.queues + topo.dead_queues + ([topo.burst_queue] if topo.burst_queue else [])
        )
        report["exchange"] = topo.exchange
        report["errors"] = report.get("errors", 0) + len(errors)
        report.setdefault("error_samples", [])
        report["error_samples"] = (errors + report["error_samples"])[:20]
        report["broker"] = self._broker_report(sampler, report.get("connections", 0))
        return report

    def _reap(self) -> None:
        for wp in self.procs:
            wp.process.join(timeout=5)
            if wp.process.is_alive():
                wp.process.kill()
                wp.process.join(timeout=2)
            wp.conn.close()

    def _plans(self, topo: Topology) -> tuple[list[WorkerPlan], list[WorkerPlan], list[WorkerPlan]]:
        cfg = self.cfg
        # what every plan shares; each gets its role, index, connections and worker
        common = WorkerPlan(
            role="",
            index=0,
            uri=cfg.uri,
            size=cfg.size,
            rate=cfg.rate,
            confirm=cfg.confirm,
            persistent=cfg.persistent,
            priorities=cfg.priorities,
            batch=cfg.batch,
            prefetch=0 if cfg.auto_ack else cfg.prefetch,
            auto_ack=cfg.auto_ack,
            ack_every=cfg.multi_ack_every,
            heartbeat=cfg.heartbeat,
            consume_on_go=bool(cfg.backlog),
            protocol=cfg.protocol,
            credit=cfg.credit,
        )
        quotas = [0] * cfg.producers
        if cfg.backlog:
            for i in range(cfg.producers):
                quotas[i] = cfg.backlog // cfg.producers + (
                    1 if i < cfg.backlog % cfg.producers else 0
                )
        pspecs = [(topo.exchange, keys, quotas[i]) for i, keys in enumerate(topo.producer_keys)]
        pplans = [
            dataclasses.replace(
                common, role="producer", index=i, producers=chunk, worker=cfg.producer_worker
            )
            for i, chunk in enumerate(_split(pspecs, _procs(cfg.producer_procs, len(pspecs))))
        ]
        cplans = [
            dataclasses.replace(
                common, role="consumer", index=i, consumers=chunk, worker=cfg.consumer_worker
            )
            for i, chunk in enumerate(
                _split(topo.consumer_queues, _procs(cfg.consumer_procs, len(topo.consumer_queues)))
            )
        ]
        rq = topo.rejecter_queues
        rplans = [
            dataclasses.replace(
                common,
                role="rejecter",
                index=i,
                consumers=chunk,
                worker=cfg.consumer_worker,
                prefetch=cfg.prefetch,
                auto_ack=False,
                ack_every=max(1, cfg.multi_ack_every or cfg.prefetch // 4),
                reject=True,
            )
            for i, chunk in enumerate(_split(rq, _procs(cfg.consumer_procs, len(rq))))
        ]
        return pplans, cplans, rplans

    def _drive(self, topo: Topology, sampler: _Sampler, errors: list[str]) -> dict[str, Any]:
        cfg = self.cfg
        pplans, cplans, rplans = self._plans(topo)
        t_spawn = time.monotonic()
        cons = [self._spawn(p) for p in cplans]
        rejs = [self._spawn(p) for p in rplans]
        prods = [self._spawn(p) for p in pplans]
        self._wait_for(self.procs, lambda wp: wp.ready is not None, time.monotonic() + 300, "ready")
        setup_s = time.monotonic() - t_spawn
        sampler.take("after_connections")
        out: dict[str, Any] = {
            "connections": cfg.producers + cfg.consumers + len(topo.rejecter_queues),
            "setup_s": round(setup_s, 3),
            "connect_s": round(max((wp.ready or {}).get("setup_s", 0.0) for wp in self.procs), 3)
            if self.procs
            else 0.0,
            "producer_procs": len(prods),
            "consumer_procs": len(cons),
            "rejecter_procs": len(rejs),
        }
        if any(wp.error for wp in self.procs):
            return self._finish(out, topo, errors)

        warm_ns = int(cfg.warmup * 1e9)
        dur_ns = int(cfg.duration * 1e9)
        t_go = time.monotonic_ns() + 300_000_000
        if topo.burst_queue and not cfg.backlog:
            t_go = self._fill_burst(topo, out, warm_ns, dur_ns)
        if cfg.backlog:
            self._send(prods, ("go", t_go, t_go, NEVER))
            self.log(f"filling a backlog of {cfg.backlog} messages ...")
            self._live(prods, [], lambda: all(wp.result or wp.error for wp in prods), 3600)
            t_cgo = time.monotonic_ns() + 100_000_000
            sampler.take("warm")
            self._send(cons, ("go", t_cgo, t_cgo, NEVER))
            out["consume_go_ns"] = t_cgo
        else:
            t_warm = t_go + warm_ns
            t_stop = t_warm + dur_ns
            self._send(self.procs, ("go", t_go, t_warm, t_stop))
            self._live(prods, cons, lambda: time.monotonic_ns() >= t_warm, 30 + cfg.warmup)
            sampler.take("warm")
            self._live(prods, cons, lambda: time.monotonic_ns() >= t_stop, 30 + cfg.duration)
            sampler.take("stop")
            self._live(prods, cons, lambda: all(wp.result or wp.error for wp in prods), 60)
        # drain: stop consumers once every routed message arrived, or idle, or timeout
        published = sum((wp.result or {}).get("final", {}).get("published", 0) for wp in prods)
        expected = None if cfg.sink else published * topo.fanout_factor
        out["drain"] = self._drain(cons, expected)
        if cfg.backlog:
            sampler.take("stop")
        self._send(cons + rejs, ("stop",))
        self._wait_for(
            cons + rejs, lambda wp: wp.result is not None, time.monotonic() + 60, "result"
        )
        return self._finish(out, topo, errors, expected)

    def _fill_burst(self, topo: Topology, out: dict[str, Any], warm_ns: int, dur_ns: int) -> int:
        """Fill the burst queue, all due mid-window; returns t_go (later than planned
        only if the fill overran its allowance: the report says where the burst fell)."""
        cfg = self.cfg
        allowance = fill_allowance_s(cfg.expire_burst)
        due = time.monotonic_ns() + int(allowance * 1e9) + warm_ns + dur_ns // 2
        self.log(f"filling {cfg.expire_burst} messages that expire at one instant ...")
        secs, held = _run_async(
            fill_expiring(cfg.uri, topo.burst_queue, cfg.expire_burst, cfg.size, due, allowance)
        )
        t_go = max(time.monotonic_ns() + 300_000_000, due - warm_ns - dur_ns // 2)
        out["expire_burst"] = {
            "messages": cfg.expire_burst,
            "held_after_fill": held,
            "fill_s": round(secs, 3),
            "due_after_window_start_s": round((due - t_go - warm_ns) / 1e9, 3),
        }
        return t_go

    def _live(
        self, prods: list[_Proc], cons: list[_Proc], done: Callable[[], bool], limit: float
    ) -> None:
        deadline = time.monotonic() + limit
        next_print = time.monotonic() + 1.0
        last: tuple[int, int, float] | None = None
        while not done() and time.monotonic() < deadline:
            self._pump(0.05)
            if any(wp.error for wp in self.procs):
                return
            now = time.monotonic()
            if now >= next_print:
                next_print += 1.0
                pub = sum((wp.progress or {}).get("published", 0) for wp in prods)
                con = sum((wp.progress or {}).get("consumed", 0) for wp in cons)
                if last is not None:
                    dt = now - last[2]
                    self.log(
                        f"  publish {(pub - last[0]) / dt:>11,.0f} msg/s   "
                        f"consume {(con - last[1]) / dt:>11,.0f} msg/s"
                    )
                last = (pub, con, now)

    def _drain(self, cons: list[_Proc], expected: int | None) -> str:
        """Wait for the consumers to catch up; returns why it stopped waiting."""
        cfg = self.cfg
        if not cons:
            return "no consumers"
        if expected is None:
            return "nothing expected"
        t0 = time.monotonic()
        deadline = time.monotonic() + cfg.drain_timeout
        last_total = -1
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            self._pump(0.1)
            if any(wp.error for wp in cons):
                return "worker error"
            total = sum((wp.progress or {}).get("consumed", 0) for wp in cons)
            if total >= expected:
                return f"all consumed after {time.monotonic() - t0:.1f} s"
            if total != last_total:
                last_total = total
                last_change = time.monotonic()
            elif time.monotonic() - last_change > cfg.drain_idle:
                return f"idle for {cfg.drain_idle:g} s"
        return f"drain timeout {cfg.drain_timeout:g} s"

    def _finish(
        self, out: dict[str, Any], topo: Topology, errors: list[str], expected: int | None = None
    ) -> dict[str, Any]:
        cfg = self.cfg
        prods = [wp for wp in self.procs if wp.plan.role == "producer"]
        cons = [wp for wp in self.procs if wp.plan.role == "consumer"]
        rejs = [wp for wp in self.procs if wp.plan.role == "rejecter"]
        for wp in self.procs:
            if wp.error:
                errors.append(wp.error.splitlines()[0] if wp.error else "")
                if not cfg.quiet:
                    _stderr(wp.error)
        pres = [wp.result for wp in prods if wp.result]
        cres = [wp.result for wp in cons if wp.result]
        rres = [wp.result for wp in rejs if wp.result]

        def window_rate(results: list[dict], key: str) -> tuple[float, float]:
            total = 0.0
            secs = 0.0
            for r in results:
                w, s = r.get("warm"), r.get("stop")
                if not w or not s or s["t"] <= w["t"]:
                    continue
                dt = (s["t"] - w["t"]) / 1e9
                total += (s[key] - w[key]) / dt
                secs = max(secs, dt)
            return total, secs

        pub_rate, pub_secs = window_rate(pres, "published")
        con_rate, con_secs = window_rate(cres, "consumed")
        lat = Histogram()
        for r in cres:
            lat.merge(Histogram.from_dict(r["latency"]))
        conf = Histogram()
        for r in pres:
            conf.merge(Histogram.from_dict(r["confirm_latency"]))
        out["published"] = sum(r["final"]["published"] for r in pres)
        out["confirmed"] = sum(r["final"]["confirmed"] for r in pres) if cfg.confirm else None
        out["consumed"] = sum(r["final"]["consumed"] for r in cres)
        if rejs:
            out["rejected"] = sum(r["final"]["consumed"] for r in rres)
        out["expected_consumed"] = expected
        out["returned"] = sum(r["returned"] for r in pres + cres)
        out["publish_rate"] = round(pub_rate, 1)
        out["consume_rate"] = round(con_rate, 1)
        out["window_s"] = round(max(pub_secs, con_secs), 3)
        if cfg.backlog and cres:
            go = out.get("consume_go_ns", 0)
            last = max(r["last_delivery"] for r in cres)
            secs = (last - go) / 1e9 if last > go else 0.0
            out["drain_s"] = round(secs, 3)
            out["drain_rate"] = round(out["consumed"] / secs, 1) if secs > 0 else 0.0
        out["latency"] = lat.summary_us()
        out["confirm_latency"] = conf.summary_us() if cfg.confirm else None
        out["generator_cpu_percent"] = {
            "producers": [_cpu_pct(r) for r in pres],
            "consumers": [_cpu_pct(r) for r in cres],
        }
        out["consumer_tags"] = [t for r in cres for t in r["tags"]]
        out["errors"] = sum(r["errors"] for r in pres + cres + rres) + len(errors)
        out["error_samples"] = [t for r in pres + cres + rres for t in r["error_samples"]][:10]
        return out

    def _broker_report(self, sampler: _Sampler, connections: int) -> dict[str, Any] | None:
        if not sampler.pids:
            return None
        s = sampler.samples
        rep: dict[str, Any] = {"pids": sampler.pids}
        if "warm" in s and "stop" in s:
            rep["cpu_percent"] = round(procstat.cpu_percent(s["warm"], s["stop"]), 1)
        if "stop" in s:
            rep["rss_mb"] = round(s["stop"].rss / 2**20, 1)
        rep["rss_max_mb"] = round(sampler.rss_max / 2**20, 1)
        # per-connection memory only means something with many connections
        if "before_connections" in s and "after_connections" in s and connections >= 20:
            before, after = s["before_connections"].rss, s["after_connections"].rss
            rep["rss_before_connections_mb"] = round(before / 2**20, 1)
            rep["rss_after_connections_mb"] = round(after / 2**20, 1)
            rep["rss_per_connection_kb"] = round((after - before) / connections / 1024, 1)
        return rep


def _cpu_pct(r: dict) -> float:
    w, s = r.get("warm"), r.get("stop")
    if not w or not s or s["t"] <= w["t"]:
        return 0.0
    return round(100.0 * (s["cpu"] - w["cpu"]) / ((s["t"] - w["t"]) / 1e9), 1)


def _stderr(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run one benchmark and return its report (see README for the fields)."""
    return Bench(cfg).run()


# --------------------------------------------------------------------------- output
def format_report(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = []
    mode = (
        "auto-ack"
        if c["auto_ack"]
        else f"prefetch {c['prefetch']}, ack every {c['multi_ack_every']}"
    )
    lines.append(
        f"{c['producers']} producer(s) -> {c['exchange_type']} exchange -> {c['queues']} queue(s)"
        f" -> {c['consumers']} consumer(s); {c['size']} B, {mode}"
        + (f", confirm window {c['confirm']}" if c["confirm"] else "")
        + (", persistent" if c["persistent"] else "")
        + (f", rate {c['rate']:g}/s per producer" if c["rate"] else "")
    )
    lines.append(f"  uri              {c['uri']}")
    lines.append(
        f"  connections      {r.get('connections', 0)} (setup {r.get('setup_s', 0):.2f} s, "
        f"processes {r.get('producer_procs', 0)}p + {r.get('consumer_procs', 0)}c)"
    )
    if "publish_rate" in r:
        lines.append(
            f"  publish rate     {r['publish_rate']:>12,.0f} msg/s   (measured window {r.get('window_s', 0):.1f} s)"
        )
        lines.append(f"  consume rate     {r['consume_rate']:>12,.0f} msg/s")
    if "drain_rate" in r:
        lines.append(f"  backlog drain    {r['drain_rate']:>12,.0f} msg/s   ({r['drain_s']:.2f} s)")
    if "published" in r:
        lines.append(
            f"  published        {r['published']:>12,}   consumed {r['consumed']:,}"
            + (
                f" (expected {r['expected_consumed']:,})"
                if r.get("expected_consumed") is not None
                else ""
            )
            + (f"   confirmed {r['confirmed']:,}" if r.get("confirmed") is not None else "")
        )
    if r.get("rejected") is not None:
        lines.append(f"  rejected         {r['rejected']:>12,}   (dead-lettered to the consumers)")
    if r.get("expire_burst"):
        eb = r["expire_burst"]
        lines.append(
            f"  expiry burst     {eb['messages']:>12,}   (filled in {eb['fill_s']:.1f} s, due "
            f"{eb['due_after_window_start_s']:.1f} s into the window)"
        )
    if r.get("latency"):
        lines.append("  latency          " + _lat(r["latency"]))
    if r.get("confirm_latency"):
        lines.append("  confirm latency  " + _lat(r["confirm_latency"]))
    b = r.get("broker")
    if b:
        parts = []
        if "cpu_percent" in b:
            parts.append(f"CPU {b['cpu_percent']:.0f}%")
        if "rss_mb" in b:
            parts.append(f"RSS {b['rss_mb']:.0f} MiB (max {b['rss_max_mb']:.0f})")
        if "rss_per_connection_kb" in b:
            parts.append(f"{b['rss_per_connection_kb']:.0f} KiB/connection")
        lines.append(f"  broker           {', '.join(parts)}  pids {b['pids']}")
    g = r.get("generator_cpu_percent")
    if g:
        lines.append(f"  generator CPU %  producers {g['producers']} consumers {g['consumers']}")
    lines.append(
        f"  errors           {r.get('errors', 0)}"
        + (f"  {r['error_samples'][:3]}" if r.get("error_samples") else "")
        + f"   clean-up {'ok' if r.get('cleanup_ok') else 'FAILED'}"
    )
    return "\n".join(lines)


def _lat(s: dict) -> str:
    return (
        f"p50 {s['p50_us']:,.0f} us  p95 {s['p95_us']:,.0f} us  p99 {s['p99_us']:,.0f} us  "
        f"max {s['max_us']:,.0f} us  (n={s['count']:,})"
    )


# ------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    d = BenchConfig()
    p = argparse.ArgumentParser(
        prog="shardmq bench",
        description="Load generator for AMQP 0-9-1 (and 1.0) brokers (shardmq, RabbitMQ, ...).",
        argument_default=argparse.SUPPRESS,
    )
    a = p.add_argument
    a("--uri", help=f"broker URI, amqp:// or amqps:// (default {d.uri})")
    a("--tls-ca", metavar="PEM", help="amqps://: CA file that signed the broker's certificate")
    a(
        "--tls-insecure",
        action="store_true",
        help="amqps://: do not check the broker's certificate",
    )
    a("--producers", "-x", type=int, help=f"producer connections (default {d.producers})")
    a("--consumers", "-y", type=int, help=f"consumer connections (default {d.consumers})")
    a("--queues", "-q", type=int, help=f"queues (default {d.queues})")
    a("--size", "-s", type=int, help=f"message body bytes, >= 8 (default {d.size})")
    a("--rate", "-r", type=float, help="msg/s per producer connection, 0 = unlimited (default 0)")
    a(
        "--confirm",
        "-c",
        type=int,
        metavar="WINDOW",
        help="publisher confirms, max unconfirmed per producer (0 = off)",
    )
    a(
        "--protocol",
        choices=PROTOCOLS,
        help="what producers and consumers speak (default amqp091); amqp10: AMQP 1.0 "
        "links to /exchange/X/KEY and /queue/NAME, --confirm = unsettled transfers, "
        "--auto-ack = a settled receiver",
    )
    a("--credit", type=int, help="amqp10: receivers' link credit (default --prefetch, or 1000)")
    a("--persistent", action="store_true", help="delivery_mode 2 (implies --durable)")
    a("--durable", action="store_true", help="durable queues and exchange")
    a("--auto-ack", "-a", action="store_true", help="consume with no-ack")
    a(
        "--prefetch",
        "-Q",
        type=int,
        help=f"basic.qos prefetch for manual ack (default {d.prefetch}, 0 = unlimited)",
    )
    a(
        "--multi-ack-every",
        "-A",
        type=int,
        help="ack (multiple) once N deliveries are pending (default prefetch/4)",
    )
    a(
        "--exchange-type",
        "-t",
        choices=EXCHANGE_TYPES,
        help="exchange type; 'default' = the nameless exchange",
    )
    a("--bindings", type=int, help="binding keys per queue (direct/topic; default 1)")
    a("--fanout", type=int, metavar="N", help="shorthand: fanout exchange with N queues")
    a(
        "--backlog",
        type=int,
        metavar="N",
        help="publish N messages first, then measure the consumers draining them",
    )
    a("--duration", "-z", type=float, help=f"measured seconds (default {d.duration:g})")
    a("--warmup", type=float, help=f"seconds before measuring (default {d.warmup:g})")
    a("--producer-procs", type=int, help="producer processes (default: min(producers, cores))")
    a("--consumer-procs", type=int, help="consumer processes (default: min(consumers, cores))")
    a("--batch", type=int, help="messages per write (default: ~64 KiB worth)")
    a("--heartbeat", type=int, help="heartbeat seconds (default 0 = off)")
    a(
        "--drain-timeout",
        type=float,
        help=f"max seconds to drain after producers stop (default {d.drain_timeout:g})",
    )
    a(
        "--drain-idle",
        type=float,
        help=f"stop draining after this many idle seconds (default {d.drain_idle:g})",
    )
    a(
        "--broker-pid",
        type=int,
        action="append",
        help="broker pid(s) for CPU/RSS (default: whoever listens on the URI's port, if local)",
    )
    a(
        "--no-broker-stats",
        dest="broker_stats",
        action="store_false",
        help="don't sample broker CPU/RSS",
    )
    a(
        "--sink",
        action="store_true",
        help="run against a built-in trivial local sink instead of a broker",
    )
    a("--queue-prefix", help=f"name prefix for declared queues/exchange (default {d.queue_prefix})")
    a(
        "--producer-worker",
        type=int,
        metavar="N",
        help="shardmq: producer connections on worker N (reconnect until it takes them)",
    )
    a(
        "--consumer-worker",
        type=int,
        metavar="N",
        help="shardmq: consumer connections on worker N",
    )
    a(
        "--queue-worker",
        metavar="N/W",
        help="shardmq: queue names that worker N of a W-worker broker owns",
    )
    a(
        "--message-ttl",
        type=int,
        metavar="MS",
        help="declare the queues with x-message-ttl MS (default: none)",
    )
    a(
        "--dead-letter",
        action="store_true",
        help="reject -> dead-letter -> consume: rejecter connections nack every message "
        "(requeue=false), consumers consume the dead-letter queues",
    )
    a(
        "--expire-burst",
        type=int,
        metavar="N",
        help="N messages in a queue of their own, all expiring at one instant mid-window",
    )
    a(
        "--priorities",
        type=int,
        metavar="N",
        help="priority queues: x-max-priority N, message priorities cycle over 0..N-1",
    )
    a(
        "--conn-rate",
        action="store_true",
        help="connection set-up rate mode (its options: shardmq bench --conn-rate --help)",
    )
    a("--quiet", action="store_true", help="no live progress on stderr")
    a("--json", action="store_true", help="print the report as JSON")
    s = p.add_argument_group("scenario suite")
    s.add_argument("--suite", action="store_true", help="run the scenario suite from --scenarios")
    s.add_argument("--scenarios", metavar="TOML", help="suite file (default config/loadtest.toml)")
    s.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only scenarios whose name contains NAME (repeatable)",
    )
    s.add_argument("--list", action="store_true", help="list the suite's scenarios and exit")
    s.add_argument(
        "--vs", metavar="URI", help="also run every scenario against this broker, alternating"
    )
    s.add_argument(
        "--vs-protocol",
        choices=PROTOCOLS,
        help="the protocol of the --vs runs (default --protocol): e.g. the same broker "
        "over AMQP 1.0 vs 0-9-1",
    )
    s.add_argument("--rounds", type=int, help="rounds per scenario (default from the suite file)")
    return p


SUITE_KEYS = {"suite", "scenarios", "only", "list", "vs", "rounds", "json"}


def config_from_args(ns: dict[str, Any], base: BenchConfig | None = None) -> BenchConfig:
    cfg = dataclasses.replace(base) if base is not None else BenchConfig()
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    for k, v in ns.items():
        if k in names:
            setattr(cfg, k, v)
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``shardmq bench``); returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--conn-rate" in argv:  # connection set-up rate mode: its own options
        from loadtest.connrate import main as conn_rate_main

        return conn_rate_main([a for a in argv if a != "--conn-rate"])
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    if args.get("suite") or args.get("list"):
        from loadtest.scenarios import suite_main

        return suite_main(args)
    if "vs" in args or "rounds" in args or "vs_protocol" in args:
        parser.error("--vs/--vs-protocol/--rounds apply to --suite")
    try:
        cfg = config_from_args(args)
        cfg.normalized()
    except ValueError as exc:
        parser.error(str(exc))
    try:
        report = run_bench(cfg)
    except (TimeoutError, OSError, AMQPClientError) as exc:
        _stderr(f"bench failed: {exc!r}")
        return 2
    except KeyboardInterrupt:
        return 130
    if args.get("json"):
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report.get("errors", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
