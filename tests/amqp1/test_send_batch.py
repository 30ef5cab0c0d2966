"""The load generator's batched sending (``transfer.write_transfers``,
``ClientEngine.send_batch``): the same bytes and the same session and link bookkeeping
as one ``write_transfer`` / ``send_transfer`` per delivery, and what the receiving
engine makes of them."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shardmq.amqp1.client import ClientEngine
from shardmq.amqp1.engine import Link, Session
from shardmq.amqp1.transfer import write_transfer, write_transfers
from tests.amqp1.test_client import ClientRec


@given(
    channel=st.integers(0, 65535),
    handle=st.integers(0, 255),
    first_id=st.integers(0, 2**32 - 1),
    first_tag=st.integers(0, 2**64 - 1),
    settled=st.booleans(),
    payload=st.binary(max_size=300),
    n=st.integers(1, 20),
)
def test_write_transfers_writes_what_write_transfer_writes(
    channel: int,
    handle: int,
    first_id: int,
    first_tag: int,
    settled: bool,
    payload: bytes,
    n: int,
) -> None:
    first_id = min(first_id, 2**32 - n)
    first_tag = min(first_tag, 2**64 - n)
    want = bytearray()
    for i in range(n):
        tag = (first_tag + i).to_bytes(8, "big")
        write_transfer(want, channel, handle, first_id + i, tag, settled, False, payload)
    got = bytearray(b"before")
    write_transfers(got, channel, handle, first_id, first_tag, settled, payload, n)
    assert got == b"before" + want


def _engine() -> tuple[ClientEngine, Session, Link]:
    e = ClientEngine(ClientRec(), lambda: None, user="u")
    e.send_max_frame = 512
    s = Session(3, 5, 100)
    s.remote_incoming_window = 50
    s.next_delivery_id = 2**32 - 40
    s.next_outgoing_id = 7
    link = Link("l", 9, 4, False)
    link.credit = 60
    link.delivery_count = 2**32 - 3
    s.links[4] = link
    e.sessions[5] = s
    return e, s, link


def _state(e: ClientEngine, s: Session, link: Link) -> Any:
    return (
        bytes(e.out),
        s.next_delivery_id,
        s.next_outgoing_id,
        s.remote_incoming_window,
        [(lk.name, bytes(f)) for lk, f in s.out_queue],
        link.credit,
        link.delivery_count,
    )


@given(
    batches=st.lists(st.tuples(st.integers(1, 30), st.booleans()), max_size=5),
    size=st.sampled_from([0, 16, 440, 441, 600]),
    tag=st.sampled_from([0, 2**64 - 160]),
)
def test_send_batch_equals_send_transfer_one_by_one(
    batches: list[tuple[int, bool]], size: int, tag: int
) -> None:
    """Including past the peer's window (queued), past the credit (the caller's
    business, as for send_transfer), ids wrapping and frames split over max-frame."""
    payload = bytes(range(256)) * 3
    payload = payload[:size]
    a = _engine()
    b = _engine()
    for n, settled in batches:
        first = a[0].send_batch(a[1], a[2], tag, payload, n, settled)
        ids = [
            b[0].send_transfer(b[1], b[2], (tag + i).to_bytes(8, "big"), payload, settled)
            for i in range(n)
        ]
        assert first == ids[0]
        tag += n
        assert _state(*a) == _state(*b)


def test_send_batch_takes_the_one_write_path() -> None:
    e, s, link = _engine()
    s.next_delivery_id = 0
    first = e.send_batch(s, link, 0, b"x" * 16, 40, True)
    assert first == 0 and not s.out_queue
    assert len(e.out) == 40 * (33 + 16)
    assert (link.credit, s.remote_incoming_window, s.next_delivery_id) == (20, 10, 40)
