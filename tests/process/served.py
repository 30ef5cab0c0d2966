"""``shardmq serve`` as an operator runs it, for the start-up and fault tests.

Owns: ``Served`` (one ``shardmq serve`` process on 127.0.0.1: its port, data dir, log,
exit) and the ``serve`` factory fixture (every broker it started is stopped at teardown,
SIGKILL of its session if it hangs), ``write_config`` (a TOML file with the sections a
test sets) and ``startup_lines`` (the CRITICAL lines a failed start logged).

Invariants: a broker counts as ready once its log says "shardmq ready" (with N workers
the supervisor says it when every worker is) and it answers AMQP on its port; every wait
is bounded; nothing is asserted here about how fast anything was.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.support.launch import serve_args, spawn, terminate
from tests.support.ports import free_port
from tests.support.probe import amqp_answers
from tests.support.procs import descendants, wait_for

READY_TIMEOUT = 30.0


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A TOML config with ``sections`` ({"server": {...}, "supervisor": {...}})."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, bool):
                lines.append(f"{key} = {str(value).lower()}")
            else:
                lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    workers: int
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited {self.proc.returncode}:\n{self.log()}")
            return "shardmq ready" in self.log() and amqp_answers(self.port)

        wait_for(ready, timeout, f"broker on port {self.port} ready", self.log)

    def wait_exit(self, timeout: float = READY_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"broker did not exit within {timeout} s:\n{self.log()}") from None

    def worker_pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def connect(self, **kw: Any) -> pika.BlockingConnection:
        kw.setdefault("connection_attempts", 3)
        kw.setdefault("retry_delay", 0.5)
        kw.setdefault("socket_timeout", 5)
        return pika.BlockingConnection(
            pika.ConnectionParameters(
                host="127.0.0.1",
                port=self.port,
                credentials=pika.PlainCredentials("guest", "guest"),
                **kw,
            )
        )


def startup_lines(log: str) -> list[str]:
    """The lines a failed start-up logged at CRITICAL."""
    return [line for line in log.splitlines() if " CRITICAL " in line]


ServeFactory = Callable[..., Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    """``serve(workers, port=None, data_dir=None, config=None, env=None, prefix=())``:
    start ``shardmq serve`` (a free port and ``tmp_path/data`` unless given; ``config``
    is a dict of TOML sections; ``prefix`` a command run before python, e.g. setpriv)."""
    started: list[Served] = []
    count = 0

    def make(
        workers: int,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        config: dict[str, dict[str, Any]] | None = None,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> Served:
        nonlocal count
        count += 1
        port = port or free_port()
        data_dir = data_dir or tmp_path / "data"
        config_path = None
        if config:
            config_path = write_config(tmp_path / f"shardmq-{count}.toml", config)
        environ = dict(os.environ if env is None else env)
        environ.setdefault("PYTHONPATH", "")
        if env is None:
            environ.pop("NOTIFY_SOCKET", None)
        log_path = tmp_path / f"serve-{count}.log"
        args = serve_args(port, workers, data_dir, config_path)
        if prefix:
            proc = _spawn_with_prefix(prefix, args, log_path, environ)
        else:
            proc = spawn(args, log_path, env=environ)
        served = Served(proc, port, workers, data_dir, log_path)
        started.append(served)
        return served

    try:
        yield make
    finally:
        for served in started:
            kids = descendants(served.proc.pid) if served.proc.poll() is None else []
            terminate(served.proc, 15)
            for pid in kids:  # workers must not outlive a test
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _spawn_with_prefix(
    prefix: tuple[str, ...], args: list[str], log_path: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    import sys

    from tests.support.launch import REPO_ROOT

    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
