"""Message statistics in the management API (issue 14, item 2): known numbers of
messages published, fetched, consumed, acked and requeued with pika, and
``message_stats`` of ``/api/queues/{vhost}/{name}``, ``/api/queues`` and
``/api/overview`` polled until they say so (1 and 3 workers: counts are summed over
the workers).

With ``SHARDMQ_TEST_MGMT_URL`` (and ``SHARDMQ_TEST_URI``) pointing at a local RabbitMQ the
per-queue checks run against it: it answers the same numbers in the same shapes. The
overview's counts are the broker's totals, which other users of a shared RabbitMQ move
too: against it they are checked as lower bounds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from tests.support.statsbroker import (
    EXTERNAL_MGMT,
    StatsBroker,
    external_broker,
    start_stats_broker,
    stop_stats_broker,
    wait_for,
)


def _params() -> list[Any]:
    if EXTERNAL_MGMT:
        return [pytest.param(None, id="external")]
    return [pytest.param(1, id="1w"), pytest.param(3, id="3w")]


@pytest.fixture(scope="module", params=_params())
def sb(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StatsBroker]:
    if request.param is None:
        yield external_broker()
        return
    b = start_stats_broker(tmp_path_factory.mktemp("stats"), request.param)
    try:
        yield b
    finally:
        stop_stats_broker(b)


def _name(kind: str) -> str:
    return f"stats-{kind}-{uuid.uuid4().hex[:10]}"


def _counts(stats: dict[str, Any], keys: tuple[str, ...]) -> dict[str, int]:
    return {k: stats.get(k, 0) for k in keys}


QUEUE_KEYS = ("publish", "get", "get_no_ack", "deliver", "deliver_no_ack", "deliver_get", "ack")


def test_queue_message_stats(sb: StatsBroker) -> None:
    q, q2 = _name("q"), _name("q2")
    conn = sb.connect()
    ch = conn.channel()
    try:
        ch.queue_declare(q)
        ch.queue_declare(q2)
        ch.confirm_delivery()
        for i in range(30):
            ch.basic_publish("", q, f"m{i}".encode())
        for i in range(10):
            ch.basic_publish("", q2, f"n{i}".encode())
        for _ in range(4):  # basic.get, no-ack
            assert ch.basic_get(q, auto_ack=True)[0] is not None
        for _ in range(3):  # basic.get, acked
            method, _, _ = ch.basic_get(q)
            assert method is not None
            ch.basic_ack(method.delivery_tag)
        tags = []
        for _ in range(2):  # basic.get, rejected back to the queue: redelivered later
            method, _, _ = ch.basic_get(q)
            assert method is not None
            tags.append(method.delivery_tag)
        for tag in tags:
            ch.basic_reject(tag, requeue=True)
        # consume the other 23 (the 2 requeued among them) with acks, q2 without
        ch.basic_qos(prefetch_count=50)
        got: list[bool] = []
        auto: list[bytes] = []

        def on_q(c: Any, m: Any, p: Any, body: bytes) -> None:
            got.append(m.redelivered)
            c.basic_ack(m.delivery_tag)

        ch.basic_consume(q, on_q)
        ch.basic_consume(q2, lambda c, m, p, b: auto.append(b), auto_ack=True)
        deadline = 200
        while (len(got) < 23 or len(auto) < 10) and deadline:
            conn.process_data_events(time_limit=0.1)
            deadline -= 1
        assert (len(got), len(auto), got.count(True)) == (23, 10, 2)
        want = {
            "publish": 30,
            "get": 5,
            "get_no_ack": 4,
            "deliver": 23,
            "deliver_no_ack": 0,
            "deliver_get": 32,
            "ack": 26,
        }

        def stats_of(name: str) -> dict[str, Any]:
            return sb.api(f"/api/queues/%2F/{name}").get("message_stats", {})

        seen = wait_for(lambda: _counts(stats_of(q), QUEUE_KEYS) == want and stats_of(q))
        assert _counts(stats_of(q), QUEUE_KEYS) == want
        assert seen["redeliver"] == 2
        for key in ("publish", "ack", "deliver_get", "redeliver"):
            assert isinstance(seen[key + "_details"]["rate"], int | float)
        want2 = {"publish": 10, "deliver_no_ack": 10, "deliver_get": 10, "ack": 0}
        keys2 = tuple(want2)
        assert wait_for(lambda: _counts(stats_of(q2), keys2) == want2), stats_of(q2)
        # the same numbers in the list
        rows = {r["name"]: r for r in sb.api("/api/queues/%2F") if r["name"] in (q, q2)}
        assert _counts(rows[q]["message_stats"], QUEUE_KEYS) == want
        assert _counts(rows[q2]["message_stats"], keys2) == want2
    finally:
        ch = conn.channel() if ch.is_closed else ch
        ch.queue_delete(q)
        ch.queue_delete(q2)
        conn.close()


OVERVIEW_KEYS = (
    "publish",
    "confirm",
    "drop_unroutable",
    "return_unroutable",
    "deliver_no_ack",
    "deliver_get",
)


def test_overview_message_stats(sb: StatsBroker) -> None:
    def now() -> dict[str, int]:
        return _counts(sb.api("/api/overview")["message_stats"], OVERVIEW_KEYS)

    before = now()
    q = _name("q")
    conn = sb.connect()
    ch = conn.channel()
    try:
        ch.queue_declare(q)
        ch.confirm_delivery()
        for i in range(20):
            ch.basic_publish("", q, f"m{i}".encode())
        for _ in range(3):  # unroutable, dropped
            ch.basic_publish("amq.direct", _name("nowhere"), b"x")
        for _ in range(2):  # unroutable, mandatory: returned
            with pytest.raises(pika.exceptions.UnroutableError):
                ch.basic_publish("amq.direct", _name("nowhere"), b"x", mandatory=True)
        got: list[bytes] = []
        ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
        tries = 200
        while len(got) < 20 and tries:
            conn.process_data_events(time_limit=0.1)
            tries -= 1
        assert len(got) == 20
        delta = {
            "publish": 25,
            "confirm": 25,
            "drop_unroutable": 3,
            "return_unroutable": 2,
            "deliver_no_ack": 20,
            "deliver_get": 20,
        }

        def moved() -> dict[str, int]:
            n = now()
            return {k: n[k] - before[k] for k in OVERVIEW_KEYS}

        if sb.workers is None:  # a shared RabbitMQ: others publish too
            assert wait_for(lambda: all(moved()[k] >= v for k, v in delta.items())), moved()
        else:
            assert wait_for(lambda: moved() == delta), moved()
        overview = sb.api("/api/overview")
        assert overview["object_totals"]["channels"] >= 1
        for key in ("publish", "deliver_get", "confirm", "ack"):
            assert isinstance(overview["message_stats"][key + "_details"]["rate"], int | float)
        churn = overview["churn_rates"]
        for key in ("connection_created", "channel_created", "queue_declared", "queue_created"):
            assert churn[key] >= 1, churn
    finally:
        ch = conn.channel() if ch.is_closed else ch
        ch.queue_delete(q)
        conn.close()


def test_rates_from_samples(sb: StatsBroker) -> None:
    """While a publisher keeps going, the publish rates become positive (rates come from
    successive samples, RabbitMQ's every 5 s)."""
    q = _name("q")
    conn = sb.connect()
    ch = conn.channel()
    try:
        ch.queue_declare(q, arguments={"x-max-length": 1000})

        def publishing_rate() -> float:
            for _ in range(50):
                ch.basic_publish("", q, b"x")
            conn.process_data_events(time_limit=0.05)
            row = sb.api(f"/api/queues/%2F/{q}")
            rate = row.get("message_stats", {}).get("publish_details", {}).get("rate", 0.0)
            total = sb.api("/api/overview")["message_stats"]["publish_details"]["rate"]
            return float(rate) if rate and total else 0.0

        assert wait_for(publishing_rate, timeout=40) > 0
    finally:
        ch.queue_delete(q)
        conn.close()


def test_exchange_message_stats(sb: StatsBroker) -> None:
    """``publish_in`` counts the publishes to an exchange, ``publish_out`` each copy it
    routed to a queue (directly, through an exchange-to-exchange binding or an alternate
    exchange), on the exchange published to; a tx publish counts at commit, a rolled
    back one never; the key is absent until there is a count (RabbitMQ's shapes). With
    3 workers the publishers are four connections (spread over the workers) and the
    counts are the sum over the workers' replicas."""
    p = _name("x")
    fan, e2e, lone, ae, withae = (p + s for s in ("-fan", "-e2e", "-lone", "-ae", "-withae"))
    queues = [f"{p}-q{i}" for i in range(3)]
    conns = [sb.connect() for _ in range(4)]
    ch = conns[0].channel()
    try:
        ch.exchange_declare(fan, "fanout")
        ch.exchange_declare(e2e, "direct")
        ch.exchange_declare(lone, "direct")
        ch.exchange_declare(ae, "fanout")
        ch.exchange_declare(withae, "direct", arguments={"alternate-exchange": ae})
        for q in queues:
            ch.queue_declare(q)
            ch.queue_bind(q, fan)
        ch.queue_bind(queues[0], ae)
        ch.exchange_bind(fan, e2e, "k")
        for c in conns:  # 8 to fan, 4 to e2e, 4 to lone, 4 to withae, 8 to the default
            pc = c.channel()
            pc.confirm_delivery()
            for _ in range(2):
                pc.basic_publish(fan, "", b"x")
                pc.basic_publish("", queues[1], b"x")
            pc.basic_publish(e2e, "k", b"x")
            pc.basic_publish(lone, "k", b"x")
            pc.basic_publish(withae, "nowhere", b"x")
        tx = conns[1].channel()
        tx.tx_select()
        tx.basic_publish(fan, "", b"x")
        tx.tx_rollback()
        tx.basic_publish(fan, "", b"x")
        tx.tx_commit()  # fan: 9 in, 27 out
        want = {
            fan: {"publish_in": 9, "publish_out": 27},
            e2e: {"publish_in": 4, "publish_out": 12},
            lone: {"publish_in": 4},
            withae: {"publish_in": 4, "publish_out": 4},
        }
        keys = ("publish_in", "publish_out")

        def stats_of(name: str) -> dict[str, int]:
            got = sb.api(f"/api/exchanges/%2F/{name}").get("message_stats", {})
            return {k: got[k] for k in keys if k in got}

        for name, counts in want.items():
            assert wait_for(lambda n=name, c=counts: stats_of(n) == c), (name, stats_of(name))
        one = sb.api(f"/api/exchanges/%2F/{fan}")["message_stats"]
        for k in keys:
            assert isinstance(one[k + "_details"]["rate"], int | float)
        assert "message_stats" not in sb.api(f"/api/exchanges/%2F/{ae}")
        rows = {r["name"]: r for r in sb.api("/api/exchanges") if r["vhost"] == "/"}
        for name, counts in want.items():
            got = rows[name]["message_stats"]
            assert {k: got[k] for k in keys if k in got} == counts
        assert "message_stats" not in rows[ae]
        default = rows[""]["message_stats"]  # others publish to it too: lower bounds
        assert default["publish_in"] >= 8 and default["publish_out"] >= 8, default
        page = sb.api(f"/api/exchanges/%2F?page=1&page_size=100&name={p}")
        assert {r["name"]: "message_stats" in r for r in page["items"]} == {
            fan: True,
            e2e: True,
            lone: True,
            ae: False,
            withae: True,
        }
    finally:
        for q in queues:
            ch.queue_delete(q)
        for x in (fan, e2e, lone, ae, withae):
            ch.exchange_delete(x)
        for c in conns:
            c.close()


def test_queue_page_rows_are_whole(sb: StatsBroker) -> None:
    """A page of ``/api/queues`` has the same rows as the whole list (counts and
    ``message_stats`` included: a page's rows are completed after paging), and sorting
    by a count orders the page by it."""
    p = _name("page")
    big, small = p + "-a", p + "-b"
    conn = sb.connect()
    ch = conn.channel()
    try:
        ch.queue_declare(big)
        ch.queue_declare(small)
        ch.confirm_delivery()
        for _ in range(3):
            ch.basic_publish("", big, b"x")
        ch.basic_publish("", small, b"x")

        def page(extra: str = "") -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = sb.api(
                f"/api/queues/%2F?page=1&page_size=100&name={p}{extra}"
            )["items"]
            return items

        def counted() -> bool:
            rows = {r["name"]: r for r in page()}
            return [rows.get(q, {}).get("messages") for q in (big, small)] == [3, 1] and all(
                rows[q].get("message_stats", {}).get("publish") for q in (big, small)
            )

        assert wait_for(counted), page()
        whole = {r["name"]: r for r in sb.api("/api/queues/%2F") if r["name"].startswith(p)}
        for row in page():
            assert set(row) == set(whole[row["name"]]), row["name"]
            for k in ("messages", "messages_ready", "consumers", "durable", "arguments"):
                assert row[k] == whole[row["name"]][k], k
        ordered = [r["name"] for r in page("&sort=messages&sort_reverse=true")]
        assert ordered == [big, small]
        assert [r["name"] for r in page("&sort=messages")] == [small, big]
        assert [r["name"] for r in page("&sort=name&sort_reverse=true")] == [small, big]
    finally:
        ch.queue_delete(big)
        ch.queue_delete(small)
        conn.close()
