"""Management API listing and closing clients (issue 14, item 1): connections,
channels and consumers gathered from every worker, ``DELETE /api/connections/{name}``
with ``X-Reason`` (pika sees 320 CONNECTION_FORCED with it), the management tag's
view, ``rabbitmqadmin`` and AMQPStorm's client; 1 and 3 workers, and RabbitMQ with
``SHARDMQ_TEST_MGMT_URL``/``SHARDMQ_TEST_URI``.

Invariants: only 127.0.0.1 is contacted; unique names, cleaned up; RabbitMQ's listings
lag by up to 5 s, so waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
import pytest

from tests.integration.test_management import (
    AUTH,
    RABBITMQADMIN,
    Mgmt,
    _name,
    _rabbitmqadmin,
    _user,
    wait_for,
)
from tests.integration.test_management_ops import Ops, ops

__all__ = ["ops"]  # the fixture


def _connect(m: Mgmt, name: str, user: tuple[str, str] = AUTH) -> pika.BlockingConnection:
    params = pika.ConnectionParameters(
        "127.0.0.1",
        m.amqp_port,
        credentials=pika.PlainCredentials(*user),
        client_properties={"connection_name": name},
        heartbeat=30,
    )
    return pika.BlockingConnection(params)


def _local_port(conn: pika.BlockingConnection) -> int:
    return int(conn._impl._transport._sock.getsockname()[1])  # type: ignore[attr-defined]


def _conn_name(m: Mgmt, conn: pika.BlockingConnection) -> str:
    return f"127.0.0.1:{_local_port(conn)} -> 127.0.0.1:{m.amqp_port}"


def _path(name: str) -> str:
    return quote(name, safe="")


def _listed(m: Mgmt, path: str, auth: tuple[str, str] = AUTH) -> list[dict[str, Any]]:
    r = m.call("GET", path, auth=auth)
    assert r.status_code == 200, (path, r.status_code, r.text)
    rows: list[dict[str, Any]] = r.json()
    return rows


def _closed_by_broker(conn: pika.BlockingConnection) -> tuple[int, str]:
    """The (code, text) of the broker's connection.close, waiting for it."""
    for _ in range(100):
        try:
            conn.process_data_events(0.2)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            return exc.reply_code, exc.reply_text
    raise AssertionError("the broker did not close the connection")


# ---------------------------------------------------------------------- listings
def test_connections_channels_consumers(ops: Ops) -> None:
    m = ops.m
    label = _name("client")
    conns = [_connect(m, f"{label}-{i}") for i in range(4)]  # spread over the workers
    q = _name("q")
    try:
        ch = conns[0].channel()
        ch.basic_qos(prefetch_count=7)
        ch.queue_declare(q)
        ch.basic_consume(q, lambda *a: None, consumer_tag="ctag-1", arguments={"x-priority": 2})
        confirm = conns[0].channel()
        confirm.confirm_delivery()
        names = {_conn_name(m, c) for c in conns}

        def all_listed() -> bool:
            return names <= {r["name"] for r in _listed(m, "/api/connections")}

        assert wait_for(all_listed)
        rows = {r["name"]: r for r in _listed(m, "/api/connections")}
        first = _conn_name(m, conns[0])
        row = rows[first]
        assert row["user"] == "guest" and row["vhost"] == "/"
        assert (row["peer_host"], row["peer_port"]) == ("127.0.0.1", _local_port(conns[0]))
        assert (row["host"], row["port"]) == ("127.0.0.1", m.amqp_port)
        assert row["protocol"] == "AMQP 0-9-1" and row["state"] == "running"
        assert row["auth_mechanism"] == "PLAIN" and row["ssl"] is False
        assert row["client_properties"]["connection_name"] == f"{label}-0"
        assert row["client_properties"]["capabilities"]["publisher_confirms"] is True
        assert row["timeout"] == 30 and row["frame_max"] == 131072
        assert isinstance(row["connected_at"], int) and row["connected_at"] > 0
        one = m.ok("GET", f"/api/connections/{_path(first)}")
        assert one["name"] == first and one["client_properties"] == row["client_properties"]
        assert names <= {r["name"] for r in _listed(m, "/api/vhosts/%2F/connections")}
        # channels: RabbitMQ's statistics lag, hence the polls
        chpath = f"/api/connections/{_path(first)}/channels"
        assert wait_for(lambda: len(_listed(m, chpath)) == 2)

        def channels_settled() -> list[dict[str, Any]] | None:
            chans = sorted(_listed(m, chpath), key=lambda c: c["number"])
            ok = chans[0]["consumer_count"] == 1 and chans[1]["confirm"] is True
            return chans if ok else None

        chans = wait_for(channels_settled)
        assert chans, _listed(m, chpath)
        assert chans[0]["name"] == f"{first} (1)" and chans[0]["prefetch_count"] == 7
        assert chans[0]["connection_details"] == {
            "name": first,
            "peer_host": "127.0.0.1",
            "peer_port": _local_port(conns[0]),
        }
        assert chans[1]["confirm"] is True and chans[1]["consumer_count"] == 0
        assert {f"{first} (1)", f"{first} (2)"} <= {c["name"] for c in _listed(m, "/api/channels")}
        assert m.ok("GET", f"/api/channels/{_path(first + ' (2)')}")["number"] == 2
        page = m.ok("GET", "/api/channels?page=1&page_size=1")
        assert page["item_count"] == 1 and page["total_count"] >= 2

        def consumer() -> dict[str, Any] | None:
            rows = [c for c in _listed(m, "/api/consumers/%2F") if c["queue"]["name"] == q]
            return rows[0] if rows else None

        c = wait_for(consumer)
        assert c is not None
        assert c["consumer_tag"] == "ctag-1" and c["queue"] == {"name": q, "vhost": "/"}
        assert c["ack_required"] is True and c["exclusive"] is False
        assert c["prefetch_count"] == 7 and c["arguments"] == {"x-priority": 2}
        assert c["channel_details"]["connection_name"] == first
        assert c["channel_details"]["number"] == 1
        assert q in {c["queue"]["name"] for c in _listed(m, "/api/consumers")}
        for path in (
            f"/api/connections/{_name('nope')}",
            f"/api/vhosts/{_name('novhost')}/connections",
            f"/api/consumers/{_name('novhost')}",
        ):
            assert m.call("GET", path).status_code == 404, path
        if m.workers is not None:  # RabbitMQ 3.10 answers 500 there
            assert m.call("GET", f"/api/connections/{_name('nope')}/channels").status_code == 404
    finally:
        conns[0].channel().queue_delete(q)
        for conn in conns:
            conn.close()


def test_traffic_counts(ops: Ops) -> None:
    """``recv_oct``/``recv_cnt``/``send_oct``/``send_cnt`` grow with what the client sent
    and got (RabbitMQ's counts lag: polled), with their rate objects."""
    m = ops.m
    conn = _connect(m, _name("octets"))
    q = _name("q")
    try:
        ch = conn.channel()
        ch.queue_declare(q)
        for _ in range(40):
            ch.basic_publish("", q, b"x" * 1000)
        for _ in range(10):
            assert ch.basic_get(q, auto_ack=True)[0] is not None
        path = f"/api/connections/{_path(_conn_name(m, conn))}"

        def counted() -> dict[str, Any] | None:
            r = m.call("GET", path)
            row: dict[str, Any] = r.json() if r.status_code == 200 else {}
            ok = row.get("recv_oct", 0) >= 40_000 and row.get("send_oct", 0) >= 10_000
            return row if ok else None

        row = wait_for(counted)
        assert row, m.call("GET", path).text
        assert row["recv_cnt"] >= 1 and row["send_cnt"] >= 1
        for k in ("recv_oct_details", "send_oct_details"):
            assert isinstance(row[k]["rate"], int | float)
        listed = {r["name"]: r for r in _listed(m, "/api/connections")}[row["name"]]
        assert listed["recv_oct"] >= 40_000
    finally:
        ch.queue_delete(q)
        conn.close()


def test_single_active_consumer_activity(ops: Ops) -> None:
    """RabbitMQ 3.10's ``active``/``activity_status``: the first consumer of an
    ``x-single-active-consumer`` queue is "single_active", the others "waiting"
    (inactive), a plain queue's consumers "up"; when the active one goes, the next one
    is. Consumers on four connections (spread over the workers: the queue's owner
    settles the others')."""
    m = ops.m
    conns = [_connect(m, _name(f"sac{i}")) for i in range(4)]
    q, plain = _name("sac"), _name("plain")
    chans = [c.channel() for c in conns]
    try:
        chans[0].queue_declare(q, arguments={"x-single-active-consumer": True})
        chans[0].queue_declare(plain)
        for i, ch in enumerate(chans):
            ch.basic_consume(q, lambda *a: None, consumer_tag=f"sac-{i}")
        chans[1].basic_consume(plain, lambda *a: None, consumer_tag="plain-1")

        def states(queue: str) -> dict[str, tuple[bool, str]]:
            rows = [c for c in _listed(m, "/api/consumers/%2F") if c["queue"]["name"] == queue]
            return {c["consumer_tag"]: (c["active"], c["activity_status"]) for c in rows}

        want = {f"sac-{i}": (False, "waiting") for i in range(1, 4)}
        want["sac-0"] = (True, "single_active")
        assert wait_for(lambda: states(q) == want), states(q)
        assert wait_for(lambda: states(plain) == {"plain-1": (True, "up")}), states(plain)
        assert all(not k.startswith("_") for c in _listed(m, "/api/consumers") for k in c)
        chans[0].basic_cancel("sac-0")
        del want["sac-0"]
        want["sac-1"] = (True, "single_active")
        assert wait_for(lambda: states(q) == want), states(q)
    finally:
        chans[0].queue_delete(q)
        chans[0].queue_delete(plain)
        for conn in conns:
            conn.close()


# ---------------------------------------------------------------------- closing
def test_close_connection_with_reason(ops: Ops) -> None:
    m = ops.m
    for headers, text in (
        ({"X-Reason": "maintenance window"}, "CONNECTION_FORCED - maintenance window"),
        ({}, "CONNECTION_FORCED - Closed via management plugin"),
    ):
        conn = _connect(m, _name("doomed"))
        name = _conn_name(m, conn)
        assert wait_for(lambda name=name: m.call("GET", f"/api/connections/{_path(name)}").ok)
        import requests

        r = requests.delete(
            f"{m.url}/api/connections/{_path(name)}", auth=AUTH, headers=headers, timeout=30
        )
        assert (r.status_code, r.content) == (204, b"")
        assert _closed_by_broker(conn) == (320, text)
        gone = f"/api/connections/{_path(name)}"
        assert wait_for(lambda gone=gone: m.call("GET", gone).status_code == 404)
    r = m.call("DELETE", f"/api/connections/{_name('nope')}")
    assert (r.status_code, r.json()) == (404, {"error": "Object Not Found", "reason": "Not Found"})


def test_management_user_sees_own_connections(ops: Ops) -> None:
    m = ops.m
    man, mon = _user(m, "management"), _user(m, "monitoring")
    perm = {"configure": ".*", "write": ".*", "read": ".*"}
    for u in (man, mon):
        assert m.call("PUT", f"/api/permissions/%2F/{u}", perm).status_code == 201
    mine = _connect(m, _name("mine"), (man, "pw"))
    theirs = _connect(m, _name("theirs"))
    try:
        mine_name, their_name = _conn_name(m, mine), _conn_name(m, theirs)

        def seen(auth: tuple[str, str]) -> set[str]:
            return {r["name"] for r in _listed(m, "/api/connections", auth)}

        assert wait_for(lambda: {mine_name, their_name} <= seen((mon, "pw")))
        assert wait_for(lambda: mine_name in seen((man, "pw")))
        assert their_name not in seen((man, "pw"))
        refused = {"error": "not_authorised", "reason": "User not authorised to access object"}
        for method in ("GET", "DELETE"):
            r = m.call(method, f"/api/connections/{_path(their_name)}", auth=(man, "pw"))
            assert (r.status_code, r.json()) == (401, refused), method
        r = m.call("GET", f"/api/connections/{_path(their_name)}/channels", auth=(man, "pw"))
        assert r.status_code == 401
        assert m.call("GET", f"/api/connections/{_path(their_name)}").status_code == 200
        r = m.call("DELETE", f"/api/connections/{_path(mine_name)}", auth=(man, "pw"))
        assert r.status_code == 204
        assert _closed_by_broker(mine)[0] == 320
    finally:
        for conn in (mine, theirs):
            if conn.is_open:
                conn.close()
        for u in (man, mon):
            m.call("DELETE", f"/api/users/{u}")


# ---------------------------------------------------------------------- third-party clients
@pytest.mark.skipif(not RABBITMQADMIN.exists(), reason="tests/support/rabbitmqadmin is absent")
def test_rabbitmqadmin_connections(ops: Ops) -> None:
    m = ops.m
    conn = _connect(m, _name("admin"))
    name = _conn_name(m, conn)

    def listed() -> bool:
        rows = json.loads(_rabbitmqadmin(m, "-f", "raw_json", "list", "connections"))
        return name in {r["name"] for r in rows}

    assert wait_for(listed)
    assert "connection closed" in _rabbitmqadmin(m, "close", "connection", f"name={name}")
    assert _closed_by_broker(conn)[0] == 320


def test_amqpstorm_connections(ops: Ops) -> None:
    from amqpstorm.management import ManagementApi

    m = ops.m
    api = ManagementApi(m.url, *AUTH, timeout=30)
    conn = _connect(m, _name("storm"))
    name = _conn_name(m, conn)
    assert wait_for(lambda: name in {r["name"] for r in api.connection.list()})
    assert api.connection.get(name)["user"] == "guest"
    api.connection.close(name, reason="amqpstorm says bye")
    assert _closed_by_broker(conn) == (320, "CONNECTION_FORCED - amqpstorm says bye")
