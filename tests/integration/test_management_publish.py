"""The management API's publish (``POST /api/exchanges/{vhost}/{name}/publish``, issue 14
item 1) with ``requests``, ``rabbitmqadmin`` and AMQPStorm's management client, against
1 and 3 workers (or, with ``SHARDMQ_TEST_MGMT_URL`` and ``SHARDMQ_TEST_URI``, the same
checks against RabbitMQ): routing as an AMQP publish (default exchange, bindings across
workers, exchange-to-exchange, alternate exchange), properties, RabbitMQ's errors and
the write permission.

Invariants: only 127.0.0.1 is contacted; every object a test makes has a unique name and
is deleted; no timing assertions (bounded polls for counts that cross workers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.test_management import (
    AUTH,
    EXTERNAL,
    RABBITMQADMIN,
    Mgmt,
    _name,
    _params,
    _rabbitmqadmin,
    _user,
    start_mgmt,
    wait_for,
)
from tests.integration.test_management_ops import _ready
from tests.support.launch import terminate


@pytest.fixture(scope="module", params=_params())
def pub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mgmt]:
    """A broker with the API on a free port (or the external one)."""
    if request.param is None:
        assert EXTERNAL is not None and urlsplit(EXTERNAL).hostname == "127.0.0.1"
        amqp = urlsplit(os.environ.get("SHARDMQ_TEST_URI", "amqp://127.0.0.1:5672/")).port or 5672
        yield Mgmt(EXTERNAL.rstrip("/"), amqp, None)
        return
    m, proc, log = start_mgmt(tmp_path_factory.mktemp("mgmtpub"), request.param)
    try:
        yield m
    finally:
        code = terminate(proc, 20)
        assert code == 0, log.read_text(errors="replace")


PROPS = {
    "content_type": "text/plain",
    "delivery_mode": 2,
    "headers": {"a": 1, "b": "x", "c": [1, "y"], "d": {"e": True}},
    "timestamp": 1700000000,
    "priority": 3,
    "message_id": "m1",
    "correlation_id": "c1",
    "reply_to": "r1",
    "expiration": "600000",
    "type": "t1",
    "app_id": "ap",
    "user_id": "guest",
}


def _publish(m: Mgmt, exchange: str, rk: str, payload: str, **extra: Any) -> Any:
    body = {"properties": {}, "routing_key": rk, "payload": payload, "payload_encoding": "string"}
    body.update(extra)
    return m.call("POST", f"/api/exchanges/%2F/{exchange}/publish", body)


def _routed(m: Mgmt, exchange: str, rk: str, payload: str, **extra: Any) -> bool:
    r = _publish(m, exchange, rk, payload, **extra)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"routed"}
    routed: bool = r.json()["routed"]
    return routed


def test_publish_default_exchange_with_properties(pub: Mgmt) -> None:
    m = pub
    conn = m.pika()
    ch = conn.channel()
    queues = [_name("pub") for _ in range(4)]  # with 3 workers, some on each
    try:
        for q in queues:
            ch.queue_declare(q, durable=True)
            assert _routed(m, "amq.default", q, "hello", properties=PROPS)
            assert _routed(m, "amq.default", q, "AP8=", payload_encoding="base64")
            assert wait_for(lambda q=q: _ready(m, ch, q) == 2)
            method, props, body = ch.basic_get(q, auto_ack=True)
            assert body == b"hello" and method.exchange == "" and method.routing_key == q
            assert props.content_type == "text/plain" and props.delivery_mode == 2
            assert props.headers == {"a": 1, "b": "x", "c": [1, "y"], "d": {"e": True}}
            assert (props.timestamp, props.priority, props.message_id) == (1700000000, 3, "m1")
            assert (props.correlation_id, props.reply_to, props.expiration) == (
                "c1",
                "r1",
                "600000",
            )
            assert (props.type, props.app_id, props.user_id) == ("t1", "ap", "guest")
            _, props, body = ch.basic_get(q, auto_ack=True)
            assert body == b"\x00\xff" and props.headers is None
        assert not _routed(m, "amq.default", _name("nobody"), "lost")
    finally:
        for q in queues:
            ch.queue_delete(q)
        conn.close()


def test_publish_routes_as_amqp(pub: Mgmt) -> None:
    """Topic bindings to queues of every worker, an exchange-to-exchange binding and an
    alternate exchange: the same queues get the message as with an AMQP publish."""
    m = pub
    conn = m.pika()
    ch = conn.channel()
    x, inner, ae = _name("x"), _name("inner"), _name("ae")
    queues = [_name("bq") for _ in range(4)]
    caught = _name("caught")
    try:
        ch.exchange_declare(ae, "fanout")
        ch.exchange_declare(x, "topic", arguments={"alternate-exchange": ae})
        ch.exchange_declare(inner, "direct")
        ch.queue_declare(caught)
        ch.queue_bind(caught, ae)
        for q in queues[:3]:
            ch.queue_declare(q)
            ch.queue_bind(q, x, "a.#")
        ch.queue_declare(queues[3])
        ch.queue_bind(queues[3], inner, "a.b")
        ch.exchange_bind(inner, x, "a.*")
        assert _routed(m, x, "a.b", "one")  # all four (one through inner)
        assert _routed(m, x, "a.c", "two")  # the three topic queues only
        assert _routed(m, x, "zzz", "three")  # unmatched: the alternate exchange's queue
        if m.workers is not None:  # answered once the owners (any worker) took it
            assert [_ready(m, ch, q) for q in queues] == [2, 2, 2, 1]
        assert wait_for(lambda: [_ready(m, ch, q) for q in queues] == [2, 2, 2, 1])
        assert wait_for(lambda: _ready(m, ch, caught) == 1)
        _, _, body = ch.basic_get(caught, auto_ack=True)
        assert body == b"three"
        _, _, body = ch.basic_get(queues[3], auto_ack=True)
        assert body == b"one"
        ch.queue_unbind(caught, ae)
        assert not _routed(m, x, "zzz", "four")  # the alternate exchange routes nowhere
    finally:
        for q in (*queues, caught):
            ch.queue_delete(q)
        for e in (inner, x, ae):
            ch.exchange_delete(e)
        conn.close()


def test_publish_errors(pub: Mgmt) -> None:
    m = pub
    q = _name("q")
    assert m.call("PUT", f"/api/queues/%2F/{q}", {"durable": False}).status_code == 201
    conn = m.pika()
    ch = conn.channel()
    internal = _name("internal")
    ch.exchange_declare(internal, "direct", internal=True)
    try:

        def reason(r: Any) -> Any:
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "bad_request"
            return r.json()["reason"]

        missing = _name("missing")
        assert reason(_publish(m, missing, q, "x")) == (
            f"404 NOT_FOUND - no exchange '{missing}' in vhost '/'"
        )
        assert reason(_publish(m, internal, q, "x")) == (
            f"403 ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'"
        )
        assert reason(_publish(m, "amq.default", q, "x", payload_encoding="zz")) == [
            "unsupported_encoding",
            "zz",
        ]
        assert reason(_publish(m, "amq.default", q, "!!!", payload_encoding="base64")) == [
            "not_base64",
            "!!!",
        ]
        for key in ("properties", "routing_key", "payload", "payload_encoding"):
            body = {
                "properties": {},
                "routing_key": q,
                "payload": "x",
                "payload_encoding": "string",
            }
            del body[key]
            r = m.call("POST", "/api/exchanges/%2F/amq.default/publish", body)
            assert reason(r) == f"[{{key_missing,{key}}}]"
        for prop, bad, why in (
            ("delivery_mode", "2", "not_int"),
            ("priority", "x", "not_int"),
            ("content_type", 5, "not_string"),
            ("expiration", 5, "not_string"),
        ):
            r = _publish(m, "amq.default", q, "x", properties={prop: bad})
            assert reason(r) == [why, prop]
        r = _publish(m, "amq.default", q, "x", properties={"delivery_mode": 7})
        assert reason(r) == "406 PRECONDITION_FAILED - invalid message: {delivery_mode_unknown,7}"
        r = _publish(m, "amq.default", q, "x", properties={"expiration": "abc"})
        assert reason(r) == "406 PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
        r = _publish(m, "amq.default", q, "x", properties={"user_id": "bob"})
        assert reason(r) == (
            "406 PRECONDITION_FAILED - user_id property set to 'bob' but authenticated "
            "user was 'guest'"
        )
        r = _publish(m, "amq.default", q, "x", properties={"headers": {"n": None}})
        assert reason(r) == "null_not_allowed"
        r = m.call("POST", "/api/exchanges/%2F/amq.default/publish", b"{nope")
        assert (r.status_code, r.json()["reason"]) == (400, "not_json")
        assert _ready(m, ch, q) == 0  # nothing refused was published
        # unknown properties are ignored; an empty payload is a message
        assert _routed(m, "amq.default", q, "", properties={"nope": 1})
        assert wait_for(lambda: _ready(m, ch, q) == 1)
    finally:
        ch.exchange_delete(internal)
        conn.close()
        m.call("DELETE", f"/api/queues/%2F/{q}")


def test_publish_needs_write_permission(pub: Mgmt) -> None:
    m = pub
    user = _user(m, "management")
    q = _name("q")
    try:
        perm = {"configure": ".*", "write": "^amq\\.default$", "read": ".*"}
        assert m.call("PUT", f"/api/permissions/%2F/{user}", perm).status_code in (201, 204)
        assert m.call("PUT", f"/api/queues/%2F/{q}", {"durable": False}).status_code == 201
        body = {"properties": {}, "routing_key": q, "payload": "x", "payload_encoding": "string"}
        r = m.call("POST", "/api/exchanges/%2F/amq.direct/publish", body, auth=(user, "pw"))
        assert r.status_code == 400, r.text
        assert r.json()["reason"] == (
            f"403 ACCESS_REFUSED - access to exchange 'amq.direct' in vhost '/' refused "
            f"for user '{user}'"
        )
        r = m.call("POST", "/api/exchanges/%2F/amq.default/publish", body, auth=(user, "pw"))
        assert (r.status_code, r.json()) == (200, {"routed": True})
        r = m.call("POST", "/api/exchanges/%2F/amq.default/publish", body, auth=None)
        assert r.status_code == 401
    finally:
        m.call("DELETE", f"/api/queues/%2F/{q}")
        m.call("DELETE", f"/api/users/{user}")


@pytest.mark.skipif(not RABBITMQADMIN.exists(), reason="tests/support/rabbitmqadmin is absent")
def test_rabbitmqadmin_publish(pub: Mgmt) -> None:
    m = pub
    conn = m.pika()
    ch = conn.channel()
    q = _name("q")
    try:
        ch.queue_declare(q)
        out = _rabbitmqadmin(m, "publish", "exchange=amq.default", f"routing_key={q}", "payload=hi")
        assert "Message published" in out and "NOT routed" not in out
        out = _rabbitmqadmin(
            m, "publish", "exchange=amq.default", "routing_key=nowhere-x", "payload=x"
        )
        assert "NOT routed" in out
        assert wait_for(lambda: _ready(m, ch, q) == 1)
        rows = json.loads(_rabbitmqadmin(m, "-f", "raw_json", "get", f"queue={q}"))
        assert [r["payload"] for r in rows] == ["hi"]
    finally:
        ch.queue_delete(q)
        conn.close()


def test_amqpstorm_publish(pub: Mgmt) -> None:
    from amqpstorm.management import ManagementApi

    m = pub
    api = ManagementApi(m.url, *AUTH, timeout=30)
    conn = m.pika()
    ch = conn.channel()
    q = _name("q")
    try:
        ch.queue_declare(q)
        assert api.basic.publish("body", q, properties={"content_type": "text/x"}) == {
            "routed": True
        }
        assert api.basic.publish("x", _name("nobody")) == {"routed": False}
        assert wait_for(lambda: _ready(m, ch, q) == 1)
        got = api.basic.get(q, virtual_host="/", requeue=False)
        assert [msg.body for msg in got] == ["body"]
        assert got[0].properties["content_type"] == "text/x"
    finally:
        ch.queue_delete(q)
        conn.close()


# ---------------------------------------------------------------------- node and health
def test_aliveness_passes_a_message(pub: Mgmt) -> None:
    """The aliveness test really routes and gets a message: a policy that lets its queue
    hold nothing makes it fail (RabbitMQ's answer), and it passes again without."""
    m = pub
    vhost, policy = _name("vh"), _name("pol")
    assert m.call("PUT", f"/api/vhosts/{vhost}").status_code == 201
    try:
        perm = {"configure": ".*", "write": ".*", "read": ".*"}
        assert m.call("PUT", f"/api/permissions/{vhost}/guest", perm).status_code in (201, 204)
        assert m.ok("GET", f"/api/aliveness-test/{vhost}") == {"status": "ok"}
        assert m.ok("GET", f"/api/aliveness-test/{vhost}") == {"status": "ok"}  # twice
        body = {
            "pattern": "^aliveness-test$",
            "definition": {"max-length": 0},
            "apply-to": "queues",
        }
        assert m.call("PUT", f"/api/policies/{vhost}/{policy}", body).status_code in (201, 204)
        r = m.call("GET", f"/api/aliveness-test/{vhost}")
        assert (r.status_code, r.json()) == (
            503,
            {"status": "failed", "reason": "aliveness-test queue is empty"},
        )
        assert m.call("DELETE", f"/api/policies/{vhost}/{policy}").status_code == 204
        assert m.ok("GET", f"/api/aliveness-test/{vhost}") == {"status": "ok"}
        q = m.ok("GET", f"/api/queues/{vhost}/aliveness-test")
        assert wait_for(
            lambda: m.ok("GET", f"/api/queues/{vhost}/aliveness-test").get("messages") == 0
        )
        assert q["name"] == "aliveness-test"
    finally:
        m.call("DELETE", f"/api/vhosts/{vhost}")


def test_port_listener(pub: Mgmt) -> None:
    m = pub
    assert m.ok("GET", f"/api/health/checks/port-listener/{m.amqp_port}") == {
        "status": "ok",
        "port": m.amqp_port,
    }
    assert m.ok("GET", f"/api/health/checks/port-listener/{m.http_port}")["status"] == "ok"
    r = m.call("GET", "/api/health/checks/port-listener/1")
    assert r.status_code == 503
    body = r.json()
    assert (body["status"], body["reason"], body["missing"]) == ("failed", "No active listener", 1)
    assert m.amqp_port in body["ports"] and m.http_port in body["ports"]
    r = m.call("GET", "/api/health/checks/port-listener/abc")
    assert (r.status_code, r.json()["reason"]) == (400, "Invalid port")
    assert m.call("GET", "/api/health/checks/port-listener/1", auth=None).status_code == 401


def test_nodes_and_channel_totals(pub: Mgmt) -> None:
    m = pub
    conn = m.pika()
    try:
        chans = [conn.channel() for _ in range(3)]
        rows = m.ok("GET", "/api/nodes")
        assert len(rows) == 1
        node = rows[0]
        assert node["type"] == "disc" and node["running"] is True
        assert node["partitions"] == []
        for key in ("mem_used", "mem_limit", "disk_free", "disk_free_limit", "fd_used"):
            assert isinstance(node[key], int) and node[key] > 0, key
        for key in ("uptime", "run_queue", "sockets_used", "proc_used", "processors"):
            assert isinstance(node[key], int) and node[key] >= 0, key
        assert node["fd_total"] >= node["fd_used"] and node["processors"] >= 1
        assert node["mem_alarm"] is False and node["disk_free_alarm"] is False
        one = m.ok("GET", f"/api/nodes/{node['name']}")
        assert one["name"] == node["name"] and one["type"] == "disc"
        assert wait_for(lambda: m.ok("GET", "/api/nodes")[0]["sockets_used"] >= 1)
        totals = lambda: m.ok("GET", "/api/overview")["object_totals"]  # noqa: E731
        assert wait_for(lambda: totals()["channels"] >= 3)
        if m.workers is not None:  # a broker of its own: exactly these
            assert totals()["channels"] == 3
            assert m.call("GET", "/api/nodes/nope@nowhere").status_code == 404
        chans[0].close()
        if m.workers is not None:
            assert wait_for(lambda: totals()["channels"] == 2)
    finally:
        conn.close()
