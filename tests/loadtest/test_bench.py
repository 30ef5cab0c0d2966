"""The load generator against a real broker: counts, latencies, clean-up, CLI, locust.

Each bench here is short (about 1-2 s measured) and rate-limited, so a slow broker only
makes it slower, never wrong. No timing thresholds: only counts, orderings and existence.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pika
import pika.exceptions
import pytest

from loadtest.bench import BenchConfig, main, run_bench
from tests.support.launch import REPO_ROOT


def _assert_ordered(lat: dict) -> None:
    assert lat["count"] > 0
    assert 0 <= lat["p50_us"] <= lat["p95_us"] <= lat["p99_us"] <= lat["max_us"]


def _assert_gone(broker, report: dict) -> None:
    """Every queue and the exchange the run declared no longer exist."""
    conn = broker.blocking()
    try:
        for q in report["queues"]:
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
                ch.queue_declare(q, passive=True)
            assert exc.value.reply_code == 404
        if report["exchange"]:
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
                ch.exchange_declare(report["exchange"], passive=True)
            assert exc.value.reply_code == 404
    finally:
        conn.close()


def test_direct_manual_ack_with_confirms(broker) -> None:
    cfg = BenchConfig(
        uri=broker.uri,
        producers=1,
        consumers=1,
        rate=3000,
        confirm=200,
        prefetch=100,
        multi_ack_every=10,
        duration=1.5,
        warmup=0.3,
        quiet=True,
    )
    r = run_bench(cfg)
    assert r["errors"] == 0, r["error_samples"]
    assert r["published"] > 0
    assert r["consumed"] == r["published"] == r["expected_consumed"]
    assert r["confirmed"] == r["published"]
    assert r["publish_rate"] > 0 and r["consume_rate"] > 0
    _assert_ordered(r["latency"])
    _assert_ordered(r["confirm_latency"])
    assert r["cleanup_ok"] is True
    assert len(r["queues"]) == 1
    _assert_gone(broker, r)


def test_fanout_two_producer_processes_autoack(broker) -> None:
    cfg = BenchConfig(
        uri=broker.uri,
        producers=2,
        consumers=2,
        fanout=2,
        auto_ack=True,
        rate=1000,
        size=100,
        duration=1.0,
        warmup=0.3,
        producer_procs=2,
        consumer_procs=2,
        quiet=True,
    )
    r = run_bench(cfg)
    assert r["errors"] == 0, r["error_samples"]
    assert r["producer_procs"] == 2 and r["consumer_procs"] == 2
    assert r["published"] > 0
    assert r["consumed"] == 2 * r["published"]  # every message reaches both queues
    _assert_ordered(r["latency"])
    _assert_gone(broker, r)


def test_cli_json_topic_bindings_and_persistent(broker) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(
            [
                "--uri",
                broker.uri,
                "--exchange-type",
                "topic",
                "--bindings",
                "5",
                "--queues",
                "2",
                "--consumers",
                "2",
                "--persistent",
                "--rate",
                "800",
                "--duration",
                "1",
                "--warmup",
                "0.2",
                "--json",
                "--quiet",
            ]
        )
    r = json.loads(out.getvalue())
    assert code == 0, r["error_samples"]
    assert r["config"]["durable"] is True  # --persistent implies durable queues
    assert r["published"] > 0 and r["consumed"] == r["published"]
    _assert_ordered(r["latency"])
    _assert_gone(broker, r)


def test_backlog_then_drain(broker) -> None:
    cfg = BenchConfig(
        uri=broker.uri, backlog=3000, consumers=1, prefetch=200, multi_ack_every=50, quiet=True
    )
    r = run_bench(cfg)
    assert r["errors"] == 0, r["error_samples"]
    assert r["published"] == 3000
    assert r["consumed"] == 3000
    assert r["drain_rate"] > 0
    _assert_ordered(r["latency"])
    _assert_gone(broker, r)


def test_dead_letter_pipeline_delivers_every_rejected_message(broker) -> None:
    cfg = BenchConfig(
        uri=broker.uri,
        rate=2000,
        auto_ack=True,
        prefetch=100,
        dead_letter=True,
        duration=1.5,
        warmup=0.3,
        quiet=True,
    )
    r = run_bench(cfg)
    assert r["errors"] == 0, r["error_samples"]
    assert r["published"] > 0
    # every message was rejected once and reached the consumer through the dead queue
    assert r["rejected"] == r["published"] == r["consumed"]
    _assert_ordered(r["latency"])
    _assert_gone(broker, r)


def test_expire_burst_is_gone_by_the_end(broker) -> None:
    cfg = BenchConfig(
        uri=broker.uri,
        rate=500,
        prefetch=100,
        multi_ack_every=1,
        expire_burst=3000,
        duration=1.0,
        warmup=0.3,
        quiet=True,
    )
    r = run_bench(cfg)
    # the burst queue held them after the fill, and was empty at clean-up (expired)
    assert r["errors"] == 0 and r["cleanup_ok"], r["error_samples"]
    assert r["expire_burst"]["messages"] == 3000
    assert r["expire_burst"]["held_after_fill"] <= 3000
    assert r["consumed"] == r["published"] > 0
    _assert_gone(broker, r)


def test_locust_headless_zero_failures(broker, tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(REPO_ROOT / "loadtest" / "locustfile.py"),
            "--headless",
            "-u",
            "8",
            "-r",
            "8",
            "-t",
            "4s",
            "--host",
            broker.uri,
            "--amqp-prefix",
            f"locust-test-{os.getpid()}",
            "--csv",
            str(prefix),
            "--only-summary",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(f"{prefix}_stats.csv") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    for name in ("publish+confirm", "consume", "rpc", "Aggregated"):
        assert name in rows, sorted(rows)
        assert int(rows[name]["Request Count"]) > 0
        assert int(rows[name]["Failure Count"]) == 0
    # the work and RPC queues were deleted when the test stopped
    conn = broker.blocking()
    try:
        for q in ("work", "rpc"):
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                ch.queue_declare(f"locust-test-{os.getpid()}.{q}", passive=True)
    finally:
        conn.close()
