"""Durability inside one process (sans-IO clients, a real event loop and real stores):
confirms wait for the fsync, write errors nack and raise the disk alarm, the two alarms
combine, large backlogs are paged, queue stats."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest

from loadtest.inproc import Client, connect, content_frames, make_broker, method_frame
from shardmq.amqp import methods as M
from shardmq.broker.broker import Broker
from shardmq.broker.queue import DurableQueue, Queue
from shardmq.config import load_config
from shardmq.store import commit
from shardmq.store.settings import StoreSettings

PERSISTENT = M.BasicProperties(delivery_mode=2)
TRANSIENT = M.BasicProperties(delivery_mode=1)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def new_broker(data_dir: Path, **store: Any) -> Broker:
    """A broker with storage, built inside the running loop as ``shardmq serve`` does."""
    config = load_config(data_dir=str(data_dir))
    config = msgspec.structs.replace(config, store=StoreSettings(**store))
    broker = Broker(config)
    assert broker.storage is not None
    broker.load_definitions()
    broker.start_storage()
    return broker


async def until(client: Client, done: Callable[[], bool], what: str) -> None:
    """Run loop turns (store flushes, fsync completions) until ``done()``; 10 s cap."""
    for _ in range(1000):
        client.pump()
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}; got {client.methods[-5:]}")


async def turns(client: Client, n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0.005)
        client.pump()


def confirms(client: Client) -> list[tuple[str, int, bool]]:
    return [
        (type(m).__name__, m.delivery_tag, m.multiple)  # type: ignore[attr-defined]
        for _ch, m in client.methods
        if isinstance(m, M.BasicAck | M.BasicNack)
    ]


def acked_upto(client: Client) -> int:
    return max((tag for kind, tag, _ in confirms(client) if kind == "BasicAck"), default=0)


def test_confirm_waits_for_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    synced: list[str] = []
    real_sync = commit._sync_file

    def slow_sync(path: str) -> None:
        gate.wait(10)
        synced.append(path)
        real_sync(path)

    monkeypatch.setattr(commit, "_sync_file", slow_sync)

    async def main() -> None:
        broker = new_broker(tmp_path)
        c = connect(broker)
        c.open_channel(1)
        c.call(1, M.ConfirmSelect())
        c.declare(1, "dq", durable=True)
        c.declare(1, "tq")
        assert isinstance(broker.vhosts["/"].queues["dq"], DurableQueue)
        assert type(broker.vhosts["/"].queues["tq"]) is Queue
        c.publish(1, "", "dq", b"transient on durable", TRANSIENT)  # seq 1
        c.publish(1, "", "tq", b"persistent on transient", PERSISTENT)  # seq 2
        assert acked_upto(c) == 2  # nothing to write: confirmed in the same turn
        c.publish(1, "", "dq", b"persistent on durable", PERSISTENT)  # seq 3
        c.publish(1, "", "tq", b"after it", TRANSIENT)  # seq 4
        await turns(c)
        assert acked_upto(c) == 2 and not synced  # seq 3 waits for its fsync, 4 behind it
        gate.set()
        await until(c, lambda: acked_upto(c) == 4, "confirm of seq 3 and 4")
        assert any(p.endswith(".seg") for p in synced)
        assert all(kind == "BasicAck" for kind, _, _ in confirms(c))
        await broker.close_storage()

    run(main())


def test_tx_commit_waits_for_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real_sync = commit._sync_file

    def slow_sync(path: str) -> None:
        gate.wait(10)
        real_sync(path)

    monkeypatch.setattr(commit, "_sync_file", slow_sync)

    async def main() -> None:
        broker = new_broker(tmp_path)
        c = connect(broker)
        c.open_channel(1)
        c.declare(1, "dq", durable=True)
        c.declare(1, "tq")
        c.call(1, M.TxSelect())
        c.publish(1, "", "tq", b"transient queue", PERSISTENT)
        c.call(1, M.TxCommit())
        assert isinstance(c.methods[-1][1], M.TxCommitOk)  # nothing to store: at once
        c.publish(1, "", "dq", b"durable", PERSISTENT)
        c.call(1, M.TxCommit())
        c.call(1, M.BasicGet(queue="tq", no_ack=True))  # held until the commit completes
        await turns(c)
        assert sum(isinstance(m, M.TxCommitOk) for _, m in c.methods) == 1
        assert c.bodies() == []
        gate.set()
        await until(c, lambda: len(c.bodies()) == 1, "commit-ok, then the held get")
        assert sum(isinstance(m, M.TxCommitOk) for _, m in c.methods) == 2
        assert isinstance(c.deliveries[0].method, M.BasicGetOk)
        await broker.close_storage()

    run(main())


def test_write_error_nacks_and_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        broker = new_broker(tmp_path, disk_free_limit=0)
        monitor = broker.storage.monitor  # type: ignore[union-attr]
        c = connect(broker)
        c.open_channel(1)
        c.call(1, M.ConfirmSelect())
        c.declare(1, "dq", durable=True)
        c.publish(1, "", "dq", b"ok", PERSISTENT)  # seq 1
        await until(c, lambda: acked_upto(c) == 1, "first confirm")
        real_pwrite = os.pwrite

        def full(fd: int, data: Any, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", full)
        c.publish(1, "", "dq", b"lost", PERSISTENT)  # seq 2
        await until(c, lambda: ("BasicNack", 2, False) in confirms(c), "nack of seq 2")
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        assert "storage write failed, 1 publish(es) nacked" in caplog.text
        blocked = [m for _, m in c.methods if isinstance(m, M.ConnectionBlocked)]
        assert [m.reason for m in blocked] == ["low on disk"]  # type: ignore[attr-defined]
        assert broker.disk_alarm and c.domain.reading_paused
        # space comes back (free grows well past the point where the write failed)
        free = monitor.free
        monitor._usage = lambda path: type("U", (), {"free": free + (1 << 30)})()
        monitor.check()
        c.pump()
        assert isinstance(c.methods[-1][1], M.ConnectionUnblocked)
        assert not broker.alarm and not c.domain.reading_paused
        # the nacked message is still delivered (from memory), the store works again
        c.publish(1, "", "dq", b"after", PERSISTENT)  # seq 3
        await until(c, lambda: acked_upto(c) == 3, "confirm after recovery")
        c.call(1, M.BasicGet(queue="dq", no_ack=True))
        c.call(1, M.BasicGet(queue="dq", no_ack=True))
        c.call(1, M.BasicGet(queue="dq", no_ack=True))
        assert c.bodies() == [b"ok", b"lost", b"after"]
        await broker.close_storage()

    run(main())


def test_memory_and_disk_alarms_combine() -> None:
    broker = make_broker()
    c = connect(broker)
    c.open_channel(1)
    c.publish(1, "", "nowhere", b"x")  # a publisher: alarms apply to it
    idle = connect(broker)  # never published: never blocked

    def signals() -> list[str]:
        return [
            "blocked:" + m.reason if isinstance(m, M.ConnectionBlocked) else "unblocked"  # type: ignore[attr-defined]
            for _, m in c.methods
            if isinstance(m, M.ConnectionBlocked | M.ConnectionUnblocked)
        ]

    broker.set_memory_alarm(True)
    broker.set_disk_alarm(True)
    c.pump()
    assert signals() == ["blocked:low on memory"] and c.domain.reading_paused
    broker.set_memory_alarm(False)
    c.pump()
    assert signals() == ["blocked:low on memory"] and c.domain.reading_paused  # disk still on
    broker.set_disk_alarm(False)
    c.pump()
    assert signals() == ["blocked:low on memory", "unblocked"] and not c.domain.reading_paused
    broker.set_disk_alarm(True)
    c.pump()
    assert signals()[-1] == "blocked:low on disk"
    broker.set_disk_alarm(False)
    idle.pump()
    assert not [m for _, m in idle.methods if isinstance(m, M.ConnectionBlocked)]


def test_backlog_is_paged_and_drains_in_order(tmp_path: Path) -> None:
    budget = 64 * 1024

    async def main() -> None:
        broker = new_broker(tmp_path, queue_memory_budget=budget, segment_size=256 * 1024)
        c = connect(broker)
        c.open_channel(1)
        c.declare(1, "dq", durable=True)
        n = 2000
        body = os.urandom(1000)
        for i in range(n):
            c.publish(1, "", "dq", i.to_bytes(4, "big") + body, PERSISTENT)
            if i % 200 == 0:
                await turns(c, 1)
        await turns(c, 2)
        q = broker.vhosts["/"].queues["dq"]
        st = q.stats()
        assert st["messages"] == n
        assert st["ready_on_disk_only"] > n // 2  # most of it is not in memory
        assert st["memory_bytes"] <= budget
        assert st["segments"] >= 2 and st["disk_bytes"] > n * 1000
        c.call(1, M.BasicQos(prefetch_count=50))
        c.consume(1, "dq")
        seen = 0
        peak = 0
        while seen < n:
            await turns(c, 1)
            new = c.deliveries[seen:]
            for d in new:
                assert int.from_bytes(d.body[:4], "big") == seen
                assert d.body[4:] == body
                seen += 1
            if new:
                c.call(1, M.BasicAck(delivery_tag=new[-1].method.delivery_tag, multiple=True))  # type: ignore[attr-defined]
            peak = max(peak, q.stats()["memory_bytes"])
        assert peak <= budget
        await turns(c, 5)
        st = q.stats()
        assert st["messages"] == 0 and st["unacked"] == 0 and st["consumers"] == 1
        await broker.close_storage()

    run(main())


def test_transient_queue_stats() -> None:
    broker = make_broker()
    c = connect(broker)
    c.open_channel(1)
    c.declare(1, "q")
    for _ in range(3):
        c.publish(1, "", "q", b"x")
    c.call(1, M.BasicQos(prefetch_count=1))
    c.consume(1, "q")
    st = broker.vhosts["/"].queues["q"].stats()
    assert st == {
        "messages": 2,
        "ready_in_memory": 2,
        "ready_on_disk_only": 0,
        "unacked": 1,
        "consumers": 1,
        "disk_bytes": 0,
        "expired": 0,
        "dead_lettered": 0,
        "dropped": 0,
    }


def test_confirm_waits_for_the_declarations_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """declare-ok goes out once the definitions record is written (no fdatasync), but a
    publish into that queue is confirmed only after the definitions log was synced,
    even when a store flush of the same loop turn ran first (a publish to another
    queue before the declare)."""
    gate = threading.Event()
    blocking = threading.Event()
    synced: list[str] = []
    real_sync = commit._sync_file

    def sync(path: str) -> None:
        if blocking.is_set() and os.path.basename(path).startswith("definitions."):
            gate.wait(10)
        synced.append(path)
        real_sync(path)

    monkeypatch.setattr(commit, "_sync_file", sync)

    async def main() -> None:
        broker = new_broker(tmp_path)
        c = connect(broker)
        c.open_channel(1)
        c.open_channel(2)
        c.call(1, M.ConfirmSelect())
        c.declare(2, "old", durable=True)
        c.publish(1, "", "old", b"one", PERSISTENT)  # seq 1
        await until(c, lambda: acked_upto(c) == 1, "confirm of seq 1")
        blocking.set()
        # one loop turn: a publish to "old" (its store flush is scheduled first), the
        # declare of "new", a publish into "new"
        c.conn.feed(
            method_frame(1, M.BasicPublish(exchange="", routing_key="old"))
            + content_frames(1, b"two", PERSISTENT)  # seq 2
            + method_frame(2, M.QueueDeclare(queue="new", durable=True))
            + method_frame(1, M.BasicPublish(exchange="", routing_key="new"))
            + content_frames(1, b"three", PERSISTENT)  # seq 3
        )
        # declare-ok comes while the definitions log's sync is held: written is enough
        await until(c, lambda: _declared(c, "new"), "declare-ok of new")
        await turns(c)
        assert acked_upto(c) < 3, "confirmed before the declaration was synced"
        gate.set()
        await until(c, lambda: acked_upto(c) == 3, "confirm of seq 2 and 3")
        assert all(kind == "BasicAck" for kind, _, _ in confirms(c))
        await broker.close_storage()

    try:
        run(main())
    finally:
        gate.set()


def _declared(client: Client, queue: str) -> bool:
    return any(isinstance(m, M.QueueDeclareOk) and m.queue == queue for _, m in client.methods)
