"""The management HTTP API (issue 14, item 1) against a real broker, 1 and 3 workers.

Owns: a broker started with a ``[management]`` section on a free port (``mgmt``), or the
management API at ``$SHARDMQ_TEST_MGMT_URL`` (e.g. a local RabbitMQ's
``http://127.0.0.1:15682``, with ``$SHARDMQ_TEST_URI`` for its AMQP port) to show that
RabbitMQ answers the same shapes and codes; plain ``requests`` checks of auth rules,
error codes and shapes; the third-party clients ``rabbitmqadmin`` (RabbitMQ's script,
MPL 2.0, copied unmodified into tests/support) and AMQPStorm's management client.

Invariants: only 127.0.0.1 is contacted; every object a test creates has a unique name
and is deleted again; waits are bounded polls (RabbitMQ's counts lag up to 5 s), never
timing assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import pika
import pytest

from tests.support.launch import REPO_ROOT, serve_args, spawn, terminate, wait_answering
from tests.support.ports import free_port

if TYPE_CHECKING:
    import requests

EXTERNAL = os.environ.get("SHARDMQ_TEST_MGMT_URL")
RABBITMQADMIN = Path(__file__).parent.parent / "support" / "rabbitmqadmin"
AUTH = ("guest", "guest")


@dataclass
class Mgmt:
    url: str  # http://127.0.0.1:PORT
    amqp_port: int
    workers: int | None  # None: an external broker

    @property
    def http_port(self) -> int:
        return int(urlsplit(self.url).port or 80)

    def call(
        self, method: str, path: str, body: Any = None, auth: tuple[str, str] | None = AUTH
    ) -> requests.Response:
        import requests  # not at collection: locust's gevent patches ssl then

        data = body if isinstance(body, bytes | str) else None
        return requests.request(
            method,
            self.url + path,
            auth=auth,
            json=None if data is not None else body,
            data=data,
            headers={"content-type": "application/json"},
            timeout=30,
        )

    def ok(self, method: str, path: str, body: Any = None, *, status: tuple[int, ...] = ()) -> Any:
        r = self.call(method, path, body)
        allowed = status or (200, 201, 204)
        assert r.status_code in allowed, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    def pika(self) -> pika.BlockingConnection:
        creds = pika.PlainCredentials(*AUTH)
        return pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", self.amqp_port, credentials=creds)
        )


def _name(kind: str) -> str:
    return f"mgmt-{kind}-{uuid.uuid4().hex[:10]}"


def _params() -> list[Any]:
    if EXTERNAL:
        return [pytest.param(None, id="external")]
    return [pytest.param(1, id="1w"), pytest.param(3, id="3w")]


def start_mgmt(
    tmp: Path, workers: int, extra: str = ""
) -> tuple[Mgmt, subprocess.Popen[bytes], Path]:
    port, mport = free_port(), free_port()
    cfg = tmp / f"mgmt-{port}.toml"
    cfg.write_text(f'[management]\nhost = "127.0.0.1"\nport = {mport}\n{extra}')
    log = tmp / f"mgmt-{port}.log"
    proc = spawn(serve_args(port, workers, tmp / f"data-{port}", cfg), log)
    wait_answering(proc, port, lambda: log.read_text(errors="replace"), lambda: terminate(proc, 10))
    return Mgmt(f"http://127.0.0.1:{mport}", port, workers), proc, log


@pytest.fixture(scope="module", params=_params())
def mgmt(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mgmt]:
    if request.param is None:
        assert EXTERNAL is not None
        parts = urlsplit(EXTERNAL)
        assert parts.hostname == "127.0.0.1", "SHARDMQ_TEST_MGMT_URL must point at 127.0.0.1"
        amqp = urlsplit(os.environ.get("SHARDMQ_TEST_URI", "amqp://127.0.0.1:5672/")).port or 5672
        yield Mgmt(EXTERNAL.rstrip("/"), amqp, None)
        return
    m, proc, log = start_mgmt(tmp_path_factory.mktemp("mgmt"), request.param)
    try:
        yield m
    finally:
        code = terminate(proc, 20)
        assert code == 0, log.read_text(errors="replace")


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``check()`` once it is truthy (RabbitMQ's statistics lag; shardmq's do not)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def _user(m: Mgmt, tags: str, password: str = "pw") -> str:
    name = _name("user")
    assert (
        m.call("PUT", f"/api/users/{name}", {"password": password, "tags": tags}).status_code == 201
    )
    return name


# ---------------------------------------------------------------------- auth
def test_auth_rules(mgmt: Mgmt) -> None:
    r = mgmt.call("GET", "/api/overview", auth=None)
    assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    r = mgmt.call("GET", "/api/whoami", auth=("guest", "wrong"))
    assert r.status_code == 401
    assert r.json() == {"error": "not_authorized", "reason": "Login failed"}
    notag, mon, man = _user(mgmt, ""), _user(mgmt, "monitoring"), _user(mgmt, "management")
    vhost = _name("vhost")
    try:
        r = mgmt.call("GET", "/api/whoami", auth=(notag, "pw"))
        assert (r.status_code, r.json()["reason"]) == (401, "Not management user")
        assert mgmt.call("GET", "/api/whoami", auth=(mon, "pw")).json() == {
            "name": mon,
            "tags": ["monitoring"],
        }
        r = mgmt.call("GET", "/api/users", auth=(mon, "pw"))
        assert (r.status_code, r.json()["reason"]) == (401, "Not administrator user")
        assert mgmt.call("GET", "/api/queues", auth=(mon, "pw")).status_code == 200
        r = mgmt.call("PUT", f"/api/vhosts/{vhost}", {}, auth=(man, "pw"))
        assert (r.status_code, r.json()["reason"]) == (401, "Not administrator user")
        assert mgmt.call("PUT", f"/api/vhosts/{vhost}", {}).status_code == 201
        r = mgmt.call("GET", f"/api/queues/{quote(vhost, safe='')}", auth=(man, "pw"))
        assert r.status_code == 401
        assert r.json()["reason"] == "User not authorised to access virtual host"
        # a management user sees only the vhosts it has permissions in
        names = [v["name"] for v in mgmt.call("GET", "/api/vhosts", auth=(man, "pw")).json()]
        assert vhost not in names
        perm = {"configure": ".*", "write": ".*", "read": ".*"}
        assert mgmt.call("PUT", f"/api/permissions/{vhost}/{man}", perm).status_code == 201
        names = [v["name"] for v in mgmt.call("GET", "/api/vhosts", auth=(man, "pw")).json()]
        assert vhost in names
        assert mgmt.call("GET", f"/api/queues/{vhost}", auth=(man, "pw")).json() == []
    finally:
        for u in (notag, mon, man):
            mgmt.call("DELETE", f"/api/users/{u}")
        mgmt.call("DELETE", f"/api/vhosts/{vhost}")


# ---------------------------------------------------------------------- errors
def test_error_codes(mgmt: Mgmt) -> None:
    nf = {"error": "Object Not Found", "reason": "Not Found"}
    for path in (
        "/api/queues/%2F/" + _name("nope"),
        "/api/exchanges/%2F/" + _name("nope"),
        "/api/queues/" + _name("novhost"),
        "/api/users/" + _name("nouser"),
    ):
        r = mgmt.call("GET", path)
        assert (r.status_code, r.json()) == (404, nf), path
    q = _name("q")
    r = mgmt.call("PUT", f"/api/queues/%2F/{q}", b"{bad")
    assert (r.status_code, r.json()) == (400, {"error": "bad_request", "reason": "not_json"})
    assert mgmt.call("GET", f"/api/queues/%2F/{q}").status_code == 404  # nothing made
    try:
        assert mgmt.call("PUT", f"/api/queues/%2F/{q}", {"durable": True}).status_code == 201
        r = mgmt.call("PUT", f"/api/queues/%2F/{q}", {"durable": False})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        assert r.json()["reason"] == (
            f"inequivalent arg 'durable' for queue '{q}' in vhost '/': "
            "received 'false' but current is 'true'"
        )
        assert mgmt.call("DELETE", "/api/queues/%2F/" + _name("nope")).status_code == 404
        novh = {"error": "not_found", "reason": "vhost_not_found"}
        for path, body in (
            (f"/api/queues/{_name('novhost')}/{q}", {}),
            (f"/api/exchanges/{_name('novhost')}/{q}", {"type": "direct"}),
            (f"/api/policies/{_name('novhost')}/{q}", {"pattern": "x", "definition": {}}),
        ):
            r = mgmt.call("PUT", path, body)
            assert (r.status_code, r.json()) == (404, novh), path
        if mgmt.workers is not None:  # not sent to a shared RabbitMQ
            big = mgmt.call("PUT", f"/api/queues/%2F/{q}-big", b"{" + b" " * (11 << 20) + b"}")
            assert big.status_code == 413 and big.json()["error"] == "bad_request"
            assert mgmt.call("GET", f"/api/queues/%2F/{q}-big").status_code == 404
    finally:
        mgmt.call("DELETE", f"/api/queues/%2F/{q}")


# ---------------------------------------------------------------------- queues
def test_queue_counts_and_delete(mgmt: Mgmt) -> None:
    q = _name("q")
    assert (
        mgmt.call(
            "PUT", f"/api/queues/%2F/{q}", {"durable": False, "arguments": {"x-max-length": 50}}
        ).status_code
        == 201
    )
    assert (
        mgmt.call(
            "PUT", f"/api/queues/%2F/{q}", {"durable": False, "arguments": {"x-max-length": 50}}
        ).status_code
        == 204
    )
    conn = mgmt.pika()
    try:
        ch = conn.channel()
        for _ in range(3):
            ch.basic_publish("", q, b"m")
        method, _, _ = ch.basic_get(q, auto_ack=False)
        assert method is not None

        def counted() -> dict[str, Any] | None:
            row = mgmt.ok("GET", f"/api/queues/%2F/{q}")
            return (
                row
                if row.get("messages") == 3 and row.get("messages_unacknowledged") == 1
                else None
            )

        row = wait_for(counted)
        assert row is not None, mgmt.ok("GET", f"/api/queues/%2F/{q}")
        assert row["messages_ready"] == 2
        assert (
            row["name"],
            row["vhost"],
            row["durable"],
            row["auto_delete"],
            row["exclusive"],
        ) == (q, "/", False, False, False)
        assert row["arguments"] == {"x-max-length": 50}
        if mgmt.workers is not None:  # RabbitMQ's row has it only once stats were emitted
            assert row["state"] == "running"
        listed = [r for r in mgmt.ok("GET", "/api/queues/%2F") if r["name"] == q]
        assert len(listed) == 1
        r = mgmt.call("DELETE", f"/api/queues/%2F/{q}?if-empty=true")
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        assert mgmt.call("GET", f"/api/queues/%2F/{q}").status_code == 200
        conn.close()
        assert mgmt.call("DELETE", f"/api/queues/%2F/{q}").status_code == 204
        assert mgmt.call("GET", f"/api/queues/%2F/{q}").status_code == 404
    finally:
        if conn.is_open:
            conn.close()
        mgmt.call("DELETE", f"/api/queues/%2F/{q}")


def test_pagination(mgmt: Mgmt) -> None:
    qs = [_name("page") for _ in range(3)]
    try:
        for q in qs:
            mgmt.ok("PUT", f"/api/queues/%2F/{q}", {"durable": False})
        prefix = qs[0][:10]
        page = mgmt.ok("GET", f"/api/queues/%2F?page=1&page_size=2&name={prefix}&sort=name")
        assert set(page) >= {
            "filtered_count",
            "item_count",
            "items",
            "page",
            "page_count",
            "page_size",
            "total_count",
        }
        assert page["page_size"] == 2 and page["item_count"] == len(page["items"]) <= 2
        mine = [r["name"] for r in mgmt.ok("GET", "/api/queues/%2F?sort=name") if r["name"] in qs]
        assert mine == sorted(qs)
    finally:
        for q in qs:
            mgmt.call("DELETE", f"/api/queues/%2F/{q}")


# ---------------------------------------------------------------------- exchanges, bindings
def test_exchange_and_bindings(mgmt: Mgmt) -> None:
    x, q = _name("x"), _name("q")
    try:
        assert (
            mgmt.call(
                "PUT", f"/api/exchanges/%2F/{x}", {"type": "topic", "durable": False}
            ).status_code
            == 201
        )
        row = mgmt.ok("GET", f"/api/exchanges/%2F/{x}")
        assert (row["name"], row["type"], row["durable"], row["internal"]) == (
            x,
            "topic",
            False,
            False,
        )
        assert mgmt.call("PUT", f"/api/exchanges/%2F/{x}", {}).status_code == 400  # no type
        mgmt.ok("PUT", f"/api/queues/%2F/{q}", {"durable": False})
        r = mgmt.call(
            "POST", f"/api/bindings/%2F/e/{x}/q/{q}", {"routing_key": "a.#", "arguments": {}}
        )
        assert r.status_code == 201
        assert r.headers["Location"] == f"{q}/a.%2523"  # the properties key, quoted again
        rows = mgmt.ok("GET", f"/api/bindings/%2F/e/{x}/q/{q}")
        assert rows == [
            {
                "source": x,
                "vhost": "/",
                "destination": q,
                "destination_type": "queue",
                "routing_key": "a.#",
                "arguments": {},
                "properties_key": "a.%23",
            }
        ]
        qb = mgmt.ok("GET", f"/api/queues/%2F/{q}/bindings")
        assert {(b["source"], b["routing_key"]) for b in qb} == {("", q), (x, "a.#")}
        assert mgmt.ok("GET", f"/api/bindings/%2F/e/{x}/q/{q}/a.%23")["routing_key"] == "a.#"
        assert mgmt.call("DELETE", f"/api/bindings/%2F/e/{x}/q/{q}/a.%23").status_code == 204
        assert mgmt.ok("GET", f"/api/bindings/%2F/e/{x}/q/{q}") == []
        assert mgmt.call("GET", f"/api/bindings/%2F/e/{x}/q/{q}/a.%23").status_code == 404
    finally:
        mgmt.call("DELETE", f"/api/queues/%2F/{q}")
        assert mgmt.call("DELETE", f"/api/exchanges/%2F/{x}").status_code == 204
    assert mgmt.call("GET", f"/api/exchanges/%2F/{x}").status_code == 404


# ---------------------------------------------------------------------- access objects
def test_vhost_user_permission_policy(mgmt: Mgmt) -> None:
    vhost, user, pol = _name("vh"), _name("user"), _name("pol")
    try:
        assert mgmt.call("PUT", f"/api/vhosts/{vhost}", {}).status_code == 201
        assert mgmt.ok("GET", f"/api/vhosts/{vhost}")["name"] == vhost
        assert (
            mgmt.call(
                "PUT", f"/api/users/{user}", {"password": "s3cret", "tags": "management"}
            ).status_code
            == 201
        )
        row = mgmt.ok("GET", f"/api/users/{user}")
        assert (row["name"], row["tags"], row["hashing_algorithm"]) == (
            user,
            ["management"],
            "rabbit_password_hashing_sha256",
        )
        assert mgmt.call("GET", "/api/whoami", auth=(user, "s3cret")).status_code == 200
        assert mgmt.call("PUT", f"/api/users/{user}", {"tags": "monitoring"}).status_code == 204
        assert mgmt.ok("GET", f"/api/users/{user}")["tags"] == ["monitoring"]
        # as RabbitMQ: put without a password leaves the user without one
        assert mgmt.call("GET", "/api/whoami", auth=(user, "s3cret")).status_code == 401
        perm = {"configure": "^c", "write": "^w", "read": ".*"}
        assert mgmt.call("PUT", f"/api/permissions/{vhost}/{user}", perm).status_code == 201
        assert mgmt.ok("GET", f"/api/permissions/{vhost}/{user}") == {
            "user": user,
            "vhost": vhost,
            **perm,
        }
        assert (
            mgmt.call("PUT", f"/api/permissions/{vhost}/{user}", {"configure": "("}).status_code
            == 400
        )
        tp = {"exchange": "amq.topic", "write": "^a", "read": "^b"}
        assert mgmt.call("PUT", f"/api/topic-permissions/{vhost}/{user}", tp).status_code == 201
        assert mgmt.ok("GET", f"/api/topic-permissions/{vhost}/{user}") == [
            {"user": user, "vhost": vhost, **tp}
        ]
        policy = {
            "pattern": "^pq",
            "definition": {"max-length": 7},
            "priority": 1,
            "apply-to": "queues",
        }
        assert mgmt.call("PUT", f"/api/policies/{vhost}/{pol}", policy).status_code == 201
        got = mgmt.ok("GET", f"/api/policies/{vhost}/{pol}")
        assert {
            k: got[k] for k in ("vhost", "name", "pattern", "apply-to", "definition", "priority")
        } == {
            "vhost": vhost,
            "name": pol,
            **policy,
        }
        bad = {"pattern": "^x", "definition": {"max-length": "seven"}}
        assert mgmt.call("PUT", f"/api/policies/{vhost}/{pol}-bad", bad).status_code == 400
        assert mgmt.call("GET", f"/api/policies/{vhost}/{pol}-bad").status_code == 404
        assert mgmt.call("DELETE", f"/api/policies/{vhost}/{pol}").status_code == 204
        assert mgmt.call("DELETE", f"/api/topic-permissions/{vhost}/{user}").status_code == 204
        assert mgmt.call("DELETE", f"/api/permissions/{vhost}/{user}").status_code == 204
        assert mgmt.call("GET", f"/api/permissions/{vhost}/{user}").status_code == 404
    finally:
        mgmt.call("DELETE", f"/api/users/{user}")
        mgmt.call("DELETE", f"/api/vhosts/{vhost}")
    assert mgmt.call("GET", f"/api/users/{user}").status_code == 404
    assert mgmt.call("GET", f"/api/vhosts/{vhost}").status_code == 404


def test_overview_and_health(mgmt: Mgmt) -> None:
    ov = mgmt.ok("GET", "/api/overview")
    for key in (
        "management_version",
        "rabbitmq_version",
        "product_name",
        "product_version",
        "node",
        "listeners",
        "object_totals",
        "queue_totals",
    ):
        assert key in ov, key
    assert set(ov["object_totals"]) >= {
        "connections",
        "channels",
        "consumers",
        "exchanges",
        "queues",
    }
    assert set(ov["queue_totals"]) >= {"messages", "messages_ready", "messages_unacknowledged"}
    assert any(
        lst["protocol"] == "amqp" and lst["port"] == mgmt.amqp_port for lst in ov["listeners"]
    )
    assert mgmt.ok("GET", "/api/aliveness-test/%2F") == {"status": "ok"}
    assert mgmt.ok("GET", "/api/health/checks/alarms") == {"status": "ok"}
    assert mgmt.call("GET", "/api/aliveness-test/" + _name("novh")).status_code == 404


# ---------------------------------------------------------------------- definitions
def _rabbit_hash(password: str) -> str:
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def test_definitions_import_export(mgmt: Mgmt) -> None:
    vhost, user, x, q = _name("vh"), _name("user"), _name("x"), _name("q")
    doc = {
        "rabbit_version": "3.10.8",
        "users": [
            {
                "name": user,
                "password_hash": _rabbit_hash("imported"),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["management"],
                "limits": {},
            }
        ],
        "vhosts": [{"name": vhost, "limits": [], "metadata": {}}],
        "permissions": [
            {"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
        ],
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [
            {
                "vhost": vhost,
                "name": "p1",
                "pattern": "^q",
                "apply-to": "queues",
                "definition": {"max-length": 3},
                "priority": 0,
            }
        ],
        "queues": [
            {
                "name": q,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": {"x-queue-type": "classic"},
            }
        ],
        "exchanges": [
            {
                "name": x,
                "vhost": vhost,
                "type": "fanout",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        "bindings": [
            {
                "source": x,
                "vhost": vhost,
                "destination": q,
                "destination_type": "queue",
                "routing_key": "k",
                "arguments": {},
            }
        ],
    }
    try:
        r = mgmt.call("POST", "/api/definitions", doc)
        assert r.status_code in (201, 204), r.text
        assert mgmt.ok("GET", "/api/whoami", status=(200,)) is not None
        assert mgmt.call("GET", "/api/whoami", auth=(user, "imported")).json()["name"] == user
        out = mgmt.ok("GET", "/api/definitions")

        def mine(kind: str) -> list[dict[str, Any]]:
            return [
                i for i in out[kind] if i.get("vhost") == vhost or i.get("name") in (vhost, user)
            ]

        assert [u["name"] for u in mine("users")] == [user]
        assert mine("users")[0]["password_hash"] == doc["users"][0]["password_hash"]
        assert [v["name"] for v in mine("vhosts")] == [vhost]
        # the importing user (guest) also gets the new vhost, as in RabbitMQ
        assert [p for p in mine("permissions") if p["user"] == user] == doc["permissions"]
        assert any(p["user"] == "guest" for p in mine("permissions"))
        assert [(p["name"], p["pattern"], p["definition"]) for p in mine("policies")] == [
            ("p1", "^q", {"max-length": 3})
        ]
        assert [(e["name"], e["type"]) for e in mine("exchanges")] == [(x, "fanout")]
        assert [(i["name"], i["durable"], i["arguments"]) for i in mine("queues")] == [
            (q, True, {"x-queue-type": "classic"})
        ]
        assert [(b["source"], b["destination"], b["routing_key"]) for b in mine("bindings")] == [
            (x, q, "k")
        ]
        # round trip: delete, import the export, same objects
        mgmt.ok("DELETE", f"/api/vhosts/{vhost}")
        mgmt.ok("DELETE", f"/api/users/{user}")
        mgmt.ok(
            "POST",
            "/api/definitions",
            {k: mine(k) if isinstance(v, list) else v for k, v in out.items()},
        )
        again = mgmt.ok("GET", "/api/definitions")
        for kind in (
            "users",
            "vhosts",
            "permissions",
            "policies",
            "exchanges",
            "queues",
            "bindings",
        ):
            a = [
                i for i in again[kind] if i.get("vhost") == vhost or i.get("name") in (vhost, user)
            ]
            assert a == mine(kind), kind
        # a malformed document changes nothing
        r = mgmt.call(
            "POST",
            "/api/definitions",
            {"queues": [{"name": _name("q"), "vhost": vhost, "durable": "yes"}]},
        )
        assert r.status_code == 400
    finally:
        mgmt.call("DELETE", f"/api/vhosts/{vhost}")
        mgmt.call("DELETE", f"/api/users/{user}")


# ---------------------------------------------------------------------- third-party clients
def _rabbitmqadmin(m: Mgmt, *args: str) -> str:
    cmd = [
        sys.executable,
        str(RABBITMQADMIN),
        "-H",
        "127.0.0.1",
        "-P",
        str(m.http_port),
        "-u",
        "guest",
        "-p",
        "guest",
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


@pytest.mark.skipif(not RABBITMQADMIN.exists(), reason="tests/support/rabbitmqadmin is absent")
def test_rabbitmqadmin(mgmt: Mgmt) -> None:
    q, x = _name("q"), _name("x")
    assert "queue declared" in _rabbitmqadmin(
        mgmt, "declare", "queue", f"name={q}", "durable=false"
    )
    assert "exchange declared" in _rabbitmqadmin(
        mgmt, "declare", "exchange", f"name={x}", "type=fanout"
    )
    queues = json.loads(_rabbitmqadmin(mgmt, "-f", "raw_json", "list", "queues"))
    assert q in {r["name"] for r in queues}
    exchanges = json.loads(_rabbitmqadmin(mgmt, "-f", "raw_json", "list", "exchanges"))
    assert x in {r["name"] for r in exchanges}
    users = json.loads(_rabbitmqadmin(mgmt, "-f", "raw_json", "list", "users"))
    assert "guest" in {u["name"] for u in users}
    assert "queue deleted" in _rabbitmqadmin(mgmt, "delete", "queue", f"name={q}")
    assert "exchange deleted" in _rabbitmqadmin(mgmt, "delete", "exchange", f"name={x}")
    assert mgmt.call("GET", f"/api/queues/%2F/{q}").status_code == 404
    assert mgmt.call("GET", f"/api/exchanges/%2F/{x}").status_code == 404


def test_amqpstorm_management(mgmt: Mgmt) -> None:
    from amqpstorm.management import ApiError, ManagementApi

    api = ManagementApi(mgmt.url, *AUTH, timeout=30)
    assert "management_version" in api.overview()
    assert api.whoami()["name"] == "guest"
    q, user = _name("q"), _name("user")
    api.queue.declare(q, virtual_host="/", durable=False)
    assert q in {r["name"] for r in api.queue.list(virtual_host="/")}
    assert api.queue.get(q, virtual_host="/")["name"] == q
    api.queue.delete(q, virtual_host="/")
    with pytest.raises(ApiError):
        api.queue.get(q, virtual_host="/")
    api.user.create(user, "pw", tags="monitoring")
    assert api.user.get(user)["tags"] == ["monitoring"]
    api.user.delete(user)
    assert user not in {u["name"] for u in api.user.list()}
    defs = api.http_client.get("definitions")
    assert "guest" in {u["name"] for u in defs["users"]}
    api.http_client.post(
        "definitions",
        payload=json.dumps(
            {
                "queues": [
                    {
                        "name": q,
                        "vhost": "/",
                        "durable": True,
                        "auto_delete": False,
                        "arguments": {},
                    }
                ]
            }
        ),
    )
    try:
        assert api.queue.get(q, virtual_host="/")["durable"] is True
    finally:
        api.queue.delete(q, virtual_host="/")


# ---------------------------------------------------------------------- start-up
@pytest.mark.skipif(bool(EXTERNAL), reason="starts its own broker")
@pytest.mark.parametrize("workers", [1, 3])
def test_management_port_in_use(tmp_path: Path, workers: int) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    mport = holder.getsockname()[1]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[management]\nhost = "127.0.0.1"\nport = {mport}\n')
    log = tmp_path / "log"
    try:
        proc = spawn(serve_args(free_port(), workers, tmp_path / "data", cfg), log)
        code = proc.wait(timeout=60)
    finally:
        holder.close()
    text = log.read_text()
    assert code == 10, text
    lines = [ln for ln in text.splitlines() if "cannot start" in ln]
    assert len(lines) == 1 and f"management API: port {mport} is in use" in lines[0], text
    assert "Traceback" not in text


@pytest.mark.skipif(bool(EXTERNAL), reason="starts its own broker")
def test_management_disabled(tmp_path: Path) -> None:
    import requests

    m, proc, log = start_mgmt(tmp_path, 1, "enabled = false\n")
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(m.url + "/api/overview", auth=AUTH, timeout=5)
    finally:
        assert terminate(proc, 20) == 0, log.read_text()


@pytest.mark.skipif(bool(EXTERNAL), reason="starts its own broker")
def test_management_host_follows_the_amqp_host(tmp_path: Path) -> None:
    """No ``host`` under [management]: the API listens where AMQP does (127.0.0.1 in
    the tests' brokers), not on every interface."""
    import requests

    port, mport = free_port(), free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[management]\nport = {mport}\n")
    log = tmp_path / "log"
    proc = spawn(serve_args(port, 1, tmp_path / "data", cfg), log)
    try:
        wait_answering(proc, port, lambda: log.read_text(errors="replace"), lambda: None)
        ov = requests.get(f"http://127.0.0.1:{mport}/api/overview", auth=AUTH, timeout=10)
        http = [x for x in ov.json()["listeners"] if x["protocol"] == "http"]
        assert http and http[0]["ip_address"] == "127.0.0.1", http
        with socket.socket() as probe:  # the port is free on another local address
            probe.bind(("127.0.0.2", mport))
    finally:
        assert terminate(proc, 20) == 0, log.read_text()
    assert f"management API on http://127.0.0.1:{mport}/api" in log.read_text()
