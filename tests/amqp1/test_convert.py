"""AMQP 1.0 <-> 0-9-1 message conversion and the address scheme, without a broker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardmq.amqp.methods import BasicProperties
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.address import Source, Target, reply_to_name, source_of, target_of
from shardmq.amqp1.codec import DecodeError, decode_all
from shardmq.amqp1.convert import BODY_HEADER, from_091, parse, to_091
from shardmq.amqp1.errors import LinkError
from shardmq.amqp1.values import Symbol, Timestamp, UByte, UInt, ULong


def sections(*parts: Any) -> bytes:
    return b"".join(p.to_bytes() for p in parts)


def test_full_mapping_to_091_and_back() -> None:
    payload = sections(
        T.Header(durable=True, priority=UByte(4), ttl=UInt(5000)),
        T.DeliveryAnnotations({Symbol("x-da"): 1}),
        T.MessageAnnotations({Symbol("x-opt-a"): "va", Symbol("not-x"): 2}),
        T.Properties(
            message_id="id1",
            user_id=b"guest",
            to="/queues/q",
            subject="subj",
            reply_to="/queues/r%2Fx",
            correlation_id=ULong(7),
            content_type=Symbol("text/plain"),
            content_encoding=Symbol("gzip"),
            creation_time=Timestamp(1_700_000_000_123),
        ),
        T.ApplicationProperties({"k": "v", "n": 3, "b": False}),
        T.Data(b"body"),
        T.Footer({Symbol("x-f"): 1}),
    )
    parsed = parse(payload)
    assert parsed.to == "/queues/q"
    props, body = to_091(parsed)
    assert body == b"body"
    assert (props.delivery_mode, props.priority, props.expiration) == (2, 4, "5000")
    assert (props.message_id, props.user_id, props.type) == ("id1", "guest", "subj")
    assert props.reply_to == "r/x"
    assert props.correlation_id is None
    assert (props.content_type, props.content_encoding) == ("text/plain", "gzip")
    assert props.timestamp == 1_700_000_000
    assert props.headers == {
        "x-opt-a": "va",
        "x-correlation-id": "ulong:7",
        "k": "v",
        "n": 3,
        "b": False,
    }
    # and back: what 0-9-1 can hold comes back as it was sent
    back = decode_all(from_091(props, body, "", "q", True))
    header, ann, pr, app, data = back
    assert header.durable and header.priority == 4 and header.ttl == 5000
    assert header.delivery_count == 1  # redelivered
    assert ann.value[Symbol("x-opt-a")] == "va" and ann.value[Symbol("x-routing-key")] == "q"
    assert pr.message_id == "id1" and pr.correlation_id == 7 and type(pr.correlation_id) is ULong
    assert pr.reply_to == "/queues/r%2Fx" and pr.subject == "subj" and pr.user_id == b"guest"
    assert pr.creation_time == 1_700_000_000_000
    assert app.value == {"k": "v", "n": 3, "b": False}
    assert data == T.Data(b"body")


@pytest.mark.parametrize(
    "body_sections,kind",
    [
        ([T.AmqpValue("text")], "amqp-value"),
        ([T.AmqpValue({"m": [1, 2]})], "amqp-value"),
        ([T.AmqpSequence([1, "a"]), T.AmqpSequence([2])], "amqp-sequence"),
        ([T.Data(b"a"), T.Data(b"b")], "data"),
    ],
)
def test_other_bodies_survive_a_round_trip(body_sections: list[Any], kind: str) -> None:
    raw = sections(*body_sections)
    props, body = to_091(parse(raw))
    assert body == raw and props.headers == {BODY_HEADER: kind}
    back = decode_all(from_091(props, body, "", "q", False))
    assert back[-len(body_sections) :] == body_sections
    assert all(BODY_HEADER not in repr(s) for s in back)


def test_no_body_and_no_sections() -> None:
    props, body = to_091(parse(b""))
    assert body == b"" and props.delivery_mode == 1 and props.headers is None


def test_uuid_and_binary_ids_round_trip() -> None:
    u = uuid.uuid4()
    props, _ = to_091(parse(sections(T.Properties(message_id=u, correlation_id=b"\x00\xff"))))
    assert props.headers == {"x-message-id": f"urn:uuid:{u}", "x-correlation-id": "binary:00ff"}
    pr = decode_all(from_091(props, b"", "", "", False))[2]
    assert pr.message_id == u and pr.correlation_id == b"\x00\xff"


def test_not_a_section_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        parse(T.Open(container_id="x").to_bytes())
    with pytest.raises(DecodeError):
        parse(b"\x00\x53\x75\xa0\x05ab")


scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=20),
    st.binary(max_size=20),
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda k: not k.startswith("x-")),
        scalar,
        max_size=5,
    ),
    st.binary(max_size=200),
    st.sampled_from([1, 2]),
)
def test_091_to_amqp1_to_091(headers: dict[str, Any], body: bytes, mode: int) -> None:
    props = BasicProperties(
        headers=headers or None, delivery_mode=mode, message_id="m", content_type="a/b"
    )
    payload = from_091(props, body, "ex", "rk", False)
    back, back_body = to_091(parse(payload))
    assert back_body == body
    assert back.delivery_mode == mode and back.message_id == "m" and back.content_type == "a/b"
    assert (back.headers or {}) == headers


@pytest.mark.parametrize(
    "address,target",
    [
        ("/queues/q1", Target("", "q1", "q1")),
        ("/queues/a%2Fb", Target("", "a/b", "a/b")),
        ("/exchanges/ex/key", Target("ex", "key", None)),
        ("/exchanges/ex", Target("ex", None, None)),
        ("/exchanges/amq.default/q", Target("", "q", None)),
        ("/queue/q2", Target("", "q2", "q2")),
        ("/queue", Target("", None, None)),
        ("/exchange/ex/k", Target("ex", "k", None)),
        ("/exchange/ex", Target("ex", None, None)),
        ("/topic/a.b", Target("amq.topic", "a.b", None)),
        ("/amq/queue/q3", Target("", "q3", "q3")),
    ],
)
def test_target_addresses(address: str, target: Target) -> None:
    assert target_of(address) == target


@pytest.mark.parametrize("address", ["q", "", "/queues/", "/exchanges/", "/foo/bar", "/queues/a/b"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(LinkError) as err:
        target_of(address)
    assert err.value.condition == T.AMQP_ERROR_INVALID_FIELD


def test_source_addresses() -> None:
    assert source_of("/queues/a%20b") == Source("a b", "", "")
    assert source_of("/queue/q") == Source("q", "", "")
    assert source_of("/amq/queue/q") == Source("q", "", "")
    # RabbitMQ 3's exchange sources: a queue of the link's own, bound with the key
    assert source_of("/exchange/x/k") == Source(None, "x", "k")
    assert source_of("/exchange/x") == Source(None, "x", "")
    assert source_of("/exchange/x/a%2Fb") == Source(None, "x", "a/b")
    assert source_of("/topic/a.*") == Source(None, "amq.topic", "a.*")
    for bad in ("/exchange/", "/exchange/x/k/z", "/topic/", "/queue/", "q", "/queues/a/b"):
        with pytest.raises(LinkError) as err:
            source_of(bad)
        assert err.value.condition == T.AMQP_ERROR_INVALID_FIELD
    # no exchange source in RabbitMQ 4: refused with its condition and text
    with pytest.raises(LinkError) as err:
        source_of("/exchanges/x/k")
    assert err.value.condition == T.AMQP_ERROR_INVALID_FIELD
    assert err.value.description == 'Attach rejected: {unknown_destination,"/exchanges/x/k"}'
    assert reply_to_name("/queues/r") == "r" and reply_to_name("/exchanges/x/k") == "/exchanges/x/k"
