"""The locks ``workers.startup`` takes, in one process: the data dir lock and the port
claim refuse a second holder at once while the first holder lives, and wait for the
holders a dead supervisor left (its workers) instead of refusing or sharing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.procs import running
from workers.exitcodes import ExitCode
from workers.startup import LOCK_FILE, StartupError, claim_port, lock_data_dir

pytestmark = pytest.mark.timeout(60)


def test_data_dir_lock_is_exclusive(tmp_path: Path) -> None:
    first = lock_data_dir(str(tmp_path / "d"))
    try:
        with pytest.raises(StartupError) as info:
            lock_data_dir(str(tmp_path / "d"))
        assert info.value.code == ExitCode.DATA_DIR_IN_USE
        assert f"(pid {os.getpid()})" in str(info.value)
    finally:
        first.release()
    lock_data_dir(str(tmp_path / "d")).release()  # free again once released


def test_data_dir_lock_waits_for_the_orphans_of_a_dead_supervisor(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    # a dead pid: a process that ran and was reaped
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    assert not running(dead_pid)
    # the orphan: holds the flock, with the dead supervisor's pid in the file, a while
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, os, sys, time
                fd = os.open({str(data / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.pwrite(fd, b"{dead_pid}\\n", 0)
                print("locked", flush=True)
                time.sleep(1.0)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert holder.poll() is None
        lock = lock_data_dir(str(data))  # waits for the orphan instead of refusing
        assert holder.poll() is not None
        assert (data / LOCK_FILE).read_text().split() == [str(os.getpid())]
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_port_claim_is_exclusive_whatever_the_address() -> None:
    port = free_port()
    first = claim_port("127.0.0.1", port)
    try:
        # the lock names the port only: another address on this host is refused too
        for host in ("127.0.0.1", "0.0.0.0", "127.0.0.2"):
            with pytest.raises(StartupError) as info:
                claim_port(host, port)
            assert info.value.code == ExitCode.PORT_IN_USE
            assert f"port {port} is in use by another running shardmq" in str(info.value)
    finally:
        first.release()
    claim_port("127.0.0.1", port).release()


def test_port_claim_sees_a_listener_of_another_program() -> None:
    port = free_port()
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("0.0.0.0", port))
        other.listen(1)
        with pytest.raises(StartupError) as info:
            claim_port("127.0.0.1", port)
        assert info.value.code == ExitCode.PORT_IN_USE
        assert "another program listens on 127.0.0.1" in str(info.value)
    claim_port("127.0.0.1", port).release()
