"""Field table codec: golden bytes per type tag, encode type mapping, round trips, and
malformed input (only HardError/FRAME_ERROR may escape the decoders)."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pika.data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardmq.amqp.errors import FRAME_ERROR, AMQPError, HardError
from shardmq.amqp.fieldtable import (
    EMPTY_TABLE,
    MAX_DEPTH,
    ByteArray,
    Timestamp,
    decode_array,
    decode_table,
    decode_value,
    encode_array,
    encode_table,
    encode_value,
)


def table_of(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


# --------------------------------------------------------------------------- golden values

GOLDEN_VALUES: list[tuple[bytes, Any]] = [
    (b"t\x01", True),
    (b"t\x00", False),
    (b"b\xfe", -2),
    (b"B\xfe", 254),
    (b"s\xff\xfe", -2),  # RabbitMQ: 's' is a signed 16-bit int, not a shortstr
    (b"u\xff\xfe", 65534),
    (b"I\xff\xff\xff\xfe", -2),
    (b"i\xff\xff\xff\xfe", 4294967294),
    (b"l\xff\xff\xff\xff\xff\xff\xff\xfe", -2),
    # RabbitMQ reads 'L' as signed (it refuses x-message-ttl L 0xff..fe as value_negative -2)
    (b"L\xff\xff\xff\xff\xff\xff\xff\xfe", -2),
    (b"f\x3f\xc0\x00\x00", 1.5),
    (b"d\x3f\xf8\x00\x00\x00\x00\x00\x00", 1.5),
    (b"D\x02\x00\x00\x01\x3b", Decimal("3.15")),
    (b"D\x01\xff\xff\xff\xf1", Decimal("-1.5")),
    (b"S\x00\x00\x00\x03abc", "abc"),
    (b"S\x00\x00\x00\x02\xc3\xa9", "\u00e9"),
    (b"S\x00\x00\x00\x02\xff\xfe", b"\xff\xfe"),  # not UTF-8: stays bytes
    (b"x\x00\x00\x00\x02\x00\x01", ByteArray(b"\x00\x01")),
    (b"T\x00\x00\x00\x00\x5e\x0b\xe1\x00", Timestamp(1577836800)),
    (b"V", None),
    (b"A\x00\x00\x00\x08I\x00\x00\x00\x01Vt\x01", [1, None, True]),
    (b"F\x00\x00\x00\x07\x01kI\x00\x00\x00\x05", {"k": 5}),
]


@pytest.mark.parametrize(("raw", "expected"), GOLDEN_VALUES, ids=lambda v: repr(v)[:20])
def test_decode_golden_value(raw: bytes, expected: Any) -> None:
    value, end = decode_value(raw, 0)
    assert end == len(raw)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("raw", "expected"), GOLDEN_VALUES, ids=lambda v: repr(v)[:20])
def test_decode_golden_value_inside_table(raw: bytes, expected: Any) -> None:
    buf = b"junk" + table_of(b"\x03key" + raw) + b"tail"
    table, end = decode_table(buf, 4)
    assert table == {"key": expected}
    assert end == len(buf) - 4


def test_decode_float32_value() -> None:
    value, _ = decode_value(b"f" + struct.pack("!f", 0.1))
    assert value == pytest.approx(0.1)
    assert isinstance(value, float)


def test_decode_nan_double() -> None:
    value, _ = decode_value(b"d" + struct.pack("!d", math.nan))
    assert math.isnan(value)


# --------------------------------------------------------------------------- encoding types


@pytest.mark.parametrize(
    ("value", "raw"),
    [
        (True, b"t\x01"),
        (False, b"t\x00"),
        (0, b"I\x00\x00\x00\x00"),
        (-(2**31), b"I\x80\x00\x00\x00"),
        (2**31 - 1, b"I\x7f\xff\xff\xff"),
        (2**31, b"l\x00\x00\x00\x00\x80\x00\x00\x00"),
        (-(2**31) - 1, b"l\xff\xff\xff\xff\x7f\xff\xff\xff"),
        (2**63 - 1, b"l\x7f\xff\xff\xff\xff\xff\xff\xff"),
        (1.5, b"d\x3f\xf8\x00\x00\x00\x00\x00\x00"),
        (Decimal("3.15"), b"D\x02\x00\x00\x01\x3b"),
        (Decimal("-1.5"), b"D\x01\xff\xff\xff\xf1"),
        (Decimal("1E+2"), b"D\x00\x00\x00\x00\x64"),
        ("abc", b"S\x00\x00\x00\x03abc"),
        ("\u00e9", b"S\x00\x00\x00\x02\xc3\xa9"),
        (b"ab", b"S\x00\x00\x00\x02ab"),
        (ByteArray(b"ab"), b"x\x00\x00\x00\x02ab"),
        ([], b"A\x00\x00\x00\x00"),
        ([1, "a"], b"A\x00\x00\x00\x0bI\x00\x00\x00\x01S\x00\x00\x00\x01a"),
        ((True,), b"A\x00\x00\x00\x02t\x01"),
        ({}, b"F\x00\x00\x00\x00"),
        ({"a": None}, b"F\x00\x00\x00\x03\x01aV"),
        (Timestamp(5), b"T\x00\x00\x00\x00\x00\x00\x00\x05"),
        (datetime(2020, 1, 1, tzinfo=UTC), b"T\x00\x00\x00\x00\x5e\x0b\xe1\x00"),
        (datetime(2020, 1, 1), b"T\x00\x00\x00\x00\x5e\x0b\xe1\x00"),  # naive = UTC
        (None, b"V"),
    ],
    ids=lambda v: repr(v)[:24],
)
def test_encode_value_type_mapping(value: Any, raw: bytes) -> None:
    assert encode_value(value) == raw


def test_encode_subclasses_use_base_type() -> None:
    import enum
    from collections import OrderedDict

    class Color(enum.IntEnum):
        RED = 7

    assert encode_value(Color.RED) == b"I\x00\x00\x00\x07"
    assert encode_value(OrderedDict(a=1)) == b"F\x00\x00\x00\x07\x01aI\x00\x00\x00\x01"
    assert encode_value(bytearray(b"z")) == b"S\x00\x00\x00\x01z"


def test_encode_table_golden() -> None:
    raw = encode_table({"x-max-length": 10, "x-queue-type": "classic"})
    body = b"\x0cx-max-lengthI\x00\x00\x00\x0a\x0cx-queue-typeS\x00\x00\x00\x07classic"
    assert raw == table_of(body)


def test_encode_empty_and_none_table() -> None:
    assert encode_table(None) == EMPTY_TABLE == b"\x00\x00\x00\x00"
    assert encode_table({}) == EMPTY_TABLE
    assert decode_table(EMPTY_TABLE, 0) == ({}, 4)


def test_encode_array_golden() -> None:
    assert encode_array([]) == b"\x00\x00\x00\x00"
    assert encode_array(["a", 1]) == b"\x00\x00\x00\x0bS\x00\x00\x00\x01aI\x00\x00\x00\x01"
    assert decode_array(encode_array(["a", 1]), 0) == (["a", 1], 15)


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (2**63, ValueError),
        (-(2**63) - 1, ValueError),
        (Decimal("NaN"), ValueError),
        (Decimal("Infinity"), ValueError),
        (Decimal("1E-256"), ValueError),  # scale does not fit an octet
        (Decimal("12345678901"), ValueError),  # does not fit int32
        (Timestamp(-1), ValueError),
        (object(), TypeError),
        ({1, 2}, TypeError),
    ],
    ids=lambda v: repr(v)[:24],
)
def test_encode_value_errors(value: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        encode_value(value)


def test_encode_table_key_too_long() -> None:
    with pytest.raises(ValueError):
        encode_table({"k" * 256: 1})
    # 255 bytes is fine
    table, _ = decode_table(encode_table({"k" * 255: 1}), 0)
    assert table == {"k" * 255: 1}


def test_compatible_with_pika_for_common_types() -> None:
    table = {
        "s": "text",
        "i": 42,
        "big": 2**40,
        "neg": -7,
        "b": True,
        "nested": {"a": [1, "two", False, None]},
        "ts": datetime(2021, 5, 6, 7, 8, 9),
        "dec": Decimal("12.5"),
    }
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, table)
    theirs = b"".join(pieces)
    assert encode_table(table) == theirs
    decoded, _ = decode_table(theirs, 0)
    assert decoded["nested"] == {"a": [1, "two", False, None]}
    assert decoded["ts"] == Timestamp(1620284889)
    assert decoded["dec"] == Decimal("12.5")


# --------------------------------------------------------------------------- round trips

leaf_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.binary(max_size=30).map(ByteArray),
    st.integers(min_value=0, max_value=2**64 - 1).map(Timestamp),
    st.decimals(
        allow_nan=False, allow_infinity=False, places=3, min_value=-100000, max_value=100000
    ),
    st.none(),
)
keys = st.text(max_size=20).filter(lambda k: len(k.encode()) <= 255)
values = st.recursive(
    leaf_values,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=20,
)
tables = st.dictionaries(keys, values, max_size=8)


@settings(max_examples=150, deadline=None)
@given(tables)
def test_table_round_trip(table: dict[str, Any]) -> None:
    raw = encode_table(table)
    for buf in (raw, bytearray(raw), memoryview(raw)):
        decoded, end = decode_table(buf, 0)
        assert end == len(raw)
        assert decoded == table
    # with an offset and trailing bytes
    padded = b"pre" + raw + b"post"
    for buf in (padded, memoryview(padded), bytearray(padded)):
        decoded, end = decode_table(buf, 3)
        assert (decoded, end) == (table, 3 + len(raw))


@settings(max_examples=100, deadline=None)
@given(st.lists(values, max_size=6))
def test_array_round_trip(items: list[Any]) -> None:
    raw = encode_array(items)
    assert decode_array(memoryview(raw), 0) == (items, len(raw))


def test_round_trip_preserves_special_types() -> None:
    table = {"x": ByteArray(b"\x00"), "t": Timestamp(9), "d": Decimal("0.001"), "v": None}
    decoded, _ = decode_table(encode_table(table), 0)
    assert type(decoded["x"]) is ByteArray
    assert type(decoded["t"]) is Timestamp
    assert decoded == table


def test_bytes_value_decodes_as_str_when_utf8() -> None:
    # documented asymmetry: bytes and str are both 'S' on the wire
    decoded, _ = decode_table(encode_table({"a": b"hi", "b": b"\xff"}), 0)
    assert decoded == {"a": "hi", "b": b"\xff"}


# --------------------------------------------------------------------------- malformed input


def assert_frame_error(fn: Any, *args: Any) -> HardError:
    with pytest.raises(HardError) as info:
        fn(*args)
    assert info.value.reply_code == FRAME_ERROR
    return info.value


def test_unknown_type_tag() -> None:
    err = assert_frame_error(decode_table, table_of(b"\x01kZ"), 0)
    assert "'Z'" in err.text
    assert_frame_error(decode_value, b"\x00", 0)
    assert_frame_error(decode_array, b"\x00\x00\x00\x01U", 0)  # 'U' is not a RabbitMQ tag


def test_every_truncation_of_a_table_is_a_frame_error() -> None:
    raw = encode_table(
        {"a": "text", "b": [1, 2.5, {"c": ByteArray(b"zz")}], "d": Decimal("1.5"), "e": None}
    )
    for cut in range(len(raw)):
        assert_frame_error(decode_table, raw[:cut], 0)
        assert_frame_error(decode_table, memoryview(raw)[:cut], 0)


def test_memoryview_value_and_array_at_offset() -> None:
    raw = b"..." + encode_value([1, "x"]) + b"!"
    assert decode_value(memoryview(raw), 3) == ([1, "x"], len(raw) - 1)
    arr = b".." + encode_array(["y"])
    assert decode_array(memoryview(arr), 2) == (["y"], len(arr))


def test_value_overrunning_its_table_is_a_frame_error() -> None:
    # table says 6 bytes, but the int value needs 1+1+1+4 = 7; the buffer has them.
    raw = b"\x00\x00\x00\x06\x01kI\x00\x00\x00\x05" + b"\x00" * 8
    assert_frame_error(decode_table, raw, 0)
    # string inside an array longer than the array
    raw = b"\x00\x00\x00\x06S\x00\x00\x00\x05abcde"
    assert_frame_error(decode_array, raw, 0)


def test_invalid_utf8_key_is_a_frame_error() -> None:
    assert_frame_error(decode_table, table_of(b"\x01\xffV"), 0)


def test_deeply_nested_tables_are_a_frame_error_not_recursion() -> None:
    raw = b"V"
    for _ in range(5000):
        raw = b"F" + table_of(b"\x01k" + raw)
    assert_frame_error(decode_value, raw, 0)


def test_offset_past_end_is_a_frame_error() -> None:
    assert_frame_error(decode_table, b"", 0)
    assert_frame_error(decode_table, EMPTY_TABLE, 10)
    assert_frame_error(decode_value, b"", 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=8))
def test_fuzz_random_bytes_only_amqp_errors(data: bytes, offset: int) -> None:
    for fn in (decode_table, decode_array, decode_value):
        for buf in (data, memoryview(data)):
            try:
                fn(buf, offset)
            except AMQPError as exc:
                assert exc.reply_code == FRAME_ERROR


@settings(max_examples=300, deadline=None)
@given(tables, st.data())
def test_fuzz_mutated_tables_only_amqp_errors(table: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(encode_table(table))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[pos] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    try:
        decode_table(bytes(raw[:cut]), 0)
    except AMQPError as exc:
        assert exc.reply_code == FRAME_ERROR


# --------------------------------------------------------------------------- nesting depth
# RabbitMQ has no limit; shardmq refuses more than MAX_DEPTH levels at decode (501), so
# whatever decodes also re-encodes (issue 16: 330-980 levels decoded, then failed to
# re-encode with a RecursionError, 541 and a long traceback per request).


def nested(kinds: str, leaf: bytes = b"V") -> bytes:
    """A value nesting tables (``F``) and arrays (``A``), outermost first, around
    ``leaf``; built iteratively, so any depth."""
    raw = leaf
    for kind in reversed(kinds):
        raw = b"F" + table_of(b"\x01k" + raw) if kind == "F" else b"A" + table_of(raw)
    return raw


@pytest.mark.parametrize("kinds", ["F", "A", "FA", "AF"])
def test_nesting_up_to_max_depth_decodes_and_reencodes(kinds: str) -> None:
    shape = (kinds * MAX_DEPTH)[:MAX_DEPTH]
    raw = nested(shape)
    value, end = decode_value(raw, 0)
    assert end == len(raw)
    assert encode_value(value) == raw
    # as a table: the table itself is the first level
    inner = nested(shape[1:])
    table = table_of(b"\x01k" + inner)
    decoded, _ = decode_table(table, 0)
    assert encode_table(decoded) == table
    items = table_of(inner)
    assert encode_array(decode_array(memoryview(items), 0)[0]) == items


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 330, 980, 5000])
@pytest.mark.parametrize("kinds", ["F", "A", "FA"])
def test_nesting_deeper_than_max_depth_is_a_clean_frame_error(depth: int, kinds: str) -> None:
    raw = nested((kinds * depth)[:depth])
    for fn, buf in (
        (decode_value, raw),
        (decode_value, memoryview(raw)),
        (decode_table, raw[1:] if raw[:1] == b"F" else table_of(b"\x01k" + raw)),
        (decode_array, raw[1:] if raw[:1] == b"A" else table_of(raw)),
    ):
        err = assert_frame_error(fn, buf, 0)
        assert err.text == f"field table nested deeper than {MAX_DEPTH} levels"
        assert err.__cause__ is None and err.__context__ is None  # no recursion behind it


@st.composite
def nested_values(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(min_value=1, max_value=MAX_DEPTH + 20))
    kinds = "".join(draw(st.lists(st.sampled_from("FA"), min_size=depth, max_size=depth)))
    leaf = draw(st.sampled_from([b"V", b"I\x00\x00\x00\x07", b"S\x00\x00\x00\x01z"]))
    return nested(kinds, leaf)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested_values(), st.data())
def test_fuzz_nesting_and_truncation_only_frame_errors(raw: bytes, data: st.DataObject) -> None:
    """Nested values, possibly truncated or with one byte changed: they decode (and then
    re-encode) or raise the codec's FRAME_ERROR, never anything else."""
    buf = bytearray(raw)
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(min_value=0, max_value=len(buf) - 1))
        buf[pos] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(buf)))
    for b in (bytes(buf[:cut]), memoryview(bytes(buf[:cut]))):
        try:
            value, _end = decode_value(b, 0)
        except HardError as exc:
            assert exc.reply_code == FRAME_ERROR
            continue
        encode_value(value)  # whatever decodes re-encodes
