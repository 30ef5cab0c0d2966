"""The scenario suite: ``shardmq bench --suite [--vs URI]``.

Owns: loading scenarios from TOML (``config/loadtest.toml``: a ``[suite]`` table of
defaults and ``[[scenario]]`` tables whose keys are :class:`BenchConfig` fields plus
``name``, ``about`` and ``metrics``), running each scenario for several rounds against one
broker or, with ``--vs``, alternately against two (A B, then B A, ...), and reporting the
median of every metric per broker and the ratio A/B.

Precedence of settings, lowest first: BenchConfig defaults, ``[suite]``, the scenario,
options given explicitly on the command line (e.g. ``--duration 3`` shortens every
scenario).

Invariants: a scenario file with an unknown key or metric is rejected before anything
runs; every round's full report is kept (``--json``), medians ignore failed rounds, and a
round with errors is flagged in the table.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench import BenchConfig, config_from_args, format_report, run_bench
from loadtest.stats import median

DEFAULT_SUITE = Path(__file__).resolve().parent.parent / "config" / "loadtest.toml"

# metric name -> (label, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "publish_rate": ("publish msg/s", True),
    "consume_rate": ("consume msg/s", True),
    "drain_rate": ("drain msg/s", True),
    "latency_p50_us": ("latency p50 us", False),
    "latency_p95_us": ("latency p95 us", False),
    "latency_p99_us": ("latency p99 us", False),
    "latency_max_us": ("latency max us", False),
    "confirm_latency_p50_us": ("confirm p50 us", False),
    "confirm_latency_p99_us": ("confirm p99 us", False),
    "broker_cpu_percent": ("broker CPU %", False),
    "broker_rss_mb": ("broker RSS MiB", False),
    "rss_per_connection_kb": ("KiB/connection", False),
    "setup_s": ("setup s", False),
    "producer_cpu_percent": ("producer CPU %", False),
    "consumer_cpu_percent": ("consumer CPU %", False),
}
_FIELDS = {f.name for f in dataclasses.fields(BenchConfig)}
_SCENARIO_META = {"name", "about", "metrics"}
_SUITE_KEYS = {"rounds"} | _FIELDS


@dataclass
class Scenario:
    name: str
    about: str
    options: dict[str, Any]
    metrics: list[str] = field(default_factory=lambda: ["publish_rate", "consume_rate"])


@dataclass
class Suite:
    rounds: int
    defaults: dict[str, Any]
    scenarios: list[Scenario]


def load_suite(path: str | Path = DEFAULT_SUITE) -> Suite:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    head = dict(data.get("suite", {}))
    bad = set(head) - _SUITE_KEYS
    if bad:
        raise ValueError(f"{path}: unknown [suite] keys {sorted(bad)}")
    rounds = int(head.pop("rounds", 3))
    scenarios = []
    for i, raw in enumerate(data.get("scenario", [])):
        raw = dict(raw)
        name = raw.get("name") or f"scenario-{i}"
        bad = set(raw) - _FIELDS - _SCENARIO_META
        if bad:
            raise ValueError(f"{path}: scenario {name!r}: unknown keys {sorted(bad)}")
        metrics = list(raw.get("metrics", ["publish_rate", "consume_rate"]))
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"{path}: scenario {name!r}: unknown metrics {unknown}")
        opts = {k: v for k, v in raw.items() if k in _FIELDS}
        scenarios.append(Scenario(name, raw.get("about", ""), opts, metrics))
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate scenario names")
    return Suite(rounds, head, scenarios)


def flatten(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers under the names used in ``metrics``."""
    out: dict[str, float] = {}
    for k in ("publish_rate", "consume_rate", "drain_rate", "setup_s"):
        if report.get(k) is not None:
            out[k] = float(report[k])
    for prefix in ("latency", "confirm_latency"):
        lat = report.get(prefix)
        if lat and lat.get("count"):
            for p in ("p50", "p95", "p99", "max"):
                out[f"{prefix}_{p}_us"] = float(lat[f"{p}_us"])
    gen = report.get("generator_cpu_percent") or {}
    for role in ("producer", "consumer"):
        cpus = gen.get(role + "s")
        if cpus:
            out[f"{role}_cpu_percent"] = float(max(cpus))  # the busiest process
    b = report.get("broker") or {}
    if "cpu_percent" in b:
        out["broker_cpu_percent"] = float(b["cpu_percent"])
    if "rss_max_mb" in b:
        out["broker_rss_mb"] = float(b["rss_max_mb"])
    if "rss_per_connection_kb" in b:
        out["rss_per_connection_kb"] = float(b["rss_per_connection_kb"])
    return out


def scenario_config(suite: Suite, sc: Scenario, cli: dict[str, Any], uri: str) -> BenchConfig:
    cfg = config_from_args(suite.defaults)
    cfg = config_from_args(sc.options, cfg)
    cfg = config_from_args({k: v for k, v in cli.items() if k in _FIELDS}, cfg)
    cfg.uri = uri
    cfg.quiet = True  # no live progress lines in a suite; each run's report is printed
    return cfg


def _run_one(cfg: BenchConfig, label: str, quiet: bool) -> dict[str, Any]:
    try:
        rep = run_bench(cfg)
    except Exception as exc:  # one failed round must not end the suite
        rep = {"errors": 1, "error_samples": [f"{exc!r}"], "failed": True}
    if not quiet and not rep.get("failed"):
        print(f"--- {label}\n{format_report(rep)}", file=sys.stderr, flush=True)
    elif rep.get("failed"):
        print(f"--- {label}: FAILED {rep['error_samples'][0]}", file=sys.stderr, flush=True)
    return rep


def run_suite(
    suite: Suite,
    cli: dict[str, Any],
    uri: str,
    vs: str | None = None,
    only: list[str] | None = None,
    rounds: int | None = None,
    quiet: bool = False,
    vs_protocol: str | None = None,
) -> list[dict[str, Any]]:
    """Run the (filtered) suite; one summary dict per scenario."""
    rounds = rounds or suite.rounds
    targets = [("A", uri)] + ([("B", vs)] if vs else [])
    summaries = []
    chosen = [s for s in suite.scenarios if not only or any(o in s.name for o in only)]
    for sc in chosen:
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t, _ in targets}
        for r in range(rounds):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for tag, u in order:
                cfg = scenario_config(suite, sc, cli, u)
                if tag == "B":
                    cfg.broker_pid = []  # --broker-pid describes --uri's broker only
                    if vs_protocol:
                        cfg.protocol = vs_protocol
                rep = _run_one(cfg, f"{sc.name} [{tag} round {r + 1}/{rounds}] {u}", quiet)
                runs[tag].append(rep)
        summary: dict[str, Any] = {"scenario": sc.name, "about": sc.about, "metrics": sc.metrics}
        for tag, _u in targets:
            ok = [rep for rep in runs[tag] if not rep.get("failed")]
            flats = [flatten(rep) for rep in ok]
            keys = sorted({k for f in flats for k in f})
            summary[tag] = {
                "uri": dict(targets)[tag],
                "rounds": len(runs[tag]),
                "failed_rounds": len(runs[tag]) - len(ok),
                "errors": sum(int(rep.get("errors", 0)) for rep in runs[tag]),
                "median": {k: median(f[k] for f in flats if k in f) for k in keys},
                "reports": runs[tag],
            }
        if vs:
            ratios = {}
            for k, a in summary["A"]["median"].items():
                b = summary["B"]["median"].get(k)
                if b:
                    ratios[k] = round(a / b, 3)
            summary["ratio"] = ratios
        summaries.append(summary)
        if not quiet:
            print(format_summary([summary], bool(vs)), file=sys.stderr, flush=True)
    return summaries


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def format_summary(summaries: list[dict[str, Any]], vs: bool) -> str:
    head = ["scenario", "metric", "A median"] + (["B median", "A/B"] if vs else []) + ["errors"]
    rows = [head]
    for s in summaries:
        for i, m in enumerate(s["metrics"]):
            a = s["A"]["median"].get(m)
            row = [s["scenario"] if i == 0 else "", METRICS[m][0], _fmt(a)]
            if vs:
                b = s["B"]["median"].get(m)
                ratio = s.get("ratio", {}).get(m)
                row += [_fmt(b), f"{ratio:.2f}" if ratio is not None else "-"]
            errs = s["A"]["errors"] + (s["B"]["errors"] if vs else 0)
            row.append(str(errs) if i == 0 else "")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for j, r in enumerate(rows):
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def suite_main(args: dict[str, Any]) -> int:
    """``--suite`` / ``--list`` half of :func:`loadtest.bench.main`."""
    try:
        suite = load_suite(args.get("scenarios") or DEFAULT_SUITE)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"bench: cannot load suite: {exc}", file=sys.stderr)
        return 2
    only = args.get("only")
    if args.get("list"):
        for s in suite.scenarios:
            if not only or any(o in s.name for o in only):
                opts = " ".join(f"{k}={v}" for k, v in s.options.items())
                print(f"{s.name:32} {s.about}\n{'':32} {opts}")
        return 0
    uri = args.get("uri") or BenchConfig().uri
    summaries = run_suite(
        suite,
        args,
        uri,
        vs=args.get("vs"),
        only=only,
        rounds=args.get("rounds"),
        quiet=bool(args.get("quiet")),
        vs_protocol=args.get("vs_protocol"),
    )
    if args.get("json"):
        print(json.dumps(summaries, indent=2))
    else:
        print(f"A = {uri}" + (f"\nB = {args['vs']}" if args.get("vs") else ""))
        print(format_summary(summaries, bool(args.get("vs"))))
    failed = sum(
        s["A"]["failed_rounds"] + s.get("B", {}).get("failed_rounds", 0) for s in summaries
    )
    return 0 if failed == 0 else 1
