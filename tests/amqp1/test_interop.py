"""AMQP 1.0 <-> AMQP 0-9-1 on the same queues (1 and 3 workers): Qpid Proton and pika,
with RabbitMQ 4's mapping of properties, application-properties and bodies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pytest
from proton import Delivery, Message
from proton.utils import BlockingConnection, SendException

from tests.integration.conftest import Broker
from tests.integration.helpers import unique


@pytest.fixture
def amqp(broker: Broker) -> Iterator[BlockingConnection]:
    c = BlockingConnection(
        f"amqp://{broker.user}:{broker.password}@{broker.host}:{broker.port}",
        timeout=10,
        allowed_mechs="PLAIN",
    )
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def pk(broker: Broker) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    conn = broker.blocking()
    try:
        yield conn.channel()
    finally:
        conn.close()


@pytest.fixture
def queue(pk: pika.adapters.blocking_connection.BlockingChannel) -> Iterator[str]:
    name = unique("a1i")
    pk.queue_declare(name, durable=True)
    try:
        yield name
    finally:
        pk.queue_delete(name)


def _get(pk: pika.adapters.blocking_connection.BlockingChannel, q: str) -> tuple:
    for _ in range(200):  # a publish from another worker may still be crossing
        m, props, body = pk.basic_get(q, auto_ack=True)
        if m is not None:
            return m, props, body
        pk.connection.sleep(0.05)
    raise AssertionError(f"nothing in {q}")


def test_amqp1_to_pika(amqp: BlockingConnection, pk: object, queue: str) -> None:
    msg = Message(
        body=b"payload",
        inferred=True,  # one data section
        durable=True,
        priority=7,
        ttl=60,
        content_type="application/json",
        content_encoding="utf-8",
        id="mid-1",
        correlation_id="cid-1",
        reply_to="/queues/replies",
        subject="my-type",
        user_id=b"guest",
        creation_time=1700000000.0,
        properties={"str": "v", "int": 5, "bool": True},
    )
    d = amqp.create_sender(f"/queues/{queue}").send(msg)
    assert d.remote_state == d.ACCEPTED
    m, props, body = _get(pk, queue)  # type: ignore[arg-type]
    assert body == b"payload"
    assert m.routing_key == queue and m.exchange == ""
    assert props.delivery_mode == 2
    assert props.priority == 7
    assert props.expiration == "60000"
    assert props.content_type == "application/json"
    assert props.content_encoding == "utf-8"
    assert props.message_id == "mid-1"
    assert props.correlation_id == "cid-1"
    assert props.reply_to == "replies"
    assert props.type == "my-type"
    assert props.user_id == "guest"
    assert props.timestamp == 1700000000
    assert props.headers == {"str": "v", "int": 5, "bool": True}


def test_pika_to_amqp1(amqp: BlockingConnection, pk: object, queue: str) -> None:
    pk.basic_publish(  # type: ignore[attr-defined]
        "",
        queue,
        b"from pika",
        pika.BasicProperties(
            content_type="text/plain",
            content_encoding="utf-8",
            headers={"a": "b", "n": 1, "x-custom": "xv"},
            delivery_mode=2,
            priority=3,
            correlation_id="c-9",
            reply_to="replies",
            expiration="120000",
            message_id="m-9",
            timestamp=1700000001,
            type="t-9",
            user_id="guest",
        ),
    )
    r = amqp.create_receiver(f"/queues/{queue}", credit=1)
    m = r.receive(timeout=10)
    r.accept()
    assert bytes(m.body) == b"from pika"
    assert m.durable is True
    assert m.priority == 3
    assert m.ttl == 120
    assert m.content_type == "text/plain"
    assert m.content_encoding == "utf-8"
    assert m.id == "m-9"
    assert m.correlation_id == "c-9"
    assert m.reply_to == "/queues/replies"
    assert m.subject == "t-9"
    assert bytes(m.user_id) == b"guest"
    assert m.creation_time == 1700000001.0
    assert m.properties == {"a": "b", "n": 1}
    assert m.annotations["x-custom"] == "xv"
    assert m.annotations["x-routing-key"] == queue
    assert m.annotations["x-exchange"] == ""


def test_transient_and_minimal_messages(amqp: BlockingConnection, pk: object, queue: str) -> None:
    amqp.create_sender(f"/queues/{queue}").send(Message(body=b"", inferred=True))
    _m, props, body = _get(pk, queue)  # type: ignore[arg-type]
    assert body == b"" and props.delivery_mode == 1 and props.headers is None
    pk.basic_publish("", queue, b"plain")  # type: ignore[attr-defined]
    r = amqp.create_receiver(f"/queues/{queue}", credit=1)
    m = r.receive(timeout=10)
    r.accept()
    assert bytes(m.body) == b"plain" and not m.durable and m.properties is None


def test_amqp1_round_trip_keeps_value_bodies_and_ids(
    amqp: BlockingConnection, pk: object, queue: str
) -> None:
    mid = uuid.uuid4()
    body = {"k": [1, 2, "three"], "nested": {"x": 1.5}}
    s = amqp.create_sender(f"/queues/{queue}")
    s.send(Message(body=body, id=mid, correlation_id=42))
    r = amqp.create_receiver(f"/queues/{queue}", credit=1)
    m = r.receive(timeout=10)
    r.accept()
    assert m.body == body
    assert m.id == mid
    assert m.correlation_id == 42
    r.close()
    # a 0-9-1 consumer sees the amqp-value section and the typed ids as headers
    s.send(Message(body=body, id=mid))
    _m, props, raw = _get(pk, queue)  # type: ignore[arg-type]
    assert raw.startswith(b"\x00\x53\x77")  # amqp-value
    assert props.headers["x-message-id"] == f"urn:uuid:{mid}"
    assert props.headers["x-amqp-1.0-body"] == "amqp-value"


def test_topic_exchange_to_pika_consumer(amqp: BlockingConnection, pk: object, queue: str) -> None:
    pk.queue_bind(queue, "amq.topic", "orders.*")  # type: ignore[attr-defined]
    amqp.create_sender("/exchanges/amq.topic/orders.eu").send(Message(body=b"eu", inferred=True))
    amqp.create_sender("/topic/orders.us").send(Message(body=b"us", inferred=True))
    amqp.create_sender("/exchanges/amq.topic/other").send(Message(body=b"no", inferred=True))
    bodies = {_get(pk, queue)[2], _get(pk, queue)[2]}  # type: ignore[arg-type]
    assert bodies == {b"eu", b"us"}
    assert pk.basic_get(queue, auto_ack=True)[0] is None  # type: ignore[attr-defined]


def test_user_id_must_be_the_authenticated_user(
    amqp: BlockingConnection, pk: object, queue: str
) -> None:
    with pytest.raises(SendException) as err:  # Proton raises on an outcome not accepted
        amqp.create_sender(f"/queues/{queue}").send(Message(body="x", user_id=b"mallory"))
    assert err.value.state == Delivery.REJECTED
    assert pk.basic_get(queue, auto_ack=True)[0] is None  # type: ignore[attr-defined]


def test_request_reply_with_a_dynamic_receiver(
    amqp: BlockingConnection, broker: Broker, pk: object, queue: str
) -> None:
    replies = amqp.create_receiver(None, dynamic=True, credit=5)
    address = replies.link.remote_source.address
    assert address.startswith("/queues/amq.gen-")
    amqp.create_sender(f"/queues/{queue}").send(
        Message(body="ping", reply_to=address, correlation_id="c-1")
    )
    # the server is a pika client: it replies to the request's reply_to
    _m, props, _body = _get(pk, queue)  # type: ignore[arg-type]
    assert props.reply_to == address[len("/queues/") :]
    pk.basic_publish(  # type: ignore[attr-defined]
        "", props.reply_to, b"pong", pika.BasicProperties(correlation_id=props.correlation_id)
    )
    m = replies.receive(timeout=10)
    replies.accept()
    assert bytes(m.body) == b"pong" and m.correlation_id == "c-1"
    replies.close()
    # the queue is deleted with the link
    conn = broker.blocking()
    try:
        for _ in range(100):
            ch = conn.channel()
            try:
                ch.queue_declare(props.reply_to, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 404
                break
            conn.sleep(0.05)
        else:
            raise AssertionError("the dynamic queue outlived its link")
    finally:
        conn.close()
