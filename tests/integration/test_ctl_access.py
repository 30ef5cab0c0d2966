"""Users, virtual hosts and permissions managed with ``shardmq ctl`` on a running broker
(rabbitmqctl's syntax, texts and exit codes), seen by real clients on every worker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from tests.support.ctl import ctl

from .conftest import Broker
from .helpers import unique


def ok(broker: Broker, *args: str) -> str:
    res = ctl(broker, *args)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def connect(broker: Broker, user: str, password: str, vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host=broker.host,
            port=broker.port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password),
            connection_attempts=1,
            socket_timeout=5,
        )
    )


@pytest.fixture
def user(broker: Broker) -> Iterator[str]:
    name = unique("user")
    ok(broker, "add_user", name, "pw-1")
    try:
        yield name
    finally:
        ctl(broker, "delete_user", name)


@pytest.fixture
def vhost(broker: Broker) -> Iterator[str]:
    name = unique("vh") + "/ü"
    ok(broker, "add_vhost", name)
    try:
        yield name
    finally:
        ctl(broker, "delete_vhost", name)


def closed_with(conn: pika.BlockingConnection, timeout: float = 10) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn.process_data_events(0.2)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            return exc.reply_code, exc.reply_text
    raise AssertionError("the connection was not closed")


def test_user_lifecycle_login_and_permissions(broker: Broker, user: str) -> None:
    # a new user has no permissions: connection.open is refused with 530
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as err:
        connect(broker, user, "pw-1")
    assert f"NOT_ALLOWED - access to vhost '/' refused for user '{user}'" in str(err.value)
    ok(broker, "set_permissions", user, ".*", ".*", ".*")
    conn = connect(broker, user, "pw-1")
    conn.close()
    # a wrong password is refused (403 at login)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(broker, user, "wrong")
    ok(broker, "change_password", user, "pw-2")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(broker, user, "pw-1")
    connect(broker, user, "pw-2").close()
    res = ctl(broker, "authenticate_user", user, "pw-2")
    assert res.returncode == 0 and "Success" in res.stdout
    res = ctl(broker, "authenticate_user", user, "pw-1")
    assert res.returncode == 65
    assert f"user '{user}' - invalid credentials" in res.stderr
    # listings
    ok(broker, "set_user_tags", user, "monitoring", "policymaker")
    users = {r["user"]: r for r in json.loads(ok(broker, "list_users", "--formatter", "json"))}
    assert sorted(users[user]["tags"]) == ["monitoring", "policymaker"]
    assert "user\ttags" in ok(broker, "list_users")
    perms = json.loads(ok(broker, "list_user_permissions", user, "--formatter", "json"))
    assert perms == [{"vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]
    rows = json.loads(ok(broker, "list_permissions", "--formatter", "json"))
    assert {"user": user, "configure": ".*", "write": ".*", "read": ".*"} in rows
    ok(broker, "clear_permissions", user)
    assert json.loads(ok(broker, "list_user_permissions", user, "--formatter", "json")) == []


def test_refusals_have_rabbitmqctls_exit_codes_and_texts(broker: Broker, user: str) -> None:
    res = ctl(broker, "add_user", user, "x")
    assert res.returncode == 70 and f'User "{user}" already exists' in res.stderr
    ghost = unique("ghost")
    res = ctl(broker, "delete_user", ghost)
    assert res.returncode == 67 and f'User "{ghost}" does not exist' in res.stderr
    res = ctl(broker, "change_password", ghost, "x")
    assert res.returncode == 67
    res = ctl(broker, "set_permissions", ghost, ".*", ".*", ".*")
    assert res.returncode == 67
    res = ctl(broker, "set_permissions", "-p", ghost, user, ".*", ".*", ".*")
    assert res.returncode == 69 and f"Virtual host {ghost} does not exist" in res.stderr
    res = ctl(broker, "delete_vhost", ghost)
    assert res.returncode == 65 and f"Virtual host '{ghost}' does not exist" in res.stderr
    res = ctl(broker, "set_permissions", user, "(", ".*", ".*")
    assert res.returncode == 69


def test_deleting_a_user_closes_its_connections_on_every_worker(broker: Broker, user: str) -> None:
    ok(broker, "set_permissions", user, ".*", ".*", ".*")
    conns = [connect(broker, user, "pw-1") for _ in range(4)]  # spread over the workers
    other = broker.blocking()
    try:
        ok(broker, "delete_user", user)
        for conn in conns:
            assert closed_with(conn) == (320, f"CONNECTION_FORCED - user '{user}' is deleted")
        # other users' connections are untouched
        ch = other.channel()
        ch.queue_declare("", exclusive=True)
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            connect(broker, user, "pw-1")
    finally:
        other.close()


def test_vhosts_isolate_and_deleting_one_removes_its_queues(broker: Broker, vhost: str) -> None:
    ok(broker, "set_permissions", "-p", vhost, broker.user, ".*", ".*", ".*")
    names = json.loads(ok(broker, "list_vhosts", "--formatter", "json"))
    assert {"name": vhost} in names
    q = unique("vq")
    conn = connect(broker, broker.user, broker.password, vhost)
    ch = conn.channel()
    ch.queue_declare(q, durable=True)
    ch.basic_publish("", q, b"hello", pika.BasicProperties(delivery_mode=2))
    # invisible from the default vhost
    default = broker.blocking()
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            default.channel().queue_declare(q, passive=True)
        assert err.value.reply_code == 404
    finally:
        default.close()
    watchers = [connect(broker, broker.user, broker.password, vhost) for _ in range(3)]
    ok(broker, "delete_vhost", vhost)
    for c in [conn, *watchers]:
        # RabbitMQ 3.10 says "is down" instead to some of them (a race in its shutdown)
        code, text = closed_with(c)
        assert code == 320
        assert text in (f"CONNECTION_FORCED - vhost '{vhost}' is {w}" for w in ("deleted", "down"))
    # a vhost of the same name starts empty
    ok(broker, "add_vhost", vhost)
    ok(broker, "set_permissions", "-p", vhost, broker.user, ".*", ".*", ".*")
    again = connect(broker, broker.user, broker.password, vhost)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            again.channel().queue_declare(q, passive=True)
        assert err.value.reply_code == 404
    finally:
        again.close()


def test_a_vhost_without_permissions_refuses_connection_open(broker: Broker, vhost: str) -> None:
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as err:
        connect(broker, broker.user, broker.password, vhost)
    assert f"access to vhost '{vhost}' refused for user '{broker.user}'" in str(err.value)
