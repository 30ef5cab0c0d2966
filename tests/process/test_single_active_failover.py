"""Single active consumer when the active consumer's worker dies (``kill -9``).

Owns: the process-level check of issue 12 item 6 that the integration tests cannot make:
the queue on worker 0, the active consumer on worker 1 (killed), the next consumer on
worker 2; the next one takes over with the dead one's unacked messages first.

Invariants: every wait is bounded; nothing is asserted about how fast anything was.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from shardmq.broker.metadata import shard_for
from tests.integration.consumers import Taker, publish, pump_all, quiet
from tests.support.procs import running, wait_for

from .conftest import Sup
from .test_failover import conn_on

pytestmark = pytest.mark.timeout(120)


def _queue_on(worker: int) -> str:
    while True:
        name = f"sac.{uuid.uuid4().hex[:10]}"
        if shard_for("/", name, 3) == worker:
            return name


def test_active_consumer_worker_killed(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(3, {"stall_timeout": 30.0})
    workers = sup.wait_ready()
    queue = _queue_on(0)
    admin = conn_on(sup, 0)
    admin.channel().queue_declare(queue, arguments={"x-single-active-consumer": True})
    active = Taker(conn_on(sup, 1), queue, prefetch=10)
    nxt_conn = conn_on(sup, 2)
    nxt = Taker(nxt_conn, queue, prefetch=10)
    publish(admin, queue, [b"a", b"b", b"c"])
    pump_all([active.conn, nxt_conn], lambda: len(active.got) == 3, "the active consumer")
    quiet([nxt_conn])
    assert nxt.got == []
    victim = workers[1].pid
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not running(victim), 10.0, "worker 1 gone", sup.log)
    pump_all([nxt_conn], lambda: len(nxt.got) == 3, "the takeover", timeout=30.0)
    got: list[Any] = [(b, r) for b, r, _t in nxt.got]
    assert got == [(b"a", True), (b"b", True), (b"c", True)]
    publish(admin, queue, [b"d"])
    pump_all([nxt_conn], lambda: len(nxt.got) == 4, "a new message")
    assert nxt.bodies[3] == b"d"
