"""The hot path of AMQP 1.0 against the generic codec: transfer and disposition frames
(``shardmq.amqp1.transfer``), section slicing (``sections``) and the cached conversions
(``convert.to_091_raw`` / ``from_091_raw``) give what the generic code gives."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardmq.amqp.methods import BasicProperties
from shardmq.amqp1 import convert
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.codec import DecodeError, decode
from shardmq.amqp1.convert import from_091, from_091_raw, parse, to_091, to_091_raw
from shardmq.amqp1.framing import parse_frame, write_frame
from shardmq.amqp1.sections import split
from shardmq.amqp1.transfer import (
    pack_transfer_q,
    read_transfer,
    transfer_head,
    write_disposition,
    write_transfer,
)
from shardmq.amqp1.values import Symbol, UByte, UInt

uints = st.integers(0, 2**32 - 1)


@given(
    channel=st.integers(0, 65535),
    handle=uints,
    did=st.one_of(st.none(), uints),
    tag=st.binary(max_size=20),
    settled=st.one_of(st.none(), st.booleans()),
    more=st.booleans(),
    payload=st.binary(max_size=40),
)
def test_write_transfer_decodes_as_the_generic_transfer(
    channel: int,
    handle: int,
    did: int | None,
    tag: bytes,
    settled: bool | None,
    more: bool,
    payload: bytes,
) -> None:
    out = bytearray()
    write_transfer(
        out, channel, handle, did, tag if did is not None else None, settled, more, payload
    )
    ftype, ch, perf, got_payload, end = parse_frame(out, 0, 2**32)  # type: ignore[misc]
    assert (ftype, ch, got_payload, end) == (0, channel, payload, len(out))
    if did is None:
        want = T.Transfer(handle=UInt(handle), more=more)
    else:
        want = T.Transfer(
            handle=UInt(handle),
            delivery_id=UInt(did),
            delivery_tag=tag,
            message_format=UInt(0),
            settled=settled,
            more=more,
        )
    assert perf == want
    generic, _ = decode(out, 8)  # the generic decoder reads the same performative
    assert generic == want


@given(
    channel=st.integers(0, 65535),
    handle=st.integers(0, 255),
    did=uints,
    tag=st.integers(0, 2**64 - 1),
    settled=st.booleans(),
    payload=st.binary(max_size=40),
)
def test_pack_transfer_q_is_write_transfers_one_frame_layout(
    channel: int, handle: int, did: int, tag: int, settled: bool, payload: bytes
) -> None:
    head = transfer_head(channel, handle)
    got = pack_transfer_q(33 + len(payload), head, did, 0xA008, tag, 0x4341 if settled else 0x4342)
    got += payload
    want = bytearray()
    write_transfer(want, channel, handle, did, tag.to_bytes(8, "big"), settled, False, payload)
    assert got == want
    t, end = read_transfer(got, 11, len(got))  # type: ignore[misc]
    assert (t.handle, t.delivery_id, t.delivery_tag, t.settled, end) == (
        handle,
        did,
        tag.to_bytes(8, "big"),
        settled,
        33,
    )


def test_transfer_head_only_for_a_one_octet_handle() -> None:
    assert transfer_head(1, 256) == b""
    assert len(transfer_head(65535, 255)) == 13


@given(
    handle=uints,
    did=st.one_of(st.none(), uints),
    tag=st.one_of(st.none(), st.binary(max_size=40)),
    fmt=st.one_of(st.none(), uints),
    settled=st.one_of(st.none(), st.booleans()),
    more=st.booleans(),
    rsm=st.one_of(st.none(), st.integers(0, 1)),
    aborted=st.booleans(),
    batchable=st.booleans(),
)
def test_read_transfer_equals_the_generic_decoder(
    handle: int,
    did: int | None,
    tag: bytes | None,
    fmt: int | None,
    settled: bool | None,
    more: bool,
    rsm: int | None,
    aborted: bool,
    batchable: bool,
) -> None:
    t = T.Transfer(
        handle=UInt(handle),
        delivery_id=UInt(did) if did is not None else None,
        delivery_tag=tag,
        message_format=UInt(fmt) if fmt is not None else None,
        settled=settled,
        more=more,
        rcv_settle_mode=UByte(rsm) if rsm is not None else None,
        aborted=aborted,
        batchable=batchable,
    )
    out = bytearray()
    write_frame(out, 0, t, b"xy")
    got = read_transfer(out, 11, len(out) - 2)
    generic, end = decode(out, 8)
    assert got is not None and got[0] == generic and got[1] == end


def test_read_transfer_leaves_other_shapes_to_the_generic_decoder() -> None:
    t = T.Transfer(handle=UInt(1), delivery_id=UInt(2), state=T.Accepted())
    out = bytearray()
    write_frame(out, 0, t, b"")
    assert read_transfer(out, 11, len(out)) is None  # a delivery state
    _f, _c, perf, _p, _e = parse_frame(out, 0, 2**32)  # type: ignore[misc]
    assert perf == t
    # a list that claims more than the frame holds: the generic decoder's error
    bad = bytearray(out)
    bad[12] = 0xF0
    assert read_transfer(bad, 11, len(bad)) is None
    with pytest.raises(DecodeError):
        parse_frame(bad, 0, 2**32)


@pytest.mark.parametrize("state", [T.Accepted(), T.Released()])
@pytest.mark.parametrize(("first", "last"), [(0, 0), (5, 900), (2**32 - 1, 2**32 - 1)])
def test_write_disposition(state: object, first: int, last: int) -> None:
    from shardmq.amqp1.transfer import outcome_bytes

    for role in (True, False):
        out = bytearray()
        enc = outcome_bytes(state)
        assert enc is not None
        write_disposition(out, 3, role, first, last, True, enc)
        _f, ch, perf, _p, _e = parse_frame(out, 0, 2**32)  # type: ignore[misc]
        want = T.Disposition(
            role=role,
            first=UInt(first),
            last=UInt(last) if last != first else None,
            settled=True,
            state=state,
        )
        assert ch == 3 and perf == want


def _sections(*parts: object) -> bytes:
    out = bytearray()
    for p in parts:
        p.encode_into(out)  # type: ignore[attr-defined]
    return bytes(out)


MESSAGES = [
    _sections(T.Data(b"hello")),
    _sections(T.Header(durable=True, priority=UByte(3), ttl=UInt(5000)), T.Data(b"x" * 300)),
    _sections(
        T.Header(durable=False),
        T.DeliveryAnnotations({Symbol("x-d"): 1}),
        T.MessageAnnotations({Symbol("x-opt"): "v"}),
        T.Properties(
            message_id=uuid.UUID(int=7),
            user_id=b"guest",
            to="/queues/q",
            subject="key.1",
            reply_to="/queues/r",
            correlation_id="c",
            content_type=Symbol("text/plain"),
        ),
        T.ApplicationProperties({"k": 1, "s": "v"}),
        T.Data(b"body"),
        T.Footer({Symbol("f"): 1}),
    ),
    _sections(T.Properties(subject="s"), T.AmqpValue("text")),
    _sections(T.Data(b"a"), T.Data(b"b")),
    _sections(T.AmqpSequence([1, 2])),
    _sections(T.Properties(message_id="m")),
    b"",
]


@pytest.mark.parametrize("payload", MESSAGES)
def test_to_091_raw_equals_the_generic_conversion(payload: bytes) -> None:
    convert._in_cache.clear()
    p = parse(payload)
    props, body = to_091(p)
    for _ in range(2):  # the second time from the cache
        conv, got_body = to_091_raw(payload)
        assert got_body == body
        assert conv.props == props.encode()
        assert conv.user_id == props.user_id and conv.to == p.to
        subject = p.properties.subject if p.properties is not None else None
        assert conv.subject == subject


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x53\x75\xa0\x10abc",  # a data section longer than the payload
        b"\x00\x53\x70\xc0\x03\x01\x56\x07" + _sections(T.Data(b"x")),  # boolean octet 7
        b"\x00\x53\x99\x40",  # not a message section
        b"\x00\xa3\x02xx\x40",  # a symbolic descriptor that is no section
    ],
)
def test_to_091_raw_raises_what_parse_raises(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        parse(payload)
    convert._in_cache.clear()
    with pytest.raises(DecodeError):
        to_091_raw(payload)


@pytest.mark.parametrize(
    "props",
    [
        BasicProperties(),
        BasicProperties(delivery_mode=2, priority=4, expiration="60000", type="t"),
        BasicProperties(
            message_id="m",
            correlation_id="c",
            reply_to="r",
            headers={"h": 1, "x-h": "v", "x-message-id": "ulong:5"},
            timestamp=1700000000,
        ),
        BasicProperties(headers={"x-amqp-1.0-body": "amqp-value"}),
    ],
)
@pytest.mark.parametrize("redelivered", [False, True])
def test_from_091_raw_equals_from_091(props: BasicProperties, redelivered: bool) -> None:
    body = (
        b"\x00\x53\x77\xa1\x02hi"
        if props.headers and "x-amqp-1.0-body" in props.headers
        else b"b" * 300
    )
    exrk = b"\x02ex\x03key"
    raw = props.encode()
    convert._out_cache.clear()
    want = from_091(props, body, "ex", "key", redelivered)
    for _ in range(2):
        got = from_091_raw(raw, lambda: BasicProperties.decode(raw, 0), body, exrk, redelivered)
        assert got == want
    assert split(got) is not None


def test_split_refuses_what_does_not_fit() -> None:
    assert split(b"\x00\x53\x75\xa0\x05ab") is None
    assert split(b"\x00\x53\x75\xff") is None
    assert split(b"\x00\x53") is None
    assert split(_sections(T.Data(b"ok"))) == [(0x75, 0, 7)]
