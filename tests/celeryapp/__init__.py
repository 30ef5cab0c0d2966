"""A tiny Celery application for the Celery end-to-end tests (issue 12).

Owns: ``make_app(broker_url, prefix)``, the one definition of the app's configuration and
tasks shared by the worker process (``tests.celeryapp.worker``, which builds it from
``SHARDMQ_CELERY_BROKER`` and ``SHARDMQ_CELERY_PREFIX``) and the test process that sends
tasks and reads results; ``QueueNames``, the queue names under a prefix.

Invariants: every queue and exchange name starts with the prefix, so runs against a
shared RabbitMQ never collide; task names are fixed strings (``shardmq_test.*``), not
module paths, so both sides agree whatever imports them; results go through the
``rpc://`` backend (reply queues, results as messages); the worker runs one task at a
time with prefetch 1 (``--pool solo``, ``worker_prefetch_multiplier = 1``), so the order
in which tasks run is the order the broker delivers them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task, shared_task
from kombu import Exchange, Queue

DLX_SUFFIX = ".dlx"
TTL_MS = 500  # x-message-ttl of the ``ttl`` queue
EXPIRES_MS = 1500  # x-expires of the ``expiring`` queue
MAX_PRIORITY = 10


@dataclass(frozen=True)
class QueueNames:
    prefix: str

    @property
    def default(self) -> str:
        return f"{self.prefix}.default"

    @property
    def ttl(self) -> str:
        return f"{self.prefix}.ttl"

    @property
    def expiring(self) -> str:
        return f"{self.prefix}.expiring"

    @property
    def rejecting(self) -> str:
        return f"{self.prefix}.rejecting"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}{DLX_SUFFIX}"

    @property
    def prio(self) -> str:
        return f"{self.prefix}.prio"

    @property
    def consumed_at_start(self) -> list[str]:
        """The queues the worker consumes from its start (``-Q``); ``ttl`` and ``prio``
        are added later by the tests (``control.add_consumer``)."""
        return [self.default, self.expiring, self.rejecting]


def task_queues(names: QueueNames) -> list[Queue]:
    """The app's queues, declared with the arguments a Celery user would give them."""
    direct = Exchange(names.prefix, type="direct")
    return [
        Queue(names.default, direct, routing_key=names.default),
        Queue(
            names.ttl,
            direct,
            routing_key=names.ttl,
            queue_arguments={"x-message-ttl": TTL_MS, "x-expires": 600_000},
        ),
        Queue(
            names.expiring,
            direct,
            routing_key=names.expiring,
            queue_arguments={"x-expires": EXPIRES_MS},
        ),
        Queue(
            names.rejecting,
            direct,
            routing_key=names.rejecting,
            queue_arguments={"x-dead-letter-exchange": names.dlx},
        ),
        Queue(
            names.prio,
            direct,
            routing_key=names.prio,
            queue_arguments={"x-max-priority": MAX_PRIORITY},
        ),
    ]


def make_app(broker_url: str, prefix: str) -> Celery:
    names = QueueNames(prefix)
    app = Celery(f"{prefix}.app", broker=broker_url, backend="rpc://", set_as_current=False)
    app.conf.update(
        task_queues=task_queues(names),
        task_default_queue=names.default,
        task_default_exchange=prefix,
        task_default_routing_key=names.default,
        task_create_missing_queues=False,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        broker_connection_retry_on_startup=False,
        result_expires=600,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )

    return app


# The tasks: shared_task, so every app made by make_app has them (one definition per
# process, whatever the number of apps).
@shared_task(name="shardmq_test.add")
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="shardmq_test.stamp")
def stamp(label: str) -> list[Any]:
    """When this ran (the host's monotonic clock, shared by every process)."""
    return [label, time.monotonic_ns()]


@shared_task(name="shardmq_test.flaky", bind=True, max_retries=5)
def flaky(self: Task, failures: int) -> int:
    """Fails ``failures`` times (retried after 1 s each), then returns the count."""
    if self.request.retries < failures:
        raise self.retry(countdown=1, exc=RuntimeError("not yet"))
    return int(self.request.retries)


@shared_task(name="shardmq_test.fail_late", acks_late=True)
def fail_late(token: str) -> None:
    """acks_late and fails: Celery acks the message after recording the failure."""
    raise ValueError(f"fail_late {token}")


@shared_task(name="shardmq_test.fail_reject", acks_late=True, acks_on_failure_or_timeout=False)
def fail_reject(token: str) -> None:
    """acks_late and fails with acks_on_failure_or_timeout off: Celery rejects the
    message (requeue=False), so the queue dead-letters it."""
    raise ValueError(f"fail_reject {token}")
