"""Per-vhost permissions (configure / write / read regexes) enforced on every AMQP
operation with RabbitMQ's mapping and its 403 texts, for users made with ``ctl``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.support.ctl import ctl

from .conftest import Broker
from .helpers import unique
from .test_ctl_access import connect, ok


@pytest.fixture
def restricted(broker: Broker) -> Iterator[tuple[str, str, pika.BlockingConnection]]:
    """A user who may configure ``P-c*``, write ``P-w*`` and read ``P-r*`` (P unique);
    yields (user, P, admin connection)."""
    user = unique("perm")
    p = unique("p")
    ok(broker, "add_user", user, "pw")
    ok(broker, "set_permissions", user, f"^{p}-c", f"^{p}-w|^{p}-cw", f"^{p}-r|^{p}-cr")
    admin = broker.blocking()
    ch = admin.channel()
    for q in (f"{p}-c", f"{p}-w", f"{p}-r", f"{p}-cw", f"{p}-cr", f"{p}-other"):
        ch.queue_declare(q, auto_delete=False)
    ch.exchange_declare(f"{p}-rx", "direct")
    ch.exchange_declare(f"{p}-wx", "direct")
    try:
        yield user, p, admin
    finally:
        ch = admin.channel()
        for q in (f"{p}-c", f"{p}-w", f"{p}-r", f"{p}-cw", f"{p}-cr", f"{p}-other"):
            ch.queue_delete(q)
        ch.exchange_delete(f"{p}-rx")
        ch.exchange_delete(f"{p}-wx")
        admin.close()
        ctl(broker, "delete_user", user)


def refused(broker: Broker, user: str, action: Callable[[BlockingChannel], object]) -> str:
    conn = connect(broker, user, "pw")
    try:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            action(ch)
            # an async method (publish) fails on the next round trip
            ch.queue_declare(unique("never"), passive=True)
        assert err.value.reply_code == 403, err.value
        return str(err.value.reply_text)
    finally:
        if conn.is_open:
            conn.close()


def allowed(broker: Broker, user: str, action: Callable[[BlockingChannel], object]) -> None:
    conn = connect(broker, user, "pw")
    try:
        ch = conn.channel()
        action(ch)
        ch.basic_qos(prefetch_count=1)  # a round trip: an async refusal would show here
    finally:
        conn.close()


def test_operations_need_rabbitmqs_permissions(
    broker: Broker, restricted: tuple[str, str, pika.BlockingConnection]
) -> None:
    user, p, _ = restricted
    where = f"in vhost '/' refused for user '{user}'"
    # queue.declare: configure on the queue, unless passive
    text = refused(broker, user, lambda ch: ch.queue_declare(f"{p}-other"))
    assert text == f"ACCESS_REFUSED - access to queue '{p}-other' {where}"
    allowed(broker, user, lambda ch: ch.queue_declare(f"{p}-other", passive=True))
    allowed(broker, user, lambda ch: ch.queue_declare(f"{p}-c"))
    # exchange.declare / delete: configure on the exchange
    text = refused(broker, user, lambda ch: ch.exchange_declare(f"{p}-x", "fanout"))
    assert text == f"ACCESS_REFUSED - access to exchange '{p}-x' {where}"
    text = refused(broker, user, lambda ch: ch.exchange_delete(f"{p}-rx"))
    assert text == f"ACCESS_REFUSED - access to exchange '{p}-rx' {where}"
    # queue.delete: configure
    text = refused(broker, user, lambda ch: ch.queue_delete(f"{p}-w"))
    assert text == f"ACCESS_REFUSED - access to queue '{p}-w' {where}"
    # basic.publish: write on the exchange; the default one is amq.default
    text = refused(broker, user, lambda ch: ch.basic_publish("", f"{p}-w", b"x"))
    assert text == f"ACCESS_REFUSED - access to exchange 'amq.default' {where}"
    allowed(broker, user, lambda ch: ch.basic_publish(f"{p}-wx", "k", b"x"))
    # basic.get / basic.consume / queue.purge: read on the queue
    text = refused(broker, user, lambda ch: ch.basic_get(f"{p}-w"))
    assert text == f"ACCESS_REFUSED - access to queue '{p}-w' {where}"
    text = refused(broker, user, lambda ch: ch.basic_consume(f"{p}-other", lambda *a: None))
    assert text == f"ACCESS_REFUSED - access to queue '{p}-other' {where}"
    text = refused(broker, user, lambda ch: ch.queue_purge(f"{p}-c"))
    assert text == f"ACCESS_REFUSED - access to queue '{p}-c' {where}"
    allowed(broker, user, lambda ch: ch.basic_get(f"{p}-r"))
    allowed(broker, user, lambda ch: ch.queue_purge(f"{p}-r"))
    # queue.bind: write on the queue, read on the exchange
    text = refused(broker, user, lambda ch: ch.queue_bind(f"{p}-r", f"{p}-rx", "k"))
    assert text == f"ACCESS_REFUSED - access to queue '{p}-r' {where}"
    text = refused(broker, user, lambda ch: ch.queue_bind(f"{p}-w", f"{p}-wx", "k"))
    assert text == f"ACCESS_REFUSED - access to exchange '{p}-wx' {where}"
    allowed(broker, user, lambda ch: ch.queue_bind(f"{p}-w", f"{p}-rx", "k"))


def test_topic_permissions_limit_routing_keys_on_topic_exchanges(broker: Broker) -> None:
    user = unique("tp")
    ok(broker, "add_user", user, "pw")
    try:
        ok(broker, "set_permissions", user, ".*", ".*", ".*")
        ok(broker, "set_topic_permissions", user, "amq.topic", "^{username}\\.", "^r\\.")
        rows = json.loads(ok(broker, "list_topic_permissions", "--formatter", "json"))
        assert {
            "user": user,
            "exchange": "amq.topic",
            "write": "^{username}\\.",
            "read": "^r\\.",
        } in rows
        # the same grant seen per user, as rabbitmqctl 3.10 prints it (no header row)
        lines = ok(broker, "list_user_topic_permissions", user).splitlines()
        assert lines == [
            f'Listing topic permissions for user "{user}" ...',
            "/\tamq.topic\t^{username}\\.\t^r\\.",
        ]
        where = f"in exchange 'amq.topic' in vhost '/' refused for user '{user}'"
        allowed(broker, user, lambda ch: ch.basic_publish("amq.topic", f"{user}.x", b"1"))
        text = refused(broker, user, lambda ch: ch.basic_publish("amq.topic", "other.x", b"1"))
        assert text == f"ACCESS_REFUSED - access to topic 'other.x' {where}"

        def bind(rk: str) -> Callable[[BlockingChannel], object]:
            def run(ch: BlockingChannel) -> None:
                q = ch.queue_declare("", exclusive=True).method.queue
                ch.queue_bind(q, "amq.topic", rk)

            return run

        allowed(broker, user, bind("r.a"))
        text = refused(broker, user, bind("x.a"))
        assert text == f"ACCESS_REFUSED - access to topic 'x.a' {where}"
        # other exchange types are not affected
        allowed(broker, user, lambda ch: ch.basic_publish("amq.direct", "other.x", b"1"))
        ok(broker, "clear_topic_permissions", user, "amq.topic")
        allowed(broker, user, lambda ch: ch.basic_publish("amq.topic", "other.x", b"1"))
    finally:
        ctl(broker, "delete_user", user)


def test_a_permission_change_reaches_open_connections(broker: Broker) -> None:
    user = unique("live")
    ok(broker, "add_user", user, "pw")
    try:
        ok(broker, "set_permissions", user, ".*", ".*", ".*")
        conns = [connect(broker, user, "pw") for _ in range(3)]  # on every worker
        chans = [c.channel() for c in conns]
        for ch in chans:
            ch.queue_declare(unique("before"), exclusive=True)
        ok(broker, "set_permissions", user, "^nothing$", ".*", ".*")
        for ch in chans:
            name = unique("after")
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
                ch.queue_declare(name, exclusive=True)
            assert err.value.reply_code == 403
            assert f"access to queue '{name}'" in err.value.reply_text
        for c in conns:
            c.close()
    finally:
        ctl(broker, "delete_user", user)
