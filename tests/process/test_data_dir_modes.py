"""The data directory is created 0700 and the files holding password hashes (the
definitions snapshot and log) 0600; an existing data dir open to group or others gets
one warning line at start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.launch import REPO_ROOT, serve_args, spawn, terminate, wait_answering
from tests.support.ports import free_port

WARNING = "is open to its group or others"


def serve(tmp: Path, data_dir: Path, workers: int) -> tuple[subprocess.Popen[bytes], Path]:
    port = free_port()
    log = tmp / f"broker-{port}.log"
    proc = spawn(serve_args(port, workers, data_dir), log)
    wait_answering(proc, port, lambda: log.read_text(errors="replace"), lambda: terminate(proc, 15))
    return proc, log


def ctl(data_dir: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "shardmq", "ctl", "--data-dir", str(data_dir), *args]
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (res.stdout, res.stderr)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("workers", [1, 3])
def test_new_data_dir_is_private(tmp_path: Path, workers: int) -> None:
    old = os.umask(0o022)  # the usual umask: 0755 directories, 0644 files by default
    try:
        data_dir = tmp_path / "data"
        proc, log = serve(tmp_path, data_dir, workers)
    finally:
        os.umask(old)
    try:
        ctl(data_dir, "add_user", "secret-holder", "pw")
        assert mode(data_dir) == 0o700
        holding = [p for p in data_dir.iterdir() if p.name.startswith("definitions.")]
        assert holding, list(data_dir.iterdir())
        assert b"secret-holder" in b"".join(p.read_bytes() for p in holding)
        for p in holding:
            assert mode(p) == 0o600, (p, oct(mode(p)))
    finally:
        assert terminate(proc, 15) == 0
    assert WARNING not in log.read_text()


def test_open_data_dir_is_warned_about_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)
    proc, log = serve(tmp_path, data_dir, 3)
    assert terminate(proc, 15) == 0
    lines = [line for line in log.read_text().splitlines() if WARNING in line]
    assert len(lines) == 1, lines
    assert "chmod 700" in lines[0] and "0755" in lines[0]
    assert mode(data_dir) == 0o755  # warned, not changed behind the operator's back
