"""The engine's client role (``ClientEngine``) against its accepting role (``Engine``),
both sans-IO, bytes pumped between them: SASL and open, a session, a sending and a
receiving link, credit, transfers both ways (one frame and many), dispositions, a
refused link, close. The same engine code runs on both ends."""

from __future__ import annotations

from typing import Any

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.client import ClientEngine
from shardmq.amqp1.engine import CLOSED, OPEN, Delivery, Engine, Link, Session
from shardmq.amqp1.errors import LinkError
from tests.amqp1.test_engine import Recorder


class ClientRec:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.deliveries: list[Delivery] = []

    def on_open(self, hostname: str | None) -> None:
        self.events.append(("open",))

    def on_begin(self, session: Session) -> None:
        self.events.append(("begin", session.channel))

    def on_end(self, session: Session) -> None:
        self.events.append(("end",))

    def after_attach(self, session: Session, link: Link) -> None:
        self.events.append(("attached", link.name))

    def on_detach(self, session: Session, link: Link, error: Any) -> None:
        self.events.append(("detach", link.name, error))

    def on_flow(self, session: Session, link: Link, drain: bool) -> None:
        self.events.append(("flow", link.name, link.credit))

    def on_transfer(self, session: Session, link: Link, d: Delivery) -> None:
        self.deliveries.append(d)

    def on_disposition(self, session: Session, d: Any) -> None:
        self.events.append(("disposition", int(d.first), d.last, type(d.state).__name__))

    def on_close(self) -> None:
        self.events.append(("close",))


def _pair(password: str = "p") -> tuple[ClientEngine, ClientRec, Engine, Recorder]:
    srec = Recorder()
    server = Engine(
        srec,  # type: ignore[arg-type]
        lambda: None,
        peer="client",
        container_id="broker",
        max_frame_size=1024,
        channel_max=8,
        idle_time_out=0,
        session_window=16,
        max_message_size=1_000_000,
    )
    crec = ClientRec()
    client = ClientEngine(crec, lambda: None, user="u", password=password, max_frame_size=1024)
    client.start()
    return client, crec, server, srec


def _pump(client: ClientEngine, server: Engine) -> None:
    for _ in range(50):
        a = client.take_output()
        if a:
            server.feed(bytes(a))
        b = server.take_output()
        if b:
            client.feed(bytes(b))
        if not a and not b:
            return


def test_login_session_links_transfers_both_ways_and_close() -> None:
    client, crec, server, srec = _pair()
    _pump(client, server)
    assert client.state == OPEN and server.state == OPEN and ("open",) in crec.events
    s = client.begin()
    _pump(client, server)
    assert s in client.sessions.values() and ("begin", 0) in srec.events

    # a sending link: the server grants credit, the client sends one small and one
    # large delivery (split over frames of the negotiated 1024 bytes)
    snd = client.attach(s, "out", receiver=False, address="/queues/q", settled=False)
    _pump(client, server)
    assert ("attached", "out") in crec.events
    (ss,) = server.sessions.values()
    slink = ss.by_name["out"]
    server.grant(ss, slink, 10)
    _pump(client, server)
    assert snd.credit == 10
    client.send_transfer(s, snd, b"t1", b"small", False)
    big = bytes(range(256)) * 20
    client.send_transfer(s, snd, b"t2", big, False)
    _pump(client, server)
    got = [e for e in srec.events if e[0] == "transfer"]
    assert got == [("transfer", 0, b"t1", b"small"), ("transfer", 1, b"t2", big)]
    server.disposition(ss, 0, 1, True, T.Accepted())
    _pump(client, server)
    assert ("disposition", 0, 1, "Accepted") in crec.events

    # a receiving link: the client grants credit, the server sends
    rcv = client.attach(s, "in", receiver=True, address="/queues/q", settled=True)
    _pump(client, server)
    rlink = ss.by_name["in"]
    client.grant(s, rcv, 3)
    _pump(client, server)
    assert rlink.credit == 3
    for i in range(3):
        server.send_transfer(ss, rlink, bytes([i]) * 8, b"m%d" % i, True)
    _pump(client, server)
    assert [d.payload for d in crec.deliveries] == [b"m0", b"m1", b"m2"]
    assert rcv.credit == 0 and all(d.settled for d in crec.deliveries)

    client.close()
    _pump(client, server)
    assert client.state == CLOSED and server.state == CLOSED


def test_refused_link_and_failed_login() -> None:
    client, crec, server, srec = _pair()
    _pump(client, server)
    s = client.begin()
    _pump(client, server)
    srec.refuse_attach = LinkError(T.AMQP_ERROR_NOT_FOUND, "no queue 'x'")
    client.attach(s, "bad", receiver=True, address="/queues/x", settled=True)
    _pump(client, server)
    (ev,) = [e for e in crec.events if e[0] == "detach"]
    assert ev[1] == "bad" and ev[2].condition == T.AMQP_ERROR_NOT_FOUND

    client, crec, server, _srec = _pair(password="wrong")
    _pump(client, server)
    assert client.state == CLOSED and client.error is not None


def test_link_recovery_unsettled_maps_and_resumed_transfers() -> None:
    """Spec 2.6.13 between the two roles: the receiver re-attaches with its unsettled
    map, the sender's attach answers with its own (both kept in ``peer_unsettled``);
    the sender resumes under the old delivery-tags (``resume_transfer``): one with its
    message (over several frames), one settled with the state both ends agree on,
    without its message, one aborted (discarded by the receiver, no delivery); each
    takes a credit and a delivery-id."""
    client, crec, server, srec = _pair()
    _pump(client, server)
    s = client.begin()
    _pump(client, server)
    theirs = {b"tag-1": T.Accepted(), b"tag-2": None, b"tag-3": None}
    rcv = client.attach(
        s, "again", receiver=True, address="/queues/q", settled=False, unsettled=theirs
    )
    server_reply_map = {b"tag-1": None, b"tag-2": None, b"tag-3": None, b"tag-4": None}
    orig = srec.on_attach

    def on_attach(session: Session, link: Link, attach: Any) -> Any:
        reply = orig(session, link, attach)
        reply.unsettled = server_reply_map
        return reply

    srec.on_attach = on_attach  # type: ignore[method-assign]
    _pump(client, server)
    (ss,) = server.sessions.values()
    slink = ss.by_name["again"]
    assert slink.peer_unsettled == theirs  # the receiver's map, at the sender
    assert rcv.peer_unsettled == server_reply_map  # the sender's map, at the receiver
    client.grant(s, rcv, 5)
    _pump(client, server)
    big = bytes(range(256)) * 12  # over several 1024-byte frames
    d2 = server.resume_transfer(ss, slink, b"tag-2", big)
    d1 = server.resume_transfer(ss, slink, b"tag-1", settled=True, state=T.Accepted())
    d3 = server.resume_transfer(ss, slink, b"tag-3", aborted=True)
    _pump(client, server)
    assert [d2, d1, d3] == [0, 1, 2] and slink.credit == 3 and slink.delivery_count == 2
    got = [(d.tag, d.payload, d.settled) for d in crec.deliveries]
    assert got == [(b"tag-2", big, False), (b"tag-1", b"", True)]  # tag-3: discarded
    assert rcv.credit == 3 and rcv.delivery_count == 2  # both ends agree
