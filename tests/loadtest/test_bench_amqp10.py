"""``shardmq bench --protocol amqp10`` against a real broker (shardmq over 1 and 3
workers, or the reference RabbitMQ with its AMQP 1.0 plugin via SHARDMQ_TEST_URI):
settled and unsettled flows, counts, latencies, the generator's CPU, clean-up.

Short, rate-limited runs: a slow broker makes them slower, never wrong. No timing
thresholds.
"""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO

import pytest

from loadtest.bench import BenchConfig, main, run_bench


def _run(broker, **kw) -> dict:
    cfg = BenchConfig(
        uri=broker.uri,
        protocol="amqp10",
        producers=1,
        consumers=1,
        rate=2000,
        duration=1.5,
        warmup=0.3,
        quiet=True,
        **kw,
    )
    return run_bench(cfg)


def test_settled_flow(broker) -> None:
    r = _run(broker, auto_ack=True, credit=100)
    assert r["errors"] == 0, r["error_samples"]
    assert r["published"] > 0
    assert r["consumed"] == r["published"] == r["expected_consumed"]
    assert r["publish_rate"] > 0 and r["consume_rate"] > 0
    lat = r["latency"]
    assert lat["count"] > 0 and 0 <= lat["p50_us"] <= lat["p99_us"] <= lat["max_us"]
    gen = r["generator_cpu_percent"]
    assert len(gen["producers"]) == 1 and len(gen["consumers"]) == 1
    assert r["cleanup_ok"] is True


def test_unsettled_flow_every_transfer_accepted(broker) -> None:
    r = _run(broker, confirm=300, prefetch=200, multi_ack_every=50)
    assert r["errors"] == 0, r["error_samples"]
    assert r["published"] > 0
    assert r["confirmed"] == r["published"] == r["consumed"]
    assert r["confirm_latency"]["count"] > 0
    # every delivery was accepted: the queue was empty when it was deleted
    assert r["cleanup_ok"] is True


def test_cli_json_and_options_refused_with_amqp10(broker) -> None:
    out = StringIO()
    with redirect_stdout(out):
        code = main(
            [
                "--uri",
                broker.uri,
                "--protocol",
                "amqp10",
                "--auto-ack",
                "--rate",
                "500",
                "--duration",
                "0.8",
                "--warmup",
                "0.2",
                "--quiet",
                "--json",
            ]
        )
    assert code == 0
    rep = json.loads(out.getvalue())
    assert rep["config"]["protocol"] == "amqp10" and rep["consumed"] == rep["published"] > 0
    with pytest.raises(ValueError, match="amqp10"):
        BenchConfig(protocol="amqp10", priorities=3).normalized()
    with pytest.raises(ValueError, match="--protocol"):
        BenchConfig(protocol="stomp").normalized()
