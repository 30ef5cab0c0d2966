"""Users, vhosts, permissions, topic permissions and policies survive a restart (clean
and kill -9), on 1 and 3 workers, and config users seed only a fresh data dir."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pika
import pika.exceptions
import pytest

from tests.support.launch import REPO_ROOT

from .conftest import DurableBroker


def ctl(b: DurableBroker, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shardmq", "ctl", "--data-dir", str(b.data_dir), *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def ok(b: DurableBroker, *args: str) -> str:
    res = ctl(b, *args)
    assert res.returncode == 0, (args, res.stdout, res.stderr, b.log()[-2000:])
    return res.stdout


def rows(b: DurableBroker, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(ok(b, *args, "--formatter", "json")))


def login(b: DurableBroker, user: str, password: str, vhost: str) -> pika.BlockingConnection:
    return b.connect(credentials=pika.PlainCredentials(user, password), virtual_host=vhost)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
def test_access_definitions_survive_restart(make_durable: Any, workers: int, kill: bool) -> None:
    b: DurableBroker = make_durable(workers=workers)
    ok(b, "add_user", "app", "s3cret")
    ok(b, "add_vhost", "orders/ü")
    ok(b, "set_permissions", "-p", "orders/ü", "app", "^app", ".*", ".*")
    ok(b, "set_topic_permissions", "-p", "orders/ü", "app", "amq.topic", "^app\\.", ".*")
    ok(b, "set_user_tags", "app", "monitoring")
    ok(b, "set_policy", "-p", "orders/ü", "--priority", "2", "cap", "^app", '{"max-length": 5}')
    ok(b, "add_user", "gone", "x")
    ok(b, "delete_user", "gone")
    ok(b, "change_password", "guest", "changed")
    conn = login(b, "app", "s3cret", "orders/ü")
    conn.channel().queue_declare("app.q", durable=True)
    conn.close()
    b.restart(kill=kill)
    users = {r["user"]: r for r in rows(b, "list_users")}
    assert set(users) == {"guest", "app"}  # not re-seeded, the deleted one stays deleted
    assert users["app"]["tags"] == ["monitoring"]
    assert rows(b, "list_permissions", "-p", "orders/ü") == [
        {"user": "app", "configure": "^app", "write": ".*", "read": ".*"}
    ]
    assert rows(b, "list_topic_permissions", "-p", "orders/ü") == [
        {"user": "app", "exchange": "amq.topic", "write": "^app\\.", "read": ".*"}
    ]
    policies = rows(b, "list_policies", "-p", "orders/ü")
    assert [(p["name"], p["priority"], p["definition"]) for p in policies] == [
        ("cap", 2, {"max-length": 5})
    ]
    assert {"name": "orders/ü"} in rows(b, "list_vhosts")
    # the stored hash still logs in; the changed password is the one that works
    conn = login(b, "app", "s3cret", "orders/ü")
    conn.channel().queue_declare("app.q", passive=True)
    conn.close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        login(b, "guest", "guest", "/")
    login(b, "guest", "changed", "/").close()
    # deleting the vhost takes its permissions and policies, also after a restart
    ok(b, "delete_vhost", "orders/ü")
    b.restart(kill=kill)
    assert {"name": "orders/ü"} not in rows(b, "list_vhosts")
    assert rows(b, "list_user_permissions", "app") == []
    assert "s3cret" not in "".join(p.read_text(errors="replace") for p in b.data_dir.glob("defin*"))
