"""Management API operations that run on the worker owning the object (issue 14, items
1 and 5): a queue's purge and get (``/contents``, ``/get``), ``ctl purge_queue`` and
``delete_queue``, with ``requests``, ``rabbitmqadmin`` and AMQPStorm's management
client, against 1 and 3 workers (or, with ``SHARDMQ_TEST_MGMT_URL`` and
``SHARDMQ_TEST_URI``, the same checks against RabbitMQ).

Owns: the ``ops`` fixture (a broker with the API on a free port, and its data dir for
ctl). Invariants: only 127.0.0.1 is contacted; every object a test makes has a unique
name and is deleted; no timing assertions (RabbitMQ's counts lag: bounded polls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
import pytest

from tests.integration.test_management import (
    AUTH,
    EXTERNAL,
    RABBITMQADMIN,
    Mgmt,
    _name,
    _params,
    _rabbitmqadmin,
    start_mgmt,
    wait_for,
)
from tests.support.launch import REPO_ROOT, terminate


@dataclass
class Ops:
    m: Mgmt
    data_dir: Path | None  # None: an external broker

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.data_dir is not None
        cmd = [sys.executable, "-m", "shardmq", "ctl", "--data-dir", str(self.data_dir), *args]
        return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module", params=_params())
def ops(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    if request.param is None:
        assert EXTERNAL is not None and urlsplit(EXTERNAL).hostname == "127.0.0.1"
        amqp = urlsplit(os.environ.get("SHARDMQ_TEST_URI", "amqp://127.0.0.1:5672/")).port or 5672
        yield Ops(Mgmt(EXTERNAL.rstrip("/"), amqp, None), None)
        return
    tmp = tmp_path_factory.mktemp("mgmtops")
    m, proc, log = start_mgmt(tmp, request.param)
    try:
        yield Ops(m, tmp / f"data-{m.amqp_port}")
    finally:
        code = terminate(proc, 20)
        assert code == 0, log.read_text(errors="replace")


def _ready(m: Mgmt, ch: Any, q: str) -> int:
    return int(ch.queue_declare(q, passive=True).method.message_count)


def _fill(ch: Any, q: str) -> None:
    props = pika.BasicProperties(
        content_type="text/plain",
        delivery_mode=2,
        headers={"a": 1, "b": "x", "c": [1, "y"], "d": {"e": True}},
        timestamp=1700000000,
        priority=3,
        message_id="m1",
    )
    ch.basic_publish("", q, b"hello", props)
    ch.basic_publish("", q, b"\xff\x00bin")
    ch.basic_publish("", q, b"third message long")


def _get(m: Mgmt, q: str, **body: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = m.ok("POST", f"/api/queues/%2F/{q}/get", body, status=(200,))
    return rows


# ---------------------------------------------------------------------- get
def test_get_ack_modes(ops: Ops) -> None:
    m = ops.m
    conn = m.pika()
    ch = conn.channel()
    # several queues, so that with 3 workers each worker owns some
    queues = [_name("get") for _ in range(4)]
    try:
        for q in queues:
            ch.queue_declare(q)
            _fill(ch, q)
            assert wait_for(lambda q=q: _ready(m, ch, q) == 3)
            rows = _get(m, q, count=5, ackmode="ack_requeue_true", encoding="auto", truncate=50000)
            assert [r["payload"] for r in rows] == ["hello", "/wBiaW4=", "third message long"]
            assert [r["payload_encoding"] for r in rows] == ["string", "base64", "string"]
            assert [r["message_count"] for r in rows] == [2, 1, 0]
            assert [r["payload_bytes"] for r in rows] == [5, 5, 18]
            assert not any(r["redelivered"] for r in rows)
            first = rows[0]
            assert (first["exchange"], first["routing_key"]) == ("", q)
            assert first["properties"] == {
                "content_type": "text/plain",
                "delivery_mode": 2,
                "headers": {"a": 1, "b": "x", "c": [1, "y"], "d": {"e": True}},
                "timestamp": 1700000000,
                "priority": 3,
                "message_id": "m1",
            }
            assert rows[1]["properties"] == []  # RabbitMQ's answer for no properties
            # requeued in order, now redelivered; reject_requeue_true gives distinct ones
            rows = _get(m, q, count=2, ackmode="reject_requeue_true", encoding="auto")
            assert [r["payload"] for r in rows] == ["hello", "/wBiaW4="]
            assert all(r["redelivered"] for r in rows)
            rows = _get(m, q, count=1, ackmode="ack_requeue_true", encoding="base64", truncate=3)
            assert (rows[0]["payload"], rows[0]["payload_bytes"]) == ("aGVs", 5)
            assert _get(m, q, count=0, ackmode="ack_requeue_true", encoding="auto") == []
            assert _ready(m, ch, q) == 3  # nothing taken so far
            rows = _get(m, q, count=2, ackmode="ack_requeue_false", encoding="auto")
            assert [r["message_count"] for r in rows] == [2, 1]
            assert wait_for(lambda q=q: _ready(m, ch, q) == 1)
            rows = _get(m, q, count=9, ackmode="ack_requeue_false", encoding="auto")
            assert [r["payload"] for r in rows] == ["third message long"]
            assert _get(m, q, count=1, ackmode="ack_requeue_true", encoding="auto") == []
    finally:
        for q in queues:
            ch.queue_delete(q)
        conn.close()


def test_get_reject_dead_letters(ops: Ops) -> None:
    m = ops.m
    conn = m.pika()
    ch = conn.channel()
    dlx, q, dead = _name("dlx"), _name("q"), _name("dead")
    try:
        ch.exchange_declare(dlx, "fanout")
        ch.queue_declare(dead)
        ch.queue_bind(dead, dlx)
        ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
        ch.basic_publish("", q, b"doomed")
        assert wait_for(lambda: _ready(m, ch, q) == 1)
        rows = _get(m, q, count=1, ackmode="reject_requeue_false", encoding="auto")
        assert [r["payload"] for r in rows] == ["doomed"]
        assert wait_for(lambda: _ready(m, ch, dead) == 1)
        assert _ready(m, ch, q) == 0
        _, props, body = ch.basic_get(dead, auto_ack=True)
        assert body == b"doomed" and props.headers["x-death"][0]["reason"] == "rejected"
    finally:
        ch.queue_delete(q)
        ch.queue_delete(dead)
        ch.exchange_delete(dlx)
        conn.close()


@pytest.mark.skipif(bool(EXTERNAL), reason="shardmq's answer budget (RabbitMQ has none)")
def test_get_large_messages_within_budget(ops: Ops) -> None:
    """A get answers at most ~GET_BUDGET payload bytes: what it does not answer stays in
    the queue, even with ack_requeue_false (nothing taken is ever lost)."""
    m = ops.m
    conn = m.pika()
    ch = conn.channel()
    q = _name("big")
    body = b"z" * (4_500_000)
    try:
        ch.queue_declare(q)
        for _ in range(3):
            ch.basic_publish("", q, body)
        assert wait_for(lambda: _ready(m, ch, q) == 3)
        rows = _get(m, q, count=3, ackmode="ack_requeue_false", encoding="auto")
        assert [r["payload_bytes"] for r in rows] == [len(body), len(body)]
        assert rows[0]["payload"] == body.decode()
        assert wait_for(lambda: _ready(m, ch, q) == 1)
    finally:
        ch.queue_delete(q)
        conn.close()


def test_get_bad_input(ops: Ops) -> None:
    m = ops.m
    q = _name("q")
    assert m.call("PUT", f"/api/queues/%2F/{q}", {"durable": False}).status_code == 201
    try:
        path = f"/api/queues/%2F/{q}/get"
        r = m.call("POST", path, {})
        assert r.status_code == 400
        assert r.json()["reason"] == (
            "[{key_missing,ackmode},{key_missing,count},{key_missing,encoding}]"
        )
        r = m.call("POST", path, {"count": 1})
        assert r.json()["reason"] == "[{key_missing,ackmode},{key_missing,encoding}]"
        r = m.call("POST", path, {"count": 1, "ackmode": "ack_requeue_true", "encoding": "zz"})
        assert (r.status_code, r.json()["reason"]) == (
            400,
            "Unsupported encoding. Please use auto or base64.",
        )
        r = m.call("POST", path, {"count": "x", "ackmode": "ack_requeue_true", "encoding": "auto"})
        assert r.status_code == 400
        r = m.call("POST", path, b"{nope")
        assert (r.status_code, r.json()) == (400, {"error": "bad_request", "reason": "not_json"})
        nope = _name("nope")
        r = m.call(
            "POST",
            f"/api/queues/%2F/{nope}/get",
            {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"},
        )
        assert r.status_code == 404
        r = m.call("DELETE", f"/api/queues/%2F/{nope}/contents")
        assert (r.status_code, r.json()) == (
            404,
            {"error": "Object Not Found", "reason": "Not Found"},
        )
        r = m.call("DELETE", f"/api/queues/{_name('novhost')}/{q}/contents")
        assert r.status_code == 404
    finally:
        m.call("DELETE", f"/api/queues/%2F/{q}")


def test_exclusive_queue_refused(ops: Ops) -> None:
    m = ops.m
    conn = m.pika()
    ch = conn.channel()
    try:
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"mine")
        assert wait_for(lambda: _ready(m, ch, q) == 1)
        body = {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}
        r = m.call("POST", f"/api/queues/%2F/{q}/get", body)
        assert r.status_code == 400
        assert r.json()["reason"].startswith("405 RESOURCE_LOCKED - cannot obtain exclusive")
        r = m.call("DELETE", f"/api/queues/%2F/{q}/contents")
        assert r.status_code == 400
        assert r.json()["reason"].startswith("cannot obtain exclusive access to locked queue")
        assert _ready(m, ch, q) == 1
    finally:
        conn.close()


# ---------------------------------------------------------------------- purge
def test_purge(ops: Ops) -> None:
    m = ops.m
    conn = m.pika()
    ch = conn.channel()
    queues = [_name("purge") for _ in range(4)]
    try:
        for q in queues:
            ch.queue_declare(q)
            for i in range(5):
                ch.basic_publish("", q, f"m{i}".encode())
            assert wait_for(lambda q=q: _ready(m, ch, q) == 5)
            # one message held unacked by a consumer: a purge leaves it alone
            method, _, _ = ch.basic_get(q, auto_ack=False)
            assert method is not None
            r = m.call("DELETE", f"/api/queues/%2F/{q}/contents")
            assert (r.status_code, r.content) == (204, b"")
            assert _ready(m, ch, q) == 0
            ch.basic_nack(method.delivery_tag, requeue=True)
            assert wait_for(lambda q=q: _ready(m, ch, q) == 1)
            ch.basic_publish("", q, b"after")
            assert wait_for(lambda q=q: _ready(m, ch, q) == 2)
            rows = _get(m, q, count=5, ackmode="ack_requeue_false", encoding="auto")
            assert [r["payload"] for r in rows] == ["m0", "after"]
    finally:
        for q in queues:
            ch.queue_delete(q)
        conn.close()


# ---------------------------------------------------------------------- third-party clients
@pytest.mark.skipif(not RABBITMQADMIN.exists(), reason="tests/support/rabbitmqadmin is absent")
def test_rabbitmqadmin_get_purge(ops: Ops) -> None:
    m = ops.m
    conn = m.pika()
    ch = conn.channel()
    q = _name("q")
    try:
        ch.queue_declare(q)
        ch.basic_publish("", q, b"one")
        ch.basic_publish("", q, b"two")
        assert wait_for(lambda: _ready(m, ch, q) == 2)
        out = json.loads(
            _rabbitmqadmin(
                m, "-f", "raw_json", "get", f"queue={q}", "count=2", "ackmode=ack_requeue_true"
            )
        )
        assert [r["payload"] for r in out] == ["one", "two"]
        assert _ready(m, ch, q) == 2
        assert "queue purged" in _rabbitmqadmin(m, "purge", "queue", f"name={q}")
        assert _ready(m, ch, q) == 0
    finally:
        ch.queue_delete(q)
        conn.close()


def test_amqpstorm_get_purge(ops: Ops) -> None:
    from amqpstorm.management import ManagementApi

    m = ops.m
    api = ManagementApi(m.url, *AUTH, timeout=30)
    conn = m.pika()
    ch = conn.channel()
    q = _name("q")
    try:
        ch.queue_declare(q)
        for body in (b"a", b"b", b"c"):
            ch.basic_publish("", q, body)
        assert wait_for(lambda: _ready(m, ch, q) == 3)
        got = api.basic.get(q, virtual_host="/", requeue=True, count=2)
        assert [msg.body for msg in got] == ["a", "b"]
        got = api.basic.get(q, virtual_host="/", requeue=False)
        assert [msg.body for msg in got] == ["a"]
        assert wait_for(lambda: _ready(m, ch, q) == 2)
        api.queue.purge(q, virtual_host="/")
        assert _ready(m, ch, q) == 0
    finally:
        ch.queue_delete(q)
        conn.close()


# ---------------------------------------------------------------------- ctl
@pytest.mark.skipif(bool(EXTERNAL), reason="ctl talks to a broker's data dir")
def test_ctl_purge_and_delete_queue(ops: Ops) -> None:
    m = ops.m
    conn = m.pika()
    ch = conn.channel()
    queues = [_name("ctl") for _ in range(4)]
    try:
        for q in queues:
            ch.queue_declare(q)
            ch.basic_publish("", q, b"x")
            ch.basic_publish("", q, b"y")
        for q in queues:
            assert wait_for(lambda q=q: _ready(m, ch, q) == 2)
            res = ops.ctl("purge_queue", q)
            assert res.returncode == 0, res.stderr
            assert res.stdout == f"Purging queue '{q}' in vhost '/' ...\n"
            assert _ready(m, ch, q) == 0
        ch.basic_publish("", queues[0], b"z")
        assert wait_for(lambda: _ready(m, ch, queues[0]) == 1)
        res = ops.ctl("delete_queue", "--if-empty", queues[0])
        assert res.returncode == 1 and "not empty" in res.stderr, res.stderr
        res = ops.ctl("delete_queue", queues[0])
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[-1] == "Queue was successfully deleted with 1 messages"
        assert m.call("GET", f"/api/queues/%2F/{queues[0]}").status_code == 404
        res = ops.ctl("purge_queue", queues[0])
        assert (res.returncode, res.stderr) == (
            1,
            f"Error:\nQueue '{queues[0]}' in vhost '/' not found\n",
        )
        assert ops.ctl("delete_queue").returncode == 2  # usage
    finally:
        for q in queues:
            ch.queue_delete(q)
        conn.close()


def test_ctl_unreachable(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "shardmq", "ctl", "--data-dir", str(tmp_path), "purge_queue", "q"]
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 69, res.stderr


# ---------------------------------------------------------------------- ctl listings
def _rows(res: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = json.loads(res.stdout)
    return rows


def _table(res: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert res.returncode == 0, res.stderr
    return [line.split("\t") for line in res.stdout.splitlines()[1:]]  # after "Listing ..."


@pytest.mark.skipif(bool(EXTERNAL), reason="ctl talks to a broker's data dir")
def test_ctl_listings(ops: Ops) -> None:
    m = ops.m
    conn = m.pika()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=5)
    q, idle, x = _name("lq"), _name("idle"), _name("lx")
    try:
        ch.queue_declare(q, durable=True)
        ch.queue_declare(idle, arguments={"x-max-length": 10})
        ch.exchange_declare(x, "topic")
        ch.queue_bind(q, x, "a.#")
        for body in (b"1", b"2", b"3"):
            ch.basic_publish("", idle, body)
        ch.basic_consume(q, lambda *a: None, consumer_tag="ctl-tag")
        assert wait_for(lambda: _ready(m, ch, idle) == 3)
        table = _table(ops.ctl("list_queues"))
        assert table[0] == ["name", "messages"]
        assert [idle, "3"] in table and [q, "0"] in table
        rows = {
            r["name"]: r
            for r in _rows(
                ops.ctl(
                    "list_queues",
                    "--formatter",
                    "json",
                    "name",
                    "messages_ready",
                    "consumers",
                    "durable",
                    "arguments",
                )
            )
        }
        assert rows[idle] == {
            "name": idle,
            "messages_ready": 3,
            "consumers": 0,
            "durable": False,
            "arguments": {"x-max-length": 10},
        }
        assert rows[q]["consumers"] == 1 and rows[q]["durable"] is True
        res = ops.ctl("list_queues", "name", "bogus_column")
        assert res.returncode == 2 and "bogus_column" in res.stderr
        table = _table(ops.ctl("list_exchanges"))
        assert table[0] == ["name", "type"] and [x, "topic"] in table and ["", "direct"] in table
        rows = _rows(ops.ctl("list_bindings", "--formatter", "json"))
        assert {
            "source_name": x,
            "source_kind": "exchange",
            "destination_name": q,
            "destination_kind": "queue",
            "routing_key": "a.#",
            "arguments": {},
        } in rows
        port = _local_port(conn)
        rows = _rows(ops.ctl("list_connections", "--formatter", "json"))
        assert {
            "user": "guest",
            "peer_host": "127.0.0.1",
            "peer_port": port,
            "state": "running",
        } in rows
        names = [
            r["name"] for r in _rows(ops.ctl("list_connections", "--formatter", "json", "name"))
        ]
        name = f"127.0.0.1:{port} -> 127.0.0.1:{m.amqp_port}"
        assert name in names
        rows = _rows(
            ops.ctl(
                "list_channels",
                "--formatter",
                "json",
                "name",
                "connection",
                "prefetch_count",
                "consumer_count",
            )
        )
        assert {
            "name": f"{name} (1)",
            "connection": name,
            "prefetch_count": 5,
            "consumer_count": 1,
        } in rows
        rows = _rows(ops.ctl("list_consumers", "--formatter", "json"))
        assert {
            "queue_name": q,
            "channel_pid": f"{name} (1)",
            "consumer_tag": "ctl-tag",
            "ack_required": True,
            "prefetch_count": 5,
            "active": True,
            "arguments": {},
        } in rows
        # close_connection: the client gets 320 with the reason
        res = ops.ctl("close_connection", name, "ctl says bye")
        assert res.returncode == 0, res.stderr
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
            for _ in range(100):
                conn.process_data_events(0.2)
        assert (err.value.reply_code, err.value.reply_text) == (
            320,
            "CONNECTION_FORCED - ctl says bye",
        )
        res = ops.ctl("close_connection", name, "again")
        assert res.returncode == 1 and "not found" in res.stderr
    finally:
        if conn.is_open:
            conn.close()
        with m.pika() as c2:
            ch2 = c2.channel()
            ch2.queue_delete(q)
            ch2.queue_delete(idle)
            ch2.exchange_delete(x)


def _local_port(conn: pika.BlockingConnection) -> int:
    return int(conn._impl._transport._sock.getsockname()[1])  # type: ignore[attr-defined]


@pytest.mark.skipif(bool(EXTERNAL), reason="ctl talks to a broker's data dir")
def test_ctl_definitions_and_environment(ops: Ops, tmp_path: Path) -> None:
    m = ops.m
    q = _name("defq")
    path = tmp_path / "defs.json"
    res = ops.ctl("export_definitions", str(path))
    assert res.returncode == 0, res.stderr
    doc = json.loads(path.read_text())
    assert "guest" in {u["name"] for u in doc["users"]}
    assert q not in {x["name"] for x in doc["queues"]}
    doc["queues"].append(
        {"name": q, "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}}
    )
    path.write_text(json.dumps(doc))
    try:
        res = ops.ctl("import_definitions", str(path))
        assert res.returncode == 0, res.stderr
        assert m.ok("GET", f"/api/queues/%2F/{q}")["durable"] is True
        again = tmp_path / "again.json"
        assert ops.ctl("export_definitions", str(again)).returncode == 0
        assert q in {x["name"] for x in json.loads(again.read_text())["queues"]}
        bad = tmp_path / "bad.json"
        bad.write_text("{nope")
        res = ops.ctl("import_definitions", str(bad))
        assert res.returncode == 1 and "not valid JSON" in res.stderr
        res = ops.ctl("import_definitions", str(tmp_path / "missing.json"))
        assert res.returncode == 1
    finally:
        m.call("DELETE", f"/api/queues/%2F/{q}")
    env = _rows(ops.ctl("environment", "--formatter", "json"))
    assert isinstance(env, dict)
    assert env["server"]["port"] == m.amqp_port and env["server"]["workers"] == m.workers
    assert all("password" not in u for u in env["users"])
    res = ops.ctl("environment")
    assert res.returncode == 0 and f"server.port = {m.amqp_port}" in res.stdout


@pytest.mark.parametrize(
    "args",
    [["list_queues"], ["list_connections"], ["close_connection", "a", "b"], ["environment"]],
)
def test_ctl_listing_unreachable(tmp_path: Path, args: list[str]) -> None:
    cmd = [sys.executable, "-m", "shardmq", "ctl", "--data-dir", str(tmp_path), *args]
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 69, res.stderr
