"""Randomized crash test at the store level: a child process publishes, consumes, acks
and requeues with fsync=always and reports what became durable, delivered and acked;
it is SIGKILLed at random moments several times. After each restart:

- what comes back is in publish order, nothing twice;
- every publish reported durable and never reported acked is back;
- nothing reported acked is back (acks are written before they are reported, and a
  kill -9 does not lose the page cache);
- everything reported delivered (and not acked) comes back with redelivered=true.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_child(path: str, first_id: int, seed: int, run_for: float) -> list[list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_child", path, str(first_id), str(seed)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    out = bytearray()
    deadline = None
    os.set_blocking(proc.stdout.fileno(), False)
    while True:
        try:
            chunk = proc.stdout.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            out += chunk
        if deadline is None and b"READY\n" in out:
            deadline = time.monotonic() + run_for
        if deadline is not None and time.monotonic() >= deadline:
            break
        if proc.poll() is not None:
            raise AssertionError(f"child died on its own: {proc.returncode}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    os.set_blocking(proc.stdout.fileno(), True)
    out += proc.stdout.read()
    text = out.decode()
    complete = text[: text.rfind("\n") + 1]  # a line cut by the kill is not a fact
    return [line.split() for line in complete.splitlines()]


def test_random_kill_9_keeps_every_durable_unacked_publish(tmp_path) -> None:
    rnd = random.Random(20240607)
    path = str(tmp_path / "queue")
    must: set[int] = set()  # durable, or recovered earlier, and not acked since
    acked: set[int] = set()
    delivered: set[int] = set()
    next_id = 1
    total_durable = 0
    kills = 6
    for run in range(kills + 1):
        facts = run_child(path, next_id, rnd.randrange(1 << 30), rnd.uniform(0.15, 0.6))
        recovered = [(int(f[1]), f[2] == "1") for f in facts if f[0] == "R"]
        ids = [i for i, _ in recovered]
        assert ids == sorted(set(ids)), f"run {run}: out of order or duplicated"
        back = set(ids)
        missing = must - back
        assert not missing, f"run {run}: durable messages lost: {sorted(missing)[:10]}"
        resurrected = acked & back
        assert not resurrected, f"run {run}: acked messages back: {sorted(resurrected)[:10]}"
        not_flagged = [i for i, red in recovered if i in delivered and not red]
        assert not not_flagged, f"run {run}: redelivered flag missing on {not_flagged[:10]}"
        if run == kills:
            break
        # this run's facts, in order
        durable = {int(f[1]) for f in facts if f[0] == "D"}
        maybe_acked = {int(f[1]) for f in facts if f[0] == "a"}
        acked |= {int(f[1]) for f in facts if f[0] == "A"}
        delivered = back | {int(f[1]) for f in facts if f[0] == "T"}  # R ones were taken too
        must = (back | durable) - maybe_acked  # (an ack can come before the fsync's D)
        total_durable += len(durable)
        ids_seen = [int(f[1]) for f in facts if f[0] in ("D", "T", "A", "R")]
        next_id = max([next_id, *ids_seen]) + 1  # (the child also skips what it recovers)
    assert total_durable > 1000  # the children really did work
    assert acked  # and consumed
