"""``x-queue-type`` / ``x-queue-mode`` as a single RabbitMQ node answers them: quorum
queues are durable queues here; their refused properties get RabbitMQ 3.10's texts."""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions
import pytest

from .conftest import Broker
from .helpers import Env


def declare_refused(env: Env, name: str, **kw: Any) -> str:
    ch = env.conn().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.queue_declare(name, **kw)
    assert err.value.reply_code == 406
    return str(err.value.reply_text)


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"durable": False}, "invalid property 'non-durable' for queue '{q}' in vhost '/'"),
        (
            {"durable": True, "exclusive": True},
            "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'",
        ),
        (
            {"durable": True, "auto_delete": True},
            "invalid property 'auto-delete' for queue '{q}' in vhost '/'",
        ),
        (
            {"durable": True, "arguments": {"x-max-priority": 5}},
            "invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue",
        ),
    ],
)
def test_quorum_queue_refusals(env: Env, kw: dict[str, Any], text: str) -> None:
    q = env.queue("qq")
    kw = dict(kw)
    kw["arguments"] = {"x-queue-type": "quorum", **kw.get("arguments", {})}
    assert declare_refused(env, q, **kw) == "PRECONDITION_FAILED - " + text.format(q=q)


def test_unknown_type_and_mode_are_refused(env: Env) -> None:
    q = env.queue("qt")
    text = declare_refused(env, q, durable=True, arguments={"x-queue-type": "bogus"})
    assert text == (
        f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': "
        "\"unsupported queue type 'bogus'\""
    )
    text = declare_refused(env, q, durable=True, arguments={"x-queue-mode": "bogus"})
    assert text == (
        f"PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue '{q}' in vhost '/': "
        "\"unsupported queue mode 'bogus'\""
    )


def test_stream_queues_are_refused_here(env: Env, broker: Broker) -> None:
    if broker.external:
        pytest.skip("RabbitMQ has streams")
    q = env.queue("st")
    text = declare_refused(env, q, durable=True, arguments={"x-queue-type": "stream"})
    assert "unsupported queue type 'stream'" in text


def test_quorum_classic_and_lazy_queues_work(env: Env) -> None:
    ch = env.conn().channel()
    for args in (
        {"x-queue-type": "quorum", "x-delivery-limit": 3},
        {"x-queue-type": "classic"},
        {"x-queue-mode": "lazy"},
    ):
        q = env.queue("qok")
        ch.queue_declare(q, durable=True, arguments=args)
        ch.basic_publish("", q, b"hello", pika.BasicProperties(delivery_mode=2))
        ch.confirm_delivery()  # a round trip: the publish is in the queue
        method, _props, body = ch.basic_get(q, auto_ack=True)
        assert body == b"hello", args
        # a re-declare must name the same type
        ch.queue_declare(q, durable=True, arguments=args)
        ch.queue_delete(q)
