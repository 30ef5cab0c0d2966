"""Qpid Proton (python-qpid-proton, a real AMQP 1.0 client) against a real broker, 1 and
3 workers: send and receive on queues and exchanges, settlement modes, outcomes,
credit and drain, large messages over many frames, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import proton
import pytest
from proton import ConnectionException, Message
from proton.reactor import AtMostOnce
from proton.utils import BlockingConnection, LinkDetached

from tests.integration.conftest import Broker
from tests.integration.helpers import unique


def url(b: Broker, user: str | None = None, password: str | None = None) -> str:
    return f"amqp://{user or b.user}:{password or b.password}@{b.host}:{b.port}"


@pytest.fixture
def amqp(broker: Broker) -> Iterator[BlockingConnection]:
    c = BlockingConnection(url(broker), timeout=10, allowed_mechs="PLAIN")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def queue(broker: Broker) -> Iterator[str]:
    name = unique("a1q")
    conn = broker.blocking()
    conn.channel().queue_declare(name)
    try:
        yield name
    finally:
        ch = conn.channel()
        ch.queue_delete(name)
        conn.close()


def _count(broker: Broker, q: str) -> int:
    conn = broker.blocking()
    try:
        return int(conn.channel().queue_declare(q, passive=True).method.message_count)
    finally:
        conn.close()


def test_send_and_receive_unsettled(amqp: BlockingConnection, queue: str) -> None:
    s = amqp.create_sender(f"/queues/{queue}")
    for i in range(5):
        d = s.send(Message(body=f"m{i}", properties={"n": i}))
        assert d.remote_state == proton.Delivery.ACCEPTED
    r = amqp.create_receiver(f"/queues/{queue}", credit=10)
    got = []
    for _ in range(5):
        m = r.receive(timeout=10)
        got.append((m.body, m.properties["n"]))
        r.accept()
    assert got == [(f"m{i}", i) for i in range(5)]


def test_at_most_once_both_ways(amqp: BlockingConnection, broker: Broker, queue: str) -> None:
    s = amqp.create_sender(f"/queues/{queue}", options=AtMostOnce())
    for i in range(3):
        s.send(Message(body=f"x{i}"))
    # (string bodies: Proton 0.40 returns a binary body as a memoryview into a buffer
    # that later messages reuse, a client bug)
    r = amqp.create_receiver(f"/queues/{queue}", credit=10, options=AtMostOnce())
    bodies = [r.receive(timeout=10).body for _ in range(3)]
    assert bodies == ["x0", "x1", "x2"]
    r.close()
    assert _count(broker, queue) == 0  # settled deliveries were not requeued


def test_outcomes_map_to_ack_reject_requeue(
    amqp: BlockingConnection, broker: Broker, queue: str
) -> None:
    bodies = ["accept", "reject", "release", "modified-fail", "modified-here", "modified"]
    s = amqp.create_sender(f"/queues/{queue}")
    for body in bodies:
        s.send(Message(body=body))
    r = amqp.create_receiver(f"/queues/{queue}", credit=len(bodies))
    assert [r.receive(timeout=10).body for _ in bodies] == bodies
    # each settle applies to the oldest unsettled delivery, in order
    r.accept()  # accepted: acked
    r.reject()  # rejected: dropped (dead-lettered where configured)
    r.release(delivered=False)  # released: requeued
    r.release(delivered=True)  # modified, delivery-failed: requeued
    here = r.fetcher.unsettled[0]
    here.local.undeliverable = True  # modified, undeliverable-here: rejected
    r.settle(proton.Delivery.MODIFIED)
    r.settle(proton.Delivery.MODIFIED)  # modified, no flags: requeued
    r.close()
    # what is left in the queue (string bodies reach 0-9-1 as their amqp-value section)
    conn = broker.blocking()
    left: list[str] = []
    try:
        ch = conn.channel()
        while True:
            m, _p, body = ch.basic_get(queue, auto_ack=True)
            if m is None:
                break
            assert m.redelivered
            left.append(body[5:].decode())  # 00 53 77 a1 len, then the string
    finally:
        conn.close()
    assert sorted(left) == ["modified", "modified-fail", "release"]


def test_unsettled_deliveries_return_when_the_link_closes(
    amqp: BlockingConnection, broker: Broker, queue: str
) -> None:
    s = amqp.create_sender(f"/queues/{queue}")
    for i in range(3):
        s.send(Message(body=i))
    r = amqp.create_receiver(f"/queues/{queue}", credit=3)
    for _ in range(3):
        r.receive(timeout=10)  # never settled
    r.close()
    r2 = amqp.create_receiver(f"/queues/{queue}", credit=3)
    again = []
    for _ in range(3):
        m = r2.receive(timeout=10)
        again.append(m.body)
        r2.accept()
    assert sorted(again) == [0, 1, 2]


def test_credit_bounds_deliveries_and_drain(amqp: BlockingConnection, queue: str) -> None:
    s = amqp.create_sender(f"/queues/{queue}")
    for i in range(5):
        s.send(Message(body=i))
    r = amqp.create_receiver(f"/queues/{queue}", credit=0)  # no automatic top-up
    link = r.link
    link.flow(2)
    amqp.wait(lambda: len(r.fetcher.incoming) >= 2, timeout=10)
    assert link.credit == 0  # both credits used
    # drain with credit 10: what is there comes, then the broker advances
    # delivery-count over the rest of the credit and says so
    link.drain(10)
    # fewer than 10 messages: the credit reaches 0 only by the broker's drain answer
    amqp.wait(lambda: link.credit == 0, timeout=10)
    bodies = []
    while r.fetcher.has_message:
        bodies.append(r.fetcher.pop().body)
        r.accept()
    while len(bodies) < 5:  # with 3 workers some may still be on their way
        bodies.append(r.receive(timeout=10).body)
        r.accept()
    assert bodies == [0, 1, 2, 3, 4]


def test_large_message_over_many_frames(
    amqp: BlockingConnection, broker: Broker, queue: str
) -> None:
    body = bytes(range(256)) * 4096 * 3  # 3 MiB: 24+ frames each way
    s = amqp.create_sender(f"/queues/{queue}")
    s.send(Message(body=body, inferred=True, durable=True))
    r = amqp.create_receiver(f"/queues/{queue}", credit=1)
    m = r.receive(timeout=30)
    assert bytes(m.body) == body and m.durable
    r.accept()


def test_exchange_addresses(amqp: BlockingConnection, broker: Broker, queue: str) -> None:
    ex = unique("a1x")
    conn = broker.blocking()
    ch = conn.channel()
    ch.exchange_declare(ex, "direct", auto_delete=False)
    ch.queue_bind(queue, ex, "k1")
    try:
        amqp.create_sender(f"/exchanges/{ex}/k1").send(Message(body="v2-key"))
        amqp.create_sender(f"/exchanges/{ex}").send(Message(body="v2-subject", subject="k1"))
        amqp.create_sender(f"/exchange/{ex}/k1").send(Message(body="v1-key"))
        amqp.create_sender(f"/queue/{queue}").send(Message(body="v1-queue"))
        amqp.create_sender(f"/amq/queue/{queue}").send(Message(body="v1-amq-queue"))
        anon = amqp.create_sender(None)
        anon.send(Message(body="to-queue", address=f"/queues/{queue}"))
        anon.send(Message(body="to-exchange", address=f"/exchanges/{ex}/k1"))
        r = amqp.create_receiver(f"/queue/{queue}", credit=10)
        got = []
        for _ in range(7):
            got.append(r.receive(timeout=10).body)
            r.accept()
        assert got == [
            "v2-key",
            "v2-subject",
            "v1-key",
            "v1-queue",
            "v1-amq-queue",
            "to-queue",
            "to-exchange",
        ]
    finally:
        ch.exchange_delete(ex)
        conn.close()


def test_missing_queue_and_exchange_are_not_found(amqp: BlockingConnection) -> None:
    missing = unique("none")
    with pytest.raises(LinkDetached, match="amqp:not-found"):
        amqp.create_receiver(f"/queues/{missing}", name="r1")
    with pytest.raises(LinkDetached, match="amqp:not-found"):
        amqp.create_sender(f"/queues/{missing}", name="s1")
    with pytest.raises(LinkDetached, match="amqp:not-found"):
        amqp.create_sender(f"/exchanges/{missing}/k")
    with pytest.raises(LinkDetached, match="amqp:invalid-field"):
        amqp.create_sender("no-slash")
    # the connection is still usable
    amqp.create_sender("/exchanges/amq.direct/nothing").send(Message(body="unrouted"))


def test_bad_password_is_refused(broker: Broker) -> None:
    with pytest.raises(ConnectionException):
        BlockingConnection(url(broker, password="wrong"), timeout=10, allowed_mechs="PLAIN")


def test_anonymous_is_off_by_default(broker: Broker) -> None:
    with pytest.raises(ConnectionException):
        BlockingConnection(
            f"amqp://{broker.host}:{broker.port}", timeout=10, allowed_mechs="ANONYMOUS"
        )


def test_vhost_from_hostname(broker: Broker, queue: str) -> None:
    c = BlockingConnection(url(broker), timeout=10, allowed_mechs="PLAIN", virtual_host="vhost:/")
    try:
        c.create_sender(f"/queues/{queue}").send(Message(body="in /"))
    finally:
        c.close()
    with pytest.raises(ConnectionException, match="amqp:not-found"):
        BlockingConnection(
            url(broker), timeout=10, allowed_mechs="PLAIN", virtual_host="vhost:" + unique("v")
        )


def test_queue_deleted_under_a_receiver_detaches_it(
    amqp: BlockingConnection, broker: Broker
) -> None:
    name = unique("a1del")
    conn = broker.blocking()
    ch = conn.channel()
    ch.queue_declare(name)
    r = amqp.create_receiver(f"/queues/{name}", credit=5)
    ch.queue_delete(name)
    conn.close()
    with pytest.raises(LinkDetached, match="amqp:resource-deleted"):
        r.receive(timeout=10)


def test_several_sessions_and_links_on_one_connection(
    amqp: BlockingConnection, broker: Broker, queue: str
) -> None:
    # Proton names a link after its address: distinct names for links to one address
    senders = [amqp.create_sender(f"/queues/{queue}", name=f"s{i}") for i in range(3)]
    for i, s in enumerate(senders):
        s.send(Message(body=i))
    r = amqp.create_receiver(f"/queues/{queue}", credit=10)
    got = sorted(r.receive(timeout=10).body for _ in range(3))
    r.accept()
    assert got == [0, 1, 2]


def test_pika_consumer_unaffected_by_amqp1_traffic(broker: Broker, queue: str) -> None:
    c = BlockingConnection(url(broker), timeout=10, allowed_mechs="PLAIN")
    try:
        c.create_sender(f"/queues/{queue}").send(Message(body=b"for pika", inferred=True))
    finally:
        c.close()
    conn = pika.BlockingConnection(broker.pika_params())
    try:
        _m, _p, body = conn.channel().basic_get(queue, auto_ack=True)
        assert body == b"for pika"
    finally:
        conn.close()
