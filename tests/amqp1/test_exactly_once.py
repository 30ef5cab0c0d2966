"""Exactly-once publishing (receiver settle mode second) against a real broker, 1 and 3
workers: the broker answers an unsettled transfer with an unsettled outcome and keeps
a record per delivery-tag until the client settles; a transfer re-sent under the same
tag meanwhile is a duplicate and is not enqueued twice. With Qpid Proton and with raw
frames (``wire.RawClient``)."""

from __future__ import annotations

from collections.abc import Iterator

import proton
import pytest
from proton import Link, Message
from proton.reactor import LinkOption
from proton.utils import BlockingConnection

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.values import UInt
from tests.integration.conftest import Broker
from tests.integration.helpers import unique

from .wire import RawClient


class ReceiverSettlesSecond(LinkOption):
    def apply(self, link: Link) -> None:
        link.rcv_settle_mode = Link.RCV_SECOND


def _count(broker: Broker, q: str) -> int:
    conn = broker.blocking()
    try:
        return int(conn.channel().queue_declare(q, passive=True).method.message_count)
    finally:
        conn.close()


@pytest.fixture
def queue(broker: Broker) -> Iterator[str]:
    name = unique("a1x")
    conn = broker.blocking()
    conn.channel().queue_declare(name)
    try:
        yield name
    finally:
        conn.channel().queue_delete(name)
        conn.close()


def test_proton_sender_in_mode_second(broker: Broker, queue: str) -> None:
    c = BlockingConnection(
        f"amqp://guest:guest@127.0.0.1:{broker.port}", timeout=10, allowed_mechs="PLAIN"
    )
    try:
        s = c.create_sender(f"/queues/{queue}", options=ReceiverSettlesSecond())
        assert s.link.remote_rcv_settle_mode == Link.RCV_SECOND
        first = s.link.send(Message(body="once"), tag=b"tag-1")
        c.wait(lambda: first.remote_state == proton.Delivery.ACCEPTED, timeout=10)
        assert not first.settled  # the broker waits for the sender to settle
        # the same tag again before the sender settled: a duplicate, answered alike
        dup = s.link.send(Message(body="once"), tag=b"tag-1")
        c.wait(lambda: dup.remote_state == proton.Delivery.ACCEPTED, timeout=10)
        assert not dup.settled
        first.settle()
        dup.settle()
        # after the settle the tag is free: a new message
        again = s.link.send(Message(body="twice"), tag=b"tag-1")
        c.wait(lambda: again.remote_state == proton.Delivery.ACCEPTED, timeout=10)
        again.settle()
        r = c.create_receiver(f"/queues/{queue}", credit=10)
        assert [r.receive(timeout=10).body for _ in range(2)] == ["once", "twice"]
        r.accept()
        with pytest.raises(proton.Timeout):
            r.receive(timeout=0.5)
    finally:
        c.close()


def test_duplicate_tag_with_raw_frames(broker: Broker, queue: str) -> None:
    c = RawClient(broker.port)
    try:
        c.login()
        c.begin()
        c.send(
            T.Attach(
                name="pub2",
                handle=UInt(0),
                role=T.ROLE_SENDER,
                snd_settle_mode=T.SENDER_SETTLE_MODE_UNSETTLED,
                rcv_settle_mode=T.RECEIVER_SETTLE_MODE_SECOND,
                source=T.Source(),
                target=T.Target(address=f"/queues/{queue}"),
                initial_delivery_count=UInt(0),
            )
        )
        attach = c.read_until(T.Attach)
        assert attach.rcv_settle_mode == T.RECEIVER_SETTLE_MODE_SECOND
        assert c.read_until(T.Flow).link_credit > 0
        body = T.Data(b"payload").to_bytes()

        def transfer(did: int, tag: bytes) -> T.Disposition:
            c.send(
                T.Transfer(handle=UInt(0), delivery_id=UInt(did), delivery_tag=tag), payload=body
            )
            disp = c.read_until(T.Disposition)
            assert disp.role is True and disp.first == did and disp.last in (None, did)
            assert disp.state == T.Accepted() and not disp.settled
            return disp

        transfer(0, b"x")
        transfer(1, b"x")  # re-sent before the settle: dropped
        transfer(2, b"y")
        assert _count(broker, queue) == 2
        c.send(T.Disposition(role=T.ROLE_SENDER, first=UInt(0), last=UInt(2), settled=True))
        transfer(3, b"x")  # the record went with the settle: a new delivery
        assert _count(broker, queue) == 3
    finally:
        c.close()
