"""Integration-test fixtures: one real broker per worker count, or an external one.

Owns: the ``broker`` fixture and the ``broker_factory`` fixture (for tests that must own
the broker process, e.g. SIGTERM). With ``SHARDMQ_TEST_URI`` set (say
``amqp://guest:guest@127.0.0.1:5672/``), every test talks to that broker instead, which is
how the suite is validated against RabbitMQ, the reference for correct behaviour.

Invariants: a started broker is ``python -m shardmq serve`` on a free 127.0.0.1 port with
its own temporary data dir (``tests.support.launch``); it is considered up only once it
answers the AMQP protocol header (15 s limit, its log is included in the error
otherwise); teardown is SIGTERM, then SIGKILL of its session if it hangs. Tests never
share queue or exchange names (see ``helpers.unique``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pika
import pytest

from tests.support.launch import serve_args, spawn, terminate, wait_answering
from tests.support.ports import free_port

from .helpers import Env

# Every test runs once per worker count (becomes [1, 3] with the sharding work).
WORKER_COUNTS: list[int] = [1, 3]

EXTERNAL_URI: str | None = os.environ.get("SHARDMQ_TEST_URI") or None
STOP_TIMEOUT = 10.0


@dataclass
class Broker:
    """Where a broker listens and how to reach it; ``process`` is None when external."""

    host: str
    port: int
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    process: subprocess.Popen[bytes] | None = None
    workers: int | None = None
    data_dir: Path | None = None
    log_path: Path | None = None
    startup_seconds: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(self.vhost, safe='')}"
        )

    @property
    def external(self) -> bool:
        return self.process is None

    def pika_params(self, **kw: object) -> pika.ConnectionParameters:
        kw.setdefault("credentials", pika.PlainCredentials(self.user, self.password))
        kw.setdefault("virtual_host", self.vhost)
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("blocked_connection_timeout", 10)
        return pika.ConnectionParameters(host=self.host, port=self.port, **kw)  # type: ignore[arg-type]

    def blocking(self, **kw: object) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.pika_params(**kw))

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def _parse_external(uri: str) -> Broker:
    parts = urlsplit(uri)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise pytest.UsageError("SHARDMQ_TEST_URI must point at 127.0.0.1")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return Broker(
        host="127.0.0.1",
        port=parts.port or 5672,
        user=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        vhost=vhost,
    )


def start_broker(workers: int, data_dir: Path) -> Broker:
    """Start ``shardmq serve`` and return once it answers AMQP."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    started = time.monotonic()
    proc = spawn(serve_args(port, workers, data_dir), log_path)
    broker = Broker(
        host="127.0.0.1",
        port=port,
        process=proc,
        workers=workers,
        data_dir=data_dir,
        log_path=log_path,
    )
    wait_answering(proc, port, broker.log_text, lambda: stop_broker(broker))
    broker.startup_seconds = time.monotonic() - started
    return broker


def stop_broker(broker: Broker) -> int | None:
    """SIGTERM, wait, SIGKILL if it hangs; returns the exit code."""
    if broker.process is None:
        return None
    return terminate(broker.process, STOP_TIMEOUT)


def _broker_params() -> list[object]:
    if EXTERNAL_URI:
        return [pytest.param(None, id="external")]
    return [pytest.param(n, id=f"workers{n}") for n in WORKER_COUNTS]


@pytest.fixture(scope="session", params=_broker_params())
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    """A running broker shared by the session, one per worker count."""
    if EXTERNAL_URI:
        yield _parse_external(EXTERNAL_URI)
        return
    workers: int = request.param
    b = start_broker(workers, tmp_path_factory.mktemp(f"shardmq-w{workers}") / "data")
    try:
        yield b
    finally:
        code = stop_broker(b)
    # Bad client input must never surface as a broker bug: no traceback, no 541, exit 0.
    log = b.log_text()
    assert "Traceback" not in log and "INTERNAL_ERROR" not in log, log[-5000:]
    assert code == 0, f"broker exited with {code}:\n{log[-3000:]}"


@pytest.fixture(params=_broker_params())
def broker_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], Broker]]:
    """Start private broker processes for tests that signal or kill them.

    Skipped only when an external broker is used (we must not touch its process).
    """
    if EXTERNAL_URI:
        pytest.skip("needs control of the broker process; SHARDMQ_TEST_URI is set")
    workers: int = request.param
    started: list[Broker] = []

    def make() -> Broker:
        b = start_broker(workers, tmp_path_factory.mktemp(f"shardmq-own-w{workers}") / "data")
        started.append(b)
        return b

    try:
        yield make
    finally:
        for b in started:
            stop_broker(b)


@pytest.fixture
def env(broker: Broker) -> Iterator[Env]:
    """Unique names, tracked clients, and cleanup of everything the test declared."""
    e = Env(broker)
    try:
        yield e
    finally:
        e.cleanup()
