"""Policies set with ``ctl`` change what queues and exchanges do, at once, on every
worker: length limits, TTL, dead-lettering, alternate exchanges, and RabbitMQ's
precedence against queue arguments."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pika
import pytest

from tests.support.ctl import ctl

from .conftest import Broker
from .helpers import Env, unique
from .test_ctl_access import ok


@pytest.fixture
def policy(broker: Broker) -> Iterator[str]:
    """A unique prefix; every policy named after it is cleared at the end."""
    prefix = unique("pq")
    yield prefix
    for name in (f"{prefix}-a", f"{prefix}-b"):
        ctl(broker, "clear_policy", name)


def count(ch: pika.adapters.blocking_connection.BlockingChannel, q: str) -> int:
    return int(ch.queue_declare(q, passive=True).method.message_count)


def eventually(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_max_length_policy_applies_to_new_and_existing_queues(
    env: Env, broker: Broker, policy: str
) -> None:
    ch = env.conn().channel()
    existing = f"{policy}.old"
    ch.queue_declare(existing, auto_delete=False)
    for i in range(5):
        ch.basic_publish("", existing, str(i).encode())
    ok(
        broker,
        "set_policy",
        "--apply-to",
        "queues",
        f"{policy}-a",
        f"^{policy}\\.",
        '{"max-length": 2}',
    )
    try:
        # an existing queue is trimmed to the new limit (drop-head)
        eventually(lambda: count(ch, existing) == 2)
        got = ch.basic_get(existing, auto_ack=True)
        assert got[2] == b"3"
        if not broker.external:  # ctl status: the policy that applies, the drops
            status = json.loads(ok(broker, "status", "--json"))
            row = next(q for r in status["reports"] for q in r["queues"] if q["name"] == existing)
            assert row["policy"] == f"{policy}-a" and row["dropped"] == 3
        new = f"{policy}.new"
        ch.queue_declare(new, auto_delete=False)
        for i in range(5):
            ch.basic_publish("", new, str(i).encode())
        eventually(lambda: count(ch, new) == 2)
        # precedence: a smaller queue argument wins; a larger one loses to the policy
        small, large = f"{policy}.small", f"{policy}.large"
        ch.queue_declare(small, auto_delete=False, arguments={"x-max-length": 1})
        ch.queue_declare(large, auto_delete=False, arguments={"x-max-length": 10})
        for _ in range(5):
            ch.basic_publish("", small, b"x")
            ch.basic_publish("", large, b"x")
        eventually(lambda: count(ch, small) == 1 and count(ch, large) == 2)
        # cleared: the limit goes away
        ok(broker, "clear_policy", f"{policy}-a")
        for _ in range(3):
            ch.basic_publish("", new, b"y")
        eventually(lambda: count(ch, new) == 5)
    finally:
        for q in (existing, f"{policy}.new", f"{policy}.small", f"{policy}.large"):
            ch.queue_delete(q)


def test_ttl_and_dead_letter_policies(env: Env, broker: Broker, policy: str) -> None:
    ch = env.conn().channel()
    dlx, dead = f"{policy}.dlx", f"{policy}.dead"
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead, auto_delete=False)
    ch.queue_bind(dead, dlx)
    q = f"{policy}.work"
    ok(
        broker,
        "set_policy",
        "--apply-to",
        "queues",
        f"{policy}-a",
        f"^{policy}\\.work$",
        f'{{"message-ttl": 200, "dead-letter-exchange": "{dlx}"}}',
    )
    try:
        ch.queue_declare(q, auto_delete=False)
        ch.basic_publish("", q, b"expires")
        eventually(lambda: count(ch, dead) == 1)
        assert count(ch, q) == 0
        method, props, body = ch.basic_get(dead, auto_ack=True)
        assert body == b"expires"
        death = props.headers["x-death"][0]
        assert death["reason"] == "expired" and death["queue"] == q
    finally:
        ch.queue_delete(q)
        ch.queue_delete(dead)
        ch.exchange_delete(dlx)


def test_alternate_exchange_policy(env: Env, broker: Broker, policy: str) -> None:
    ch = env.conn().channel()
    ex, ae, caught = f"{policy}.ex", f"{policy}.ae", f"{policy}.caught"
    ch.exchange_declare(ae, "fanout")
    ch.queue_declare(caught, auto_delete=False)
    ch.queue_bind(caught, ae)
    ch.exchange_declare(ex, "direct")
    ok(
        broker,
        "set_policy",
        "--apply-to",
        "exchanges",
        f"{policy}-b",
        f"^{policy}\\.ex$",
        f'{{"alternate-exchange": "{ae}"}}',
    )
    try:
        ch.basic_publish(ex, "nowhere", b"unroutable")
        eventually(lambda: count(ch, caught) == 1)
    finally:
        ch.queue_delete(caught)
        ch.exchange_delete(ex)
        ch.exchange_delete(ae)
