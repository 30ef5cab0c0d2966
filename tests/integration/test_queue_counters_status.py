"""``shardmq ctl status`` shows, per queue, how many messages expired, were
dead-lettered and were dropped by a length limit (issue 12, point 13), in the JSON
report and in the table, wherever the queues live (1 and 3 workers).

Invariants: the counts are read only after the client saw the effects they count (the
dead-lettered copies arrived, the queue holds what the limit leaves); a report may be
a moment old, so the status is polled until it shows them (bounded). Needs the
broker's process (ctl reads its data dir): skipped against an external broker.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pika
import pytest

from .conftest import Broker
from .helpers import WAIT, Env, queue_counts
from .test_ctl_access import ok

pytestmark = pytest.mark.timeout(60)


def _wait_ready(ch: Any, q: str, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while queue_counts(ch, q)[0] != n:
        assert time.monotonic() < deadline, f"{q}: {queue_counts(ch, q)[0]} != {n}"
        time.sleep(0.02)


def _rows(broker: Broker) -> dict[str, dict[str, Any]]:
    status = json.loads(ok(broker, "status", "--json"))
    return {q["name"]: q for r in status["reports"] for q in r["queues"]}


def test_status_counts_expired_dead_lettered_dropped(env: Env, broker: Broker) -> None:
    if broker.external:
        pytest.skip("ctl status needs the broker's data dir")
    ch = env.channel()
    ttl, rej, lim, dead = env.queue("ttl"), env.queue("rej"), env.queue("lim"), env.queue("dead")
    ch.queue_declare(dead)
    to_dead = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    ch.queue_declare(ttl, arguments={"x-message-ttl": 1, **to_dead})
    ch.queue_declare(rej, arguments=to_dead)
    ch.queue_declare(lim, arguments={"x-max-length": 1})
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", ttl, b"t%d" % i)
        ch.basic_publish("", lim, b"l%d" % i)
    ch.basic_publish("", rej, b"r", pika.BasicProperties())
    m = None
    deadline = time.monotonic() + WAIT
    while m is None:
        assert time.monotonic() < deadline
        m, _p, _b = ch.basic_get(rej)
    ch.basic_reject(m.delivery_tag, requeue=False)
    _wait_ready(ch, dead, 4)  # 3 expired + 1 rejected, all dead-lettered
    _wait_ready(ch, lim, 1)

    want = {
        ttl: {"expired": 3, "dead_lettered": 3, "dropped": 0},
        rej: {"expired": 0, "dead_lettered": 1, "dropped": 0},
        lim: {"expired": 0, "dead_lettered": 0, "dropped": 2},
    }
    deadline = time.monotonic() + WAIT
    while True:
        rows = _rows(broker)
        got = {
            q: {k: rows.get(q, {}).get(k) for k in ("expired", "dead_lettered", "dropped")}
            for q in want
        }
        if got == want:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.2)
    table = ok(broker, "status")
    line = next(ln for ln in table.splitlines() if f" {ttl} " in ln)
    assert "expired=3" in line and "dead_lettered=3" in line
    line = next(ln for ln in table.splitlines() if f" {lim} " in ln)
    assert "dropped=2" in line and "expired=" not in line
