"""``loadtest.optrace``: the bytecode counter toggled by SIGUSR2 counts the work done
between the two signals, per function, and the same work gives the same count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_BUSY = """
import os, signal

def work(n):
    total = 0
    for i in range(n):
        total += i
    return total

def outside(n):
    return work(n)

outside(500)  # before the first signal: not counted
os.kill(os.getpid(), signal.SIGUSR2)  # counting on
work({n})
os.kill(os.getpid(), signal.SIGUSR2)  # off: the dump
outside(500)  # after: not counted
"""


def _count(tmp_path: Path, n: int) -> dict[str, int]:
    (tmp_path / f"busy{n}.py").write_text(_BUSY.format(n=n))
    out = tmp_path / f"trace{n}"
    env = dict(os.environ, OPTRACE_OUT=str(out))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    subprocess.run(
        [sys.executable, "-m", "loadtest.optrace", "-m", f"busy{n}"],
        env=env,
        check=True,
        timeout=60,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    counts: dict[str, int] = {}
    for line in Path(f"{out}.1").read_text().splitlines():
        _, name, count = line.rsplit(" ", 2)
        counts[name] = counts.get(name, 0) + int(count)
    return counts


@pytest.mark.skipif(sys.platform != "linux", reason="SIGUSR2 to itself")
def test_counts_only_between_the_signals_and_in_proportion(tmp_path: Path) -> None:
    small, large = _count(tmp_path, 1000), _count(tmp_path, 3000)
    assert "outside" not in small and "outside" not in large
    # a loop iteration is a fixed number of bytecodes: the same work, the same count
    per_iteration = (large["work"] - small["work"]) / 2000
    assert per_iteration == int(per_iteration) and per_iteration >= 3
    assert small["work"] >= 1000 * per_iteration
