"""Publishing through the AMQP 1.0 adapter in process (``shardmq.adapter.amqp10_publish``):
messages published from a link's remembered shape reach the queue exactly as the
general conversion (``convert.parse`` + ``to_091``) gives them, whatever mix of shapes,
lengths, refusals and settlement modes a link sends; settled publishes take no confirm
number; unsettled ones are accepted in ranges."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from loadtest.inproc import Client, FakeIO, connect, make_broker
from shardmq import oplog
from shardmq.adapter.amqp10 import AMQP10Connection
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.client import ClientEngine
from shardmq.amqp1.convert import parse, to_091
from shardmq.amqp1.engine import Delivery, Link, Session
from shardmq.amqp1.sections import data_header
from shardmq.amqp1.values import UInt
from shardmq.broker.broker import Broker, LocalSequencer


class ClientRec:
    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self.settled: list[tuple[int, int, str]] = []

    def on_open(self, hostname: str | None) -> None:
        pass

    def on_begin(self, session: Session) -> None:
        pass

    def on_end(self, session: Session) -> None:
        pass

    def after_attach(self, session: Session, link: Link) -> None:
        self.links[link.name] = link

    def on_detach(self, session: Session, link: Link, error: Any) -> None:
        raise AssertionError(f"detached: {error}")

    def on_flow(self, session: Session, link: Link, drain: bool) -> None:
        pass

    def on_transfer(self, session: Session, link: Link, d: Delivery) -> None:
        pass

    def on_disposition(self, session: Session, d: Any) -> None:
        last = int(d.last) if d.last is not None else int(d.first)
        self.settled.append((int(d.first), last, type(d.state).__name__))


class Pair:
    def __init__(self) -> None:
        self.broker: Broker = make_broker()
        self.c091: Client = connect(self.broker)
        self.c091.open_channel(1)
        self.c091.declare(1, "q")
        self.conn = AMQP10Connection(self.broker, "127.0.0.1:1", FakeIO(), lambda: None)
        self.rec = ClientRec()
        self.client = ClientEngine(self.rec, lambda: None, user="guest", password="guest")
        self.client.start()
        self.pump()
        self.session = self.client.begin()
        self.pump()

    def pump(self) -> None:
        for _ in range(50):
            a = self.client.take_output()
            if a:
                self.conn.feed(bytes(a))
            seq = self.broker.sequencer
            if isinstance(seq, LocalSequencer) and seq.waiting:
                seq.commit()
            b = self.conn.take_output()  # the domain's confirms first, as the I/O layer
            if b:
                self.client.feed(bytes(b))
            if not a and not b:
                return

    def link(self, name: str, address: str | None, settled: bool) -> Link:
        if address is not None:
            self.client.attach(self.session, name, receiver=False, address=address, settled=settled)
        else:  # an anonymous terminus: the 'to' property addresses each message
            link = Link(name, 7, -1, False)
            link.snd_settle_mode = T.SENDER_SETTLE_MODE_UNSETTLED
            self.client.pending_links[(self.session.channel, name)] = link
            self.client.send(
                self.session.channel,
                T.Attach(
                    name=name,
                    handle=UInt(7),
                    role=False,
                    snd_settle_mode=T.SENDER_SETTLE_MODE_UNSETTLED,
                    source=T.Source(),
                    target=T.Target(),
                    initial_delivery_count=UInt(0),
                ),
            )
        self.pump()
        return self.rec.links[name]

    def send(self, link: Link, tag: int, payload: bytes, settled: bool) -> int:
        did = self.client.send_transfer(
            self.session, link, tag.to_bytes(8, "big"), payload, settled
        )
        self.pump()
        return did

    def queued(self) -> list[tuple[bytes, bytes, bytes]]:
        """(property bytes, body, exchange + routing key) of every queued message."""
        q = self.conn.domain.vhost.queues["q"]
        out = []
        while q.store:
            msg = q.store.take()
            out.append((msg.raw[19 : 7 + msg.hsize], msg.body, msg.exrk))
        return out


def _msg(body: bytes, *sections: Any) -> bytes:
    return b"".join(s.to_bytes() for s in sections) + data_header(len(body)) + body


def _expected(payload: bytes) -> tuple[bytes, bytes]:
    props, body = to_091(parse(payload))
    return props.encode(), body


def test_shapes_mixed_on_one_link_equal_the_general_conversion() -> None:
    p = Pair()
    link = p.link("s", "/queue/q", settled=False)
    durable = T.Header(durable=True)
    payloads = [
        _msg(b"0123456789abcdef"),
        _msg(b"fedcba9876543210"),  # the same shape
        _msg(b"fedcba9876543210") + T.Footer({}).to_bytes(),  # the same start, longer
        _msg(b"short"),  # the same sections, another length
        _msg(b"0123456789abcdef", durable),  # the same length, another prefix
        _msg(b"0123456789abcdef", durable, T.Properties(message_id="m-1")),
        _msg(b"0123456789abcdef", durable, T.Properties(message_id="m-2")),
        _msg(b"x" * 300, T.ApplicationProperties({"k": "v"})),  # a vbin32 data section
        _msg(b"y" * 300, T.ApplicationProperties({"k": "v"})),
        _msg(b"y" * 300, T.ApplicationProperties({"k": "w"})),
        _msg(b"0123456789abcdef") + T.Footer({}).to_bytes(),  # not last: never a shape
        _msg(b"0123456789abcdef") + T.Footer({}).to_bytes(),
        T.AmqpValue("a value").to_bytes(),  # not a data section
        _msg(b"z" * 200_000),  # more than one 0-9-1 body frame
        _msg(b"0123456789abcdef"),
        _msg(b""),  # an empty body
    ]
    for i, payload in enumerate(payloads):
        link.credit = 10
        p.send(link, i, payload, settled=i % 3 == 0)
    got = p.queued()
    assert [(props, body) for props, body, _x in got] == [_expected(x) for x in payloads]
    assert {x for _p, _b, x in got} == {b"\x00\x01q"}  # the default exchange, key q
    # the unsettled ones are accepted (in ranges), the settled ones get nothing
    accepted = {i for first, last, state in p.rec.settled for i in range(first, last + 1)}
    assert accepted == {i for i in range(len(payloads)) if i % 3 != 0}
    assert all(state == "Accepted" for _f, _l, state in p.rec.settled)
    # settled publishes took no confirm number: one per unsettled publish
    ch = p.conn.engine.sessions[p.session.remote_channel].user.ch
    assert ch.confirm_seq == len(accepted) and ch.confirm


def test_refused_messages_are_refused_every_time_and_make_no_shape() -> None:
    p = Pair()
    anon = p.link("a", None, settled=False)
    to_q = T.Properties(to="/queue/q")
    no_to = T.Properties(subject="s")
    bad_user = T.Properties(to="/queue/q", user_id=b"mallory")
    payloads = [
        _msg(b"1", to_q),
        _msg(b"2", no_to),  # refused: no 'to'
        _msg(b"3", no_to),  # the same shape: refused again
        _msg(b"4", bad_user),  # refused: another user
        _msg(b"5", bad_user),
        _msg(b"6", to_q),
    ]
    for i, payload in enumerate(payloads):
        anon.credit = 10
        p.send(anon, i, payload, settled=False)
    got = p.queued()
    assert [(props, body) for props, body, _x in got] == [
        _expected(payloads[0]),
        _expected(payloads[5]),
    ]
    states = {}
    for first, last, state in p.rec.settled:
        for i in range(first, last + 1):
            states[i] = state
    assert states == {0: "Accepted", 1: "Rejected", 2: "Rejected", 3: "Rejected"} | {
        4: "Rejected",
        5: "Accepted",
    }


def test_refusals_a_client_repeats_are_logged_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oplog, "BUDGET", oplog.Budget(burst=5, rate=0.001))
    p = Pair()
    anon = p.link("a", None, settled=False)
    no_to = _msg(b"x", T.Properties(subject="s"))
    with caplog.at_level(logging.WARNING, logger="shardmq.amqp1"):
        for i in range(200):
            anon.credit = 10
            p.send(anon, i, no_to, settled=False)
    lines = [r for r in caplog.records if "refused: no 'to' address" in r.getMessage()]
    assert len(lines) == 5  # the burst; the other 195 left out, each still rejected
    rejected = {i for f, last, s in p.rec.settled if s == "Rejected" for i in range(f, last + 1)}
    assert rejected == set(range(200))
