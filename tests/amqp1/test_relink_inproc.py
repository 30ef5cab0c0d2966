"""The AMQP 1.0 adapter without sockets: the engine's client role (``ClientEngine``)
pumped against ``AMQP10Connection`` over an in-process broker (``loadtest.inproc``).
Link recovery end to end (a lost link's deliveries, a re-attach with the client's
unsettled map, resumed transfers seen by the client engine, settlements back to the
queue) and an exchange source whose bind fails after its queue was declared (the link
refused, the queue deleted)."""

from __future__ import annotations

from typing import Any

from loadtest.inproc import FakeIO, connect, make_broker
from shardmq.adapter.amqp10 import AMQP10Connection
from shardmq.amqp import methods as M
from shardmq.amqp.errors import NOT_FOUND, SoftError
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.client import ClientEngine
from shardmq.amqp1.engine import Session
from shardmq.broker import metadata as md
from shardmq.broker.broker import Broker
from tests.amqp1.test_client import ClientRec


def _pump(client: ClientEngine, server: AMQP10Connection) -> None:
    for _ in range(100):
        a = client.take_output()
        if a:
            server.feed(bytes(a))
        b = server.take_output()
        if b:
            server.after_flush()
            client.feed(bytes(b))
        if not a and not b:
            return


def _open(broker: Broker, cid: str) -> tuple[ClientEngine, ClientRec, AMQP10Connection, Session]:
    server = AMQP10Connection(broker, "127.0.0.1:40001", FakeIO(), lambda: None)
    rec = ClientRec()
    client = ClientEngine(rec, lambda: None, user="guest", password="guest", container_id=cid)
    client.start()
    _pump(client, server)
    s = client.begin()
    _pump(client, server)
    return client, rec, server, s


def _fill(broker: Broker, q: str, bodies: list[bytes]) -> None:
    c = connect(broker)
    c.call(1, M.ChannelOpen())
    c.call(1, M.QueueDeclare(queue=q))
    for body in bodies:
        c.publish(1, "", q, body)


def _count(broker: Broker, q: str) -> int:
    return broker.vhosts["/"].queues[q].message_count  # type: ignore[union-attr]


def test_reattach_with_the_client_engine() -> None:
    broker = make_broker()  # link_recovery_timeout 60 s; no loop here: no time-out
    _fill(broker, "rq", [b"m1", b"m2", b"m3"])
    client, rec, server, s = _open(broker, "recovering")
    link = client.attach(s, "in", receiver=True, address="/queues/rq", settled=False)
    _pump(client, server)
    client.grant(s, link, 10)
    _pump(client, server)
    first = list(rec.deliveries)
    assert len(first) == 3 and link.peer_unsettled is None
    server.connection_lost()  # no close: the link is lost, its deliveries parked
    assert _count(broker, "rq") == 0
    tags = [d.tag for d in first]

    client, rec, server, s = _open(broker, "recovering")
    theirs: dict[bytes, Any] = {tags[0]: T.Accepted(), tags[1]: None}
    link = client.attach(
        s, "in", receiver=True, address="/queues/rq", settled=False, unsettled=theirs
    )
    _pump(client, server)
    assert link.peer_unsettled == {tags[0]: T.Accepted(), tags[1]: None, tags[2]: None}
    client.grant(s, link, 10)
    _pump(client, server)
    got = [(d.tag, d.settled) for d in rec.deliveries]
    # m1 resumed settled (no message), m2 resumed under its tag, m3 a new delivery
    assert got[:2] == [(tags[0], True), (tags[1], False)]
    assert len(got) == 3 and got[2][0] not in tags and not got[2][1]
    assert rec.deliveries[0].payload == b""
    assert b"m2" in rec.deliveries[1].payload and b"m3" in rec.deliveries[2].payload
    for d in rec.deliveries[1:]:
        client.disposition(s, d.delivery_id, d.delivery_id, True, T.Accepted(), role=True)
    _pump(client, server)
    assert _count(broker, "rq") == 0
    q = broker.vhosts["/"].queues["rq"]
    assert not q.consumers or all(c.unacked == 0 for c in q.consumers)  # type: ignore[union-attr]


def test_exchange_source_bind_failure_leaves_nothing() -> None:
    broker = make_broker()
    client, rec, server, s = _open(broker, "binder")
    seq = broker.sequencer
    real = seq.request

    def request(op: md.Op, callback: Any) -> None:
        if isinstance(op, md.Bind):  # as if the exchange went meanwhile
            callback(SoftError(NOT_FOUND, "no exchange 'amq.direct' in vhost '/'"), None)
            return
        real(op, callback)

    seq.request = request  # type: ignore[method-assign]
    before = set(broker.vhosts["/"].queues)
    link = client.attach(s, "x", receiver=True, address="/exchange/amq.direct/k", settled=False)
    _pump(client, server)
    assert ("detach", "x", rec.events[-1][2]) == rec.events[-1]
    err = rec.events[-1][2]
    assert str(err.condition) == "amqp:not-found" and "amq.direct" in str(err.description)
    assert set(broker.vhosts["/"].queues) == before  # the declared queue was deleted
    assert not server.domain.exclusive_queues and link.detached


def test_attach_answer_fits_the_peers_frame() -> None:
    """A broker map too large for one frame of the peer's max-frame-size is cut and
    marked incomplete-unsettled (spec 2.6.13); a small one is kept whole."""
    from shardmq.adapter.amqp10_relink import fit_attach
    from shardmq.amqp1.framing import write_frame
    from shardmq.amqp1.values import UInt

    def reply(n: int) -> Any:
        tags = {i.to_bytes(8, "big"): None for i in range(n)}
        return T.Attach(name="l", handle=UInt(0), role=False, unsettled=tags)

    small = fit_attach(reply(3), 512)
    assert len(small.unsettled) == 3 and not small.incomplete_unsettled
    big = fit_attach(reply(500), 512)
    frame = bytearray()
    write_frame(frame, 0, big)
    assert len(frame) <= 512 and big.incomplete_unsettled and 0 < len(big.unsettled) < 500


def test_unsettled_map_keys_that_are_not_tags_are_ignored() -> None:
    """Only binary delivery-tags count (an integer key is not turned into bytes)."""
    broker = make_broker()
    _fill(broker, "kq", [b"m1"])
    client, rec, server, s = _open(broker, "odd-keys")
    link = client.attach(
        s, "in", receiver=True, address="/queues/kq", settled=False, unsettled={10**9: None}
    )
    _pump(client, server)
    (ss,) = server.engine.sessions.values()
    assert ss.by_name["in"].peer_unsettled == {}
    client.grant(s, link, 1)
    _pump(client, server)
    assert [b"m1" in d.payload for d in rec.deliveries] == [True]
