"""Faults of the process layer seen by real clients: ``kill -9`` of the supervisor, and a
worker stopped (SIGSTOP) for longer or shorter than ``stall_timeout``.

Owns:
- supervisor SIGKILLed while a client that never answers connection.close is connected
  and ``shutdown_timeout`` is long: the workers exit within ``ORPHAN_BOUND`` seconds
  anyway (parent-death signal, short drain), the port is free, and a broker restarted
  on the same port and data dir (at once: it waits for the orphans if needed) has the
  durable queue and its persistent message; with the SO_REUSEPORT and hand-off acceptors.
- a worker stopped past ``stall_timeout``: killed and respawned in its slot, its
  clients' connections closed, a client of the other worker goes on undisturbed.
- a worker stopped for less: it resumes (same process, no respawn), its client keeps
  its connection and receives every message published to its queue meanwhile.

Invariants: only ``ORPHAN_BOUND`` (5 s) is a time bound: the workers need about 0.5-1 s
(a 0.25 s drain, measured on a loaded 2-core machine); without the short drain they
wait ``shutdown_timeout`` (30 s) for the client that never answers.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from shardmq.broker.metadata import shard_for
from tests.integration.helpers import pika_on_worker, raw_on_worker
from tests.support import rawamqp as raw
from tests.support.procs import running, wait_for
from workers.status import WorkerStatus, read_workers

from .served import Served, ServeFactory, serve

__all__ = ["serve"]

pytestmark = pytest.mark.timeout(180)

WORKERS = 2
ORPHAN_BOUND = 5.0  # seconds for the workers of a SIGKILLed supervisor to be gone
WAIT = 15.0


def queue_on(worker: int, prefix: str) -> str:
    while True:
        name = f"faults.{prefix}.{uuid.uuid4().hex[:10]}"
        if shard_for("/", name, WORKERS) == worker:
            return name


def on_worker(broker: Served, worker: int) -> pika.BlockingConnection:
    return pika_on_worker(lambda: broker.connect(connection_attempts=1), worker)


def workers_ready(broker: Served) -> list[WorkerStatus] | None:
    st = read_workers(str(broker.data_dir)) or []
    if len(st) == WORKERS and all(w.ready and w.pid and running(w.pid) for w in st):
        return st
    return None


def lost(conn: pika.BlockingConnection) -> bool:
    """True once the client saw its connection end."""
    try:
        conn.process_data_events(time_limit=0.01)
    except pika.exceptions.AMQPConnectionError:
        return True
    return not conn.is_open


def roundtrip(conn: pika.BlockingConnection, queue: str, body: bytes) -> None:
    """A confirmed publish to ``queue`` and the same message got back."""
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", queue, body)
    method, _props, got = ch.basic_get(queue, auto_ack=True)
    assert method is not None and got == body
    ch.close()


# ------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("acceptor", ["reuseport", "handoff"])
def test_kill_9_of_the_supervisor(serve: ServeFactory, tmp_path: Path, acceptor: str) -> None:
    config: dict[str, dict[str, Any]] = {
        "server": {"shutdown_timeout": 30.0},
        "supervisor": {"acceptor": acceptor},
    }
    first = serve(WORKERS, config=config)
    first.wait_ready()
    workers = wait_for(lambda: workers_ready(first), WAIT, "workers ready", first.log)
    pids = [w.pid for w in workers]
    durable = f"faults.durable.{uuid.uuid4().hex[:10]}"
    with first.connect() as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(durable, durable=True)
        ch.basic_publish(
            "", durable, b"survives", pika.BasicProperties(delivery_mode=2, message_id="m1")
        )
    # one client per worker that will never answer connection.close: without the short
    # drain a worker would wait shutdown_timeout for it
    stubborn = [
        raw_on_worker(lambda: raw.RawConnection("127.0.0.1", first.port, timeout=WAIT), w)
        for w in range(WORKERS)
    ]
    try:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(WAIT)
        wait_for(
            lambda: not any(running(p) for p in pids),
            ORPHAN_BOUND,
            "the workers of the killed supervisor gone",
            first.log,
        )
    finally:
        for r in stubborn:
            r.close()
    assert "supervisor is gone" in first.log()
    # nothing listens on the port any more
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", first.port))
    second = serve(WORKERS, port=first.port, data_dir=first.data_dir, config=config)
    second.wait_ready()
    with second.connect() as conn:
        ch = conn.channel()
        assert ch.queue_declare(durable, passive=True).method.message_count == 1
        method, props, body = ch.basic_get(durable, auto_ack=True)
        assert method is not None and body == b"survives" and props.message_id == "m1"
        ch.queue_delete(durable)
    assert "Traceback" not in first.log() + second.log()


def test_restart_at_once_after_kill_9_waits_for_the_orphans(
    serve: ServeFactory, tmp_path: Path
) -> None:
    """Started the moment the supervisor is dead, while its workers may still hold the
    port and the data dir, the new broker waits for them instead of failing or sharing."""
    first = serve(WORKERS)
    first.wait_ready()
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(WAIT)
    second = serve(WORKERS, port=first.port, data_dir=first.data_dir)
    second.wait_ready()
    with second.connect() as conn:
        roundtrip(conn, conn.channel().queue_declare("", exclusive=True).method.queue, b"x")


# ------------------------------------------------------------------------- SIGSTOP


def _stall_broker(serve: ServeFactory, stall_timeout: float) -> Served:
    config = {"supervisor": {"stall_timeout": stall_timeout, "heartbeat_interval": 0.1}}
    broker = serve(WORKERS, config=config)
    broker.wait_ready()
    wait_for(lambda: workers_ready(broker), WAIT, "workers ready", broker.log)
    return broker


def test_worker_stopped_past_the_stall_timeout(serve: ServeFactory) -> None:
    broker = _stall_broker(serve, stall_timeout=1.5)
    before = wait_for(lambda: workers_ready(broker), WAIT, "workers ready", broker.log)
    victim = before[1]
    mine, theirs = queue_on(0, "other"), queue_on(1, "victim")
    other = on_worker(broker, 0)
    other.channel().queue_declare(mine)
    client = on_worker(broker, 1)
    client.channel().queue_declare(theirs)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        # the other worker's client goes on while the victim is stopped ...
        roundtrip(other, mine, b"during")
        after = wait_for(
            lambda: (s := workers_ready(broker)) and s[1].pid != victim.pid and s,
            WAIT,
            "the stalled worker replaced",
            broker.log,
        )
    finally:
        if running(victim.pid):
            os.kill(victim.pid, signal.SIGCONT)
    assert after[0].pid == before[0].pid
    assert not running(victim.pid)
    assert f"worker 1 (pid {victim.pid}) stalled" in broker.log()
    # ... the victim's client lost its connection, the other's never noticed
    wait_for(lambda: lost(client), WAIT, "the victim's client disconnected", broker.log)
    assert other.is_open
    roundtrip(other, mine, b"after")
    fresh = on_worker(broker, 1)
    roundtrip(fresh, theirs, b"respawned")
    for conn in (other, fresh):
        conn.close()


def test_worker_stopped_shorter_than_the_stall_timeout(serve: ServeFactory) -> None:
    broker = _stall_broker(serve, stall_timeout=20.0)
    before = wait_for(lambda: workers_ready(broker), WAIT, "workers ready", broker.log)
    victim = before[1]
    queue = queue_on(1, "paused")
    consumer = on_worker(broker, 1)
    cch = consumer.channel()
    cch.queue_declare(queue)
    got: list[bytes] = []
    cch.basic_consume(queue, lambda c, m, _p, body: (got.append(body), c.basic_ack(m.delivery_tag)))
    publisher = on_worker(broker, 0)
    pch = publisher.channel()
    pch.confirm_delivery()
    sent = [f"m{i}".encode() for i in range(40)]
    for body in sent[:20]:
        pch.basic_publish("", queue, body)
    os.kill(victim.pid, signal.SIGSTOP)
    resume = threading.Timer(1.0, os.kill, (victim.pid, signal.SIGCONT))
    resume.start()
    try:
        for body in sent[20:]:  # confirmed once the victim runs again
            pch.basic_publish("", queue, body)
    finally:
        resume.join()
    deadline_wait = WAIT

    def all_delivered() -> bool:
        consumer.process_data_events(time_limit=0.05)
        return len(got) >= len(sent)

    wait_for(all_delivered, deadline_wait, "every message delivered", broker.log)
    assert got == sent
    assert consumer.is_open and publisher.is_open
    now = workers_ready(broker)
    assert now is not None and [w.pid for w in now] == [w.pid for w in before]
    assert "stalled" not in broker.log() and "respawning" not in broker.log()
    for conn in (consumer, publisher):
        conn.close()
