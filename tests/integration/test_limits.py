"""Per-vhost and per-user limits (``max-connections``, ``max-queues``, ``max-channels``)
set with ``shardmq ctl`` (rabbitmqctl's syntax, output and exit codes), enforced with
RabbitMQ's codes and texts on pika, aio-pika and kombu clients, across every worker.

With ``SHARDMQ_TEST_URI`` and ``SHARDMQ_TEST_RABBITMQCTL`` the same tests run against
RabbitMQ (the placement checks, which need shardmq's ``worker`` server property, are
left out there)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aio_pika
import kombu
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


def params(broker: Broker, user: str, vhost: str) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=broker.host,
        port=broker.port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, "pw"),
        connection_attempts=1,
        socket_timeout=5,
    )


def connect(broker: Broker, user: str, vhost: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(params(broker, user, vhost))


def worker_of(conn: pika.BlockingConnection) -> int | None:
    return conn._impl.server_properties.get("worker")  # type: ignore[no-any-return]


@pytest.fixture
def user(broker: Broker) -> Iterator[str]:
    name = unique("limuser")
    ok(broker, "add_user", name, "pw")
    try:
        yield name
    finally:
        ctl(broker, "delete_user", name)


@pytest.fixture
def vhost(broker: Broker, user: str) -> Iterator[str]:
    name = unique("limvh") + "/ü"
    ok(broker, "add_vhost", name)
    ok(broker, "set_permissions", "-p", name, user, ".*", ".*", ".*")
    try:
        yield name
    finally:
        ctl(broker, "delete_vhost", name)


def refused_open(broker: Broker, user: str, vhost: str) -> str:
    with pytest.raises(pika.exceptions.AMQPConnectionError) as err:
        connect(broker, user, vhost).close()
    return str(err.value)


def test_vhost_max_connections_spans_workers(broker: Broker, user: str, vhost: str) -> None:
    held: list[pika.BlockingConnection] = []
    try:
        # two connections held, on two different workers when there are several
        held.append(connect(broker, user, vhost))
        while len(held) < 2:
            c = connect(broker, user, vhost)
            if broker.workers and broker.workers > 1 and worker_of(c) == worker_of(held[0]):
                c.close()
                continue
            held.append(c)
        ok(broker, "set_vhost_limits", "-p", vhost, '{"max-connections": 2}')
        # wherever the next ones land, the two held elsewhere count: refused with 530
        for _ in range(6):
            text = refused_open(broker, user, vhost)
            assert (
                f"530) \"NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}': "
                "connection limit (2) is reached" in text
            ), text
        # the held connections are untouched
        held[0].channel().close()
        # one closes: there is room for one more, and only one
        held.pop().close()
        held.append(connect(broker, user, vhost))
        refused_open(broker, user, vhost)
        # a negative value lifts the limit; clearing too
        ok(broker, "set_vhost_limits", "-p", vhost, '{"max-connections": -1}')
        held.append(connect(broker, user, vhost))
        ok(broker, "set_vhost_limits", "-p", vhost, '{"max-connections": 0}')
        assert "connection limit (0) is reached" in refused_open(broker, user, vhost)
        ok(broker, "clear_vhost_limits", "-p", vhost)
        held.append(connect(broker, user, vhost))
    finally:
        for c in held:
            if c.is_open:
                c.close()


def test_vhost_max_queues(broker: Broker, user: str, vhost: str) -> None:
    conn = connect(broker, user, vhost)
    try:
        ch = conn.channel()
        ch.queue_declare("q1")
        ok(broker, "set_vhost_limits", "-p", vhost, '{"max-queues": 2}')
        ch.queue_declare("q2", durable=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare("q3")
        assert err.value.reply_code == 406
        assert err.value.reply_text == (
            f"PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost "
            f"'{vhost}' (2) is reached"
        )
        ch = conn.channel()
        ch.queue_declare("q1")  # declaring an existing queue again is no new queue
        ch.queue_declare("q2", passive=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare("", exclusive=True)  # server-named ones count too
        assert err.value.reply_code == 406 and "queue limit in vhost" in err.value.reply_text
        ch = conn.channel()
        ch.queue_delete("q1")
        ch.queue_declare("q3")  # room again
        ch.queue_delete("q2")
        ch.queue_delete("q3")
    finally:
        conn.close()


def test_user_max_connections_aio_pika(broker: Broker, user: str, vhost: str) -> None:
    ok(broker, "set_user_limits", user, '{"max-connections": 2}')
    url = f"amqp://{user}:pw@{broker.host}:{broker.port}/" + vhost.replace("/", "%2F").replace(
        "ü", "%C3%BC"
    )

    async def run() -> str:
        first = await aio_pika.connect(url)
        second = await aio_pika.connect(url)
        try:
            # aiormq drops the close's text ("Expected one of ['Connection.OpenOk'], got
            # <Connection.Close>"): pika, while the two are held, reads it
            with pytest.raises(Exception, match="Connection.Close"):
                third = await aio_pika.connect(url)
                await third.close()
            return await asyncio.get_running_loop().run_in_executor(
                None, refused_open, broker, user, vhost
            )
        finally:
            await first.close()
            await second.close()

    text = asyncio.run(run())
    assert (
        f"NOT_ALLOWED - connection refused for user '{user}': user connection limit (2) "
        "is reached" in text
    ), text
    # both closed: room again; the limit is the user's, whatever the vhost
    conn = connect(broker, user, vhost)
    conn.close()


def test_user_max_channels_kombu(broker: Broker, user: str, vhost: str) -> None:
    ok(broker, "set_user_limits", user, '{"max-channels": 3}')

    def make() -> kombu.Connection:
        return kombu.Connection(
            hostname=broker.host,
            port=broker.port,
            userid=user,
            password="pw",
            virtual_host=vhost,
            connect_timeout=5,
        )

    a, b = make(), make()
    try:
        a.connect()
        b.connect()
        a.channel()
        a.channel()
        b.channel()  # three channels of the user on two connections
        with pytest.raises(Exception) as err:
            b.channel()
        text = str(err.value)
        assert (
            f"number of channels opened for user '{user}' has reached the maximum allowed "
            "user limit of (3)" in text
        ), text
        assert "530" in text or "NOT_ALLOWED" in text
    finally:
        for c in (a, b):
            try:
                c.release()
            except Exception:
                pass


def test_lowered_channel_limit_applies_to_open_connections(
    broker: Broker, user: str, vhost: str
) -> None:
    conn = connect(broker, user, vhost)
    try:
        conn.channel()
        conn.channel()
        ok(broker, "set_user_limits", user, '{"max-channels": 2}')
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
            conn.channel()
        assert err.value.reply_code == 530
        # the other connections' channels count across workers, after the close too
        again = connect(broker, user, vhost)
        again.channel()
        again.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
            again.channel()
        ok(broker, "clear_user_limits", user, "max-channels")
        third = connect(broker, user, vhost)
        for _ in range(4):
            third.channel()
        third.close()
    finally:
        if conn.is_open:
            conn.close()


def test_limits_ctl(broker: Broker, user: str, vhost: str) -> None:
    ok(broker, "set_vhost_limits", "-p", vhost, '{"max-connections": 5, "max-queues": 7}')
    out = ok(broker, "list_vhost_limits", "-p", vhost)
    assert out.splitlines()[-1] == '{"max-connections":5,"max-queues":7}'
    # set_vhost_limits replaces the whole set
    ok(broker, "set_vhost_limits", "-p", vhost, '{"max-queues": 3}')
    assert ok(broker, "list_vhost_limits", "-p", vhost).splitlines()[-1] == '{"max-queues":3}'
    rows = json.loads(ok(broker, "list_vhost_limits", "--global", "--formatter", "json"))
    assert {"vhost": vhost, "limits": '{"max-queues":3}'} in rows
    # refusals: rabbitmqctl's texts and exit codes
    res = ctl(broker, "set_vhost_limits", "-p", vhost, '{"max-foo": 1}')
    assert res.returncode == 69 and 'Unrecognised terms [{<<"max-foo">>,1}] in limits' in res.stderr
    res = ctl(broker, "set_vhost_limits", "-p", vhost, '{"max-queues": "x"}')
    assert res.returncode == 69
    assert 'max-queues should be a number, actually was <<"x">>' in res.stderr
    res = ctl(broker, "set_vhost_limits", "-p", vhost, "notjson")
    assert res.returncode == 69 and "JSON decoding error" in res.stderr
    missing = unique("novh")
    res = ctl(broker, "set_vhost_limits", "-p", missing, '{"max-queues": 1}')
    assert res.returncode == 65 and f"Virtual host '{missing}' does not exist" in res.stderr
    ok(broker, "clear_vhost_limits", "-p", vhost)
    assert ok(broker, "list_vhost_limits", "-p", vhost).splitlines()[1:] == [""]
    res = ctl(broker, "clear_vhost_limits", "-p", vhost)
    assert res.returncode == 69 and "Parameter does not exist" in res.stderr

    # user limits merge
    ok(broker, "set_user_limits", user, '{"max-connections": 2, "max-channels": 3}')
    ok(broker, "set_user_limits", user, '{"max-channels": 4}')
    out = ok(broker, "list_user_limits", "--user", user)
    assert out.splitlines()[-1] == '{"max-channels":4,"max-connections":2}'
    rows = json.loads(ok(broker, "list_user_limits", "--global", "--formatter", "json"))
    assert {"user": user, "limits": '{"max-channels":4,"max-connections":2}'} in rows
    res = ctl(broker, "set_user_limits", user, '{"max-queues": 2}')
    assert res.returncode == 69
    assert 'Unrecognised terms [{<<"max-queues">>,2}] in user-limits' in res.stderr
    res = ctl(broker, "set_user_limits", unique("nouser"), '{"max-channels": 1}')
    assert res.returncode == 69 and "no_such_user" in res.stderr
    ok(broker, "clear_user_limits", user, "max-channels")
    assert ok(broker, "list_user_limits", "--user", user).splitlines()[-1] == (
        '{"max-connections":2}'
    )
    ok(broker, "clear_user_limits", user, "all")
    assert ok(broker, "list_user_limits", "--user", user).splitlines()[-1] == "{}"
    res = ctl(broker, "clear_user_limits", user)
    assert res.returncode in (2, 64)  # usage: the limit name (or all) is required


def test_limits_go_with_their_vhost_and_user(broker: Broker, user: str) -> None:
    name = unique("limgone")
    ok(broker, "add_vhost", name)
    ok(broker, "set_vhost_limits", "-p", name, '{"max-queues": 1}')
    ok(broker, "delete_vhost", name)
    ok(broker, "add_vhost", name)
    try:
        assert ok(broker, "list_vhost_limits", "-p", name).splitlines()[1:] == [""]
    finally:
        ok(broker, "delete_vhost", name)
    other = unique("limgoneuser")
    ok(broker, "add_user", other, "pw")
    ok(broker, "set_user_limits", other, '{"max-connections": 1}')
    ok(broker, "delete_user", other)
    ok(broker, "add_user", other, "pw")
    try:
        assert ok(broker, "list_user_limits", "--user", other).splitlines()[-1] == "{}"
    finally:
        ok(broker, "delete_user", other)
