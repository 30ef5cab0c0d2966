"""AMQP 1.0 codec: golden bytes for every encoding, round trips of every type
(hypothesis), and a decoder that fails only with DecodeError on malformed input."""

from __future__ import annotations

import math
import struct
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardmq.amqp1 import gen_types
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.codec import DecodeError, decode, decode_all, encode
from shardmq.amqp1.values import (
    Array,
    Byte,
    Char,
    Decimal32,
    Decimal64,
    Decimal128,
    Described,
    Float,
    Int,
    Long,
    Short,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    UShort,
)


def enc(v: Any) -> bytes:
    out = bytearray()
    encode(out, v)
    return bytes(out)


GOLDEN: list[tuple[Any, str]] = [
    (None, "40"),
    (True, "41"),
    (False, "42"),
    (UByte(7), "5007"),
    (UShort(513), "600201"),
    (UInt(0), "43"),
    (UInt(200), "52c8"),
    (UInt(256), "7000000100"),
    (ULong(0), "44"),
    (ULong(255), "53ff"),
    (ULong(1 << 40), "800000010000000000"),
    (Byte(-1), "51ff"),
    (Short(-2), "61fffe"),
    (Int(-5), "54fb"),
    (Int(1000), "71000003e8"),
    (Long(-128), "5580"),
    (Long(128), "810000000000000080"),
    (5, "5505"),  # a plain int is a long
    (Float(1.5), "723fc00000"),
    (1.5, "823ff8000000000000"),
    (Decimal32(b"\x01\x02\x03\x04"), "7401020304"),
    (Decimal64(bytes(8)), "84" + "00" * 8),
    (Decimal128(bytes(16)), "94" + "00" * 16),
    (Char("A"), "7300000041"),
    (Timestamp(1000), "8300000000000003e8"),
    (uuid.UUID(int=1), "98" + "00" * 15 + "01"),
    (b"ab", "a0026162"),
    (b"x" * 256, "b000000100" + "78" * 256),
    ("é", "a102c3a9"),
    ("y" * 300, "b10000012c" + "79" * 300),
    (Symbol("ab"), "a3026162"),
    (Symbol("s" * 256), "b300000100" + "73" * 256),
    ([], "45"),
    ([True, UInt(0)], "c003024143"),
    ({Symbol("k"): None}, "c10502a3016b40"),
    (Array("symbol", [Symbol("a"), Symbol("bc")]), "e00702a30161026263"),
    (Array("uint", [UInt(1)]), "e006017000000001"),
    (Described(Symbol("x"), 1), "00a301785501"),
]


@pytest.mark.parametrize("value,hexed", GOLDEN, ids=[h[:16] for _, h in GOLDEN])
def test_golden_bytes(value: Any, hexed: str) -> None:
    assert enc(value).hex() == hexed
    back, pos = decode(bytes.fromhex(hexed))
    assert pos == len(hexed) // 2
    assert same(back, value)


# The decoder accepts every encoding, including those the encoder never picks.
ALTERNATE: list[tuple[str, Any]] = [
    ("5601", True),
    ("5600", False),
    ("7000000000", UInt(0)),
    ("8000000000000000ff", ULong(255)),
    ("71ffffffff", Int(-1)),
    ("81ffffffffffffffff", Long(-1)),
    ("b00000000161", b"a"),
    ("b10000000162", "b"),
    ("b30000000163", Symbol("c")),
    ("c00100", []),
    ("d00000000400000000", []),
    ("c10100", {}),
    ("d100000006000000024341", {UInt(0): True}),
    ("f0000000050000000143", Array("uint", [UInt(0)])),
    ("e0020241", Array("boolean", [True, True])),
    ("e00402560100", Array("boolean", [True, False])),
]


@pytest.mark.parametrize("hexed,value", ALTERNATE)
def test_every_encoding_decodes(hexed: str, value: Any) -> None:
    back, pos = decode(bytes.fromhex(hexed))
    assert pos == len(hexed) // 2
    assert same(back, value)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same AMQP types (a UInt is not a Long here)."""
    if type(b) is int:  # a plain int is written as a long
        return type(a) is Long and a == b
    if type(a) is not type(b):
        if isinstance(a, list) and isinstance(b, tuple):
            return same(a, list(b))
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, Array):
        return a.type == b.type and same(a.items, b.items) and same(a.descriptor, b.descriptor)
    if isinstance(a, Described):
        return same(a.descriptor, b.descriptor) and same(a.value, b.value)
    return bool(a == b)


def ints(cls: type, lo: int, hi: int) -> st.SearchStrategy[Any]:
    return st.integers(lo, hi).map(cls)


text = st.text(max_size=300)
ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=300)
scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    ints(UByte, 0, 255),
    ints(UShort, 0, 65535),
    ints(UInt, 0, 2**32 - 1),
    ints(ULong, 0, 2**64 - 1),
    ints(Byte, -128, 127),
    ints(Short, -(2**15), 2**15 - 1),
    ints(Int, -(2**31), 2**31 - 1),
    ints(Long, -(2**63), 2**63 - 1),
    st.floats(width=32).map(Float),
    st.floats(),
    st.binary(min_size=4, max_size=4).map(Decimal32),
    st.binary(min_size=8, max_size=8).map(Decimal64),
    st.binary(min_size=16, max_size=16).map(Decimal128),
    st.characters().map(Char),
    ints(Timestamp, -(2**63), 2**63 - 1),
    st.uuids(),
    st.binary(max_size=300),
    text,
    ascii_text.map(Symbol),
)
hashable = st.one_of(
    st.none(), st.booleans(), ints(ULong, 0, 2**64 - 1), text, ascii_text.map(Symbol)
)
ARRAY_OF = {
    "uint": ints(UInt, 0, 2**32 - 1),
    "long": ints(Long, -(2**63), 2**63 - 1),
    "symbol": ascii_text.map(Symbol),
    "string": text,
    "binary": st.binary(max_size=300),
    "double": st.floats(),
    "uuid": st.uuids(),
    "ubyte": ints(UByte, 0, 255),
    "timestamp": ints(Timestamp, 0, 2**40),
}
arrays = st.sampled_from(sorted(ARRAY_OF)).flatmap(
    lambda t: st.lists(ARRAY_OF[t], max_size=20).map(lambda xs: Array(t, xs))
)
values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(scalars, arrays),
    lambda kids: st.one_of(
        st.lists(kids, max_size=8),
        st.dictionaries(hashable, kids, max_size=6),
        # descriptors of no spec type (those decode to their classes, tested below)
        st.tuples(
            st.one_of(ints(ULong, 0x100, 2**64 - 1), ascii_text.map(lambda s: Symbol("x:" + s))),
            kids,
        ).map(lambda dv: Described(*dv)),
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_round_trip(v: Any) -> None:
    data = enc(v)
    back, pos = decode(data)
    assert pos == len(data)
    assert same(back, v)


@settings(max_examples=100, deadline=None)
@given(st.lists(values, max_size=4))
def test_list_of_lists_and_arrays_of_lists(vs: list[Any]) -> None:
    data = enc(Array("list", [vs, []]))
    back, _ = decode(data)
    assert same(back, Array("list", [vs, []]))


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        decode_all(data)
    except DecodeError:
        pass


@settings(max_examples=400, deadline=None)
@given(values, st.data())
def test_fuzz_mutated(v: Any, data: st.DataObject) -> None:
    good = bytearray(enc(v))
    i = data.draw(st.integers(0, len(good) - 1))
    how = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    if how == "flip":
        good[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del good[i:]
    else:
        good[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        decode_all(bytes(good))
    except DecodeError:
        pass


@pytest.mark.parametrize(
    "hexed",
    [
        "",  # nothing
        "a005ab",  # binary longer than the buffer
        "c00502",  # list claims more than the buffer
        "c0020241",  # list count 2 but one item
        "c003014142",  # list size larger than its one item
        "c1020141",  # map with an odd count
        "a30180",  # non-ASCII symbol
        "a102c328",  # bad UTF-8
        "ff",  # unknown constructor
        "5602",  # boolean octet 2
        "7300110000",  # char beyond Unicode
        "f0ffffffff" + "ffffffff40",  # 4 billion nulls
        "00" * 200 + "40",  # descriptors nested too deep
        "c1050245c0",  # a list as a map key is fine, but this is truncated
        "e0010040",  # array without an element constructor
    ],
)
def test_malformed_is_decode_error(hexed: str) -> None:
    with pytest.raises(DecodeError):
        decode(bytes.fromhex(hexed))


def test_unhashable_map_key_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("c103024540"))


def test_performatives_round_trip_and_mandatory_fields() -> None:
    attach = T.Attach(
        name="l",
        handle=UInt(1),
        role=T.ROLE_RECEIVER,
        source=T.Source(address="/queues/q", capabilities=["queue"]),
        target=T.Target(),
        initial_delivery_count=0,
        properties={"k": 1},
    )
    data = attach.to_bytes()
    back, _ = decode(data)
    assert back == attach
    assert back.source.capabilities == ["queue"]
    assert back.snd_settle_mode == T.SENDER_SETTLE_MODE_MIXED  # default filled in
    # an attach without its mandatory name
    with pytest.raises(DecodeError):
        decode(T.Attach(handle=1, role=False).to_bytes())
    # a composite that is not a list
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("005310" + "40"))
    # every performative and section survives a round trip
    for cls in T.CLASSES:
        if issubclass(cls, T.Composite):
            obj = cls(**{f.name: _sample(f.type) for f in cls.FIELDS})
        else:
            sample = {"map": {Symbol("x-k"): 1}, "list": [1, "two"], "binary": b"v"}
            obj = cls(sample.get(cls.SOURCE, "v"))
        assert decode(obj.to_bytes())[0] == obj, cls


def _sample(t: str) -> Any:
    return {
        "string": "s",
        "symbol": Symbol("y"),
        "boolean": True,
        "ubyte": UByte(1),
        "ushort": UShort(2),
        "uint": UInt(3),
        "ulong": ULong(4),
        "binary": b"b",
        "map": {Symbol("m"): 1},
        "timestamp": Timestamp(5),
    }.get(t, "any")


def test_descriptor_codes_and_fields_follow_the_spec() -> None:
    assert (T.Open.CODE, T.Close.CODE, T.Transfer.CODE, T.Error.CODE) == (0x10, 0x18, 0x14, 0x1D)
    assert T.Properties.CODE == 0x73 and T.AmqpValue.CODE == 0x77 and T.Data.SOURCE == "binary"
    assert [f.name for f in T.Flow.FIELDS][:4] == [
        "next_incoming_id",
        "incoming_window",
        "next_outgoing_id",
        "outgoing_window",
    ]
    assert T.AMQP_ERROR_NOT_FOUND == "amqp:not-found"
    assert T.SESSION_ERROR_WINDOW_VIOLATION == "amqp:session:window-violation"
    assert {c.__name__ for c in T.CLASSES} >= {
        "Open", "Begin", "Attach", "Flow", "Transfer", "Disposition", "Detach", "End",
        "Close", "Received", "Accepted", "Rejected", "Released", "Modified", "Source",
        "Target", "Error", "Header", "DeliveryAnnotations", "MessageAnnotations",
        "Properties", "ApplicationProperties", "Data", "AmqpSequence", "AmqpValue",
        "Footer", "SaslMechanisms", "SaslInit", "SaslOutcome",
    }  # fmt: skip


def test_generated_types_are_fresh() -> None:
    assert gen_types.main(["--check"]) == 0
    assert gen_types.OUTPUT.read_text() == gen_types.generate(gen_types.load())
