"""``shardmq ctl status`` against a running broker (1 and 3 workers): the workers, the
queues each owns with RabbitMQ's counts, and the state at the moment it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shardmq.broker.metadata import shard_for
from tests.process.conftest import Sup
from tests.support.launch import REPO_ROOT
from tests.support.procs import wait_for
from workers.status import BrokerStatus, read_broker_status


def ctl_status(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardmq", "ctl", "status", "--data-dir", str(data_dir), *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def serving(supervisor: Callable[..., Sup], workers: int) -> Sup:
    """A broker of ``workers`` workers whose every worker answers ctl."""
    sup = supervisor(workers)
    if workers > 1:
        sup.wait_ready()

    def answered() -> BrokerStatus | None:
        if sup.proc.poll() is not None:
            raise AssertionError(f"broker exited {sup.proc.returncode}:\n{sup.log()}")
        st = read_broker_status(str(sup.data_dir))
        return st if len(st.reports) == workers else None

    wait_for(answered, 20, "every worker answering ctl", sup.log)
    return sup


def test_ctl_status_shows_workers_and_the_queues_each_owns(
    supervisor: Callable[..., Sup],
) -> None:
    sup = serving(supervisor, 3)
    names = [f"ctl-q{i}" for i in range(9)]
    conn = sup.connect()
    try:
        ch = conn.channel()
        for i, name in enumerate(names):
            ch.queue_declare(name, durable=i % 2 == 0)
            for _ in range(i):
                ch.basic_publish("", name, b"x")
        ch.queue_declare("ctl-sync")  # publishes before a synchronous method are routed
        res = ctl_status(sup.data_dir, "--json")
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        queues = {q["name"]: (r["slot"], q) for r in data["reports"] for q in r["queues"]}
        assert [w["slot"] for w in data["workers"]] == [0, 1, 2]
        assert all(w["ready"] for w in data["workers"])
        for i, name in enumerate(names):
            slot, q = queues[name]
            assert slot == shard_for("/", name, 3)
            assert q["durable"] == (i % 2 == 0)
            assert (q["messages"], q["messages_ready"], q["messages_unacknowledged"]) == (i, i, 0)
            if q["durable"]:  # a durable queue reports where its messages are
                assert q["store"]["ready_in_memory"] + q["store"]["ready_on_disk_only"] == i
            else:
                assert q["store"] == {}
        text = ctl_status(sup.data_dir)
        assert text.returncode == 0, text.stderr
        for w in range(3):
            assert f"worker {w}: pid" in text.stdout
        assert "ctl-q8" in text.stdout
        # --data-dir given to ctl itself, as the other ctl commands take it
        res = subprocess.run(
            [sys.executable, "-m", "shardmq", "ctl", "--data-dir", str(sup.data_dir), "status"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0 and "ctl-q8" in res.stdout, res.stderr
    finally:
        conn.close()


@pytest.mark.parametrize("workers", [1, 3])
def test_ctl_status_counts_ready_and_unacked_as_rabbitmq_does(
    supervisor: Callable[..., Sup], workers: int
) -> None:
    """Each queue holds 1 ready and 1 unacked message (taken by basic.get, or by a
    consumer with prefetch 1), on the connection's worker and on others: ``messages`` is
    ready + unacknowledged, as in RabbitMQ, and no field is printed twice."""
    sup = serving(supervisor, workers)
    got = [f"ctl-get-{i}" for i in range(4)]
    consumed = [f"ctl-sub-{i}" for i in range(4)]
    conn = sup.connect()
    try:
        ch = conn.channel()
        delivered: list[str] = []
        for name in got + consumed:
            ch.queue_declare(name, durable=name.endswith(("0", "1")))
            ch.basic_publish("", name, b"one")
            ch.basic_publish("", name, b"two")
        for name in got:
            method, _props, _body = ch.basic_get(name, auto_ack=False)
            assert method is not None
        for name in consumed:
            sub = conn.channel()
            sub.basic_qos(prefetch_count=1)
            sub.basic_consume(name, lambda c, m, p, b: delivered.append(m.routing_key))
        wait_for(
            lambda: (conn.process_data_events(0.05), len(delivered) == len(consumed))[1],
            15,
            "one delivery per consumer",
            sup.log,
        )

        res = ctl_status(sup.data_dir, "--json")
        assert res.returncode == 0, res.stderr
        queues = {q["name"]: q for r in json.loads(res.stdout)["reports"] for q in r["queues"]}
        for name in got + consumed:
            q = queues[name]
            counts = (q["messages"], q["messages_ready"], q["messages_unacknowledged"])
            assert counts == (2, 1, 1), (name, q)
            assert q["consumers"] == (1 if name in consumed else 0), (name, q)

        text = ctl_status(sup.data_dir)
        assert text.returncode == 0, text.stderr
        lines = {ln.split()[1]: ln for ln in text.stdout.splitlines() if "ctl-" in ln}
        assert set(lines) == set(got + consumed)
        for name, line in lines.items():
            fields = [f.split("=")[0] for f in line.split() if "=" in f]
            assert len(fields) == len(set(fields)), f"a field printed twice: {line}"
            assert "messages=2 messages_ready=1 messages_unacknowledged=1" in line, line
            assert f"consumers={1 if name in consumed else 0}" in line, line
    finally:
        conn.close()


@pytest.mark.parametrize("workers", [1, 3])
def test_ctl_status_shows_the_connections_of_now(
    supervisor: Callable[..., Sup], workers: int
) -> None:
    """Every worker makes its report when asked: the connections it counts are those
    open at that moment, and drop to 0 as soon as the clients have closed."""
    sup = serving(supervisor, workers)
    conns = [sup.connect() for _ in range(12)]
    try:
        asked = time.time()
        st = read_broker_status(str(sup.data_dir))
        assert all(r.written_at >= asked for r in st.reports), "a report older than the ask"
        assert sum(r.connections for r in st.reports) == 12
        if workers > 1:  # the workers' lines agree with their reports
            assert sum(w.connections for w in st.workers or []) == 12
    finally:
        for c in conns:
            c.close()

    def closed() -> BrokerStatus | None:
        now = read_broker_status(str(sup.data_dir))
        return now if sum(r.connections for r in now.reports) == 0 else None

    # the broker sees each close when it reads the peer's FIN: a moment, not a period
    wait_for(closed, 1.0, "0 connections reported after every client closed", sup.log)
    text = ctl_status(sup.data_dir)
    assert text.returncode == 0, text.stderr
    assert all(", 0 connection(s)," in ln for ln in text.stdout.splitlines() if "worker" in ln)


def test_ctl_status_without_a_broker_says_where_to_look(tmp_path: Path) -> None:
    res = ctl_status(tmp_path / "nothing-here")
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "\n" not in err, err
    assert "no running broker found on data dir" in err
    assert str(tmp_path / "nothing-here") in err
    assert "--data-dir" in err
    assert "Traceback" not in res.stderr


def test_ctl_status_names_the_data_dir_of_the_running_broker(
    supervisor: Callable[..., Sup], tmp_path: Path
) -> None:
    sup = serving(supervisor, 1)
    res = ctl_status(tmp_path / "elsewhere")
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "\n" not in err, err
    assert (
        f"--data-dir {sup.data_dir}" in err or str(sup.data_dir) in err.split("use --data-dir")[1]
    )


def test_a_stale_socket_of_a_dead_worker_is_ignored(tmp_path: Path) -> None:
    """A socket left by a worker that was killed refuses connections: not a broker."""
    import socket

    status = tmp_path / "status"
    status.mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(status / "worker-0.sock"))
    s.close()  # bound, never listening: what a SIGKILLed worker leaves
    st = read_broker_status(str(tmp_path))
    assert not st.found
    res = ctl_status(tmp_path)
    assert res.returncode != 0 and "no running broker found" in res.stderr


def test_a_stopped_worker_is_listed_as_not_answering(supervisor: Callable[..., Sup]) -> None:
    """ctl never hangs on a worker that cannot answer (SIGSTOP): the others report and
    that one is named, within the request timeout."""
    sup = supervisor(3, settings={"stall_timeout": 60.0})  # not killed while stopped
    sup.wait_ready()
    wait_for(
        lambda: len(read_broker_status(str(sup.data_dir)).reports) == 3,
        20,
        "every worker answering ctl",
        sup.log,
    )
    pid = {w.slot: w.pid for w in sup.status()}[2]
    os.kill(pid, signal.SIGSTOP)
    try:
        st = read_broker_status(str(sup.data_dir), timeout=1.0)
        assert [r.slot for r in st.reports] == [0, 1]
        assert st.silent == [2]
        text = ctl_status(sup.data_dir)
        assert text.returncode == 0, text.stderr
        assert f"worker 2: pid {pid} (not answering)" in text.stdout
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(
        lambda: len(read_broker_status(str(sup.data_dir)).reports) == 3,
        20,
        "the resumed worker answering again",
        sup.log,
    )
