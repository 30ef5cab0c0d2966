"""Receiving links from exchange addresses (RabbitMQ 3's ``/exchange/NAME/KEY``,
``/exchange/NAME``, ``/topic/KEY``): the broker binds a server-named queue of the
link's own to the exchange with the key; messages published to the exchange (by pika)
reach the Qpid Proton receiver. The queue is listed by the management API while the
link lives and is gone with the link (detached, or its connection closed). A missing
exchange refuses the link with amqp:not-found; RabbitMQ 4's ``/exchanges/...`` as a
source is refused as RabbitMQ refuses it. 1 and 3 workers (the exchange, the queue and
the connection anywhere), and RabbitMQ 3.10's plugin with ``SHARDMQ_TEST_MGMT_URL`` and
``SHARDMQ_TEST_URI`` (which, checked here, leaves the queue behind: it is deleted by the
test, and ends the whole session for a bad source).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pika
import pytest
from proton.utils import BlockingConnection

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.values import UInt
from tests.integration.test_management import Mgmt, _name, _user, wait_for
from tests.integration.test_management_ops import Ops, ops

from .wire import RawClient

__all__ = ["ops"]  # the fixture


def _queues(m: Mgmt) -> dict[str, dict[str, Any]]:
    return {q["name"]: q for q in m.ok("GET", "/api/queues/%2F")}


def _bound(m: Mgmt, queue: str) -> list[tuple[str, str]]:
    rows = m.ok("GET", f"/api/queues/%2F/{quote(queue, safe='')}/bindings")
    return [(b["source"], b["routing_key"]) for b in rows if b["source"]]


@pytest.mark.parametrize("form", ["exchange-key", "exchange", "topic", "escaped"])
def test_exchange_source_binds_a_queue_of_its_own(ops: Ops, form: str) -> None:
    m = ops.m
    key = _name("k")
    pconn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", m.amqp_port))
    ch = pconn.channel()
    ex = "amq.direct"
    if form == "exchange-key":
        address, bound, routing = f"/exchange/amq.direct/{key}", key, key
    elif form == "exchange":
        ex = _name("fan")
        ch.exchange_declare(ex, "fanout", auto_delete=True)
        address, bound, routing = f"/exchange/{ex}", "", "whatever"
    elif form == "topic":
        ex = "amq.topic"
        address, bound, routing = f"/topic/{key}.#", f"{key}.#", f"{key}.a.b"
    else:  # RabbitMQ 3 unescapes %2F in a legacy address
        address, bound, routing = f"/exchange/amq.direct/{key}%2Fx", f"{key}/x", f"{key}/x"
    before = set(_queues(m))
    conn = BlockingConnection(
        f"amqp://guest:guest@127.0.0.1:{m.amqp_port}", timeout=10, allowed_mechs="PLAIN"
    )
    made: list[str] = []
    try:
        receiver = conn.create_receiver(address, credit=10)
        assert receiver.link.remote_source.address == address  # echoed, as RabbitMQ does
        made = wait_for(lambda: [n for n in _queues(m) if n not in before and _bound(m, n)])
        assert len(made) == 1, made
        name = made[0]
        assert name.startswith("amq.gen-")
        assert _bound(m, name) == [(ex, bound)]
        if m.workers is not None:  # RabbitMQ 3.10: neither exclusive nor auto-delete
            q = _queues(m)[name]
            assert q["exclusive"] and q["auto_delete"] and not q["durable"], q
        for i in range(3):
            ch.basic_publish(ex, routing, f"m{i}".encode())
        ch.basic_publish(ex, routing + ".other" if form != "exchange" else routing, b"last")
        got = []
        for _ in range(4 if form in ("exchange", "topic") else 3):
            got.append(receiver.receive(timeout=10))
            receiver.accept()
        assert [bytes(msg.body) for msg in got[:3]] == [b"m0", b"m1", b"m2"]
        if m.workers is not None:  # gone with the link
            # (RabbitMQ 3.10 answers a closing detach with closed=false: Proton waits)
            receiver.close()
            assert wait_for(lambda: name not in _queues(m))
    finally:
        conn.close()
        if m.workers is None:  # RabbitMQ 3.10 leaves it behind
            for name in made:
                m.call("DELETE", f"/api/queues/%2F/{quote(name, safe='')}")
        if form == "exchange":
            ch.exchange_delete(ex)
        pconn.close()
    if m.workers is not None:
        assert not [n for n in _queues(m) if n not in before]


def test_exchange_source_queue_goes_with_the_connection(ops: Ops) -> None:
    if ops.m.workers is None:
        pytest.skip("RabbitMQ 3.10 leaves the queue behind (checked by hand)")
    m = ops.m
    before = set(_queues(m))
    key = _name("k")
    conn = BlockingConnection(
        f"amqp://guest:guest@127.0.0.1:{m.amqp_port}", timeout=10, allowed_mechs="PLAIN"
    )
    try:
        conn.create_receiver(f"/exchange/amq.direct/{key}", credit=10)
        conn.create_receiver(f"/topic/{key}", credit=10)
        new = wait_for(lambda: len([n for n in _queues(m) if n not in before]) == 2)
        assert new, _queues(m)
    finally:
        conn.close()
    assert wait_for(lambda: not [n for n in _queues(m) if n not in before])
    pconn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", m.amqp_port))
    try:  # nothing is bound to the key any more: a mandatory publish comes back
        ch = pconn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.UnroutableError):
            ch.basic_publish("amq.direct", key, b"x", mandatory=True)
    finally:
        pconn.close()


@pytest.mark.parametrize(
    ("address", "condition", "text"),
    [
        ("/exchange/{name}/k", "amqp:not-found", "no exchange '{name}' in vhost '/'"),
        ("/exchange/{name}", "amqp:not-found", "no exchange '{name}' in vhost '/'"),
        (
            "/exchanges/amq.direct/k",
            "amqp:invalid-field",
            'Attach rejected: {unknown_destination,"/exchanges/amq.direct/k"}',
        ),
        (
            "/exchanges/amq.fanout",
            "amqp:invalid-field",
            'Attach rejected: {unknown_destination,"/exchanges/amq.fanout"}',
        ),
    ],
)
def test_bad_exchange_sources_are_refused(
    ops: Ops, address: str, condition: str, text: str
) -> None:
    """shardmq refuses the link (attach, then detach with the error); RabbitMQ 3.10
    ends the session with the same condition (and "NOT_FOUND - " before the text)."""
    name = _name("nosuch")
    address, text = address.replace("{name}", name), text.replace("{name}", name)
    before = set(_queues(ops.m))
    c = RawClient(ops.m.amqp_port)
    try:
        c.login(container_id=_name("bad-source"))
        c.begin(window=10)
        c.send(
            T.Attach(
                name="bad",
                handle=UInt(0),
                role=T.ROLE_RECEIVER,
                source=T.Source(address=address),
                target=T.Target(),
            )
        )
        while True:
            _ch, perf, _p = c.read_frame()
            if isinstance(perf, (T.Detach, T.End)):
                break
            assert isinstance(perf, T.Attach) and perf.source is None, perf
        assert perf.error is not None and str(perf.error.condition) == condition
        assert str(perf.error.description).endswith(text), perf.error
        if ops.m.workers is not None:  # only the link: the session goes on
            assert isinstance(perf, T.Detach) and perf.closed
            c.send(T.Detach(handle=UInt(0), closed=True))
            c.send(T.End())
            c.read_until(T.End)
    finally:
        c.close()
    assert not [n for n in _queues(ops.m) if n not in before]  # nothing made


@pytest.mark.parametrize(
    ("perm", "refused"),
    [
        ({"configure": "^$", "write": ".*", "read": ".*"}, "queue 'amq.gen-"),
        ({"configure": ".*", "write": ".*", "read": "^$"}, "exchange 'amq.direct'"),
    ],
)
def test_exchange_source_needs_declare_and_bind_permissions(
    ops: Ops, perm: dict[str, str], refused: str
) -> None:
    """As queue.declare and queue.bind: configure on the new queue, read on the
    exchange; refused with amqp:unauthorized-access before anything is made."""
    if ops.m.workers is None:
        pytest.skip("RabbitMQ 3.10 ends the session (checked for addresses above)")
    m = ops.m
    user = _user(m, "")
    assert m.call("PUT", f"/api/permissions/%2F/{user}", perm).status_code == 201
    before = set(_queues(m))
    c = RawClient(m.amqp_port)
    try:
        c.login(user=user, password="pw", container_id=_name("perm"))
        c.begin(window=10)
        c.send(
            T.Attach(
                name="no",
                handle=UInt(0),
                role=T.ROLE_RECEIVER,
                source=T.Source(address="/exchange/amq.direct/k"),
                target=T.Target(),
            )
        )
        detach = c.read_until(T.Detach)
        assert str(detach.error.condition) == "amqp:unauthorized-access"
        text = str(detach.error.description)
        assert text.startswith(f"access to {refused}") and f"for user '{user}'" in text, text
    finally:
        c.close()
        m.call("DELETE", f"/api/users/{user}")
    assert not [n for n in _queues(m) if n not in before]
