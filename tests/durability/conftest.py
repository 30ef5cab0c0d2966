"""Durability-test fixtures: a real ``shardmq serve`` that can be restarted on its data dir.

Owns: ``DurableBroker`` (start / SIGTERM stop / kill -9 / restart on the same port and
data dir, optional ``[store]`` settings written to a TOML config) and the ``durable``
fixture (one per test, private data dir).

Invariants: the broker is one worker (``--workers 1``, unless asked for more) listening
on 127.0.0.1, in its own process group (kill -9 takes its workers too); it counts
as up once a TCP connect succeeds; every start appends to the same log file, and at
teardown the log must hold no traceback and every clean stop must have exited 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DurableBroker:
    def __init__(self, root: Path, store: dict[str, Any] | None = None, workers: int = 1) -> None:
        self.root = root
        self.workers = workers
        self.data_dir = root / "data"
        self.log_path = root / "broker.log"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self.config_path: Path | None = None
        if store:
            self.config_path = root / "shardmq.toml"
            lines = ["[store]"] + [f"{k} = {_toml(v)}" for k, v in store.items()]
            self.config_path.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------ process
    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "shardmq", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", str(self.workers)]
        cmd += ["--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"broker did not start:\n{self.log()}") from None
                time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM and wait (clean shutdown); returns the exit code."""
        proc = self.process
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"broker did not stop on SIGTERM:\n{self.log()}") from None
        self.exit_codes.append(proc.returncode)
        return proc.returncode

    def kill(self) -> None:
        """kill -9 (the whole process group: supervisor and workers): no chance to flush
        anything."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self, *, kill: bool = False) -> None:
        if kill:
            self.kill()
        else:
            assert self.stop() == 0, self.log()[-3000:]
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------ clients
    def params(self, **kw: Any) -> pika.ConnectionParameters:
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("blocked_connection_timeout", 20)
        return pika.ConnectionParameters(host="127.0.0.1", port=self.port, **kw)

    def connect(self, **kw: Any) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(**kw))

    def queue_dirs(self, *, deleted: bool = False) -> list[str]:
        """Queue store directories (``deleted``: also those of deleted queues still
        being removed in the background)."""
        root = self.data_dir / "queues"
        names = sorted(os.listdir(root)) if root.exists() else []
        return [n for n in names if deleted or ".deleted-" not in n]


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


@pytest.fixture
def make_durable(tmp_path: Path) -> Iterator[Any]:
    """``make_durable(workers=1, **store_settings)`` -> a started ``DurableBroker``."""
    started: list[DurableBroker] = []

    def make(workers: int = 1, **store: Any) -> DurableBroker:
        root = tmp_path / f"broker{len(started)}"
        root.mkdir()
        b = DurableBroker(root, store or None, workers)
        started.append(b)
        b.start()
        return b

    yield make
    for b in started:
        if b.process is not None and b.process.poll() is None:
            b.stop()
        log = b.log()
        assert "Traceback" not in log and "INTERNAL_ERROR" not in log, log[-5000:]
        assert all(code == 0 for code in b.exit_codes), (b.exit_codes, log[-3000:])


@pytest.fixture
def durable(make_durable: Any) -> DurableBroker:
    return make_durable()
