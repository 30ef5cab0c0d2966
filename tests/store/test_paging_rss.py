"""Bounded memory while a backlog larger than the memory budget builds up and drains:
measured as the peak RSS of a child process (not a timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import json, resource, sys
from shardmq.store.queue_store import DiskQueueStore
from shardmq.store.settings import StoreSettings
from tests.store.helpers import make

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

n, size = int(sys.argv[2]), int(sys.argv[3])
st = StoreSettings(fsync="off", segment_size=8 << 20, queue_memory_budget=2 << 20)
s = DiskQueueStore.open(sys.argv[1], settings=st)
filler = bytes(size - 8)
s.push(make(b"%08d" % 0 + filler)); s.flush(); s.ack(s.take()); s.flush()
base = peak_mib()
for i in range(1, n + 1):
    s.push(make(b"%08d" % i + filler))
    if i % 1000 == 0:
        s.flush()
s.flush()
after_push = peak_mib()
stats = s.stats()
expect = 1
while s:
    m = s.take()
    assert int(m.body[:8]) == expect, (m.body[:8], expect)
    expect += 1
    s.ack(m)
    if expect % 1000 == 0:
        s.flush()
s.flush()
print(json.dumps({"base": base, "after_push": after_push, "end": peak_mib(),
                  "drained": expect - 1, "stats": stats}))
"""


def test_backlog_of_100_mib_drains_in_order_with_bounded_rss(tmp_path) -> None:
    n, size = 100_000, 1024  # ~100 MiB of bodies, budget 2 MiB
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "q"), str(n), str(size)],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=120,
    )
    r = json.loads(out.stdout)
    assert r["drained"] == n
    assert r["stats"]["messages"] == n
    assert r["stats"]["ready_on_disk_only"] > n - 3000
    assert r["stats"]["memory_bytes"] <= 2 << 20
    # the whole backlog would be > 100 MiB in memory; stubs are not kept per message
    assert r["after_push"] - r["base"] < 40, r
    assert r["end"] - r["base"] < 40, r
    assert len(os.listdir(tmp_path / "q")) <= 2  # drained: at most the current segment + index
