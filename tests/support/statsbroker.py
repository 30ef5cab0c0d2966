"""A broker for the statistics tests: ``shardmq serve`` with its management API and its
Prometheus metrics on free ports of 127.0.0.1 (``start_stats_broker``), or the
management API at ``$SHARDMQ_TEST_MGMT_URL`` (a local RabbitMQ's, with
``$SHARDMQ_TEST_URI`` for its AMQP port) for the checks RabbitMQ answers the same.

Invariants: only 127.0.0.1 is contacted; ``wait_for`` is the one way to wait for a
count (a bounded poll; RabbitMQ's statistics lag up to 5 s, shardmq's report what the
workers say when asked), never a timing assertion.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika

from tests.support.launch import serve_args, spawn, terminate, wait_answering
from tests.support.ports import free_port

AUTH = ("guest", "guest")
EXTERNAL_MGMT = os.environ.get("SHARDMQ_TEST_MGMT_URL")


@dataclass
class StatsBroker:
    mgmt_url: str  # http://127.0.0.1:PORT
    amqp_port: int
    metrics_url: str | None  # http://127.0.0.1:PORT (None: external)
    workers: int | None  # None: an external broker
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def api(self, path: str) -> Any:
        import requests  # not at collection: locust's gevent patches ssl then

        r = requests.get(self.mgmt_url + path, auth=AUTH, timeout=30)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def metrics(self, path: str = "/metrics") -> str:
        import requests

        assert self.metrics_url is not None
        r = requests.get(self.metrics_url + path, timeout=30)
        assert r.status_code == 200, (path, r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.text

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(
            pika.ConnectionParameters(
                "127.0.0.1", self.amqp_port, credentials=pika.PlainCredentials(*AUTH)
            )
        )


def start_stats_broker(tmp: Path, workers: int, extra: str = "", mgmt: str = "") -> StatsBroker:
    """``extra``: more config sections; ``mgmt``: more ``[management]`` keys."""
    port, mport, pport = free_port(), free_port(), free_port()
    cfg = tmp / f"stats-{port}.toml"
    cfg.write_text(
        f'[management]\nhost = "127.0.0.1"\nport = {mport}\n{mgmt}'
        f'[prometheus]\nhost = "127.0.0.1"\nport = {pport}\n{extra}'
    )
    log = tmp / f"stats-{port}.log"
    proc = spawn(serve_args(port, workers, tmp / f"data-{port}", cfg), log)
    wait_answering(proc, port, lambda: log.read_text(errors="replace"), lambda: terminate(proc, 10))
    return StatsBroker(
        f"http://127.0.0.1:{mport}", port, f"http://127.0.0.1:{pport}", workers, proc, log
    )


def external_broker() -> StatsBroker:
    assert EXTERNAL_MGMT is not None
    assert urlsplit(EXTERNAL_MGMT).hostname == "127.0.0.1", "must point at 127.0.0.1"
    amqp = urlsplit(os.environ.get("SHARDMQ_TEST_URI", "amqp://127.0.0.1:5672/")).port or 5672
    return StatsBroker(EXTERNAL_MGMT.rstrip("/"), amqp, None, None)


def stop_stats_broker(b: StatsBroker) -> None:
    if b.proc is not None:
        code = terminate(b.proc, 20)
        assert code == 0, b.log.read_text(errors="replace") if b.log else ""


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``check()`` once it is truthy, or its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)
