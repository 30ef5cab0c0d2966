"""A private ``shardmq serve`` with a config file, for the flow-control and limits tests.

Owns: ``OwnBroker`` (the process, its port, log and processes: supervisor and workers),
``start_own`` (write the TOML, start, wait until it answers AMQP; optionally under a
lower RLIMIT_NOFILE), ``rss`` (resident bytes of a pid from /proc/<pid>/status) and
``connect_on_worker`` (a pika connection landed on a given worker).

Invariants: the broker listens on 127.0.0.1 only; teardown is SIGTERM then SIGKILL of
its session; every wait is bounded.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika

from tests.support.launch import REPO_ROOT, serve_args, spawn, terminate, wait_answering
from tests.support.ports import free_port
from tests.support.procs import descendants


@dataclass
class OwnBroker:
    proc: subprocess.Popen[bytes]
    port: int
    workers: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pids(self) -> list[int]:
        """The supervisor (or the one process) and its workers."""
        return [self.proc.pid, *descendants(self.proc.pid)]

    def rss(self) -> int:
        """Resident bytes of every broker process together."""
        return sum(rss(p) for p in self.pids())

    def params(self, **kw: Any) -> pika.ConnectionParameters:
        kw.setdefault("socket_timeout", 10)
        kw.setdefault("blocked_connection_timeout", 60)
        return pika.ConnectionParameters(
            host="127.0.0.1",
            port=self.port,
            credentials=pika.PlainCredentials("guest", "guest"),
            **kw,
        )

    def connect(self, **kw: Any) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(**kw))

    def stop(self) -> int:
        return terminate(self.proc, 15)


def rss(pid: int) -> int:
    """VmRSS of ``pid`` in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def start_own(
    tmp: Path,
    workers: int,
    settings: dict[str, dict[str, object]] | None = None,
    *,
    nofile: int | tuple[int, int] | None = None,
    env: dict[str, str] | None = None,
) -> OwnBroker:
    """Start ``shardmq serve`` with ``settings`` ({section: {key: value}}); with
    ``nofile`` (one limit, or soft and hard), its RLIMIT_NOFILE is lowered to that first;
    ``env``: its environment (default: this process's)."""
    port = free_port()
    data_dir = tmp / f"data-{port}"
    cfg = tmp / f"shardmq-{port}.toml"
    lines: list[str] = []
    for section, values in (settings or {}).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    cfg.write_text("\n".join(lines) + "\n")
    log_path = tmp / f"broker-{port}.log"
    args = serve_args(port, workers, data_dir, cfg)
    if nofile is not None:
        # python -m tests.process.ownbroker NOFILE -- args: lowers the limit, then execs
        soft, hard = nofile if isinstance(nofile, tuple) else (nofile, nofile)
        args = ["tests.process.ownbroker", f"{soft}:{hard}", "--", sys.executable, "-m", *args]
    proc = spawn(args, log_path, env=env)
    b = OwnBroker(proc=proc, port=port, workers=workers, log_path=log_path)
    wait_answering(proc, port, b.log, b.stop)
    return b


def connect_on_worker(b: OwnBroker, slot: int, tries: int = 60) -> pika.BlockingConnection:
    """A pika connection served by worker ``slot`` (the kernel spreads new connections
    over the workers' sockets: connect until one lands there)."""
    spare = []
    try:
        for _ in range(tries):
            c = b.connect()
            props = c._impl.server_properties  # type: ignore[attr-defined]
            if b.workers == 1 or props.get("worker") == slot:
                return c
            spare.append(c)
        raise AssertionError(f"no connection landed on worker {slot} in {tries} tries")
    finally:
        for c in spare:
            c.close()


if __name__ == "__main__":  # the RLIMIT_NOFILE wrapper of start_own
    import os

    soft, hard = (int(x) for x in sys.argv[1].split(":"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    cmd = sys.argv[3:]
    os.chdir(REPO_ROOT)
    os.execv(cmd[0], cmd)
