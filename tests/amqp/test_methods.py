"""Generated method table: golden bytes derived by hand from the spec, round trips of every
method, cross-checks against pika's independent codec, BasicProperties, malformed input,
and the generated file being up to date with its generator."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pika.frame
import pika.spec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardmq.amqp import gen_methods
from shardmq.amqp import methods as M
from shardmq.amqp.errors import COMMAND_INVALID, FRAME_ERROR, AMQPError, HardError

SPEC = gen_methods.load_spec()
SPEC_METHODS = {m.py_class: m for c in SPEC.classes for m in c.methods}


def shortstr(s: bytes) -> bytes:
    return bytes([len(s)]) + s


# --------------------------------------------------------------------------- golden bytes

GOLDEN: list[tuple[M.Method, bytes]] = [
    (
        M.BasicPublish(exchange="amq.direct", routing_key="rk", mandatory=True),
        b"\x00\x3c\x00\x28" + b"\x00\x00" + b"\x0aamq.direct" + b"\x02rk" + b"\x01",
    ),
    (
        M.BasicPublish(exchange="", routing_key="q", immediate=True),
        b"\x00\x3c\x00\x28\x00\x00\x00\x01q\x02",
    ),
    (
        M.BasicDeliver(
            consumer_tag="ctag", delivery_tag=7, redelivered=True, exchange="", routing_key="q1"
        ),
        b"\x00\x3c\x00\x3c" + b"\x04ctag" + b"\x00\x00\x00\x00\x00\x00\x00\x07" + b"\x01"
        b"\x00" + b"\x02q1",
    ),
    (
        M.BasicAck(delivery_tag=2**40 + 5, multiple=True),
        b"\x00\x3c\x00\x50" + b"\x00\x00\x01\x00\x00\x00\x00\x05" + b"\x01",
    ),
    (M.BasicAck(delivery_tag=1), b"\x00\x3c\x00\x50\x00\x00\x00\x00\x00\x00\x00\x01\x00"),
    (
        M.BasicNack(delivery_tag=3, multiple=False, requeue=True),
        b"\x00\x3c\x00\x78\x00\x00\x00\x00\x00\x00\x00\x03\x02",
    ),
    (
        M.BasicNack(delivery_tag=3, multiple=True, requeue=True),
        b"\x00\x3c\x00\x78\x00\x00\x00\x00\x00\x00\x00\x03\x03",
    ),
    (
        M.BasicReject(delivery_tag=9, requeue=True),
        b"\x00\x3c\x00\x5a\x00\x00\x00\x00\x00\x00\x00\x09\x01",
    ),
    (
        M.BasicQos(prefetch_size=0, prefetch_count=10, global_=True),
        b"\x00\x3c\x00\x0a\x00\x00\x00\x00\x00\x0a\x01",
    ),
    (
        M.ConnectionTune(channel_max=2047, frame_max=131072, heartbeat=60),
        b"\x00\x0a\x00\x1e\x07\xff\x00\x02\x00\x00\x00\x3c",
    ),
    (
        M.ConnectionOpen(virtual_host="/"),
        b"\x00\x0a\x00\x28\x01/\x00\x00",
    ),
    (
        M.ConnectionClose(reply_code=320, reply_text="bye", class_id=60, method_id=40),
        b"\x00\x0a\x00\x32\x01\x40\x03bye\x00\x3c\x00\x28",
    ),
    (
        M.ConnectionStartOk(
            client_properties={"product": "x"},
            mechanism="PLAIN",
            response=b"\x00guest\x00guest",
            locale="en_US",
        ),
        b"\x00\x0a\x00\x0b"
        + b"\x00\x00\x00\x0e\x07productS\x00\x00\x00\x01x"
        + b"\x05PLAIN"
        + b"\x00\x00\x00\x0c\x00guest\x00guest"
        + b"\x05en_US",
    ),
    (
        M.QueueDeclare(queue="q", durable=True, auto_delete=True, arguments={"x-max-length": 10}),
        b"\x00\x32\x00\x0a\x00\x00\x01q\x0a" + b"\x00\x00\x00\x12\x0cx-max-lengthI\x00\x00\x00\x0a",
    ),
    (
        M.QueueDeclare(queue="", passive=True, exclusive=True, no_wait=True),
        b"\x00\x32\x00\x0a\x00\x00\x00\x15\x00\x00\x00\x00",
    ),
    (
        M.QueueDeclareOk(queue="q", message_count=3, consumer_count=1),
        b"\x00\x32\x00\x0b\x01q\x00\x00\x00\x03\x00\x00\x00\x01",
    ),
    (
        M.ExchangeDeclare(exchange="e", type="topic", durable=True, internal=True),
        b"\x00\x28\x00\x0a\x00\x00\x01e\x05topic\x0a\x00\x00\x00\x00",
    ),
    (
        M.ExchangeBind(destination="d", source="s", routing_key="#", no_wait=True),
        b"\x00\x28\x00\x1e\x00\x00\x01d\x01s\x01#\x01\x00\x00\x00\x00",
    ),
    (M.ChannelOpenOk(), b"\x00\x14\x00\x0b\x00\x00\x00\x00"),
    (M.ChannelFlow(active=True), b"\x00\x14\x00\x14\x01"),
    (M.TxSelect(), b"\x00\x5a\x00\x0a"),
    (M.ConfirmSelect(nowait=True), b"\x00\x55\x00\x0a\x01"),
    (M.ConfirmSelectOk(), b"\x00\x55\x00\x0b"),
    (M.ConnectionBlocked(reason="low on memory"), b"\x00\x0a\x00\x3c\x0dlow on memory"),
    (M.AccessRequestOk(ticket=1), b"\x00\x1e\x00\x0b\x00\x01"),
]


@pytest.mark.parametrize(("method", "raw"), GOLDEN, ids=lambda v: type(v).__name__)
def test_golden_encode(method: M.Method, raw: bytes) -> None:
    assert method.encode() == raw


@pytest.mark.parametrize(("method", "raw"), GOLDEN, ids=lambda v: type(v).__name__)
def test_golden_decode(method: M.Method, raw: bytes) -> None:
    for buf in (raw, bytearray(raw), memoryview(raw)):
        decoded = M.decode_method(buf)
        assert type(decoded) is type(method)
        assert decoded == method
    # class decode with an offset into a larger buffer, also through a memoryview
    padded = b"\xff" * 3 + raw + b"\xff"
    assert type(method).decode(padded, 7) == method
    assert type(method).decode(memoryview(padded), 7) == method
    assert type(method).decode(bytearray(padded), 7) == method


def pika_encode(method: M.Method) -> bytes:
    """Encode ``method`` with pika, an independent implementation. pika's constructors
    take the same fields in the same order (it names reserved ones ticket, nowait...)."""
    pika_cls = pika.spec.methods[method.INDEX]
    pm = pika_cls(*(getattr(method, name) for name in method.FIELDS))
    return struct.pack("!I", pm.INDEX) + b"".join(pm.encode())


@pytest.mark.parametrize(("method", "raw"), GOLDEN, ids=lambda v: type(v).__name__)
def test_golden_matches_pika(method: M.Method, raw: bytes) -> None:
    assert pika_encode(method) == raw


def test_decoded_types() -> None:
    m = M.decode_method(GOLDEN[12][1])  # ConnectionStartOk
    assert isinstance(m, M.ConnectionStartOk)
    assert isinstance(m.mechanism, str)
    assert type(m.response) is bytes
    assert m.client_properties == {"product": "x"}
    d = M.decode_method(M.QueueDeclare().encode())
    assert isinstance(d, M.QueueDeclare)
    assert d.arguments == {}  # None encodes as the empty table, which decodes to {}
    assert d.passive is False and d.durable is False


def test_ignores_trailing_bytes() -> None:
    raw = M.BasicAck(delivery_tag=4).encode() + b"extra"
    assert M.decode_method(raw) == M.BasicAck(delivery_tag=4)


def test_longstr_accepts_str() -> None:
    assert M.ConnectionSecureOk(response="abc").encode() == b"\x00\x0a\x00\x15\x00\x00\x00\x03abc"


def test_shortstr_too_long_raises_value_error() -> None:
    M.BasicPublish(routing_key="r" * 255).encode()
    with pytest.raises(ValueError):
        M.BasicPublish(routing_key="r" * 256).encode()
    with pytest.raises(ValueError):
        M.BasicPublish(exchange="\u00e9" * 128).encode()  # 256 bytes in UTF-8


# --------------------------------------------------------------------------- metadata


def test_every_spec_method_has_a_class() -> None:
    assert len(M.METHODS) == len(SPEC_METHODS) == 66
    for name, spec in SPEC_METHODS.items():
        cls = getattr(M, name)
        assert issubclass(cls, M.Method)
        assert M.METHODS[cls.INDEX] is cls
        assert cls.INDEX == spec.class_id << 16 | spec.method_id
        assert (cls.CLASS_ID, cls.METHOD_ID) == (spec.class_id, spec.method_id)
        assert cls.NAME == spec.full_name
        assert cls.SYNCHRONOUS is spec.synchronous
        assert cls.HAS_CONTENT is spec.content
        assert cls.FIELDS == tuple(f.attr for f in spec.fields) == cls.__slots__


def test_method_table_matches_pika() -> None:
    """Every method pika knows (RabbitMQ's codegen) exists here with the same index/name."""
    assert set(M.METHODS) == set(pika.spec.methods)
    for index, cls in M.METHODS.items():
        theirs = pika.spec.methods[index]
        assert cls.NAME.replace("-", "").lower() == theirs.NAME.replace("-", "").lower()


def test_metadata_examples() -> None:
    assert M.BasicPublish.INDEX == 0x003C0028
    assert M.BasicPublish.NAME == "basic.publish"
    assert M.BasicPublish.HAS_CONTENT and not M.BasicPublish.SYNCHRONOUS
    assert M.BasicGetOk.HAS_CONTENT and M.BasicGetOk.SYNCHRONOUS
    assert M.BasicGet.RESPONSES == (M.BasicGetOk.INDEX, M.BasicGetEmpty.INDEX)
    assert M.QueueDeclare.RESPONSES == (M.QueueDeclareOk.INDEX,)
    assert M.BasicAck.RESPONSES == ()
    assert M.BasicQos.FIELDS == ("prefetch_size", "prefetch_count", "global_")
    assert M.ExchangeDeclare.FIELDS[2] == "type"
    assert M.ConfirmSelect.FIELDS == ("nowait",)
    assert M.TxCommit.FIELDS == ()
    assert M.QueueDeclare.__slots__ == M.QueueDeclare.FIELDS
    with pytest.raises(AttributeError):
        M.BasicAck().bogus = 1  # type: ignore[attr-defined]


def test_constants() -> None:
    assert (M.FRAME_METHOD, M.FRAME_HEADER, M.FRAME_BODY, M.FRAME_HEARTBEAT) == (1, 2, 3, 8)
    assert (M.FRAME_END, M.FRAME_MIN_SIZE) == (206, 4096)
    assert M.PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"
    assert M.REPLY_SUCCESS == 200
    assert (M.NOT_FOUND, M.NO_ROUTE, M.COMMAND_INVALID) == (404, 312, 503)
    assert M.SOFT_ERRORS == {311, 312, 313, 403, 404, 405, 406}
    assert M.HARD_ERRORS == {320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541}
    assert M.ERROR_CLASSES[404] == "soft-error"
    assert M.ERROR_CLASSES[501] == "hard-error"
    assert (M.CLASS_BASIC, M.CLASS_CONFIRM, M.CLASS_ACCESS) == (60, 85, 30)


def test_equality_and_repr() -> None:
    a = M.QueueBind(queue="q", exchange="e", routing_key="k")
    assert a == M.QueueBind(queue="q", exchange="e", routing_key="k", arguments={})
    assert a != M.QueueBind(queue="q", exchange="e", routing_key="other")
    assert a != M.QueueUnbind(queue="q", exchange="e", routing_key="k")
    assert repr(M.BasicAck(delivery_tag=1)) == "BasicAck(delivery_tag=1, multiple=False)"


# --------------------------------------------------------------------------- round trips

PRIMITIVE_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "octet": st.integers(0, 2**8 - 1),
    "short": st.integers(0, 2**16 - 1),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**64 - 1),
    "timestamp": st.integers(0, 2**64 - 1),
    "shortstr": st.text(max_size=100).filter(lambda s: len(s.encode()) <= 255),
    "longstr": st.binary(max_size=300),
    "table": st.dictionaries(
        st.text(max_size=10),
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=10), st.booleans()),
        max_size=4,
    ),
    "bit": st.booleans(),
}


def method_values(spec: gen_methods.MethodSpec) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f.attr: PRIMITIVE_STRATEGIES[f.type] for f in spec.fields})


@pytest.mark.parametrize("name", sorted(SPEC_METHODS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_method(name: str, data: st.DataObject) -> None:
    spec = SPEC_METHODS[name]
    cls = getattr(M, name)
    values = data.draw(method_values(spec))
    method = cls(**values)
    raw = method.encode()
    assert raw[:4] == struct.pack("!HH", cls.CLASS_ID, cls.METHOD_ID)
    decoded = M.decode_method(memoryview(raw))
    assert type(decoded) is cls
    for attr, value in values.items():
        assert getattr(decoded, attr) == value, attr
    assert decoded == method
    assert decoded.encode() == raw


@pytest.mark.parametrize("name", sorted(SPEC_METHODS))
def test_every_method_non_default_values_match_pika(name: str) -> None:
    """Every field set to a non-default value: pika must produce the same bytes."""
    spec = SPEC_METHODS[name]
    cls = getattr(M, name)
    sample = {
        "octet": 201,
        "short": 0xBEEF,
        "long": 0xDEADBEEF,
        "longlong": 0x0102030405060708,
        "timestamp": 1_700_000_000,
        "shortstr": "s\u00e9",
        "longstr": b"\x00long\xff",
        "table": {"k": "v", "n": 7},
        "bit": True,
    }
    method = cls(**{f.attr: sample[f.type] for f in spec.fields})
    raw = method.encode()
    assert raw == pika_encode(method)
    assert M.decode_method(raw) == method


# --------------------------------------------------------------------------- malformed input


def test_payload_shorter_than_ids_is_frame_error() -> None:
    for raw in (b"", b"\x00", b"\x00\x3c\x00"):
        with pytest.raises(HardError) as info:
            M.decode_method(raw)
        assert info.value.reply_code == FRAME_ERROR


def test_unknown_method_is_command_invalid() -> None:
    with pytest.raises(HardError) as info:
        M.decode_method(b"\x00\x3c\x00\x63rest")
    err = info.value
    assert err.reply_code == COMMAND_INVALID
    assert (err.class_id, err.method_id) == (60, 99)
    assert err.text == "unknown method class_id=60 method_id=99"
    with pytest.raises(HardError) as info:
        M.decode_method(b"\x01\x00\x00\x0a")
    assert info.value.reply_code == COMMAND_INVALID


@pytest.mark.parametrize(("method", "raw"), GOLDEN, ids=lambda v: type(v).__name__)
def test_every_truncation_is_frame_error_with_ids(method: M.Method, raw: bytes) -> None:
    for cut in range(4, len(raw)):
        with pytest.raises(HardError) as info:
            M.decode_method(raw[:cut])
        err = info.value
        assert err.reply_code == FRAME_ERROR, cut
        assert (err.class_id, err.method_id) == (method.CLASS_ID, method.METHOD_ID)


def test_invalid_utf8_shortstr_is_frame_error() -> None:
    raw = b"\x00\x3c\x00\x28\x00\x00\x02\xff\xfe\x00\x00"
    with pytest.raises(HardError) as info:
        M.decode_method(raw)
    assert info.value.reply_code == FRAME_ERROR
    assert (info.value.class_id, info.value.method_id) == (60, 40)


def test_bad_table_in_method_carries_method_ids() -> None:
    raw = M.QueueDeclare(queue="q").encode()[:-4] + b"\x00\x00\x00\x03\x01kZ"
    with pytest.raises(HardError) as info:
        M.decode_method(raw)
    assert info.value.reply_code == FRAME_ERROR
    assert (info.value.class_id, info.value.method_id) == (50, 10)


KNOWN_IDS = st.sampled_from(sorted(M.METHODS)).map(lambda i: struct.pack("!I", i))


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.binary(max_size=40), st.tuples(KNOWN_IDS, st.binary(max_size=60)).map(b"".join))
)
def test_fuzz_decode_method_only_amqp_errors(payload: bytes) -> None:
    for buf in (payload, memoryview(payload)):
        try:
            decoded = M.decode_method(buf)
        except AMQPError as exc:
            assert exc.reply_code in (FRAME_ERROR, COMMAND_INVALID)
        else:
            assert isinstance(decoded, M.Method)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([raw for _, raw in GOLDEN if len(raw) > 4]), st.data())
def test_fuzz_mutated_golden_only_amqp_errors(raw: bytes, data: st.DataObject) -> None:
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(4, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    try:
        M.decode_method(bytes(buf))
    except AMQPError as exc:
        assert exc.reply_code == FRAME_ERROR


# --------------------------------------------------------------------------- BasicProperties

ALL_PROPS = M.BasicProperties(
    content_type="application/json",
    content_encoding="gzip",
    headers={"h": 1},
    delivery_mode=2,
    priority=9,
    correlation_id="cid",
    reply_to="amq.rabbitmq.reply-to",
    expiration="60000",
    message_id="mid",
    timestamp=1_700_000_000,
    type="t",
    user_id="guest",
    app_id="app",
    cluster_id="c",
)


def test_properties_golden_bytes() -> None:
    props = M.BasicProperties(content_type="text/plain", headers={"a": 1}, delivery_mode=2)
    raw = b"\xb0\x00" + b"\x0atext/plain" + b"\x00\x00\x00\x07\x01aI\x00\x00\x00\x01" + b"\x02"
    assert props.encode() == raw
    assert M.BasicProperties.decode(raw) == props
    assert M.BasicProperties().encode() == b"\x00\x00"
    assert M.BasicProperties(timestamp=5).encode() == b"\x00\x40" + b"\x00" * 7 + b"\x05"
    assert M.BasicProperties(cluster_id="").encode() == b"\x00\x04\x00"
    assert M.BasicProperties(priority=0).encode() == b"\x08\x00\x00"


def test_properties_flags_table() -> None:
    assert M.BasicProperties.FLAGS["content_type"] == 0x8000
    assert M.BasicProperties.FLAGS["delivery_mode"] == 0x1000
    assert M.BasicProperties.FLAGS["cluster_id"] == 0x0004
    assert list(M.BasicProperties.FLAGS) == list(M.BasicProperties.FIELDS)


def test_properties_all_fields_match_pika() -> None:
    raw = ALL_PROPS.encode()
    theirs = pika.spec.BasicProperties(
        **{name: getattr(ALL_PROPS, name) for name in M.BasicProperties.FIELDS}
    )
    assert raw == b"".join(theirs.encode())
    decoded = M.BasicProperties.decode(raw)
    assert decoded == ALL_PROPS
    assert decoded.headers == {"h": 1}


def test_properties_decode_at_offset_of_content_header() -> None:
    header = pika.frame.Header(1, 10, pika.spec.BasicProperties(delivery_mode=1, app_id="a"))
    frame = header.marshal()
    payload = frame[7:-1]  # class-id(2) weight(2) body-size(8), then flags
    props = M.BasicProperties.decode(memoryview(payload), 12)
    assert props == M.BasicProperties(delivery_mode=1, app_id="a")
    assert props.content_type is None


def test_properties_flag_continuation_words_are_skipped() -> None:
    # bit 0 set in the first word: another flags word follows (its flags are ignored)
    raw = b"\x10\x01" + b"\x00\x01" + b"\x80\x00" + b"\x02"
    assert M.BasicProperties.decode(raw) == M.BasicProperties(delivery_mode=2)


def test_properties_repr_and_eq() -> None:
    assert repr(M.BasicProperties(priority=1)) == "BasicProperties(priority=1)"
    assert M.BasicProperties(priority=1) != M.BasicProperties(priority=2)
    assert M.BasicProperties() == M.BasicProperties()


def test_properties_errors() -> None:
    raw = ALL_PROPS.encode()
    for cut in range(len(raw)):
        with pytest.raises(HardError) as info:
            M.BasicProperties.decode(raw[:cut])
        assert info.value.reply_code == FRAME_ERROR
    with pytest.raises(HardError):
        M.BasicProperties.decode(b"\x80\x00\x01\xff")  # invalid UTF-8 content-type
    with pytest.raises(ValueError):
        M.BasicProperties(message_id="m" * 256).encode()


opt = st.none().__or__
PROPERTY_STRATEGIES = {
    "shortstr": st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255),
    "octet": st.integers(0, 255),
    "timestamp": st.integers(0, 2**64 - 1),
    "table": PRIMITIVE_STRATEGIES["table"],
}
PROPS_SPEC = next(c for c in SPEC.classes if c.name == "basic").properties


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({p.attr: opt(PROPERTY_STRATEGIES[p.type]) for p in PROPS_SPEC}))
def test_properties_round_trip(values: dict[str, Any]) -> None:
    props = M.BasicProperties(**values)
    raw = props.encode()
    decoded = M.BasicProperties.decode(bytearray(b"x" + raw), 1)
    for name, value in values.items():
        assert getattr(decoded, name) == value, name
    assert decoded.encode() == raw


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=60), st.integers(0, 4))
def test_fuzz_properties_only_amqp_errors(data: bytes, offset: int) -> None:
    for buf in (data, memoryview(data)):
        try:
            M.BasicProperties.decode(buf, offset)
        except AMQPError as exc:
            assert exc.reply_code == FRAME_ERROR


# --------------------------------------------------------------------------- generator


def test_generated_file_is_up_to_date() -> None:
    assert gen_methods.main(["--check"]) == 0
    expected = gen_methods.generate(gen_methods.load_spec())
    assert Path(M.__file__).read_text(encoding="utf-8") == expected
    assert "do not edit" in expected[:400]


def test_gen_methods_check_command_line() -> None:
    root = Path(gen_methods.__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "shardmq.amqp.gen_methods", "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_check_detects_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "methods.py"
    stale.write_text("# stale\n", encoding="utf-8")
    assert gen_methods.main(["--check", "--out", str(stale)]) == 1
    assert gen_methods.main(["--out", str(stale)]) == 0
    assert gen_methods.main(["--check", "--out", str(stale)]) == 0


def test_generated_decoders_are_straight_line() -> None:
    """No interpreter loop at runtime: each decode/encode is its own code object, and
    fixed fields share one precompiled Struct (e.g. delivery-tag + bits + length)."""
    source = Path(M.__file__).read_text(encoding="utf-8")
    deliver = source[source.index("class BasicDeliver(") : source.index("class BasicGet(")]
    assert "_S_QBB.unpack_from(buf, o)" in deliver
    assert "for " not in deliver
    assert M.BasicAck.decode.__func__.__code__ is not M.BasicNack.decode.__func__.__code__


def test_constants_are_one_source() -> None:
    """Frame types and reply codes come from the generated constants module only: the
    codec, the errors and the method table all hold the very same values."""
    from shardmq.amqp import codec, constants, errors

    assert codec.FRAME_METHOD is constants.FRAME_METHOD and M.FRAME_END == codec.FRAME_END
    assert codec.PROTOCOL_HEADER is constants.PROTOCOL_HEADER
    assert errors.NOT_FOUND is constants.NOT_FOUND == M.NOT_FOUND == 404
    assert errors.reply_name(312) == "NO_ROUTE" and errors.reply_name(999) == "999"
    assert set(constants.REPLY_NAMES) == set(constants.ERROR_CLASSES)
    assert constants.CLASS_IDS == {10, 20, 30, 40, 50, 60, 85, 90}
