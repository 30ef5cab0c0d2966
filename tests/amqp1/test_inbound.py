"""The engine's hot loop over incoming one-frame transfers (``shardmq.amqp1.inbound``)
against its general path: the same frames, cut into reads anywhere, give the same
handler calls, the same output, and the same session, link and connection state with
the loop as without it (hypothesis), including mutated frames, windows and credit
running out, unknown handles and channels, multi-frame and aborted deliveries,
receiver-settle-mode second, and handler errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardmq.amqp1 import engine as engine_mod
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.engine import OPEN, Delivery, Link, Session
from shardmq.amqp1.errors import ConnError, LinkError, SessionError
from shardmq.amqp1.framing import write_frame
from shardmq.amqp1.inbound import HOT_SIZE
from shardmq.amqp1.transfer import write_transfer
from shardmq.amqp1.values import UInt
from tests.amqp1.test_engine import Peer, Recorder


class Rec(Recorder):
    """Records deliveries the same way through ``on_transfer`` and ``on_message``
    (without the tag, which ``on_message`` does not get); raises what a payload asks."""

    def __init__(self, fast: bool) -> None:
        super().__init__()
        self.fast = fast
        self.engine: Any = None

    def _got(self, session: Session, link: Link, did: int, settled: bool, payload: bytes) -> None:
        self.events.append(("delivery", link.name, did, settled, payload))
        if payload[:1] == b"L":
            raise LinkError(T.AMQP_ERROR_INTERNAL_ERROR, "link")
        if payload[:1] == b"S":
            raise SessionError(T.AMQP_ERROR_INTERNAL_ERROR, "session")
        if payload[:1] == b"C":
            raise ConnError(T.AMQP_ERROR_INTERNAL_ERROR, "connection")
        if payload[:1] == b"G":  # more credit
            self.engine.grant(session, link, 3)
        if payload[:1] == b"A" and link.rcv_settle_mode == T.RECEIVER_SETTLE_MODE_SECOND:
            self.engine.settle_received(session, link, did, T.Accepted())

    def on_transfer(self, session: Session, link: Link, delivery: Delivery) -> None:
        if not self.fast:
            self.events.append(("tag", delivery.tag))
        self._got(session, link, delivery.delivery_id, delivery.settled, delivery.payload)


class FastRec(Rec):
    def on_message(
        self, session: Session, link: Link, did: int, settled: bool, payload: bytes
    ) -> None:
        self._got(session, link, did, settled, payload)


def _peer(fast: bool, window: int, credit: int, max_message: int = 40) -> Peer:
    h = FastRec(True) if fast else Rec(False)
    p = Peer(h, session_window=window, max_message_size=max_message, max_frame_size=512)
    h.engine = p.e
    p.open()
    p.begin(0)
    p.begin(1)
    p.attach("a", T.ROLE_SENDER, 0)
    p.attach("b", T.ROLE_SENDER, 1, rcv_settle_mode=T.RECEIVER_SETTLE_MODE_SECOND)
    p.attach("r", T.ROLE_RECEIVER, 2)  # the broker sends on it: transfers on it are errors
    s1 = p.e.sessions[1]
    attach_c = T.Attach(
        name="c",
        handle=UInt(0),
        role=T.ROLE_SENDER,
        source=T.Source(),
        target=T.Target(address="/queues/q"),
        initial_delivery_count=UInt(0),
    )
    p.send(attach_c, 1)
    for s in (p.e.sessions[0], s1):
        for link in s.links.values():
            if link.role:
                p.e.grant(s, link, credit)
    p.frames()
    return p


# one frame: (kind, channel, handle, delivery-id, tag, settled, payload, mutation)
frame_st = st.tuples(
    st.sampled_from(
        ["hot", "hot", "hot", "mut", "more", "first", "abort", "flow", "credit-r", "disp", "empty"]
    ),
    st.sampled_from([0, 0, 1, 2]),
    st.sampled_from([0, 0, 1, 2, 3]),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=8, max_size=8),
    st.booleans(),
    st.one_of(
        st.binary(max_size=50),
        st.sampled_from([b"x", b"G", b"A", b"L", b"S", b"C", b"G" * 41, b"x" * 60]),
    ),
    st.tuples(
        st.one_of(
            st.integers(0, HOT_SIZE - 1),
            st.sampled_from([3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 21, 22, 31, 32]),
        ),
        st.one_of(
            st.integers(0, 255),
            st.sampled_from([0x00, 0x02, 0x14, 0x40, 0x41, 0x42, 0x43, 0x52, 0x70, 0xA0, 0xC0]),
        ),
    ),
)


def _encode(frames: list[Any]) -> bytes:
    out = bytearray()
    for kind, ch, handle, did, tag, settled, payload, (at, byte) in frames:
        if kind in ("hot", "mut"):
            f = bytearray()
            write_transfer(f, ch, handle, did, tag, settled, False, payload)
            if kind == "mut":
                f[at] = byte
            out += f
        elif kind == "more":
            write_transfer(out, ch, handle, did, tag, settled, True, payload[:3])
            write_transfer(out, ch, handle, None, None, None, False, payload[3:])
        elif kind == "first":  # the rest of the delivery is whatever comes next
            write_transfer(out, ch, handle, did, tag, settled, True, payload)
        elif kind == "credit-r":  # credit on the link the broker sends on
            flow = T.Flow(
                next_incoming_id=UInt(0),
                incoming_window=UInt(100),
                next_outgoing_id=UInt(0),
                outgoing_window=UInt(100),
                handle=UInt(2),
                delivery_count=UInt(0),
                link_credit=UInt(5),
            )
            write_frame(out, ch, flow)
        elif kind == "abort":
            write_frame(
                out,
                ch,
                T.Transfer(handle=UInt(handle), delivery_id=UInt(did), delivery_tag=tag, more=True),
                payload,
            )
            write_frame(out, ch, T.Transfer(handle=UInt(handle), aborted=True))
        elif kind == "flow":
            write_frame(
                out,
                ch,
                T.Flow(
                    next_incoming_id=UInt(0),
                    incoming_window=UInt(100),
                    next_outgoing_id=UInt(did % 7),
                    outgoing_window=UInt(100),
                ),
            )
        elif kind == "disp":
            write_frame(
                out,
                ch,
                T.Disposition(
                    role=False, first=UInt(did % 5), last=UInt(did % 5 + 3), settled=True
                ),
            )
        else:
            out += b"\x00\x00\x00\x08\x02\x00\x00\x00"
    return bytes(out)


def _state(p: Peer) -> Any:
    e = p.e
    sessions = []
    for ch, s in sorted(e.sessions.items()):
        links = [
            (
                h,
                lk.name,
                lk.credit,
                lk.delivery_count,
                lk.detached,
                lk._partial,
                sorted((t, r.ids) for t, r in lk.received.items()),
            )
            for h, lk in sorted(s.links.items())
        ]
        sessions.append(
            (ch, s.ending, s.incoming_window, s.next_incoming_id, sorted(s.received_ids), links)
        )
    return e.state, e.want_close, sessions


def _run(p: Peer, data: bytes, cuts: list[int], hot: bool, monkeypatch: Any) -> Any:
    if not hot:
        monkeypatch.setattr(engine_mod, "transfers_in", lambda e, buf, pos: pos)
    try:
        last = 0
        for c in sorted(set(cuts)) + [len(data)]:
            p.e.feed(data[last:c])
            last = c
    finally:
        monkeypatch.undo()
    return p.h.events, bytes(p.e.take_output() or b""), _state(p)


@settings(max_examples=500, deadline=None)
@given(
    frames=st.lists(frame_st, max_size=25),
    cuts=st.lists(st.floats(0, 1), max_size=6),
    window=st.integers(1, 12),
    credit=st.integers(0, 6),
    fast=st.booleans(),
)
def test_hot_loop_equals_the_general_path(
    frames: list[Any], cuts: list[float], window: int, credit: int, fast: bool
) -> None:
    data = _encode(frames)
    at = [int(c * len(data)) for c in cuts]
    mp = pytest.MonkeyPatch()
    got = []
    for hot in (True, False):
        p = _peer(fast, window, credit)
        got.append(_run(p, data, at, hot, mp))
    assert got[0] == got[1]


def test_the_hot_loop_takes_one_frame_transfers() -> None:
    """Not a vacuous comparison: the common transfers do go through the loop (no
    ``Transfer`` is decoded for them) and reach ``on_message``."""
    p = _peer(True, 100, 100)
    calls = []
    real = engine_mod.Engine._frame

    def spy(self: Any, channel: int, perf: Any, payload: bytes) -> None:
        calls.append(type(perf).__name__)
        real(self, channel, perf, payload)

    mp = pytest.MonkeyPatch()
    mp.setattr(engine_mod.Engine, "_frame", spy)
    try:
        out = bytearray()
        for i in range(10):
            write_transfer(out, 0, 0, i, i.to_bytes(8, "big"), i % 2 == 0, False, b"m%d" % i)
        p.e.feed(bytes(out[:100]))  # a frame cut in two: kept for the next read
        p.e.feed(bytes(out[100:]))
    finally:
        mp.undo()
    assert calls == []
    got = [e for e in p.h.events if e[0] == "delivery"]
    assert got == [("delivery", "a", i, i % 2 == 0, b"m%d" % i) for i in range(10)]
    s = p.e.sessions[0]
    assert s.links[0].credit == 90 and s.links[0].delivery_count == 10
    assert s.next_incoming_id == 10 and p.e.state == OPEN


def test_every_single_byte_change_of_the_layout_equals_the_general_path() -> None:
    """Each byte of a hot frame's header and performative changed to values that matter
    (constructors, the layout's own bytes, extremes): the same result either way."""
    values = [0x00, 0x01, 0x02, 0x08, 0x14, 0x40, 0x41, 0x42, 0x43, 0x52, 0x53, 0x70]
    values += [0xA0, 0xC0, 0xD0, 0xFF]
    mp = pytest.MonkeyPatch()
    for at in range(HOT_SIZE):
        for byte in values:
            frames = [
                ("hot", 0, 0, 7, b"12345678", False, b"first", (0, 0)),
                ("mut", 0, 0, 8, b"abcdefgh", True, b"xyz", (at, byte)),
                ("hot", 0, 1, 9, b"ABCDEFGH", False, b"A-last", (0, 0)),
            ]
            data = _encode(frames)
            got = [_run(_peer(True, 10, 5), data, [], hot, mp) for hot in (True, False)]
            assert got[0] == got[1], (at, byte)


X = (0, 0)  # no mutation


@pytest.mark.parametrize(
    "frames",
    [
        # too large for max-message-size (40): the link is detached
        [("hot", 0, 0, 1, b"12345678", True, b"x" * 41, X), ("hot", 0, 0, 2, b"2" * 8, 1, b"y", X)],
        # the continuation of a delivery begun with more=true
        [("first", 0, 0, 1, b"12345678", False, b"abc", X), ("hot", 0, 0, 2, b"2" * 8, 1, b"d", X)],
        # on the link the broker sends on, with credit: the session ends
        [("credit-r", 0, 0, 0, b"", True, b"", X), ("hot", 0, 2, 1, b"1" * 8, True, b"z", X)],
        # no credit left (3 given), and a session window of 2 exceeded on session 1
        [("hot", 0, 0, i, b"%08d" % i, True, b"m", X) for i in range(5)]
        + [("hot", 1, 0, i, b"%08d" % i, True, b"n", X) for i in range(3)],
        # unknown handle and channel
        [("hot", 0, 3, 1, b"1" * 8, True, b"u", X), ("hot", 2, 0, 1, b"1" * 8, True, b"v", X)],
        # receiver-settle-mode second: duplicates by tag, an outcome, handler errors
        [("hot", 0, 1, i, b"dup-tag!", False, p, X) for i, p in enumerate([b"A", b"A", b"x"])]
        + [("hot", 0, 0, 9, b"9" * 8, True, p, X) for p in (b"L", b"S")],
        # the window (1) used up by a delivery begun with more=true on another link
        [("first", 1, 0, 1, b"1" * 8, True, b"f", X), ("hot", 1, 0, 2, b"2" * 8, True, b"h", X)]
        + [("first", 0, 1, 1, b"1" * 8, True, b"f", X), ("hot", 0, 0, 2, b"2" * 8, True, b"h", X)],
        # a frame above max-frame-size (512)
        [("hot", 0, 0, 1, b"1" * 8, True, b"x" * 600, X)],
    ],
)
def test_what_the_hot_loop_leaves_to_the_general_path(frames: list[Any]) -> None:
    data = _encode(frames)
    mp = pytest.MonkeyPatch()
    for window, max_message in ((2, 40), (1, 40), (2, 100_000)):
        for cut in range(0, len(data), 7):  # the ways of cutting it in two reads, roughly
            got = [
                _run(_peer(True, window, 3, max_message), data, [cut], hot, mp)
                for hot in (True, False)
            ]
            assert got[0] == got[1], (window, max_message, cut)
