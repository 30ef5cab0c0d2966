"""Length limits: ``x-max-length``, ``x-max-length-bytes`` (body bytes) and
``x-overflow`` (``drop-head`` dead-letters the dropped head with reason ``maxlen``;
``reject-publish`` nacks under confirms and drops without; ``reject-publish-dlx`` also
dead-letters the refused message), as RabbitMQ 3.10 does.
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from shardmq.broker.metadata import shard_for

from .helpers import WAIT, Env, queue_counts, unique

pytestmark = pytest.mark.timeout(60)


def _bodies(ch: BlockingChannel, q: str) -> list[bytes]:
    out = []
    while True:
        m, _p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append(b)


def _wait_n(ch: BlockingChannel, q: str, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while queue_counts(ch, q)[0] != n:
        assert time.monotonic() < deadline, f"{q}: {queue_counts(ch, q)[0]} != {n}"
        time.sleep(0.02)


@pytest.mark.parametrize("durable", [False, True])
def test_drop_head(env: Env, durable: bool) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, durable=durable, arguments={"x-max-length": 3})
    ch.confirm_delivery()
    for i in range(6):
        ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2))
    assert _bodies(ch, q) == [b"3", b"4", b"5"]


def test_max_length_bytes(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    ch.confirm_delivery()
    for body in (b"aaaa", b"bbbb", b"cccc", b"dd"):
        ch.basic_publish("", q, body)
    assert _bodies(ch, q) == [b"bbbb", b"cccc", b"dd"]


def test_drop_head_dead_letters_maxlen(env: Env) -> None:
    ch = env.channel()
    q, dead, dlx = env.queue(), env.queue("dead"), env.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"first")
    ch.basic_publish("", q, b"second")
    _wait_n(ch, dead, 1)
    m, p, b = ch.basic_get(dead, auto_ack=True)
    assert b == b"first"
    assert p.headers["x-death"][0]["reason"] == "maxlen"
    assert _bodies(ch, q) == [b"second"]


def test_reject_publish_nacks_under_confirms(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"3")
    assert _bodies(ch, q) == [b"1", b"2"]
    ch.basic_publish("", q, b"4")  # room again
    assert _bodies(ch, q) == [b"4"]


def test_reject_publish_without_confirms_drops(env: Env) -> None:
    ch = env.channel()
    q = env.queue()
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    returned: list[bytes] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(b))
    ch.basic_publish("", q, b"1", mandatory=True)
    ch.basic_publish("", q, b"2", mandatory=True)
    ch.connection.process_data_events(time_limit=0.2)
    assert _bodies(ch, q) == [b"1"]
    assert returned == []


def test_reject_publish_dlx(env: Env) -> None:
    ch = env.channel()
    q, dead, dlx = env.queue(), env.queue("dead"), env.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(
        q,
        arguments={
            "x-max-length": 1,
            "x-overflow": "reject-publish-dlx",
            "x-dead-letter-exchange": dlx,
        },
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"in")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"out")
    _wait_n(ch, dead, 1)
    m, p, b = ch.basic_get(dead, auto_ack=True)
    assert b == b"out" and p.headers["x-death"][0]["reason"] == "maxlen"
    assert _bodies(ch, q) == [b"in"]


def test_reject_publish_nack_cross_worker(env: Env) -> None:
    """The publisher on another worker than the queue gets the nack too."""
    if env.broker.workers not in (None, 3):
        pytest.skip("placement needs 3 workers")
    from .helpers import pika_on_worker

    while True:
        q = unique("cross")
        if env.broker.workers is None or shard_for(env.broker.vhost, q, 3) == 1:
            env.queues.append(q)
            break
    conn = env.conn() if env.broker.workers is None else pika_on_worker(env.conn, 0)
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"2")
    assert _bodies(ch, q) == [b"1"]


def test_max_length_with_kombu(env: Env) -> None:
    kombu = pytest.importorskip("kombu")
    q = env.queue()
    with kombu.Connection(env.broker.uri) as c:
        queue = kombu.Queue(q, routing_key=q, queue_arguments={"x-max-length": 2})
        with c.Producer() as p:
            for i in range(4):
                p.publish({"i": i}, routing_key=q, declare=[queue])
        simple = c.SimpleQueue(queue)
        got: list[Any] = []
        for _ in range(2):
            m = simple.get(timeout=WAIT)
            got.append(m.payload)
            m.ack()
        simple.close()
    assert got == [{"i": 2}, {"i": 3}]
