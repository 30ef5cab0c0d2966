"""``shardmq ctl status`` against a running broker: workers and the queues each owns."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from shardmq.broker.metadata import shard_for
from tests.process.conftest import Sup
from tests.support.launch import REPO_ROOT
from tests.support.procs import wait_for


def ctl_status(sup: Sup, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardmq", "ctl", "status", "--data-dir", str(sup.data_dir), *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_ctl_status_shows_workers_and_the_queues_each_owns(
    supervisor: Callable[..., Sup],
) -> None:
    sup = supervisor(3)
    sup.wait_ready()
    names = [f"ctl-q{i}" for i in range(9)]
    conn = sup.connect()
    try:
        ch = conn.channel()
        for i, name in enumerate(names):
            ch.queue_declare(name, durable=i % 2 == 0)
            for _ in range(i):
                ch.basic_publish("", name, b"x")

        def reported() -> dict[str, object] | None:
            res = ctl_status(sup, "--json")
            if res.returncode != 0:
                return None
            data = json.loads(res.stdout)
            queues = {q["name"]: (r["slot"], q) for r in data["reports"] for q in r["queues"]}
            if not all(n in queues and queues[n][1]["messages"] == i for i, n in enumerate(names)):
                return None
            return {"data": data, "queues": queues}

        got = wait_for(reported, 15, "queues in ctl status", sup.log)
        assert [w["slot"] for w in got["data"]["workers"]] == [0, 1, 2]
        assert all(w["ready"] for w in got["data"]["workers"])
        for i, name in enumerate(names):
            slot, q = got["queues"][name]
            assert slot == shard_for("/", name, 3)
            assert q["durable"] == (i % 2 == 0)
            # every owned queue reports its counts in memory and on disk
            assert q["store"]["messages"] == i
            assert q["store"]["ready_in_memory"] + q["store"]["ready_on_disk_only"] == i
        text = ctl_status(sup)
        assert text.returncode == 0, text.stderr
        for w in range(3):
            assert f"worker {w}: pid" in text.stdout
        assert "ctl-q8" in text.stdout
    finally:
        conn.close()


def test_ctl_status_without_a_broker_fails_clearly(tmp_path: object) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "shardmq", "ctl", "status", "--data-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode != 0
    assert "no running broker" in res.stderr
