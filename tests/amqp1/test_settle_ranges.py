"""Settling deliveries to an AMQP 1.0 client in ranges (``AMQP10Connection
.on_disposition`` over ``SessionState``'s run): the client engine pumped against the
adapter in process. Two unsettled receiving links on one session, deliveries
interleaved, ranges settled newest first and with different outcomes: every outcome
reaches exactly its deliveries (an accepted range of one link never acks the other's
older deliveries), released ones come back redelivered."""

from __future__ import annotations

import pytest

from loadtest.inproc import make_broker
from shardmq.amqp1 import types_gen as T
from shardmq.broker.channel import Channel
from tests.amqp1.test_relink_inproc import _count, _fill, _open, _pump


def _unacked(server: object) -> int:
    return sum(len(s.user.ch.unacked) for s in server.engine.sessions.values())  # type: ignore[attr-defined]


def test_ranges_of_two_links_settle_only_their_deliveries() -> None:
    broker = make_broker()
    _fill(broker, "qa", [b"a%d" % i for i in range(6)])
    _fill(broker, "qb", [b"b%d" % i for i in range(6)])
    client, rec, server, s = _open(broker, "ranges")
    la = client.attach(s, "la", receiver=True, address="/queues/qa", settled=False)
    lb = client.attach(s, "lb", receiver=True, address="/queues/qb", settled=False)
    _pump(client, server)
    client.grant(s, la, 3)  # a0-a2: delivery-ids 0-2
    _pump(client, server)
    client.grant(s, lb, 6)  # b0-b5: 3-8
    _pump(client, server)
    client.grant(s, la, 3)  # a3-a5: 9-11
    _pump(client, server)
    got = [(d.delivery_id, d.payload[-2:]) for d in rec.deliveries]
    assert [i for i, _ in got] == list(range(12))
    assert [p for _, p in got] == [b"a0", b"a1", b"a2"] + [b"b%d" % i for i in range(6)] + [
        b"a3",
        b"a4",
        b"a5",
    ]
    assert _unacked(server) == 12
    # link b's newest first: accepted 6..8 (b3-b5) while a0-a2 and b0-b2 are older
    client.disposition(s, 6, 8, True, T.Accepted())
    _pump(client, server)
    assert _unacked(server) == 9 and _count(broker, "qa") == 0 and _count(broker, "qb") == 0
    # link a's newest: released 9..11 -> back to qa (and redelivered at once: credit
    # is used up, so they stay queued)
    client.disposition(s, 9, 11, True, T.Released())
    _pump(client, server)
    assert _unacked(server) == 6 and _count(broker, "qa") == 3
    # the oldest, across both links: accepted 0..5 (a0-a2, b0-b2)
    client.disposition(s, 0, 5, True, T.Accepted())
    _pump(client, server)
    assert _unacked(server) == 0 and _count(broker, "qa") == 3 and _count(broker, "qb") == 0
    # the released ones come back, redelivered, on new delivery-ids
    rec.deliveries.clear()
    client.grant(s, la, 10)
    _pump(client, server)
    assert [d.delivery_id for d in rec.deliveries] == [12, 13, 14]
    client.disposition(s, 12, 14, True, T.Accepted())
    _pump(client, server)
    assert _unacked(server) == 0 and _count(broker, "qa") == 0


def test_one_link_in_order_settles_in_one_multiple_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker()
    _fill(broker, "q1", [b"m%d" % i for i in range(500)])
    client, rec, server, s = _open(broker, "inorder")
    link = client.attach(s, "in", receiver=True, address="/queues/q1", settled=False)
    _pump(client, server)
    client.grant(s, link, 500)
    _pump(client, server)
    assert len(rec.deliveries) == 500
    st = next(iter(server.engine.sessions.values())).user
    assert st.run_n == 500 and not st.outgoing  # one run, no entry per delivery
    acks: list[tuple[int, int]] = []
    real = Channel.ack

    def spy(ch: Channel, tag: int, multiple: int) -> None:
        acks.append((tag, multiple))
        real(ch, tag, multiple)

    monkeypatch.setattr(Channel, "ack", spy)
    for first in range(0, 500, 250):
        client.disposition(s, first, first + 249, True, T.Accepted())
        _pump(client, server)
    assert len(acks) == 2 and all(m for _t, m in acks)
    assert _unacked(server) == 0 and _count(broker, "q1") == 0 and st.run_n == 0
