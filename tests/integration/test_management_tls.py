"""The management API over HTTPS (issue 14: "optional TLS with the broker's
certificates"): ``[management] tls = true`` (the ``[tls]`` section's files) and
``[management.ssl]`` (RabbitMQ's ``management.ssl.*``: its own certfile, keyfile,
cacertfile, port); ``requests`` and ``rabbitmqadmin --ssl`` verify the server against
the test CA; plain HTTP is refused on that port; ``/api/overview`` lists the AMQP,
AMQPS (``amqp/ssl``), HTTPS and Prometheus (``http/prometheus``) listeners as RabbitMQ
names them; bad files are a one-line start-up error with exit code 16. 1 and 3
workers (the API is served by the supervisor with 3).

Invariants: only 127.0.0.1 is contacted; certificates are made at run time
(``tests.support.tlscerts``). Nothing here runs against an external RabbitMQ (it would
need its configuration changed).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.launch import serve_args, spawn
from tests.support.ports import free_port
from tests.support.statsbroker import StatsBroker, start_stats_broker, stop_stats_broker
from tests.support.tlscerts import CA

REPO_ROOT = Path(__file__).resolve().parents[2]
RABBITMQADMIN = REPO_ROOT / "tests" / "support" / "rabbitmqadmin"
AUTH = ("guest", "guest")


@dataclass
class Secure:
    broker: StatsBroker
    ca: Path
    https: str  # https://127.0.0.1:PORT
    port: int
    tls_port: int


def _tls_section(tmp: Path, ca: CA) -> tuple[str, int]:
    server = ca.issue(tmp / "server", "localhost", server=True)
    port = free_port()
    text = (
        f'[tls]\nport = {port}\ncertfile = "{server.cert}"\nkeyfile = "{server.key}"\n'
        f'cacertfile = "{ca.path}"\n'
    )
    return text, port


@pytest.fixture(scope="module", params=[pytest.param(1, id="1w"), pytest.param(3, id="3w")])
def secure(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secure]:
    tmp = tmp_path_factory.mktemp("mgmt-tls")
    ca = CA(tmp)
    tls, tls_port = _tls_section(tmp, ca)
    b = start_stats_broker(tmp, request.param, tls, mgmt="tls = true\n")
    try:
        port = int(b.mgmt_url.rsplit(":", 1)[1])
        yield Secure(b, ca.path, f"https://127.0.0.1:{port}", port, tls_port)
    finally:
        stop_stats_broker(b)


def test_https_api_and_listeners(secure: Secure) -> None:
    import requests

    r = requests.get(secure.https + "/api/overview", auth=AUTH, verify=str(secure.ca), timeout=30)
    assert r.status_code == 200, r.text
    listeners = {(lst["protocol"], lst["port"]) for lst in r.json()["listeners"]}
    b = secure.broker
    assert b.metrics_url is not None
    assert listeners == {
        ("amqp", b.amqp_port),
        ("amqp/ssl", secure.tls_port),
        ("https", secure.port),
        ("http/prometheus", int(b.metrics_url.rsplit(":", 1)[1])),
    }
    ok = requests.get(
        f"{secure.https}/api/health/checks/port-listener/{secure.tls_port}",
        auth=AUTH,
        verify=str(secure.ca),
        timeout=30,
    )
    assert ok.status_code == 200 and ok.json()["status"] == "ok", ok.text
    with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP on that port
        requests.get(f"http://127.0.0.1:{secure.port}/api/overview", auth=AUTH, timeout=10)
    with pytest.raises(requests.exceptions.SSLError):  # a CA that did not sign it
        requests.get(secure.https + "/api/overview", auth=AUTH, timeout=10)


@pytest.mark.skipif(not RABBITMQADMIN.exists(), reason="tests/support/rabbitmqadmin is absent")
def test_rabbitmqadmin_over_https(secure: Secure) -> None:
    base = [sys.executable, str(RABBITMQADMIN), "-H", "127.0.0.1", "-P", str(secure.port)]
    base += ["-u", "guest", "-p", "guest", "--ssl", "--ssl-ca-cert-file", str(secure.ca)]
    q = f"mgmt-tls-{secure.port}"

    def run(*args: str) -> str:
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        return res.stdout

    assert "queue declared" in run("declare", "queue", f"name={q}", "durable=false")
    assert q in run("list", "queues", "name")
    assert "queue deleted" in run("delete", "queue", f"name={q}")


def test_own_files_and_port(tmp_path: Path) -> None:
    """``[management.ssl]`` with its own certificate and port, without ``[tls]``."""
    import requests

    ca = CA(tmp_path)
    cert = ca.issue(tmp_path / "web", "localhost", server=True)
    port = free_port()
    extra = (
        f'[management.ssl]\nport = {port}\ncertfile = "{cert.cert}"\n'
        f'keyfile = "{cert.key}"\ncacertfile = "{ca.path}"\n'
    )
    b = start_stats_broker(tmp_path, 1, extra)
    try:
        url = f"https://127.0.0.1:{port}/api/whoami"
        r = requests.get(url, auth=AUTH, verify=str(ca.path), timeout=30)
        assert r.status_code == 200 and r.json()["name"] == "guest", r.text
        listeners = requests.get(
            f"https://127.0.0.1:{port}/api/overview", auth=AUTH, verify=str(ca.path), timeout=30
        ).json()["listeners"]
        assert ("https", port) in {(lst["protocol"], lst["port"]) for lst in listeners}
        assert "amqp/ssl" not in {lst["protocol"] for lst in listeners}
    finally:
        stop_stats_broker(b)


@pytest.mark.parametrize(
    "section",
    [
        "tls = true\n",  # no [tls] certfile
        '[management.ssl]\ncertfile = "/nonexistent/web.pem"\n',
    ],
    ids=["tls-without-certs", "missing-file"],
)
def test_bad_files_are_a_startup_error(tmp_path: Path, section: str) -> None:
    port = free_port()
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[management]\nhost = "127.0.0.1"\nport = {free_port()}\n{section}')
    log = tmp_path / "bad.log"
    proc = spawn(serve_args(port, 1, tmp_path / "data", cfg), log)
    assert proc.wait(timeout=60) == 16, log.read_text(errors="replace")
    text = log.read_text(errors="replace")
    assert "management" in text and "Traceback" not in text, text
