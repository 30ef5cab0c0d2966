"""The connection set-up rate mode (``shardmq bench --conn-rate``) against real brokers:
plain (the integration ``broker``: shardmq with 1 and 3 workers, or ``SHARDMQ_TEST_URI``)
and TLS (a shardmq started here with certificates made here).

Counts and report shape only, never a speed threshold: a slow broker makes fewer
connections, not a failure. Refused connections must show as errors, not as opens.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from loadtest.bench import main as bench_main
from loadtest.connrate import ConnRateConfig, run_round
from tests.process.served import ServeFactory, serve
from tests.support.ports import free_port
from tests.support.procs import wait_for
from tests.support.tlscerts import CA

__all__ = ["serve"]

pytestmark = pytest.mark.timeout(180)


def _assert_counted(rep: dict) -> None:
    assert rep["errors"] == 0, rep["error_samples"]
    assert not rep["failed"]
    assert rep["opened"] > 0
    assert rep["opened_total"] >= rep["opened"]
    assert rep["conn_rate"] == round(rep["opened"] / rep["duration"], 1)
    assert 0 < rep["setup_p50_us"] <= rep["setup_p99_us"]
    # the broker listens on 127.0.0.1 here, so its CPU is sampled
    assert rep["broker_cpu_ms_per_conn"] is not None and rep["broker_cpu_ms_per_conn"] >= 0


def _with_password(uri: str, password: str) -> str:
    u = urlsplit(uri)
    netloc = f"{u.username or 'guest'}:{password}@{u.hostname}:{u.port}"
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def test_plain_connections_counted(broker) -> None:
    rep = run_round(
        ConnRateConfig(uri=broker.uri, procs=2, concurrency=2, duration=1.0, warmup=0.2)
    )
    _assert_counted(rep)
    assert rep["procs"] == 2 and rep["concurrency"] == 2


def test_refused_login_is_an_error_not_an_open(broker) -> None:
    uri = _with_password(broker.uri, "not-the-password")
    rep = run_round(ConnRateConfig(uri=uri, procs=1, concurrency=1, duration=0.5, warmup=0.0))
    assert rep["opened"] == 0 and rep["opened_total"] == 0
    assert rep["errors"] > 0
    assert any("403" in s or "ACCESS_REFUSED" in s for s in rep["error_samples"]), rep


def test_cli_json_vs_alternates_and_gives_a_ratio(broker, capsys) -> None:
    code = bench_main(
        ["--conn-rate", "--uri", broker.uri, "--vs", broker.uri, "--procs", "1"]
        + ["--concurrency", "2", "-z", "0.5", "--warmup", "0", "--rounds", "2", "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for tag in ("A", "B"):
        assert [r["round"] for r in out[tag]["rounds"]] == [1, 2]
        assert out[tag]["errors"] == 0
        assert out[tag]["conn_rate"] > 0
    assert out["ratio"] == round(out["A"]["conn_rate"] / out["B"]["conn_rate"], 3)


def test_bad_options_are_refused(capsys) -> None:
    assert bench_main(["--conn-rate", "--uri", "amqp://h/", "--tls-ca", "/ca.pem"]) == 2
    assert "amqps://" in capsys.readouterr().err
    assert bench_main(["--conn-rate", "--procs", "0"]) == 2


@pytest.mark.parametrize("workers", [1, 3])
def test_tls_connections_counted_and_wrong_ca_refused(
    serve: ServeFactory, tmp_path: Path, workers: int
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = CA(pki)
    server = ca.issue(pki / "server", "localhost", server=True)
    other = CA(pki, "other CA")
    tls_port = free_port()
    served = serve(
        workers,
        config={
            "tls": {"port": tls_port, "certfile": str(server.cert), "keyfile": str(server.key)}
        },
    )
    ready = f"shardmq ready: {workers} workers" if workers > 1 else "shardmq ready"
    wait_for(lambda: ready in served.log() or served.proc.poll(), 30, "ready", served.log)
    uri = f"amqps://guest:guest@localhost:{tls_port}/"

    rep = run_round(
        ConnRateConfig(uri=uri, tls_ca=str(ca.path), procs=1, concurrency=2, duration=1.0)
    )
    _assert_counted(rep)
    assert "cacertfile=" in rep["uri"]

    bad = run_round(
        ConnRateConfig(uri=uri, tls_ca=str(other.path), procs=1, concurrency=1, duration=0.5)
    )
    assert bad["opened_total"] == 0 and bad["errors"] > 0
    assert any("CERTIFICATE_VERIFY_FAILED" in s for s in bad["error_samples"]), bad
    assert served.proc.poll() is None
