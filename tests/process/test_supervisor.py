"""The supervisor with real worker processes and real pika clients.

Until the cross-shard protocol lands every worker runs an independent broker, so each
check stays within one connection."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import pytest

from shardmq.ipc.mesh import INSTANCE_FILE, SHM_DIR
from tests.support.procs import running, wait_for

from .conftest import Sup


def roundtrip(conn: pika.BlockingConnection, tag: str) -> None:
    ch = conn.channel()
    q = ch.queue_declare(queue=f"proc-{tag}-{uuid.uuid4().hex[:8]}", exclusive=True).method.queue
    ch.basic_publish("", q, tag.encode())
    for _ in range(100):
        method, _props, body = ch.basic_get(q, auto_ack=True)
        if method is not None:
            assert body == tag.encode()
            return
        time.sleep(0.01)
    raise AssertionError("message did not come back")


def shm_segments(sup: Sup) -> list[str]:
    inst = (sup.data_dir / INSTANCE_FILE).read_text().split()[0]
    return [e for e in os.listdir(SHM_DIR) if e.startswith(f"shardmq.{inst}.")]


def test_all_workers_accept_pika_connections(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(3)
    first = sup.wait_ready()
    assert len({w.pid for w in first}) == 3
    assert len(shm_segments(sup)) == 3 * 2 * 2 + 2  # data + control ring per pair, ctl, counts
    conns = [sup.connect() for _ in range(30)]
    try:
        for i, c in enumerate(conns):
            roundtrip(c, f"m{i}")
        # the kernel spread them over every worker (P(a worker gets none) ~ 2e-5)
        st = wait_for(
            lambda: (s := sup.status()) and sum(w.connections for w in s) == 30 and s,
            10,
            "connection counts",
            sup.log,
        )
        assert all(w.connections > 0 for w in st), st
    finally:
        for c in conns:
            c.close()


def test_kill_9_worker_is_respawned_in_its_slot(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(3)
    before = sup.wait_ready()
    victim = before[1]
    survivors_conn = [sup.connect() for _ in range(6)]
    counts = wait_for(
        lambda: (s := sup.status()) and sum(w.connections for w in s) == 6 and s,
        10,
        "connection counts",
        sup.log,
    )
    on_others = counts[0].connections + counts[2].connections
    os.kill(victim.pid, signal.SIGKILL)
    t0 = time.monotonic()
    after = wait_for(
        lambda: (s := sup.all_ready()) and s[1].pid != victim.pid and s,
        10,
        "worker 1 respawned",
        sup.log,
    )
    took = time.monotonic() - t0
    assert after[1].incarnation == victim.incarnation + 1
    assert [w.pid for w in after][0::2] == [w.pid for w in before][0::2]  # others untouched
    assert not running(victim.pid)
    assert f"worker 1 (pid {victim.pid}) died (signal SIGKILL); respawning" in sup.log()
    # the port keeps accepting, on every worker including the new one
    conns = [sup.connect() for _ in range(30)]
    try:
        for i, c in enumerate(conns):
            roundtrip(c, f"after{i}")
        st = wait_for(
            lambda: (s := sup.status()) and s[1].connections > 0 and s,
            10,
            "the new worker 1 serving connections",
            sup.log,
        )
        assert st[1].pid == after[1].pid
        # connections on the surviving workers were not disturbed; those on the
        # killed worker are gone
        ok = 0
        for i, c in enumerate(survivors_conn):
            try:
                roundtrip(c, f"survivor{i}")
                ok += 1
            except pika.exceptions.AMQPConnectionError:  # was on the killed worker
                pass
        assert ok == on_others
    finally:
        for c in conns + survivors_conn:
            if c.is_open:
                c.close()
    assert took < 10  # the bound of the wait above; typically well under a second
    assert sup.proc.poll() is None


def test_sigterm_closes_clients_with_320_and_exits_0(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(3)
    sup.wait_ready()
    segs = shm_segments(sup)
    conns = [sup.connect() for _ in range(9)]
    for i, c in enumerate(conns):
        roundtrip(c, f"t{i}")
    sup.proc.send_signal(signal.SIGTERM)
    codes = []
    for c in conns:
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                c.process_data_events(time_limit=0.2)
        codes.append(info.value.reply_code)
    assert codes == [320] * 9
    assert sup.wait_exit() == 0
    # everything cleaned up: shared memory, instance file
    assert not any(os.path.exists(os.path.join(SHM_DIR, s)) for s in segs)
    assert not (sup.data_dir / INSTANCE_FILE).exists()
    assert "worker 0 (pid" in sup.log() and "stopped: exit code 0" in sup.log()


def test_worker_that_cannot_boot_stops_the_broker(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(3, {"cpu_affinity": [0, 4096]})  # worker 1 asks for a CPU that is not there
    code = sup.wait_exit()
    log = sup.log()
    assert code != 0
    assert "cannot pin to CPU 4096" in log
    assert "worker 1 (pid" in log and "failed to boot" in log and "stopping the broker" in log
    assert "respawning" not in log
    assert not (sup.data_dir / INSTANCE_FILE).exists()


def test_stalled_worker_is_killed_and_respawned(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(2, {"stall_timeout": 1.0, "heartbeat_interval": 0.1})
    before = sup.wait_ready()
    os.kill(before[0].pid, signal.SIGSTOP)  # its event loop stops: no more heartbeats
    try:
        after = wait_for(
            lambda: (s := sup.all_ready()) and s[0].pid != before[0].pid and s,
            15,
            "stalled worker 0 replaced",
            sup.log,
        )
    finally:
        if running(before[0].pid):
            os.kill(before[0].pid, signal.SIGCONT)
    assert after[1].pid == before[1].pid
    assert f"worker 0 (pid {before[0].pid}) stalled" in sup.log()
    with sup.connect() as c:
        roundtrip(c, "after-stall")


def test_stale_shared_memory_of_a_killed_supervisor(
    supervisor: Callable[..., Sup], tmp_path: Path
) -> None:
    first = supervisor(2)
    workers = first.wait_ready()
    stale = shm_segments(first)
    assert len(stale) == 6  # 2 data rings, 2 control rings, the control block, the counts
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(5)
    # workers follow their supervisor (parent-death signal), leaving the segments behind
    wait_for(
        lambda: not any(running(w.pid) for w in workers), 10, "orphaned workers exit", first.log
    )
    assert all(os.path.exists(os.path.join(SHM_DIR, s)) for s in stale)
    second = supervisor(2, data_dir=first.data_dir)
    second.wait_ready()
    assert not any(os.path.exists(os.path.join(SHM_DIR, s)) for s in stale)
    assert "removed 6 shared-memory segment(s) left by a previous run" in second.log()
    with second.connect() as c:
        roundtrip(c, "fresh")


def test_second_broker_on_same_data_dir_refused(supervisor: Callable[..., Sup]) -> None:
    first = supervisor(2)
    first.wait_ready()
    second = supervisor(2, data_dir=first.data_dir)
    assert second.wait_exit() != 0
    assert "in use by another running shardmq" in second.log()
    assert first.all_ready()


def test_handoff_acceptor_spreads_connections(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(3, {"acceptor": "handoff"})
    sup.wait_ready()
    conns = []
    try:
        for i in range(9):
            c = sup.connect()
            conns.append(c)
            roundtrip(c, f"h{i}")
        st = wait_for(
            lambda: (s := sup.status()) and sum(w.connections for w in s) == 9 and s,
            10,
            "connection counts",
            sup.log,
        )
        assert [w.handed_off for w in st] == [3, 3, 3]  # least loaded, ties in turn
        assert [w.connections for w in st] == [3, 3, 3]
    finally:
        for c in conns:
            c.close()


def test_sighup_reloads_and_keeps_workers(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(2)
    before = sup.wait_ready()
    sup.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: sup.log().count("configuration reloaded") >= 3, 10, "reload", sup.log)
    assert sup.pids() == [w.pid for w in before]
    with sup.connect() as c:
        roundtrip(c, "after-hup")


def test_one_worker_uses_no_shared_memory(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(1)
    c = wait_for(lambda: _try_connect(sup), 15, "single worker accepting", sup.log)
    try:
        roundtrip(c, "solo")
        # one process serving (no children), nothing of ours mapped from /dev/shm
        with open(f"/proc/{sup.proc.pid}/task/{sup.proc.pid}/children") as f:
            assert f.read().split() == []
        with open(f"/proc/{sup.proc.pid}/maps") as f:
            assert "/dev/shm/" not in f.read()
        assert not (sup.data_dir / INSTANCE_FILE).exists()
    finally:
        c.close()
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.wait_exit() == 0


def _try_connect(sup: Sup) -> pika.BlockingConnection | None:
    try:
        return sup.connect(connection_attempts=1)
    except pika.exceptions.AMQPConnectionError:
        return None
