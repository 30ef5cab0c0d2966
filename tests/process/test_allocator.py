"""``[server] allocator``: every process of a real broker runs under the chosen memory
allocator (``shardmq.allocator``), applied by ``serve`` starting itself again with the
same pid, and a ``PYTHONMALLOC`` in the environment wins; on 1 and 3 workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.process.ownbroker import start_own


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
    return {k: v for k, _, v in pairs}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}


@pytest.mark.parametrize("workers", [1, 3])
def test_default_is_malloc_in_every_process_same_pid(tmp_path: Path, workers: int) -> None:
    b = start_own(tmp_path, workers, env=_clean_env())
    try:
        pids = b.pids()
        assert len(pids) == (1 if workers == 1 else 1 + workers)
        # the process the test started is the broker (exec, not a child): its pid is
        # the supervisor's, as systemd's MAINPID must be
        assert pids[0] == b.proc.pid
        for pid in pids:
            assert _environ(pid).get("PYTHONMALLOC") == "malloc", pid
        assert b.log().count("memory allocator: malloc") == 1
        c = b.connect()
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x")
        assert ch.basic_get(q, auto_ack=True)[2] == b"x"
        c.close()
    finally:
        assert b.stop() == 0
    assert "Traceback" not in b.log()


@pytest.mark.parametrize("workers", [1, 3])
def test_pymalloc_when_configured(tmp_path: Path, workers: int) -> None:
    b = start_own(tmp_path, workers, {"server": {"allocator": "pymalloc"}}, env=_clean_env())
    try:
        for pid in b.pids():
            assert "PYTHONMALLOC" not in _environ(pid), pid
        assert "memory allocator: pymalloc" in b.log()
    finally:
        assert b.stop() == 0


def test_the_environment_wins(tmp_path: Path) -> None:
    env = dict(_clean_env(), PYTHONMALLOC="pymalloc")
    b = start_own(tmp_path, 1, env=env)
    try:
        assert "memory allocator: pymalloc (PYTHONMALLOC=pymalloc in the environment wins)" in (
            b.log()
        )
    finally:
        assert b.stop() == 0
