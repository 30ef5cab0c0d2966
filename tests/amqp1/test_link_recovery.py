"""Link recovery against a real broker: a receiving link lost with unsettled deliveries
(the connection dropped without a close) and re-attached under the same name by the
same container-id gets them back, redelivered; the attach carries the broker's
unsettled map, and what the client's map says it settled is not sent again. With raw
frames (``wire.RawClient``) and Qpid Proton through a relay the test cuts, 1 and 3
workers."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import proton
import pytest
from proton import Message
from proton.reactor import Container
from proton.utils import BlockingConnection

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.convert import parse
from shardmq.amqp1.values import UInt
from tests.integration.conftest import Broker
from tests.integration.helpers import unique

from .wire import RawClient


def _declare_with(b: Broker, q: str, bodies: list[bytes]) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port))
    try:
        ch = conn.channel()
        ch.queue_declare(q)
        for body in bodies:
            ch.basic_publish("", q, body)
    finally:
        conn.close()


def _count(b: Broker, q: str) -> int:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.port))
    try:
        return int(conn.channel().queue_declare(q, passive=True).method.message_count)
    finally:
        conn.close()


def _receiver(c: RawClient, q: str, unsettled: dict[bytes, Any] | None = None) -> T.Attach:
    c.send(T.Begin(next_outgoing_id=UInt(0), incoming_window=UInt(100), outgoing_window=UInt(100)))
    c.read_until(T.Begin)
    c.send(
        T.Attach(
            name="recovered-link",
            handle=UInt(0),
            role=T.ROLE_RECEIVER,
            source=T.Source(address=f"/queues/{q}"),
            target=T.Target(),
            unsettled=unsettled,
        )
    )
    attach = c.read_until(T.Attach)
    c.send(
        T.Flow(
            next_incoming_id=UInt(0),
            incoming_window=UInt(100),
            next_outgoing_id=UInt(0),
            outgoing_window=UInt(100),
            handle=UInt(0),
            delivery_count=UInt(0),
            link_credit=UInt(10),
        )
    )
    return attach


def _transfers(c: RawClient, n: int) -> list[tuple[int, bytes, Any]]:
    got = []
    while len(got) < n:
        _ch, perf, payload = c.read_frame()
        if isinstance(perf, T.Transfer):
            got.append((int(perf.delivery_id), bytes(perf.delivery_tag), parse(payload)))
    return got


def test_raw_reattach_gets_unsettled_back(own_broker: Callable[..., Broker]) -> None:
    # a time-out far beyond the test: what comes back comes through recovery
    b = own_broker("[amqp1]\nlink_recovery_timeout = 600\n")
    q = unique("rec")
    _declare_with(b, q, [b"m1", b"m2", b"m3"])
    cid = unique("container")
    c = RawClient(b.port)
    c.login(container_id=cid)
    attach = _receiver(c, q)
    assert attach.unsettled is None
    first = _transfers(c, 3)
    assert [bytes(p.body[0].value) for _d, _t, p in first] == [b"m1", b"m2", b"m3"]
    c.drop()  # no settlement, no close
    # the client had accepted m1 (its outcome never reached the broker)
    c = RawClient(b.port)
    try:
        c.login(container_id=cid)
        attach = _receiver(c, q, unsettled={first[0][1]: T.Accepted(), first[1][1]: None})
        assert set(attach.unsettled) == {tag for _d, tag, _p in first}
        again = _transfers(c, 2)
        assert [bytes(p.body[0].value) for _d, _t, p in again] == [b"m2", b"m3"]
        assert all(p.header.delivery_count == 1 for _d, _t, p in again)
        for did, _tag, _p in again:
            c.send(
                T.Disposition(
                    role=T.ROLE_RECEIVER, first=UInt(did), settled=True, state=T.Accepted()
                )
            )
        c.send(T.Close())
        c.read_until(T.Close)
    finally:
        c.close()
    assert _count(b, q) == 0  # m1 settled by the map, m2 and m3 accepted: nothing requeued


def test_closed_link_is_not_recovered(own_broker: Callable[..., Broker]) -> None:
    b = own_broker("[amqp1]\nlink_recovery_timeout = 600\n")
    q = unique("rec")
    _declare_with(b, q, [b"m1"])
    c = RawClient(b.port)
    try:
        c.login(container_id="closer")
        _receiver(c, q)
        _transfers(c, 1)
        c.send(T.Detach(handle=UInt(0), closed=True))
        c.read_until(T.Detach)
    finally:
        c.close()
    assert _count(b, q) == 1  # requeued at once, as before


def test_unrecovered_link_is_requeued_after_the_time_out(
    own_broker: Callable[..., Broker],
) -> None:
    b = own_broker("[amqp1]\nlink_recovery_timeout = 1\n")
    q = unique("rec")
    _declare_with(b, q, [b"m1", b"m2"])
    c = RawClient(b.port)
    c.login(container_id=unique("gone"))
    _receiver(c, q)
    _transfers(c, 2)
    c.drop()
    deadline = time.monotonic() + 30
    while _count(b, q) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _count(b, q) == 2
    assert "not recovered within 1 s: 2 deliveries requeued" in b.log_text()


class Relay:
    """A TCP relay to the broker that the test can cut (the connection lost without a
    close, as a network failure)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.server.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target))
        self.socks = [client, upstream]
        peer = {client: upstream, upstream: client}
        while not self._stop.is_set():
            ready, _w, _x = select.select(list(peer), [], [], 0.05)
            for s in ready:
                try:
                    data = s.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                peer[s].sendall(data)

    def cut(self) -> None:
        self._stop.set()
        self.thread.join(5)
        client, upstream = self.socks
        upstream.shutdown(socket.SHUT_WR)
        upstream.settimeout(5)
        try:
            while upstream.recv(65536):  # the broker closes its side: it saw the loss
                pass
        except OSError:
            pass
        for s in (client, upstream, self.server):
            s.close()


@pytest.mark.parametrize("workers", [1, 3])
def test_proton_reconnect_gets_unsettled_back(
    own_broker: Callable[..., Broker], workers: int
) -> None:
    """With 3 workers the new connection may land on another worker than the lost one:
    that worker has the lost one release them, and they come back through their queue
    (several rounds: both cases). The time-out is far beyond the test: what comes back
    comes through recovery."""
    b = own_broker("[amqp1]\nlink_recovery_timeout = 600\n", workers)
    q = unique("rec")
    bodies = [f"m{i}".encode() for i in range(5)]
    _declare_with(b, q, [])
    cid = unique("proton")
    url = "amqp://guest:guest@127.0.0.1:{}"
    for _round in range(1 if workers == 1 else 4):
        _declare_with(b, q, bodies)
        relay = Relay(b.port)
        box = Container()
        box.container_id = cid
        c1 = BlockingConnection(
            url.format(relay.port), timeout=10, container=box, allowed_mechs="PLAIN"
        )
        r1 = c1.create_receiver(f"/queues/{q}", name="orders-in", credit=10)
        first = [r1.receive(timeout=10) for _ in bodies]
        assert [bytes(m.body) for m in first] == bodies
        relay.cut()
        c1.timeout = 1  # no close will come back
        try:
            c1.close()
        except Exception:
            pass  # its socket is gone
        assert _count(b, q) == 0  # kept for the link, not back in the queue for others
        box = Container()
        box.container_id = cid
        c2 = BlockingConnection(
            url.format(b.port), timeout=10, container=box, allowed_mechs="PLAIN"
        )
        try:
            r2 = c2.create_receiver(f"/queues/{q}", name="orders-in", credit=10)
            again: list[Message] = []
            for _ in bodies:
                again.append(r2.receive(timeout=30))
                r2.accept()
            assert sorted(bytes(m.body) for m in again) == bodies  # none lost
            assert all(m.delivery_count >= 1 or not m.first_acquirer for m in again)
            with pytest.raises(proton.Timeout):
                r2.receive(timeout=0.5)  # none twice
        finally:
            c2.close()
        assert _count(b, q) == 0
