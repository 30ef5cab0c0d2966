"""Durability-test fixtures: a real ``shardmq serve`` that can be restarted on its data dir.

Owns: ``DurableBroker`` (start / SIGTERM stop / kill -9 / restart on the same port and
data dir, optional ``[store]`` settings written to a TOML config) and the ``durable``
fixture (one per test, private data dir).

Invariants: the broker is one worker (``--workers 1``, unless asked for more) listening
on 127.0.0.1, in its own session (started by ``tests.support.launch``); kill -9 takes
its worker processes too; it counts as up once it answers the AMQP protocol header;
every start appends to the same log file, and at teardown the log must hold no
traceback and every clean stop must have exited 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.support.launch import serve_args, spawn, wait_answering
from tests.support.ports import free_port
from tests.support.procs import descendants, running

STOP_TIMEOUT = 10.0


class DurableBroker:
    def __init__(self, root: Path, store: dict[str, Any] | None = None, workers: int = 1) -> None:
        self.root = root
        self.workers = workers
        self.data_dir = root / "data"
        self.log_path = root / "broker.log"
        self.port = free_port()
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
        args = serve_args(self.port, self.workers, self.data_dir, self.config_path)
        self.process = spawn(args, self.log_path, append=True)
        wait_answering(self.process, self.port, self.log, self.kill)

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
        """kill -9 of the broker and all its worker processes at once (no chance to
        flush anything); returns once none of them is running any more."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            pids = [proc.pid, *descendants(proc.pid)]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            deadline = time.monotonic() + STOP_TIMEOUT
            while any(running(pid) for pid in pids[1:]):
                assert time.monotonic() < deadline, "worker processes survived SIGKILL"
                time.sleep(0.01)

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
