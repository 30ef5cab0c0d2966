"""A real Celery application through the broker (issue 12, Tests; item 13).

Owns: the ``celery_worker`` fixture (one ``celery worker`` process per broker, started
from ``tests.celeryapp`` against the test's broker, solo pool, prefetch 1) and the tests
that send it tasks from this process: plain tasks with results over the ``rpc://``
backend (reply queues), a task that retries with a countdown and then succeeds,
``acks_late`` tasks that fail (acked; or rejected and dead-lettered), queues declared
with ``x-message-ttl`` / ``x-expires`` through kombu ``Queue`` arguments, and a queue
declared with ``x-max-priority`` fed tasks with priorities. Worker queues are added and
removed at run time with Celery's remote control (``add_consumer``/``cancel_consumer``,
the ``celery.pidbox`` fanout exchange and its TTL'd, expiring reply queues), so that
path runs too.

Invariants: the worker runs in its own process group and is stopped (SIGTERM, then
SIGKILL of the group) however the tests end; every wait is bounded; every queue and
exchange the app declares carries a unique prefix and is deleted afterwards (they are
shared with others on an external RabbitMQ).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import celery.exceptions
import pika
import pika.exceptions
import pytest

from tests.celeryapp import EXPIRES_MS, MAX_PRIORITY, QueueNames, make_app
from tests.support.launch import spawn

from .conftest import Broker
from .helpers import queue_exists, unique

RESULT_TIMEOUT = 30.0  # seconds for one task's result
WORKER_START_TIMEOUT = 60.0
WORKER_STOP_TIMEOUT = 15.0
CONTROL_TIMEOUT = 10.0


@dataclass
class CeleryWorker:
    broker: Broker
    app: Any  # celery.Celery
    names: QueueNames
    hostname: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send(self, task: str, *args: Any, **options: Any) -> Any:
        return self.app.send_task(f"shardmq_test.{task}", args=args, **options)

    def get(self, result: Any) -> Any:
        try:
            return result.get(timeout=RESULT_TIMEOUT)
        except celery.exceptions.TimeoutError:
            raise AssertionError(
                f"no result for {result.id} within {RESULT_TIMEOUT} s\n--- worker log ---\n"
                f"{self.log()[-4000:]}"
            ) from None

    def control(self, command: str, queue: str) -> None:
        """``add_consumer`` / ``cancel_consumer`` on this worker, waiting for its reply."""
        fn = getattr(self.app.control, command)
        replies = fn(queue, reply=True, destination=[self.hostname], timeout=CONTROL_TIMEOUT)
        assert replies and self.hostname in replies[0], (command, queue, replies, self.log())

    def declare(self, name: str) -> None:
        """Declare one of the app's queues (its exchange and binding) as Celery would."""
        with self.app.connection_for_write() as conn:
            self.app.amqp.queues[name](conn.default_channel).declare()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group (warm shutdown), SIGKILL it if it hangs."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(WORKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group
    except ProcessLookupError:
        pass
    proc.wait(WORKER_STOP_TIMEOUT)


def _delete_all(broker: Broker, names: QueueNames) -> None:
    conn = broker.blocking()
    try:
        ch = conn.channel()
        queues = [names.default, names.ttl, names.expiring, names.rejecting, names.dead]
        for q in [*queues, names.prio]:
            try:
                ch.queue_delete(q)
            except pika.exceptions.AMQPError:
                ch = conn.channel()
        for x in (names.prefix, names.dlx):
            try:
                ch.exchange_delete(x)
            except pika.exceptions.AMQPError:
                ch = conn.channel()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def celery_worker(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    names = QueueNames(unique("celery"))
    conn = broker.blocking()
    try:  # where the rejecting queue's dead letters go
        ch = conn.channel()
        ch.exchange_declare(names.dlx, "fanout")
        ch.queue_declare(names.dead)
        ch.queue_bind(names.dead, names.dlx)
    finally:
        conn.close()
    hostname = f"{names.prefix}@localhost"
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    env = dict(os.environ)
    env["SHARDMQ_CELERY_BROKER"] = broker.uri
    env["SHARDMQ_CELERY_PREFIX"] = names.prefix
    args = ["celery", "-A", "tests.celeryapp.worker", "worker", "--pool", "solo"]
    args += ["--concurrency", "1", "--loglevel", "INFO", "-n", hostname]
    args += ["-Q", ",".join(names.consumed_at_start)]
    proc = spawn(args, log_path, env=env)
    app = make_app(broker.uri, names.prefix)
    w = CeleryWorker(broker, app, names, hostname, proc, log_path)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while f"{hostname} ready." not in w.log():
            if proc.poll() is not None:
                raise AssertionError(f"celery worker exited with {proc.returncode}:\n{w.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"celery worker not ready in time:\n{w.log()}")
            time.sleep(0.1)
        yield w
    finally:
        _stop(proc)
        app.close()
        _delete_all(broker, names)
    # The worker logged no error but the tasks' own failures (no lost connection, no
    # channel error, no crash).
    bad = [
        line
        for line in w.log().splitlines()
        if ("ERROR/" in line or "CRITICAL/" in line) and "raised unexpected: ValueError" not in line
    ]
    assert not bad, "\n".join(bad)


def _message_count(broker: Broker, queue: str) -> int:
    conn = broker.blocking()
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def _wait_count(broker: Broker, queue: str, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := _message_count(broker, queue)) != n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{queue}: {got} messages, expected {n}")
        time.sleep(0.05)


def test_tasks_return_results(celery_worker: CeleryWorker) -> None:
    w = celery_worker
    results = [w.send("add", i, 100) for i in range(20)]
    assert [w.get(r) for r in results] == [i + 100 for i in range(20)]
    assert all(r.state == "SUCCESS" for r in results)
    group = celery.group(w.app.signature("shardmq_test.add", (i, i)) for i in range(5))()
    assert group.get(timeout=RESULT_TIMEOUT) == [0, 2, 4, 6, 8]


def test_retry_with_countdown_then_success(celery_worker: CeleryWorker) -> None:
    w = celery_worker
    r = w.send("flaky", 2)
    assert w.get(r) == 2  # ran three times: failed twice, retried after 1 s each
    assert r.state == "SUCCESS"
    assert w.log().count(f"shardmq_test.flaky[{r.id}] retry: Retry in 1s") == 2


def test_acks_late_failures_acked_or_dead_lettered(celery_worker: CeleryWorker) -> None:
    """acks_late + failure: acked after the failure is recorded (the queue's
    dead-letter exchange sees nothing); with acks_on_failure_or_timeout off, rejected
    without requeue, so the message reaches the dead-letter queue with x-death."""
    w = celery_worker
    q = w.names.rejecting
    acked = w.send("fail_late", "a", queue=q)
    rejected = w.send("fail_reject", "b", queue=q)
    for r, text in ((acked, "fail_late a"), (rejected, "fail_reject b")):
        with pytest.raises(ValueError, match=text):
            r.get(timeout=RESULT_TIMEOUT)
        assert r.state == "FAILURE"
    conn = w.broker.blocking()
    try:
        ch = conn.channel()
        seen: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + 15
        while not any(tid == rejected.id for tid, _ in seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"no dead letter for {rejected.id}; got {seen}")
            method, props, _body = ch.basic_get(w.names.dead, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            seen.append((props.headers["id"], props.headers))
        ((tid, headers),) = seen  # the acked task's message never came (it ran first)
        (death,) = headers["x-death"]
        assert death["reason"] == "rejected" and death["queue"] == q and death["count"] == 1
        assert ch.basic_get(w.names.dead, auto_ack=True)[0] is None
    finally:
        conn.close()
    assert w.get(w.send("add", 1, 2, queue=q)) == 3  # the worker carries on


def test_message_ttl_queue_drops_tasks_nobody_took(celery_worker: CeleryWorker) -> None:
    w = celery_worker
    q = w.names.ttl
    w.declare(q)
    with w.app.connection_for_write() as conn:  # publisher confirms: enqueued on return
        conn.transport_options["confirm_publish"] = True
        early = w.app.send_task("shardmq_test.stamp", args=("early",), queue=q, connection=conn)
    _wait_count(w.broker, q, 0)  # x-message-ttl expired it without a consumer
    w.control("add_consumer", q)
    late = w.send("stamp", "late", queue=q)
    assert w.get(late)[0] == "late"
    assert early.id not in w.log()  # never delivered to the worker


def test_expires_queue_deleted_once_unused(celery_worker: CeleryWorker) -> None:
    w = celery_worker
    q = w.names.expiring
    assert w.get(w.send("add", 2, 2, queue=q)) == 4  # consumed by the worker
    conn = w.broker.blocking()
    try:
        assert queue_exists(conn, q)
        w.control("cancel_consumer", q)
        # A passive declare counts as use (RabbitMQ renews the lease), so look only
        # after more than x-expires of quiet each time.
        for _ in range(10):
            time.sleep(EXPIRES_MS * 2 / 1000)
            if not queue_exists(conn, q):
                break
        else:
            raise AssertionError(f"{q} (x-expires {EXPIRES_MS} ms) still exists")
    finally:
        conn.close()


def test_priority_queue_runs_highest_priority_first(celery_worker: CeleryWorker) -> None:
    """Tasks wait in an ``x-max-priority`` queue until the worker starts consuming it,
    then run highest priority first, FIFO within a priority; a priority above the
    maximum counts as the maximum."""
    w = celery_worker
    q = w.names.prio
    w.declare(q)
    prios = [1, 5, 9, 3, MAX_PRIORITY + 5, 0, 7, 5, MAX_PRIORITY, 9, 1]
    results = []
    with w.app.connection_for_write() as conn:
        conn.transport_options["confirm_publish"] = True
        for i, p in enumerate(prios):
            label = f"{i}:p{p}"
            results.append(
                w.app.send_task(
                    "shardmq_test.stamp", args=(label,), queue=q, priority=p, connection=conn
                )
            )
    _wait_count(w.broker, q, len(prios))
    w.control("add_consumer", q)
    ran = sorted((w.get(r) for r in results), key=lambda lr: lr[1])
    order = [label for label, _ in ran]
    expected = [
        f"{i}:p{p}"
        for i, p in sorted(enumerate(prios), key=lambda ip: (-min(ip[1], MAX_PRIORITY), ip[0]))
    ]
    assert order == expected
