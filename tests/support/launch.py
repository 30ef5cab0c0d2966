"""Start the broker of this tree as a process, the way the fixtures do.

Owns: ``REPO_ROOT``, ``spawn`` (``python -m ...`` from this tree: cwd and PYTHONPATH on
it, stdout and stderr to a log file, its own session so a hung broker and its workers
can be killed as a group), ``serve_args`` (``shardmq serve`` on 127.0.0.1) and
``wait_answering`` (until the broker answers the AMQP protocol header) and ``terminate``
(SIGTERM, then SIGKILL of its session if it hangs).

Invariants: a broker only ever listens on 127.0.0.1; it counts as up only once it
answers AMQP (``probe.amqp_answers``), never on a bare TCP connect; every wait is bounded
and a broker that exits or times out raises ``RuntimeError`` with its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.probe import amqp_answers

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0


def spawn(
    args: list[str],
    log_path: Path,
    *,
    append: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m <args>`` run from this tree, its output in ``log_path`` (appended to
    when ``append``), in a new session."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def serve_args(
    port: int, workers: int, data_dir: Path, config_path: Path | None = None
) -> list[str]:
    """``shardmq serve`` on 127.0.0.1:``port`` (for ``spawn``)."""
    args = ["shardmq", "serve", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--workers", str(workers), "--data-dir", str(data_dir)]
    if config_path is not None:
        args += ["--config", str(config_path)]
    return args


def wait_answering(
    proc: subprocess.Popen[bytes],
    port: int,
    log: Callable[[], str],
    on_timeout: Callable[[], object],
    timeout: float = START_TIMEOUT,
) -> None:
    """Return once the broker ``proc`` answers AMQP on ``port``; ``RuntimeError`` with
    its log when it exits first, or (after ``on_timeout()``) when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"shardmq serve exited with {proc.returncode} before accepting connections:\n"
                f"{log()}"
            )
        if amqp_answers(port):
            return
        if time.monotonic() > deadline:
            on_timeout()
            raise RuntimeError(
                f"shardmq serve did not accept connections within {timeout} s:\n{log()}"
            )
        time.sleep(0.02)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM ``proc`` and wait ``timeout`` seconds; if it hangs, SIGKILL its session
    (the process group ``spawn`` made: its worker children too). Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout)
    return proc.returncode
