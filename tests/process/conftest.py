"""Process-level fixtures: a real supervisor (``python -m workers.supervisor``) with N
workers on a free 127.0.0.1 port and its own data dir.

Owns: ``Sup`` (the running supervisor: port, data dir, log, worker status from shared
memory) and the ``supervisor`` factory fixture. Teardown is SIGTERM, then SIGKILL of the
supervisor's session if it hangs (workers die with it: parent-death signal).

Invariants: every wait is bounded (``tests.support.procs.wait_for`` raises with the log
attached); tests assert on behaviour, never on how fast it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest

from shardmq.ipc.mesh import INSTANCE_FILE, unlink_instance
from tests.support.launch import spawn, terminate
from tests.support.ports import free_port
from tests.support.procs import running, wait_for
from workers.status import WorkerStatus, read_workers

BOOT_TIMEOUT = 20.0


@dataclass
class Sup:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    workers: int
    instances: set[str] = field(default_factory=set)  # shm instances seen (for cleanup)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> list[WorkerStatus]:
        inst = self.data_dir / INSTANCE_FILE
        try:
            self.instances.add(inst.read_text().split()[0])
        except (OSError, IndexError):
            pass
        return read_workers(str(self.data_dir)) or []

    def pids(self) -> list[int]:
        return [w.pid for w in self.status()]

    def all_ready(self) -> list[WorkerStatus] | None:
        st = self.status()
        if len(st) == self.workers and all(w.ready and w.pid and running(w.pid) for w in st):
            return st
        return None

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> list[WorkerStatus]:
        def check() -> list[WorkerStatus] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited {self.proc.returncode}:\n{self.log()}")
            return self.all_ready()

        return wait_for(check, timeout, "all workers ready", self.log)

    def params(self, **kw: Any) -> pika.ConnectionParameters:
        kw.setdefault("connection_attempts", 3)
        kw.setdefault("retry_delay", 0.5)
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("blocked_connection_timeout", 10)
        return pika.ConnectionParameters(
            host="127.0.0.1",
            port=self.port,
            credentials=pika.PlainCredentials("guest", "guest"),
            **kw,
        )

    def connect(self, **kw: Any) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(**kw))

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"supervisor did not exit within {timeout} s:\n{self.log()}"
            ) from None


def start_supervisor(
    tmp: Path, workers: int, settings: dict[str, Any] | None = None, *, data_dir: Path | None = None
) -> Sup:
    port = free_port()
    data_dir = data_dir or tmp / "data"
    log_path = tmp / f"supervisor-{port}.log"
    settings = {"stall_timeout": 3.0, "heartbeat_interval": 0.2, **(settings or {})}
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    args = ["workers.supervisor", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--workers", str(workers), "--data-dir", str(data_dir)]
    args += ["--supervisor-json", json.dumps(settings)]
    proc = spawn(args, log_path, env=env)
    return Sup(proc=proc, port=port, data_dir=data_dir, log_path=log_path, workers=workers)


def stop_supervisor(sup: Sup) -> None:
    terminate(sup.proc, 15)
    # workers must not outlive the supervisor
    for w in read_workers(str(sup.data_dir)) or []:
        if w.pid:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Callable[..., Sup]]:
    started: list[Sup] = []

    def make(workers: int = 3, settings: dict[str, Any] | None = None, **kw: Any) -> Sup:
        sup = start_supervisor(tmp_path, workers, settings, **kw)
        started.append(sup)
        return sup

    try:
        yield make
    finally:
        for sup in started:
            stop_supervisor(sup)
        # a failed test must not leak shared memory (a clean stop leaves nothing)
        for sup in started:
            for inst in sup.instances:
                unlink_instance(inst)
