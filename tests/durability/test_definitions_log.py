"""Durable definitions through the log, with real broker processes and pika: kill -9 in
the middle of a burst of durable declares and deletes (every declare-ok'd queue is back,
every delete-ok'd one stays gone), and a data dir written by the previous version (the
single-file format 1) served as it was."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from tests.support.procs import descendants, running

from .conftest import DurableBroker

FORMAT1 = Path(__file__).resolve().parents[1] / "store" / "data" / "definitions-format1.json"
CLIENTS = 4


def _exists(broker: DurableBroker, names: list[str]) -> set[str]:
    """The queues of ``names`` that exist (passive declares, a fresh channel after a
    404)."""
    found: set[str] = set()
    conn = broker.connect()
    ch = conn.channel()
    for name in names:
        try:
            ch.queue_declare(name, passive=True)
            found.add(name)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            ch = conn.channel()
    conn.close()
    return found


def _burst(
    broker: DurableBroker, client: int, acked: list[str], deleting: list[str], deleted: list[str]
) -> None:
    """Declare durable queues one after another (and delete every third one) until the
    broker dies; record each name whose declare-ok / delete-ok arrived, and each delete
    sent (the last one may have been done, or not, when the broker died)."""
    try:
        conn = broker.connect()
        ch = conn.channel()
        i = 0
        while True:
            name = f"burst-{client}-{i}"
            ch.queue_declare(name, durable=True)
            acked.append(name)
            if i % 3 == 2:
                victim = f"burst-{client}-{i - 1}"
                deleting.append(victim)
                ch.queue_delete(victim)
                deleted.append(victim)
            i += 1
    except (pika.exceptions.AMQPError, OSError):
        return  # the broker was killed


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_kill9_during_declare_burst_keeps_every_acknowledged_change(
    make_durable: Any, workers: int
) -> None:
    broker: DurableBroker = make_durable(workers=workers)
    seen_before = 0
    for rnd in range(3):
        acked: list[list[str]] = [[] for _ in range(CLIENTS)]
        deleting: list[list[str]] = [[] for _ in range(CLIENTS)]
        deleted: list[list[str]] = [[] for _ in range(CLIENTS)]
        threads = [
            threading.Thread(target=_burst, args=(broker, c, acked[c], deleting[c], deleted[c]))
            for c in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        # kill once enough declares went through (bounded wait, no timing assertion)
        deadline = time.monotonic() + 60
        while sum(map(len, acked)) < seen_before + 150 * (rnd + 1):
            assert time.monotonic() < deadline, "the burst made no progress"
            time.sleep(0.01)
        broker.kill()
        for t in threads:
            t.join(30)
        broker.start()
        all_acked = [n for a in acked for n in a]
        all_deleted = set(n for d in deleted for n in d)
        all_deleting = set(n for d in deleting for n in d)  # deleted or in flight
        present = _exists(broker, all_acked)
        missing = [n for n in all_acked if n not in all_deleting and n not in present]
        assert not missing, f"declare-ok'd but gone after kill -9: {missing[:10]}"
        resurrected = [n for n in all_deleted if n in present]
        assert not resurrected, f"delete-ok'd but back after kill -9: {resurrected[:10]}"
        # the in-flight declare of each client may or may not be there: never more
        seen_before = len(present)
        # clean up this round so the next starts from a known state
        conn = broker.connect()
        ch = conn.channel()
        for name in present:
            ch.queue_delete(name)
        conn.close()


def test_previous_versions_data_dir_is_served(make_durable: Any) -> None:
    """A data dir holding the single definitions file of the previous version (format
    1): its exchange, queues (with their arguments) and binding are back, and new
    changes go on top of it and survive a kill -9."""
    broker: DurableBroker = make_durable()
    broker.stop()
    shutil.rmtree(broker.data_dir)
    broker.data_dir.mkdir()
    shutil.copy(FORMAT1, broker.data_dir / "definitions.json")
    broker.start()
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare("v1.x", "topic", durable=True, passive=True)
    ch.queue_declare("v1.q2", durable=True, passive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.queue_declare("v1.q", durable=True, arguments={"x-max-length": 11})
    assert err.value.reply_code == 406  # its x-max-length (10) came back
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("v1.x", "a.b", b"routed", pika.BasicProperties(delivery_mode=2))
    method, _props, body = ch.basic_get("v1.q", auto_ack=True)
    assert method is not None and body == b"routed"  # the binding came back
    ch.queue_declare("new-after-upgrade", durable=True)
    ch.queue_delete("v1.q2")
    broker.restart(kill=True)
    present = _exists(broker, ["v1.q", "v1.q2", "new-after-upgrade"])
    assert present == {"v1.q", "new-after-upgrade"}


@pytest.mark.parametrize(
    ("workers", "killed"),
    [(1, "all"), (2, "all"), (3, "all"), (3, "supervisor"), (3, "worker")],
)
def test_kill9_right_after_declare_oks_keeps_every_definition(
    make_durable: Any, workers: int, killed: str
) -> None:
    """Durable exchanges, queues and bindings answered, then at once kill -9 of every
    process, of the supervisor alone (its workers follow it) or of one worker (the
    supervisor respawns it; then every process): no clean stop, no time for a
    background fdatasync to matter (written is what must survive a process crash).
    After the restart every one is there, bindings included."""
    broker: DurableBroker = make_durable(workers=workers)
    count = 1000 if killed == "all" and workers < 3 else 300
    names = [f"answered-{i}" for i in range(count)]
    conn = broker.connect()
    ch = conn.channel()
    for name in names:
        ch.exchange_declare(f"x.{name}", "direct", durable=True)
        ch.queue_declare(name, durable=True)
        ch.queue_bind(name, f"x.{name}", "rk")
    assert broker.process is not None
    if killed == "supervisor":
        sup = broker.process.pid
        workers_pids = descendants(sup)
        os.kill(sup, signal.SIGKILL)
        broker.process.wait()
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in workers_pids):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.01)
    else:
        if killed == "worker":
            os.kill(descendants(broker.process.pid)[0], signal.SIGKILL)
        broker.kill()
    broker.start()
    present = _exists(broker, names)
    missing = [n for n in names if n not in present]
    assert not missing, f"declare-ok'd but gone after kill -9: {missing[:10]}"
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    unrouted = []
    for name in names:
        try:
            ch.basic_publish(f"x.{name}", "rk", b"routed", mandatory=True)
        except pika.exceptions.UnroutableError:
            unrouted.append(name)
    assert not unrouted, f"bind-ok'd but gone after kill -9: {unrouted[:10]}"
    conn.close()
