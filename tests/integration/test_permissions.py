"""Per-vhost permissions (configure / write / read regexes) enforced on every AMQP
operation with RabbitMQ's mapping and its 403 texts, for users made with ``ctl``."""

from __future__ import annotations

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
