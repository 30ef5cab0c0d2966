"""The x-delayed-message exchange through the sans-IO harness: holding, due order,
immediate routing without a positive x-delay, routing types, alternates, deleted
exchanges, confirms (no loop: the test releases with ``release_due``)."""

from __future__ import annotations

import pytest

from loadtest.inproc import connect, make_broker
from shardmq.amqp import methods as M
from shardmq.broker.delayed import now_ms


def setup(dtype: str = "direct", **args):
    broker = make_broker()
    c = connect(broker)
    c.open_channel(1)
    c.call(
        1,
        M.ExchangeDeclare(
            exchange="dx", type="x-delayed-message", arguments={"x-delayed-type": dtype, **args}
        ),
    )
    c.declare(1, "q")
    return broker, c


def delayed(ms: object) -> M.BasicProperties:
    return M.BasicProperties(headers={"x-delay": ms})


def test_held_until_due_then_routed_in_due_order() -> None:
    broker, c = setup()
    c.call(1, M.QueueBind(queue="q", exchange="dx", routing_key="k"))
    c.consume(1, "q", no_ack=True)
    c.publish(1, "dx", "k", b"late", delayed(3000))
    c.publish(1, "dx", "k", b"early", delayed(1000))
    c.publish(1, "dx", "k", b"tie-1", delayed(2000))
    c.publish(1, "dx", "k", b"tie-2", delayed(2000))
    assert c.bodies() == []
    assert len(broker.delayed) == 4
    broker.delayed.release_due(now_ms() + 2500)
    c.pump()
    assert c.bodies() == [b"early", b"tie-1", b"tie-2"]
    broker.delayed.release_due(now_ms() + 5000)
    c.pump()
    assert c.bodies() == [b"early", b"tie-1", b"tie-2", b"late"]
    assert len(broker.delayed) == 0


@pytest.mark.parametrize("delay", [None, 0, -5, "100", 1.5])
def test_no_positive_integer_delay_routes_at_once(delay: object) -> None:
    broker, c = setup()
    c.call(1, M.QueueBind(queue="q", exchange="dx", routing_key="k"))
    c.consume(1, "q", no_ack=True)
    props = M.BasicProperties(headers={} if delay is None else {"x-delay": delay})
    c.publish(1, "dx", "k", b"now", props)
    assert c.bodies() == [b"now"]
    assert len(broker.delayed) == 0


def test_routes_as_its_delayed_type_topic() -> None:
    broker, c = setup("topic")
    c.call(1, M.QueueBind(queue="q", exchange="dx", routing_key="a.*"))
    c.consume(1, "q", no_ack=True)
    c.publish(1, "dx", "a.b", b"yes", delayed(10))
    c.publish(1, "dx", "b.b", b"no", delayed(10))
    broker.delayed.release_due(now_ms() + 100)
    c.pump()
    assert c.bodies() == [b"yes"]
    assert broker.delayed.dropped == 1


def test_unroutable_when_due_goes_to_the_alternate() -> None:
    broker, c = setup("direct", **{"alternate-exchange": "ae"})
    c.call(1, M.ExchangeDeclare(exchange="ae", type="fanout"))
    c.call(1, M.QueueBind(queue="q", exchange="ae", routing_key=""))
    c.consume(1, "q", no_ack=True)
    c.publish(1, "dx", "nobody", b"to-ae", delayed(10), mandatory=True)
    assert c.bodies() == []
    assert not any(isinstance(m, M.BasicReturn) for _, m in c.methods)
    broker.delayed.release_due(now_ms() + 100)
    c.pump()
    assert c.bodies() == [b"to-ae"]


def test_deleted_exchange_drops_its_held_messages() -> None:
    broker, c = setup()
    c.call(1, M.QueueBind(queue="q", exchange="dx", routing_key="k"))
    c.consume(1, "q", no_ack=True)
    c.publish(1, "dx", "k", b"x", delayed(10))
    c.call(1, M.ExchangeDelete(exchange="dx"))
    c.call(
        1,
        M.ExchangeDeclare(
            exchange="dx", type="x-delayed-message", arguments={"x-delayed-type": "direct"}
        ),
    )
    c.call(1, M.QueueBind(queue="q", exchange="dx", routing_key="k"))
    broker.delayed.release_due(now_ms() + 100)
    c.pump()
    assert c.bodies() == []
    assert broker.delayed.dropped == 1


def test_confirm_of_a_held_publish_comes_at_once() -> None:
    broker, c = setup()
    c.call(1, M.ConfirmSelect())
    c.publish(1, "dx", "k", b"x", delayed(10_000))
    c.pump()
    acks = [m for _, m in c.methods if isinstance(m, M.BasicAck)]
    assert [a.delivery_tag for a in acks] == [1]
    assert len(broker.delayed) == 1
