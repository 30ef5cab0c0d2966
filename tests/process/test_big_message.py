"""One 100 MiB message (issue 16, memory pressure).

Two cases, each on 1 and 2 workers, the queue owned by another worker than the
publisher's when there are two:

- Room for it (the default budget): a persistent 100 MiB message published with
  confirms to a durable queue is confirmed (RabbitMQ accepts up to its 128 MiB
  ``max_message_size``) and arrives intact; the broker's resident memory meanwhile
  stays under its idle size plus ``MARGIN_COPIES`` copies of the message: one big
  message does not multiply itself without bound. Measured here: about 4 copies on 2
  workers (the publisher's worker holds the body frames and the assembled body, the
  owner the cross-worker record and the stored body; a reader on another worker one
  more), 2 on one worker; 6 is the stated margin.
- No room (a budget 64 MiB above idle): the broker raises its memory alarm while the
  message arrives. As in RabbitMQ, reading a publishing connection stops while the
  alarm holds, so the publisher is blocked (mid-message, or after it if the whole
  message was read before the next check); whichever happens, nothing half-received is
  ever delivered, a confirmed message arrives intact, memory stays under the budget
  plus the margin, and once the publisher is gone (or the message consumed) the alarm
  clears and publishers are unblocked.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pytest

from shardmq.broker.metadata import shard_for
from tests.process.ownbroker import OwnBroker, connect_on_worker, rss, start_own

MIB = 1024 * 1024
SIZE = 100 * MIB
MARGIN_COPIES = 6


def _name_on(worker: int, workers: int) -> str:
    while True:
        name = f"bigmsg-{uuid.uuid4().hex[:8]}"
        if shard_for("/", name, workers) == worker:
            return name


def _body() -> tuple[bytes, str]:
    body = bytes(range(256)) * (SIZE // 256)
    return body, hashlib.sha256(body).hexdigest()


class PeakRss:
    """Samples the broker's resident memory every 50 ms in a thread; ``stop`` gives the
    highest sample."""

    def __init__(self, b: OwnBroker) -> None:
        self.b = b
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.b.rss())

    def stop(self) -> int:
        self._stop.set()
        self._t.join(5)
        return self.peak


def _idle_rss(tmp_path: Path, workers: int, *, supervisor: bool = True) -> int:
    """What an idle broker takes; without the supervisor as the memory alarm counts
    (the workers' RSS) when ``supervisor`` is false."""
    probe = start_own(tmp_path, workers)
    try:
        time.sleep(1.0)
        pids = probe.pids()
        if not supervisor and workers > 1:
            pids = pids[1:]
        return sum(rss(p) for p in pids)
    finally:
        probe.stop()


def _get_all(b: OwnBroker, qname: str) -> list[bytes]:
    with b.connect() as reader:  # has not published: served during an alarm
        ch = reader.channel()
        got = []
        while True:
            method, _props, data = ch.basic_get(qname)
            if method is None:
                break
            got.append(data)
            ch.basic_ack(method.delivery_tag)
        ch.queue_delete(qname)
        return got


@pytest.mark.parametrize("workers", [1, 2])
def test_a_100mib_message_is_confirmed_and_arrives_intact(tmp_path: Path, workers: int) -> None:
    idle = _idle_rss(tmp_path, workers)
    b = start_own(tmp_path, workers)
    qname = _name_on(workers - 1, workers)
    body, digest = _body()
    peak = PeakRss(b)
    try:
        with connect_on_worker(b, 0) as pub:
            ch = pub.channel()
            ch.queue_declare(qname, durable=True)
            ch.confirm_delivery()
            # raises if nacked or returned
            ch.basic_publish("", qname, body, pika.BasicProperties(delivery_mode=2), True)
        del body
        got = _get_all(b, qname)
        assert [len(m) for m in got] == [SIZE]
        assert hashlib.sha256(got[0]).hexdigest() == digest
    finally:
        top = peak.stop()
        b.stop()
    assert top < idle + MARGIN_COPIES * SIZE, (
        f"peak rss {top >> 20} MiB: over idle {idle >> 20} MiB + {MARGIN_COPIES} x 100 MiB"
    )
    assert "Traceback" not in b.log()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_100mib_message_over_the_budget_raises_the_alarm_and_loses_nothing(
    tmp_path: Path, workers: int
) -> None:
    budget = _idle_rss(tmp_path, workers, supervisor=False) + 64 * MIB
    idle_supervisor = _idle_rss(tmp_path, workers) - budget + 64 * MIB
    # heartbeat 2 s: a publisher blocked mid-message and then gone is noticed by the
    # failed heartbeat write (its socket is not read while blocked, so its close is
    # not seen otherwise, in RabbitMQ either), which frees its half-received message
    b = start_own(
        tmp_path,
        workers,
        {"server": {"memory_high_watermark_absolute": budget}, "amqp": {"heartbeat": 2}},
    )
    qname = _name_on(workers - 1, workers)
    body, digest = _body()
    events: list[bool] = []
    peak = PeakRss(b)
    try:
        watcher = connect_on_worker(b, 0)  # a publisher that only watches
        watcher.add_on_connection_blocked_callback(lambda *_: events.append(True))
        watcher.add_on_connection_unblocked_callback(lambda *_: events.append(False))
        wch = watcher.channel()
        wch.queue_declare(qname)
        wch.basic_publish("", qname, b"small")

        confirmed = False
        pub = connect_on_worker(b, 0)
        pub._impl.params.blocked_connection_timeout = 10  # type: ignore[attr-defined]
        try:
            pch = pub.channel()
            pch.confirm_delivery()
            pch.basic_publish("", qname, body, pika.BasicProperties(delivery_mode=1), True)
            confirmed = True
        except pika.exceptions.ConnectionBlockedTimeout:
            pass  # blocked before the whole message was read: it was never confirmed
        finally:
            try:
                pub.close()
            except pika.exceptions.AMQPError:
                pass  # already closed by its blocked timeout
        del body

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "memory alarm set" not in b.log():
            watcher.process_data_events(0.1)
        assert "memory alarm set" in b.log(), f"no alarm under a {budget >> 20} MiB budget"

        got = _get_all(b, qname)  # consuming frees the message if it was taken
        assert got[0] == b"small"
        if confirmed:
            assert [len(m) for m in got[1:]] == [SIZE]
            assert hashlib.sha256(got[1]).hexdigest() == digest
        else:
            assert got[1:] == [], "a message never confirmed was half-delivered"
        del got

        def cleared() -> bool:
            log = b.log()
            return log.rfind("memory alarm cleared") > log.rfind("memory alarm set")

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (cleared() and events[-1:] != [True]):
            watcher.process_data_events(0.1)
        assert cleared(), f"alarm still set, rss {b.rss() >> 20} MiB\n{b.log()[-2000:]}"
        assert events[-1:] != [True], "the watching publisher is still blocked"
        watcher.close()
    finally:
        top = peak.stop()
        b.stop()
    assert top < budget + idle_supervisor + MARGIN_COPIES * SIZE, (
        f"peak rss {top >> 20} MiB: over budget {budget >> 20} MiB + {MARGIN_COPIES} x 100 MiB"
    )
    assert "Traceback" not in b.log()
