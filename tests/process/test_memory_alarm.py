"""The memory alarm is the broker's, not a worker's (issue 16).

With a small absolute budget, a publisher on worker 0 fills a queue owned by worker 1:
once the broker's RSS (all workers together) passes the budget, every publishing
connection on every worker gets connection.blocked, not only worker 1's, and no
worker grows without bound. Deleting the queue brings memory back under the budget
and unblocks them.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pika
import pytest

from shardmq.broker.metadata import shard_for
from tests.process.ownbroker import OwnBroker, connect_on_worker, rss, start_own
from tests.support import rawamqp as raw

MIB = 1024 * 1024
WORKERS = 3


def _name_on(worker: int) -> str:
    while True:
        name = f"memalarm-{uuid.uuid4().hex[:8]}"
        if shard_for("/", name, WORKERS) == worker:
            return name


def _raw_on_worker(b: OwnBroker, worker: int) -> raw.RawConnection:
    for _ in range(60):
        c = raw.RawConnection("127.0.0.1", b.port)
        c.handshake()
        if c.start_args["server_properties"].get("worker") == worker:
            c.open_channel(1)
            return c
        c.close()
    raise AssertionError(f"no connection landed on worker {worker}")


def _budget(tmp: Path) -> int:
    """A budget 150 MiB above what an idle broker of WORKERS workers takes here."""
    probe = start_own(tmp, WORKERS)
    try:
        time.sleep(1.0)
        idle = sum(rss(p) for p in probe.pids()[1:])  # the workers (not the supervisor)
    finally:
        probe.stop()
    return idle + 150 * MIB


@pytest.fixture
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> OwnBroker:
    budget = _budget(tmp_path)
    b = start_own(tmp_path, WORKERS, {"server": {"memory_high_watermark_absolute": budget}})
    request.addfinalizer(b.stop)
    return b


def test_alarm_on_one_worker_blocks_publishers_on_every_worker(broker: OwnBroker) -> None:
    qname = _name_on(1)
    blocked: dict[int, bool] = {}
    watchers: dict[int, pika.BlockingConnection] = {}
    for w in range(WORKERS):
        c = connect_on_worker(broker, w)
        watchers[w] = c

        def on_blocked(_c: object, frame: object, w: int = w) -> None:
            blocked[w] = True

        def on_unblocked(_c: object, frame: object, w: int = w) -> None:
            blocked[w] = False

        c.add_on_connection_blocked_callback(on_blocked)
        c.add_on_connection_unblocked_callback(on_unblocked)
        ch = c.channel()
        ch.queue_declare(qname)  # every worker's connection has published once
        ch.basic_publish("", qname, b"hello")
    pub = _raw_on_worker(broker, 0)
    try:
        frames = raw.publish(1, "", qname, b"m" * MIB, frame_max=pub.frame_max)
        sent = 0
        # a raw publisher on worker 0: it writes until the broker stops reading it
        # (its socket send then times out), with no client library to block it
        pub.sock.settimeout(3.0)
        try:
            while sent < 600:
                pub.sock.sendall(frames)
                sent += 1
        except TimeoutError:
            pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(blocked.get(w) for w in range(WORKERS)):
            for c in watchers.values():
                c.process_data_events(0.05)
        assert all(blocked.get(w) for w in range(WORKERS)), (
            f"connection.blocked per worker: {blocked} after {sent} MiB to worker 1's queue"
            f"\n{broker.log()[-3000:]}"
        )
        assert sent < 600, "the broker never raised its memory alarm"
        with broker.connect() as admin:  # has not published: not blocked, still read
            admin.channel().queue_delete(qname)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(blocked.get(w) for w in range(WORKERS)):
            for c in watchers.values():
                c.process_data_events(0.05)
        assert not any(blocked.values()), f"still blocked: {blocked}\n{broker.log()[-3000:]}"
    finally:
        pub.close()
        for c in watchers.values():
            try:
                c.close()
            except Exception:
                pass
    assert "Traceback" not in broker.log()
