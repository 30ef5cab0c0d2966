"""The sans-IO AMQP 1.0 engine with a recording handler: headers, SASL, open, sessions,
links, credit and drain, transfers in and out (multi-frame, aborted, windows),
dispositions and every error scope, without sockets or a broker."""

from __future__ import annotations

from typing import Any

import pytest

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.engine import CLOSED, OPEN, Delivery, Engine, Link, Session
from shardmq.amqp1.errors import LinkError
from shardmq.amqp1.framing import EMPTY_FRAME, HEADER_AMQP, HEADER_SASL, parse_frame, write_frame
from shardmq.amqp1.values import Symbol, UInt


class Recorder:
    def __init__(self, allow_no_sasl: bool = False) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.no_sasl = allow_no_sasl
        self.refuse_attach: LinkError | None = None

    def mechanisms(self) -> list[str]:
        return ["PLAIN"]

    def authenticate(self, mechanism: str, response: bytes) -> bool:
        return response == b"\x00u\x00p"

    def allow_no_sasl(self) -> bool:
        return self.no_sasl

    def on_open(self, hostname: str | None) -> None:
        self.events.append(("open", hostname))

    def on_begin(self, session: Session) -> None:
        self.events.append(("begin", session.channel))

    def on_end(self, session: Session) -> None:
        self.events.append(("end", session.channel))

    def on_attach(self, session: Session, link: Link, attach: Any) -> Any:
        if self.refuse_attach is not None:
            raise self.refuse_attach
        self.events.append(("attach", link.name, link.role))
        return T.Attach(
            name=attach.name,
            handle=UInt(link.handle),
            role=link.role,
            source=attach.source,
            target=attach.target,
            initial_delivery_count=UInt(0) if not link.role else None,
        )

    def after_attach(self, session: Session, link: Link) -> None:
        self.events.append(("attached", link.name))

    def on_detach(self, session: Session, link: Link, error: Any) -> None:
        self.events.append(("detach", link.name))

    def on_flow(self, session: Session, link: Link, drain: bool) -> None:
        self.events.append(("flow", link.name, link.credit, drain))

    def on_transfer(self, session: Session, link: Link, delivery: Delivery) -> None:
        self.events.append(("transfer", delivery.delivery_id, delivery.tag, delivery.payload))

    def on_disposition(self, session: Session, d: Any) -> None:
        self.events.append(("disposition", int(d.first), d.state))

    def on_close(self) -> None:
        self.events.append(("close",))


class Peer:
    """The client side, written by hand: frames to the engine, frames back."""

    def __init__(self, handler: Recorder | None = None, **kw: Any) -> None:
        self.h = handler or Recorder()
        opts = dict(
            peer="test",
            container_id="broker",
            max_frame_size=4096,
            channel_max=8,
            idle_time_out=0,
            session_window=8,
            max_message_size=100_000,
        )
        opts.update(kw)
        self.e = Engine(self.h, lambda: None, **opts)  # type: ignore[arg-type]
        self.inbuf = bytearray()

    def raw(self, data: bytes) -> None:
        self.e.feed(data)

    def send(self, perf: Any, channel: int = 0, payload: bytes = b"", ftype: int = 0) -> None:
        out = bytearray()
        write_frame(out, channel, perf, payload, ftype)
        self.e.feed(bytes(out))

    def frames(self) -> list[tuple[int, Any, bytes]]:
        self.inbuf += self.e.take_output() or b""
        got = []
        while True:
            if self.inbuf[:4] == b"AMQP":
                got.append((-1, bytes(self.inbuf[:8]), b""))
                del self.inbuf[:8]
                continue
            f = parse_frame(self.inbuf, 0, 2**32)
            if f is None:
                return got
            _t, ch, perf, payload, end = f
            del self.inbuf[:end]
            got.append((ch, perf, payload))

    def performatives(self) -> list[Any]:
        return [p for _c, p, _pl in self.frames()]

    def open(self) -> None:
        self.raw(HEADER_SASL)
        self.send(T.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\x00u\x00p"), ftype=1)
        self.raw(HEADER_AMQP)
        self.send(T.Open(container_id="c", hostname="vhost:/"))
        got = self.performatives()
        assert got[0] == HEADER_SASL and isinstance(got[1], T.SaslMechanisms)
        assert got[2].code == 0 and got[3] == HEADER_AMQP and isinstance(got[4], T.Open)
        assert self.e.state == OPEN

    def begin(self, channel: int = 0, window: int = 100) -> T.Begin:
        self.send(
            T.Begin(
                next_outgoing_id=UInt(0),
                incoming_window=UInt(window),
                outgoing_window=UInt(100),
            ),
            channel,
        )
        (b,) = self.performatives()
        return b

    def attach(self, name: str, role: bool, handle: int = 0, **kw: Any) -> list[Any]:
        self.send(
            T.Attach(
                name=name,
                handle=UInt(handle),
                role=role,
                source=T.Source(address="/queues/q"),
                target=T.Target(address="/queues/q"),
                initial_delivery_count=UInt(0) if not role else None,
                **kw,
            )
        )
        return self.performatives()


def test_sasl_then_open_and_close() -> None:
    p = Peer()
    p.open()
    assert ("open", "vhost:/") in p.h.events
    p.send(T.Close())
    assert isinstance(p.performatives()[0], T.Close)
    assert p.e.state == CLOSED and p.e.want_close and ("close",) in p.h.events


def test_bad_sasl_closes() -> None:
    p = Peer()
    p.raw(HEADER_SASL)
    p.send(T.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\x00u\x00bad"), ftype=1)
    got = p.performatives()
    assert got[-1].code == T.SASL_CODE_AUTH and p.e.want_close


def test_header_without_sasl_only_when_allowed() -> None:
    p = Peer()
    p.raw(HEADER_AMQP)
    assert p.performatives() == [HEADER_SASL] and p.e.want_close
    p = Peer(Recorder(allow_no_sasl=True))
    p.raw(HEADER_AMQP)
    assert p.performatives() == [HEADER_AMQP] and not p.e.want_close


def test_header_split_over_reads() -> None:
    p = Peer()
    for b in HEADER_SASL:
        p.raw(bytes([b]))
    assert p.performatives()[0] == HEADER_SASL


def test_incoming_transfers_multi_frame_aborted_and_credit() -> None:
    p = Peer()
    p.open()
    p.begin()
    got = p.attach("pub", T.ROLE_SENDER)
    assert isinstance(got[0], T.Attach)
    assert ("attached", "pub") in p.h.events
    link = p.e.sessions[0].links[0]
    p.e.grant(p.e.sessions[0], link, 2)
    flow = p.performatives()[0]
    assert flow.link_credit == 2 and flow.delivery_count == 0
    # a delivery in three frames
    p.send(
        T.Transfer(handle=UInt(0), delivery_id=UInt(0), delivery_tag=b"a", more=True), payload=b"12"
    )
    p.send(T.Transfer(handle=UInt(0), more=True), payload=b"34")
    p.send(T.Transfer(handle=UInt(0), settled=True), payload=b"5")
    # an aborted one takes no credit
    p.send(
        T.Transfer(handle=UInt(0), delivery_id=UInt(1), delivery_tag=b"b", more=True), payload=b"x"
    )
    p.send(T.Transfer(handle=UInt(0), aborted=True))
    p.send(T.Transfer(handle=UInt(0), delivery_id=UInt(2), delivery_tag=b"c"), payload=b"6")
    transfers = [e for e in p.h.events if e[0] == "transfer"]
    assert transfers == [("transfer", 0, b"a", b"12345"), ("transfer", 2, b"c", b"6")]
    assert link.credit == 0 and link.delivery_count == 2
    # no credit left: the link (only) is detached with transfer-limit-exceeded
    p.send(T.Transfer(handle=UInt(0), delivery_id=UInt(3), delivery_tag=b"d"), payload=b"7")
    detach = [x for x in p.performatives() if isinstance(x, T.Detach)][0]
    assert detach.error.condition == T.LINK_ERROR_TRANSFER_LIMIT_EXCEEDED
    assert p.e.state == OPEN and 0 in p.e.sessions


def test_receiver_settle_mode_second_drops_duplicate_tags() -> None:
    """Exactly-once: an unsettled delivery received in mode second is kept (its tag)
    until the peer settles it; the same tag sent again meanwhile is a duplicate, not a
    new message, and gets the first one's outcome."""
    p = Peer()
    p.open()
    p.begin()
    p.attach("pub", T.ROLE_SENDER, rcv_settle_mode=T.RECEIVER_SETTLE_MODE_SECOND)
    s = p.e.sessions[0]
    link = s.links[0]
    p.e.grant(s, link, 10)
    p.performatives()

    def transfer(did: int, tag: bytes, **kw: Any) -> None:
        p.send(
            T.Transfer(handle=UInt(0), delivery_id=UInt(did), delivery_tag=tag, **kw), payload=b"m"
        )

    def dispositions() -> list[Any]:
        return [x for x in p.performatives() if isinstance(x, T.Disposition)]

    def received() -> list[int]:
        return [e[1] for e in p.h.events if e[0] == "transfer"]

    transfer(0, b"a")
    assert received() == [0]
    p.e.settle_received(s, link, 0, T.Accepted())
    (disp,) = dispositions()
    assert disp.role is True and disp.first == 0 and not disp.settled
    assert disp.state == T.Accepted()
    transfer(1, b"a")  # re-sent: dropped, answered with the first one's outcome
    assert received() == [0]
    (disp,) = dispositions()
    assert disp.first == 1 and not disp.settled and disp.state == T.Accepted()
    # a duplicate before the outcome: both delivery-ids get it once it is decided
    transfer(2, b"b")
    transfer(3, b"b")
    assert received() == [0, 2] and dispositions() == []
    p.e.settle_received(s, link, 2, T.Accepted())
    assert [(d.first, d.settled) for d in dispositions()] == [(2, False), (3, False)]
    # the peer settles: the records go; the tag is then a new delivery
    p.send(T.Disposition(role=T.ROLE_SENDER, first=UInt(0), last=UInt(3), settled=True))
    assert link.received == {} and s.received_ids == {}
    transfer(4, b"a")
    assert received() == [0, 2, 4]
    # a settled transfer or a transfer in mode first is settled at once, no record
    transfer(5, b"c", settled=True)
    transfer(6, b"d", rcv_settle_mode=T.RECEIVER_SETTLE_MODE_FIRST)
    assert received() == [0, 2, 4, 5, 6] and set(link.received) == {b"a"}
    p.e.settle_received(s, link, 6, T.Accepted())
    (disp,) = dispositions()
    assert disp.first == 6 and disp.settled
    # the records of a detached link go with it
    p.send(T.Detach(handle=UInt(0), closed=True))
    assert link.received == {} and s.received_ids == {}


def test_message_size_limit_detaches() -> None:
    p = Peer(max_message_size=10)
    p.open()
    p.begin()
    p.attach("pub", T.ROLE_SENDER)
    p.e.grant(p.e.sessions[0], p.e.sessions[0].links[0], 5)
    p.performatives()
    p.send(T.Transfer(handle=UInt(0), delivery_id=UInt(0), delivery_tag=b"a"), payload=b"x" * 11)
    detach = [x for x in p.performatives() if isinstance(x, T.Detach)][0]
    assert detach.error.condition == T.LINK_ERROR_MESSAGE_SIZE_EXCEEDED


def test_outgoing_credit_drain_split_and_window() -> None:
    p = Peer()
    p.open()
    p.begin(window=2)  # the peer takes 2 transfer frames
    p.attach("sub", T.ROLE_RECEIVER)
    s = p.e.sessions[0]
    link = s.links[0]
    p.send(
        T.Flow(
            next_incoming_id=UInt(0),
            incoming_window=UInt(2),
            next_outgoing_id=UInt(0),
            outgoing_window=UInt(100),
            handle=UInt(0),
            delivery_count=UInt(0),
            link_credit=UInt(3),
        )
    )
    assert ("flow", "sub", 3, False) in p.h.events
    # 10000 bytes at max-frame-size 4096: 3 frames; only 2 go out before the window opens
    p.e.send_transfer(s, link, b"t1", b"z" * 10000, False)
    frames = p.frames()
    assert len(frames) == 2 and frames[0][1].more and frames[0][1].delivery_id == 0
    assert p.e.session_blocked(s)
    p.send(
        T.Flow(
            next_incoming_id=UInt(2),
            incoming_window=UInt(10),
            next_outgoing_id=UInt(0),
            outgoing_window=UInt(100),
        )  # fmt: skip
    )
    rest = p.frames()
    assert len(rest) == 1 and not rest[0][1].more
    assert b"".join(f[2] for f in frames + rest) == b"z" * 10000
    assert link.credit == 2 and link.delivery_count == 1
    # drain: the handler has nothing; the engine uses up the credit and says so
    p.e.drained(s, link)
    flow = p.performatives()[0]
    assert flow.link_credit == 0 and flow.delivery_count == 3


def test_send_transfer_q_one_frame_and_the_general_path() -> None:
    p = Peer()
    p.open()
    p.begin(window=2)
    p.attach("sub", T.ROLE_RECEIVER)
    s = p.e.sessions[0]
    link = s.links[0]
    p.send(
        T.Flow(
            next_incoming_id=UInt(0),
            incoming_window=UInt(2),
            next_outgoing_id=UInt(0),
            outgoing_window=UInt(100),
            handle=UInt(0),
            delivery_count=UInt(0),
            link_credit=UInt(10),
        )
    )
    # one frame: the link's head and one pack; the payload is head + body
    assert p.e.send_transfer_q(s, link, 7, True, b"\x00\x53\x75\xa0\x02", b"hi") == 0
    ((ch, t, payload),) = p.frames()
    assert (t.delivery_id, t.delivery_tag, t.settled, t.more) == (
        0,
        (7).to_bytes(8, "big"),
        True,
        False,
    )
    assert payload == b"\x00\x53\x75\xa0\x02hi" and link.thead
    # larger than a frame: split by the general path, the window holds the rest back
    assert p.e.send_transfer_q(s, link, 8, False, b"", b"z" * 5000) == 1
    frames = p.frames()
    assert len(frames) == 1 and frames[0][1].more and frames[0][1].settled is False
    assert p.e.session_blocked(s)
    # while frames wait for the window, a small delivery waits behind them
    assert p.e.send_transfer_q(s, link, 9, False, b"", b"x") == 2
    assert p.frames() == []
    p.send(
        T.Flow(
            next_incoming_id=UInt(2),
            incoming_window=UInt(10),
            next_outgoing_id=UInt(0),
            outgoing_window=UInt(100),
        )  # fmt: skip
    )
    rest = p.frames()
    assert [f[1].delivery_id for f in rest] == [None, 2]
    assert frames[0][2] + rest[0][2] == b"z" * 5000 and rest[1][2] == b"x"
    assert link.credit == 7 and link.delivery_count == 3 and s.next_delivery_id == 3


def test_dispositions_and_detach_reach_the_handler() -> None:
    p = Peer()
    p.open()
    p.begin()
    p.attach("sub", T.ROLE_RECEIVER)
    p.send(T.Disposition(role=True, first=UInt(4), settled=True, state=T.Accepted()))
    assert ("disposition", 4, T.Accepted()) in p.h.events
    p.send(T.Detach(handle=UInt(0), closed=True))
    assert ("detach", "sub") in p.h.events
    assert isinstance(p.performatives()[-1], T.Detach)
    p.send(T.End())
    assert isinstance(p.performatives()[-1], T.End) and ("end", 0) in p.h.events


def test_links_ended_without_close_are_marked_lost() -> None:
    """Link recovery: a detach with closed=false or a connection lost without a close
    leaves the link resumable (``lost``) for the handler; a closed link or a closed
    connection does not."""
    p = Peer()
    p.open()
    p.begin()
    p.attach("a", T.ROLE_RECEIVER, handle=0)
    p.attach("b", T.ROLE_RECEIVER, handle=1)
    p.attach("c", T.ROLE_RECEIVER, handle=2)
    s = p.e.sessions[0]
    a, b, c = s.links[0], s.links[1], s.links[2]
    assert p.e.remote_container_id == "c"
    p.send(T.Detach(handle=UInt(0), closed=False))
    p.send(T.Detach(handle=UInt(1), closed=True))
    assert a.lost and not b.lost
    p.e.connection_lost()
    assert c.lost and ("detach", "c") in p.h.events
    q = Peer()
    q.open()
    q.begin()
    q.attach("d", T.ROLE_RECEIVER)
    d = q.e.sessions[0].links[0]
    q.send(T.Close())
    q.e.connection_lost()
    assert not d.lost and ("detach", "d") in q.h.events


def test_refused_attach_keeps_its_handle_until_the_peer_detaches() -> None:
    p = Peer()
    p.open()
    p.begin()
    p.h.refuse_attach = LinkError(T.AMQP_ERROR_NOT_FOUND, "no queue 'q'")
    got = p.attach("sub", T.ROLE_RECEIVER)
    assert isinstance(got[0], T.Attach) and got[0].source is None
    assert got[1].error.condition == T.AMQP_ERROR_NOT_FOUND
    p.send(T.Detach(handle=UInt(0), closed=True))  # the answer: no error, no reply
    assert p.performatives() == [] and 0 in p.e.sessions


@pytest.mark.parametrize(
    "perf,channel,condition",
    [
        (T.Flow(incoming_window=1, next_outgoing_id=0, outgoing_window=1, handle=UInt(9)), 0,
         T.SESSION_ERROR_UNATTACHED_HANDLE),
        (T.Detach(handle=UInt(9)), 0, T.SESSION_ERROR_UNATTACHED_HANDLE),
        (T.Transfer(handle=UInt(9), delivery_id=0, delivery_tag=b"x"), 0,
         T.SESSION_ERROR_UNATTACHED_HANDLE),
    ],
)  # fmt: skip
def test_session_errors_end_only_the_session(perf: Any, channel: int, condition: str) -> None:
    p = Peer()
    p.open()
    p.begin()
    p.send(perf, channel)
    end = p.performatives()[-1]
    assert isinstance(end, T.End) and end.error.condition == condition
    assert p.e.state == OPEN


@pytest.mark.parametrize(
    "data,condition",
    [
        (b"\x00\x00\x00\x04\x02\x00\x00\x00", T.CONNECTION_ERROR_FRAMING_ERROR),  # size < 8
        (b"\x00\x00\x00\x09\x01\x00\x00\x00\x40", T.CONNECTION_ERROR_FRAMING_ERROR),  # doff 1
        (b"\x00\x10\x00\x00\x02\x00\x00\x00", T.CONNECTION_ERROR_FRAMING_ERROR),  # too big
        (b"\x00\x00\x00\x0a\x02\x00\x00\x00\x00\x40", T.AMQP_ERROR_DECODE_ERROR),
        (b"\x00\x00\x00\x0a\x02\x00\x00\x05\x00\x40", T.AMQP_ERROR_DECODE_ERROR),
    ],
)
def test_connection_errors(data: bytes, condition: str) -> None:
    p = Peer()
    p.open()
    p.raw(data)
    close = p.performatives()[-1]
    assert isinstance(close, T.Close) and close.error.condition == condition
    assert p.e.state == CLOSED and p.e.want_close  # unreadable: no wait for the peer
    assert ("close",) in p.h.events


def test_frame_on_a_channel_without_session_closes() -> None:
    p = Peer()
    p.open()
    p.send(T.End(), channel=3)
    close = p.performatives()[-1]
    assert close.error.condition == T.CONNECTION_ERROR_FRAMING_ERROR


def test_idle_time_out_ticks() -> None:
    p = Peer(idle_time_out=1000)
    p.raw(HEADER_SASL)
    p.send(T.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\x00u\x00p"), ftype=1)
    p.raw(HEADER_AMQP)
    p.send(T.Open(container_id="c", idle_time_out=UInt(400)))
    p.frames()
    assert p.e.tick_seconds() == 0.2
    assert p.e.heartbeat_tick()  # activity seen
    p.e.take_output()
    alive = [p.e.heartbeat_tick() for _ in range(12)]
    assert p.e.take_output() is not None
    assert alive[:9] == [True] * 9 and alive[-1] is False  # 2 s of silence
    p.e.send_activity = False
    p.e.out += EMPTY_FRAME  # our own heartbeat is not activity
    assert p.e.take_output() == EMPTY_FRAME and not p.e.send_activity
