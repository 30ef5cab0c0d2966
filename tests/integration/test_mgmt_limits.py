"""``/api/vhost-limits``, ``/api/user-limits`` and limits in ``/api/definitions``, on 1
and 3 workers, and against RabbitMQ with ``SHARDMQ_TEST_MGMT_URL``: same paths, JSON
and status codes; a limit set over HTTP is enforced on AMQP at once."""

from __future__ import annotations

from urllib.parse import quote

import pika
import pika.exceptions

from .test_management import Mgmt, _name, mgmt  # noqa: F401  (the fixture)


def q(name: str) -> str:
    return quote(name, safe="")


def test_vhost_limits_endpoints(mgmt: Mgmt) -> None:  # noqa: F811
    vhost = _name("limvh")
    mgmt.ok("PUT", f"/api/vhosts/{q(vhost)}")  # the creator (guest) gets permissions
    try:
        assert mgmt.ok("GET", f"/api/vhost-limits/{q(vhost)}") == []
        r = mgmt.call("PUT", f"/api/vhost-limits/{q(vhost)}/max-queues", {"value": 1})
        assert r.status_code == 204, r.text
        mgmt.ok("PUT", f"/api/vhost-limits/{q(vhost)}/max-connections", {"value": 10})
        got = mgmt.ok("GET", f"/api/vhost-limits/{q(vhost)}")
        assert got == [{"vhost": vhost, "value": {"max-queues": 1, "max-connections": 10}}]
        assert {"vhost": vhost, "value": {"max-queues": 1, "max-connections": 10}} in mgmt.ok(
            "GET", "/api/vhost-limits"
        )
        # enforced on AMQP at once
        conn = pika.BlockingConnection(
            pika.ConnectionParameters(
                "127.0.0.1",
                mgmt.amqp_port,
                vhost,
                pika.PlainCredentials("guest", "guest"),
                connection_attempts=1,
            )
        )
        try:
            ch = conn.channel()
            ch.queue_declare("one")
            try:
                ch.queue_declare("two")
                raise AssertionError("max-queues not enforced")
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 406
                assert f"queue limit in vhost '{vhost}' (1) is reached" in exc.reply_text
        finally:
            conn.close()
        # bad input: RabbitMQ's 400s; unknown vhost 404
        r = mgmt.call("PUT", f"/api/vhost-limits/{q(vhost)}/max-foo", {"value": 5})
        assert r.status_code == 400
        assert "Unrecognised terms" in r.json()["reason"]
        r = mgmt.call("PUT", f"/api/vhost-limits/{q(vhost)}/max-queues", {"value": "x"})
        assert r.status_code == 400
        assert 'max-queues should be a number, actually was <<\\"x\\">>' in r.text
        r = mgmt.call("PUT", f"/api/vhost-limits/{q(vhost)}/max-queues", {})
        assert r.status_code == 400 and r.json()["reason"] == "[{key_missing,value}]"
        r = mgmt.call("PUT", f"/api/vhost-limits/{q(vhost)}/max-queues", "xx")
        assert r.status_code == 400 and r.json()["reason"] == "not_json"
        r = mgmt.call("PUT", f"/api/vhost-limits/{q(_name('novh'))}/max-queues", {"value": 5})
        assert r.status_code == 404
        assert r.json() == {"error": "not_found", "reason": "vhost_not_found"}
        # in the export, as RabbitMQ's runtime parameter
        defs = mgmt.ok("GET", "/api/definitions")
        assert {
            "value": {"max-queues": 1, "max-connections": 10},
            "vhost": vhost,
            "component": "vhost-limits",
            "name": "limits",
        } in defs["parameters"]
        assert mgmt.call("DELETE", f"/api/vhost-limits/{q(vhost)}/max-queues").status_code == 204
        assert mgmt.call("DELETE", f"/api/vhost-limits/{q(vhost)}/max-queues").status_code == 204
        assert mgmt.ok("GET", f"/api/vhost-limits/{q(vhost)}") == [
            {"vhost": vhost, "value": {"max-connections": 10}}
        ]
    finally:
        mgmt.call("DELETE", f"/api/vhosts/{q(vhost)}")


def test_user_limits_endpoints_and_definitions(mgmt: Mgmt) -> None:  # noqa: F811
    user = _name("limuser")
    vhost = _name("limvh2")
    assert mgmt.call("PUT", f"/api/users/{user}", {"password": "pw", "tags": ""}).status_code == 201
    try:
        r = mgmt.call("PUT", f"/api/user-limits/{user}/max-channels", {"value": 7})
        assert r.status_code == 204, r.text
        mgmt.ok("PUT", f"/api/user-limits/{user}/max-connections", {"value": 3})
        assert mgmt.ok("GET", f"/api/user-limits/{user}") == [
            {"user": user, "value": {"max-channels": 7, "max-connections": 3}}
        ]
        r = mgmt.call("PUT", f"/api/user-limits/{user}/max-foo", {"value": 7})
        assert r.status_code == 400 and "in user-limits" in r.json()["reason"]
        assert mgmt.call("GET", f"/api/user-limits/{_name('nouser')}").status_code == 404
        defs = mgmt.ok("GET", "/api/definitions")
        mine = [u for u in defs["users"] if u["name"] == user]
        assert mine[0]["limits"] == {"max-channels": 7, "max-connections": 3}
        assert mgmt.call("DELETE", f"/api/user-limits/{user}/max-channels").status_code == 204
        assert mgmt.ok("GET", f"/api/user-limits/{user}") == [
            {"user": user, "value": {"max-connections": 3}}
        ]
        # an import brings user and vhost limits (RabbitMQ's export format)
        doc = {
            "vhosts": [{"name": vhost}],
            "users": [
                {
                    "name": user,
                    "password_hash": mine[0]["password_hash"],
                    "hashing_algorithm": mine[0]["hashing_algorithm"],
                    "tags": [],
                    "limits": {"max-channels": 5},
                }
            ],
            "parameters": [
                {
                    "value": {"max-connections": 4},
                    "vhost": vhost,
                    "component": "vhost-limits",
                    "name": "limits",
                }
            ],
        }
        r = mgmt.call("POST", "/api/definitions", doc)
        assert r.status_code in (200, 201, 204), r.text
        got = mgmt.ok("GET", f"/api/user-limits/{user}")[0]["value"]
        assert got["max-channels"] == 5
        assert mgmt.ok("GET", f"/api/vhost-limits/{q(vhost)}") == [
            {"vhost": vhost, "value": {"max-connections": 4}}
        ]
    finally:
        mgmt.call("DELETE", f"/api/users/{user}")
        mgmt.call("DELETE", f"/api/vhosts/{q(vhost)}")
