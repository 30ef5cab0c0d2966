"""Link recovery against a real broker: a receiving link lost with unsettled deliveries
(the connection dropped without a close) and re-attached under the same name by the
same container-id gets them back (spec 2.6.13 "Resuming Deliveries"): the attach
carries the broker's unsettled map; what the client's map gives an outcome is settled
with it and resumed settled, what it lists undecided is resumed (resume=true) under its
delivery-tag, the rest is sent again as new deliveries; on another worker than the
lost link's too. With raw frames (``wire.RawClient``) and Qpid Proton (which sends no
unsettled map) through a relay the test cuts, 1 and 3 workers."""

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
from shardmq.amqp1.values import UByte, UInt
from tests.integration.conftest import Broker
from tests.integration.helpers import unique
from workers.amqp1_links import MARKERS
from workers.status import status_dir

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


def _receiver(
    c: RawClient,
    q: str,
    unsettled: dict[bytes, Any] | None = None,
    credit: int = 10,
    settled: bool = False,
) -> T.Attach:
    c.begin()
    c.send(
        T.Attach(
            name="recovered-link",
            handle=UInt(0),
            role=T.ROLE_RECEIVER,
            source=T.Source(address=f"/queues/{q}"),
            target=T.Target(),
            unsettled=unsettled,
            snd_settle_mode=UByte(T.SENDER_SETTLE_MODE_SETTLED if settled else 2),
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
            link_credit=UInt(credit),
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


def _frames(c: RawClient, n: int) -> list[tuple[Any, bytes]]:
    """The next ``n`` transfers, whole (performative, payload)."""
    got = []
    while len(got) < n:
        _ch, perf, payload = c.read_frame()
        if isinstance(perf, T.Transfer):
            got.append((perf, payload))
    return got


def _accept(c: RawClient, did: int) -> None:
    c.send(T.Disposition(role=T.ROLE_RECEIVER, first=UInt(did), settled=True, state=T.Accepted()))


def _body(payload: bytes) -> bytes:
    return bytes(parse(payload).body[0].value)


def _lost_receiver(b: Broker, q: str) -> tuple[str, list[bytes]]:
    """m1..m3 in ``q``, sent to a receiver of a new container whose connection is then
    lost (no settlement, no close): (the container id, the three delivery tags)."""
    _declare_with(b, q, [b"m1", b"m2", b"m3"])
    cid = unique("container")
    c = RawClient(b.port)
    c.login(container_id=cid)
    _receiver(c, q)
    tags = [tag for _d, tag, _p in _transfers(c, 3)]
    c.drop()
    return cid, tags


def test_raw_reattach_resumes_deliveries(own_broker: Callable[..., Broker]) -> None:
    """Spec 2.6.13: the client's map says m1 accepted (its outcome never reached the
    broker), m2 received but undecided, m3 is not in it. The broker's map lists all
    three; m1 is settled with the client's outcome and resumed settled without its
    message, m2 resumed with it under its delivery-tag (resume=true), m3 sent again as
    a new delivery. The time-out is far beyond the test: this is recovery."""
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
    tags = [tag for _d, tag, _p in first]
    c.drop()  # no settlement, no close
    c = RawClient(b.port)
    try:
        c.login(container_id=cid)
        attach = _receiver(c, q, unsettled={tags[0]: T.Accepted(), tags[1]: None})
        assert attach.unsettled == {tags[0]: T.Accepted(), tags[1]: None, tags[2]: None}
        (r1, p1), (r2, p2), (r3, p3) = _frames(c, 3)
        assert r1.resume and r1.settled and bytes(r1.delivery_tag) == tags[0]
        assert isinstance(r1.state, T.Accepted) and p1 == b""
        assert r2.resume and not r2.settled and bytes(r2.delivery_tag) == tags[1]
        assert _body(p2) == b"m2" and parse(p2).header.delivery_count == 1
        assert not r3.resume and not r3.settled and _body(p3) == b"m3"
        assert bytes(r3.delivery_tag) not in tags  # a new delivery: a tag of its own
        assert parse(p3).header.delivery_count == 1
        assert len({int(r1.delivery_id), int(r2.delivery_id), int(r3.delivery_id)}) == 3
        _accept(c, int(r2.delivery_id))
        _accept(c, int(r3.delivery_id))
        c.send(T.Close())
        c.read_until(T.Close)
    finally:
        c.close()
    assert _count(b, q) == 0  # m1 settled by the map, m2 and m3 accepted: nothing requeued


def test_raw_resumed_deliveries_survive_another_loss(own_broker: Callable[..., Broker]) -> None:
    """Lost again while resuming: one resumed delivery sent (credit 1) and unsettled,
    two not sent yet; the next re-attach finds all three parked under the
    delivery-tags the client knows, and resumes them with their messages."""
    b = own_broker("[amqp1]\nlink_recovery_timeout = 600\n")
    q = unique("rec")
    cid, tags = _lost_receiver(b, q)
    theirs: dict[bytes, Any] = dict.fromkeys(tags)
    c = RawClient(b.port)
    c.login(container_id=cid)
    _receiver(c, q, unsettled=theirs, credit=1)
    ((r1, p1),) = _frames(c, 1)
    assert r1.resume and bytes(r1.delivery_tag) == tags[0] and _body(p1) == b"m1"
    c.drop()
    c = RawClient(b.port)
    try:
        c.login(container_id=cid)
        attach = _receiver(c, q, unsettled=theirs)
        assert attach.unsettled == theirs
        got = _frames(c, 3)
        assert [bytes(r.delivery_tag) for r, _p in got] == tags
        assert all(r.resume and not r.settled for r, _p in got)
        assert [_body(p) for _r, p in got] == [b"m1", b"m2", b"m3"]
        for r, _p in got:
            _accept(c, int(r.delivery_id))
        c.send(T.Close())
        c.read_until(T.Close)
    finally:
        c.close()
    assert _count(b, q) == 0


def test_raw_reattach_at_most_once(own_broker: Callable[..., Broker]) -> None:
    """Re-attached with sender settle mode settled: nothing is resumed with its
    message; m1 (accepted in the client's map) is settled, m2 (undecided) aborted, and
    m2 and m3 come back from the queue, settled."""
    b = own_broker("[amqp1]\nlink_recovery_timeout = 600\n")
    q = unique("rec")
    cid, tags = _lost_receiver(b, q)
    c = RawClient(b.port)
    try:
        c.login(container_id=cid)
        _receiver(c, q, unsettled={tags[0]: T.Accepted(), tags[1]: None}, settled=True)
        (r1, p1), (r2, p2) = _frames(c, 2)
        assert r1.resume and r1.settled and isinstance(r1.state, T.Accepted) and p1 == b""
        assert r2.resume and r2.aborted and bytes(r2.delivery_tag) == tags[1]
        again = _frames(c, 2)
        assert sorted(_body(p) for _r, p in again) == [b"m2", b"m3"]
        assert all(r.settled and not r.resume for r, _p in again)
        c.send(T.Close())
        c.read_until(T.Close)
    finally:
        c.close()
    assert _count(b, q) == 0


def test_raw_reattach_outcomes_of_the_map(own_broker: Callable[..., Broker]) -> None:
    """Rejected (dead-lettered where configured: dropped here), released (back to the
    queue), modified undeliverable-here (rejected): applied, not sent again."""
    b = own_broker("[amqp1]\nlink_recovery_timeout = 600\n")
    q = unique("rec")
    cid, tags = _lost_receiver(b, q)
    c = RawClient(b.port)
    try:
        c.login(container_id=cid)
        theirs = {
            tags[0]: T.Rejected(),
            tags[1]: T.Released(),
            tags[2]: T.Modified(delivery_failed=True, undeliverable_here=True),
        }
        attach = _receiver(c, q, unsettled=theirs)
        assert set(attach.unsettled) == set(tags)
        resumed = _frames(c, 4)  # three resumed settled, then m2 from the queue
        for (perf, payload), tag in zip(resumed[:3], tags, strict=True):
            assert perf.resume and perf.settled and bytes(perf.delivery_tag) == tag
            assert type(perf.state) is type(theirs[tag]) and payload == b""
        perf, payload = resumed[3]
        assert not perf.resume and _body(payload) == b"m2"  # released: redelivered
        _accept(c, int(perf.delivery_id))
        c.send(T.Close())
        c.read_until(T.Close)
    finally:
        c.close()
    assert _count(b, q) == 0


def _markers(b: Broker) -> list[str]:
    assert b.data_dir is not None
    d = status_dir(str(b.data_dir)) / MARKERS
    return [p.name for p in d.iterdir()] if d.exists() else []


def test_raw_reattach_on_any_worker(own_broker: Callable[..., Broker]) -> None:
    """3 workers: the re-attach lands on the lost link's worker or on another (the
    broker's open names its worker: ``shardmq-SLOT``); rounds until both were seen.
    Same worker: as above (resumed with the message). Another worker: that worker has
    the first release the link's deliveries, applying the client's map: the attach's
    unsettled map lists the three (m1 with the client's outcome, the others released
    to their queue), m1 is resumed settled, m2 (which the client holds undecided) is
    resumed aborted, and m2 and m3 come back through the queue as new deliveries."""
    b = own_broker("[amqp1]\nlink_recovery_timeout = 600\n", 3)
    q = unique("rec")
    _declare_with(b, q, [])
    seen: set[bool] = set()
    for _round in range(24):
        if len(seen) == 2:
            break
        _declare_with(b, q, [b"m1", b"m2", b"m3"])
        cid = unique("container")
        c = RawClient(b.port)
        lost_on = str(c.login(container_id=cid).container_id)
        _receiver(c, q)
        tags = [tag for _d, tag, _p in _transfers(c, 3)]
        c.drop()
        deadline = time.monotonic() + 10
        while not _markers(b) and time.monotonic() < deadline:
            time.sleep(0.05)  # the lost link's worker has parked them
        assert _markers(b)
        c = RawClient(b.port)
        try:
            same = str(c.login(container_id=cid).container_id) == lost_on
            seen.add(same)
            attach = _receiver(c, q, unsettled={tags[0]: T.Accepted(), tags[1]: None})
            r1, p1 = _frames(c, 1)[0]
            assert r1.resume and r1.settled and bytes(r1.delivery_tag) == tags[0]
            assert isinstance(r1.state, T.Accepted) and p1 == b""
            if same:
                assert attach.unsettled == {tags[0]: T.Accepted(), tags[1]: None, tags[2]: None}
                (r2, p2), (r3, p3) = _frames(c, 2)
                assert r2.resume and bytes(r2.delivery_tag) == tags[1] and _body(p2) == b"m2"
                assert not r3.resume and _body(p3) == b"m3"
                dids = [int(r2.delivery_id), int(r3.delivery_id)]
            else:
                assert attach.unsettled == {
                    tags[0]: T.Accepted(),
                    tags[1]: T.Released(),
                    tags[2]: T.Released(),
                }
                r2, p2 = _frames(c, 1)[0]
                assert r2.resume and r2.aborted and bytes(r2.delivery_tag) == tags[1]
                again = _frames(c, 2)
                assert sorted(_body(p) for _r, p in again) == [b"m2", b"m3"]
                assert not any(r.resume for r, _p in again)
                dids = [int(r.delivery_id) for r, _p in again]
            for did in dids:
                _accept(c, did)
            c.send(T.Close())
            c.read_until(T.Close)
        finally:
            c.close()
        assert _count(b, q) == 0  # m1 settled by the map, none twice, none lost
        deadline = time.monotonic() + 10
        while _markers(b) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _markers(b)  # taken: no marker left behind
    assert seen == {True, False}


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
