"""One broker per port and one per data dir, in every combination of worker counts and
acceptor modes (``workers.startup``).

Owns: a second ``shardmq serve`` on the port of a running one (1 worker, 2 with
SO_REUSEPORT sockets, 2 with the hand-off acceptor, on either side, with another data
dir) exits ``PORT_IN_USE`` with one line naming the port, and the first keeps every
client; a port held by another program (plain or SO_REUSEPORT listener) is refused the
same way; a second broker on the data dir of a running one (other port, or the same
port) exits ``DATA_DIR_IN_USE`` naming the dir.

Invariants: the first broker is checked after every refused start (still the only one
answering: a durable queue declared through it is found on every new connection).
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.procs import wait_for
from workers.exitcodes import ExitCode

from .served import Served, ServeFactory, serve, startup_lines

__all__ = ["serve"]

pytestmark = pytest.mark.timeout(240)

MODES: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {
    "1-worker": (1, {}),
    "2-reuseport": (2, {"supervisor": {"acceptor": "reuseport"}}),
    "2-handoff": (2, {"supervisor": {"acceptor": "handoff"}}),
}


def refused(broker: Served, code: ExitCode, text: str) -> str:
    """Assert that ``broker`` exits ``code`` with one CRITICAL line containing ``text``
    and no traceback, having served nothing; returns that line."""
    got = broker.wait_exit(20)
    log = broker.log()
    assert got == code, f"exit {got}, expected {code.value}:\n{log}"
    lines = startup_lines(log)
    assert len(lines) == 1 and text in lines[0], log
    assert "Traceback" not in log and "shardmq ready" not in log, log
    return lines[0]


def still_the_only_broker(first: Served) -> None:
    """Every new connection reaches ``first``: a durable queue declared through one is
    there on each of 12 more (a second broker on the port would take some of them)."""
    name = f"one-broker.{uuid.uuid4().hex[:10]}"
    with first.connect() as conn:
        conn.channel().queue_declare(name, durable=True)
    for _ in range(12):
        with first.connect() as conn:
            conn.channel().queue_declare(name, passive=True)
    with first.connect() as conn:
        conn.channel().queue_delete(name)


@pytest.mark.parametrize("first_mode", list(MODES))
def test_second_broker_on_the_port_is_refused(
    serve: ServeFactory, tmp_path: Path, first_mode: str
) -> None:
    workers, config = MODES[first_mode]
    first = serve(workers, config=config, data_dir=tmp_path / "first")
    first.wait_ready()
    for mode, (n, cfg) in MODES.items():
        second = serve(n, port=first.port, config=cfg, data_dir=tmp_path / f"second-{mode}")
        line = refused(
            second, ExitCode.PORT_IN_USE, f"port {first.port} is in use by another running shardmq"
        )
        assert f"(pid {first.proc.pid})" in line
        assert "--port" in line
    assert first.proc.poll() is None
    still_the_only_broker(first)


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "reuseport"])
@pytest.mark.parametrize("workers", [1, 2])
def test_port_held_by_another_program_is_refused(
    serve: ServeFactory, workers: int, reuseport: bool
) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            # a listener that would let an SO_REUSEPORT group of the same user join it
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
        other.listen(8)
        broker = serve(workers, port=port)
        line = refused(broker, ExitCode.PORT_IN_USE, f"port {port} is in use")
        assert f"another program listens on 127.0.0.1:{port}" in line


@pytest.mark.parametrize(
    "first_workers,second_workers", [(1, 2), (2, 1), (1, 1)], ids=["1-then-2", "2-then-1", "1-1"]
)
def test_second_broker_on_the_data_dir_is_refused(
    serve: ServeFactory, tmp_path: Path, first_workers: int, second_workers: int
) -> None:
    data = tmp_path / "shared"
    first = serve(first_workers, data_dir=data)
    first.wait_ready()
    # another port, the same data dir; then the same port and data dir
    for port in (free_port(), first.port):
        second = serve(second_workers, port=port, data_dir=data)
        line = refused(
            second, ExitCode.DATA_DIR_IN_USE, f"data dir {data} is in use by another running"
        )
        assert f"(pid {first.proc.pid})" in line and "--data-dir" in line
    still_the_only_broker(first)


def test_two_brokers_started_together_one_wins(serve: ServeFactory, tmp_path: Path) -> None:
    """Started at the same moment on one port (2 workers each, SO_REUSEPORT, their own
    data dirs): exactly one serves, the other is refused (the port lock closes the
    window between one's check and its SO_REUSEPORT binds)."""
    port = free_port()
    pair = [serve(2, port=port, data_dir=tmp_path / f"together-{i}") for i in range(2)]

    def settled() -> bool:
        return any(b.proc.poll() is not None for b in pair) and any(
            "shardmq ready" in b.log() for b in pair
        )

    wait_for(settled, 30, "one broker ready and the other gone", lambda: pair[0].log())
    losers = [b for b in pair if b.proc.poll() is not None]
    winners = [b for b in pair if b.proc.poll() is None]
    assert len(losers) == 1 and len(winners) == 1, [b.log() for b in pair]
    refused(losers[0], ExitCode.PORT_IN_USE, f"port {port} is in use")
    winners[0].wait_ready()
    still_the_only_broker(winners[0])
