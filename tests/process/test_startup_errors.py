"""Start-up errors of ``shardmq serve``: one line (what, where, what to do), its own exit
code, never a traceback, and systemd never told READY=1 (``workers.startup``).

Owns: a data dir path that is a file (or has a file above it), an unwritable data dir
(run without CAP_DAC_OVERRIDE when the tests run as root), a data dir under /proc, an
address that is not this host's; each with 1 and 2 workers where the path differs; the
sd_notify exchange of a failed start (STATUS with the error, no READY=1) and of a good
one (READY=1 only once the port answers AMQP). The port cases are in
``test_one_broker.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.probe import amqp_answers
from workers.exitcodes import ExitCode
from workers.startup import StartupError, claim_port

from .served import Served, ServeFactory, serve, startup_lines

__all__ = ["serve"]

pytestmark = pytest.mark.timeout(120)


def failed(broker: Served, code: ExitCode, *texts: str) -> str:
    got = broker.wait_exit(20)
    log = broker.log()
    assert got == code, f"exit {got}, expected {code.value}:\n{log}"
    lines = startup_lines(log)
    assert len(lines) == 1, log
    for text in texts:
        assert text in lines[0], log
    assert "Traceback" not in log and "shardmq ready" not in log, log
    return lines[0]


def test_exit_codes_are_distinct() -> None:
    codes = [c.value for c in ExitCode]
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize("workers", [1, 2])
def test_data_dir_that_is_a_file(serve: ServeFactory, tmp_path: Path, workers: int) -> None:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    line = failed(
        serve(workers, data_dir=path),
        ExitCode.DATA_DIR_NOT_A_DIRECTORY,
        f"data dir {path} is not a directory",
        "--data-dir",
    )
    assert "FileExistsError" not in line
    below = path / "queues"
    failed(
        serve(workers, data_dir=below),
        ExitCode.DATA_DIR_NOT_A_DIRECTORY,
        f"data dir {below} is not a directory",
    )


def _without_write_access() -> tuple[str, ...]:
    """A command prefix under which this process's user cannot write a 0555 directory
    it owns (root: drop CAP_DAC_OVERRIDE; others need nothing)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


@pytest.mark.parametrize("workers", [1, 2])
def test_unwritable_data_dir(serve: ServeFactory, read_only_dir: Path, workers: int) -> None:
    prefix = _without_write_access()
    # the dir itself, and one it would have to create inside it
    for path in (read_only_dir, read_only_dir / "data"):
        line = failed(
            serve(workers, data_dir=path, prefix=prefix),
            ExitCode.DATA_DIR_NOT_WRITABLE,
            f"data dir {path} is not writable",
            "permission denied",
            "--data-dir",
        )
        assert "PermissionError" not in line


@pytest.mark.parametrize("path", ["/proc/shardmq-data", "/proc/self", "/sys/kernel/shardmq"])
def test_data_dir_on_a_pseudo_filesystem(serve: ServeFactory, path: str) -> None:
    failed(
        serve(1, data_dir=Path(path)),
        ExitCode.DATA_DIR_UNUSABLE,
        f"data dir {path} is on ",
        "cannot hold data",
        "--data-dir",
    )


def test_address_not_of_this_host() -> None:
    port = free_port()
    with pytest.raises(StartupError) as info:
        claim_port("192.0.2.1", port)  # TEST-NET-1: never this host's
    assert info.value.code == ExitCode.LISTEN_FAILED
    assert str(info.value).startswith(f"cannot listen on 192.0.2.1:{port}: 192.0.2.1 is not")
    with pytest.raises(StartupError) as info:
        claim_port("no-such-host.invalid", port)
    assert info.value.code == ExitCode.LISTEN_FAILED
    assert "does not resolve" in str(info.value)


# ------------------------------------------------------------------------- systemd


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    try:
        yield sock, path
    finally:
        sock.close()


def _messages(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


@pytest.mark.parametrize("workers", [1, 2])
def test_failed_start_never_tells_systemd_ready(
    serve: ServeFactory,
    tmp_path: Path,
    notify_socket: tuple[socket.socket, str],
    workers: int,
) -> None:
    sock, path = notify_socket
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    env = dict(os.environ, NOTIFY_SOCKET=path)
    broker = serve(workers, data_dir=blocker, env=env)
    failed(broker, ExitCode.DATA_DIR_NOT_A_DIRECTORY)
    messages = _messages(sock)
    assert not any("READY=1" in m for m in messages), messages
    assert any(m.startswith("STATUS=cannot start: data dir") for m in messages), messages


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_only_once_the_port_answers(
    serve: ServeFactory, notify_socket: tuple[socket.socket, str], workers: int
) -> None:
    sock, path = notify_socket
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    broker = serve(workers, env=env)
    while True:
        message = sock.recv(4096).decode()
        if "READY=1" in message:
            break
    # at READY=1 the listener already serves AMQP and the data dir is locked
    assert amqp_answers(broker.port), broker.log()
    assert (broker.data_dir / "shardmq.lock").read_text().split() == [str(broker.proc.pid)]


def test_serve_help_lists_the_start_up_exit_codes() -> None:
    from click.testing import CliRunner

    from shardmq.cli import cli

    out = " ".join(CliRunner().invoke(cli, ["serve", "--help"]).output.split())
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    for code in ExitCode:
        if code >= 10:
            assert f"{code.value} " in out, code
            assert f"{code.value} " in readme, code
