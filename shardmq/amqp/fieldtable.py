"""AMQP 0-9-1 field tables and field arrays (x-arguments, message headers, peer properties).

Owns: the wire codec for ``table`` values, with the type tags as RabbitMQ speaks them
(the 0-9-1 errata, not the original spec)::

    t bool      b int8      B uint8     s int16 (not shortstr)   u uint16
    I int32     i uint32    l int64     L int64 (signed!)        f float32
    d float64   D Decimal (scale octet + int32)                  S longstr
    x ByteArray A list      T Timestamp (uint64 seconds)         F dict     V None

Decoding: ``S`` gives ``str`` when the bytes are valid UTF-8, else ``bytes``; ``x`` gives
:class:`ByteArray`; ``T`` gives :class:`Timestamp`. Encoding picks the tag from the Python
type: bool->t, int->I (fits int32) else l, float->d, Decimal->D, str->S, bytes->S,
ByteArray->x, list/tuple->A, dict->F, Timestamp/datetime->T, None->V.

'L' is *signed* like 'l': that is what RabbitMQ 3.10 does (checked against it: an
x-message-ttl of L 0xFFFFFFFFFFFFFFFE is refused as ``{value_negative,-2}``), whatever
the 0-9-1 spec says; we never emit 'L'.

Invariants:
- the public decoders accept bytes, bytearray or (byte) memoryview and never raise
  anything but :class:`HardError` (FRAME_ERROR) for malformed or truncated input;
- a table or array whose content does not end exactly at its length prefix is malformed;
- tables and arrays nest at most ``MAX_DEPTH`` levels: deeper is FRAME_ERROR at decode,
  so whatever decodes also re-encodes;
- encoding errors (value out of range, unsupported type, key > 255 bytes) are programmer
  errors and raise ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations

import calendar
import struct
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from shardmq.amqp.errors import FRAME_ERROR, HardError

__all__ = [
    "EMPTY_TABLE",
    "MAX_DEPTH",
    "ByteArray",
    "Timestamp",
    "decode_array",
    "decode_table",
    "decode_value",
    "encode_array",
    "encode_table",
    "encode_value",
]


class ByteArray(bytes):
    """A field value of type ``x`` (RabbitMQ byte array), as opposed to ``S`` longstr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ByteArray({bytes(self)!r})"


class Timestamp(int):
    """A field value of type ``T``: seconds since the Unix epoch (uint64)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Timestamp({int(self)})"


EMPTY_TABLE = b"\x00\x00\x00\x00"

_i8 = struct.Struct("!b")
_i16 = struct.Struct("!h")
_u16 = struct.Struct("!H")
_i32 = struct.Struct("!i")
_u32 = struct.Struct("!I")
_i64 = struct.Struct("!q")
_u64 = struct.Struct("!Q")
_f32 = struct.Struct("!f")
_f64 = struct.Struct("!d")
_dec = struct.Struct("!Bi")

_u32_unpack = _u32.unpack_from
_i32_unpack = _i32.unpack_from
_i64_unpack = _i64.unpack_from

# Low-level errors that mean "malformed input" when raised while decoding.
_DECODE_ERRORS = (
    IndexError,
    struct.error,
    UnicodeDecodeError,
    ValueError,
    TypeError,
    RecursionError,
)

# Tables and arrays nest at most this deep (the outermost is level 1). RabbitMQ has no
# limit, but no real client nests more than a few levels, and a value decoded here must
# re-encode (three Python frames per level) and compare within the recursion limit.
MAX_DEPTH = 100

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# --------------------------------------------------------------------------- decoding
# Each decoder takes (buf, offset just after the type tag) and returns (value, new offset).
# They raise raw IndexError/struct.error/...; the public wrappers turn those into HardError.

# The decoders read bytes or bytearray (they slice and .decode()); the public functions
# also take a memoryview, and decode a copy of the item. Decoded values are Any: a field
# table holds whatever the peer sent.
_Bytes = bytes | bytearray
Buffer = bytes | bytearray | memoryview
_Decoder = Callable[[_Bytes, int], tuple[Any, int]]


def _d_bool(buf: _Bytes, o: int) -> tuple[Any, int]:
    return buf[o] != 0, o + 1


def _d_int8(buf: _Bytes, o: int) -> tuple[Any, int]:
    return _i8.unpack_from(buf, o)[0], o + 1


def _d_uint8(buf: _Bytes, o: int) -> tuple[Any, int]:
    return buf[o], o + 1


def _d_int16(buf: _Bytes, o: int) -> tuple[Any, int]:
    return _i16.unpack_from(buf, o)[0], o + 2


def _d_uint16(buf: _Bytes, o: int) -> tuple[Any, int]:
    return _u16.unpack_from(buf, o)[0], o + 2


def _d_int32(buf: _Bytes, o: int) -> tuple[Any, int]:
    return _i32.unpack_from(buf, o)[0], o + 4


def _d_uint32(buf: _Bytes, o: int) -> tuple[Any, int]:
    return _u32_unpack(buf, o)[0], o + 4


def _d_int64(buf: _Bytes, o: int) -> tuple[Any, int]:
    return _i64.unpack_from(buf, o)[0], o + 8


def _d_float(buf: _Bytes, o: int) -> tuple[Any, int]:
    return _f32.unpack_from(buf, o)[0], o + 4


def _d_double(buf: _Bytes, o: int) -> tuple[Any, int]:
    return _f64.unpack_from(buf, o)[0], o + 8


def _d_decimal(buf: _Bytes, o: int) -> tuple[Any, int]:
    scale, raw = _dec.unpack_from(buf, o)
    return Decimal(f"{raw}E-{scale}"), o + 5  # exact, whatever the decimal context


def _d_longstr(buf: _Bytes, o: int) -> tuple[Any, int]:
    n = _u32_unpack(buf, o)[0]
    o += 4
    end = o + n
    if end > len(buf):
        raise IndexError("longstr truncated")
    raw = buf[o:end]
    try:
        return raw.decode(), end
    except UnicodeDecodeError:
        return bytes(raw), end


def _d_bytearray(buf: _Bytes, o: int) -> tuple[Any, int]:
    n = _u32_unpack(buf, o)[0]
    o += 4
    end = o + n
    if end > len(buf):
        raise IndexError("byte array truncated")
    return ByteArray(buf[o:end]), end


def _d_timestamp(buf: _Bytes, o: int) -> tuple[Any, int]:
    return Timestamp(_u64.unpack_from(buf, o)[0]), o + 8


def _d_void(buf: _Bytes, o: int) -> tuple[Any, int]:
    return None, o


def _too_deep() -> HardError:
    return HardError(FRAME_ERROR, f"field table nested deeper than {MAX_DEPTH} levels")


def _table(buf: _Bytes, o: int, depth: int = 1) -> tuple[dict[str, Any], int]:
    n = _u32_unpack(buf, o)[0]
    o += 4
    if n == 0:
        return {}, o
    end = o + n
    if end > len(buf):
        raise IndexError("table truncated")
    result: dict[str, Any] = {}
    dec = _DECODERS
    while o < end:
        k = buf[o]
        o += 1
        key = buf[o : o + k].decode()
        o += k
        tag = buf[o]
        # the usual x-arguments and headers inline; everything else via the table
        if tag == 83:  # S
            ln = _u32_unpack(buf, o + 1)[0]
            o += 5
            raw = buf[o : o + ln]
            o += ln
            try:
                result[key] = raw.decode()
            except UnicodeDecodeError:
                result[key] = bytes(raw)
        elif tag == 73:  # I
            result[key] = _i32_unpack(buf, o + 1)[0]
            o += 5
        elif tag == 116:  # t
            result[key] = buf[o + 1] != 0
            o += 2
        elif tag == 108:  # l
            result[key] = _i64_unpack(buf, o + 1)[0]
            o += 9
        elif tag == 70 or tag == 65:  # F, A: one level deeper
            if depth >= MAX_DEPTH:
                raise _too_deep()
            result[key], o = (_table if tag == 70 else _array)(buf, o + 1, depth + 1)
        else:
            result[key], o = dec[tag](buf, o + 1)
    if o != end:
        raise IndexError("table content overruns its length")
    return result, end


def _array(buf: _Bytes, o: int, depth: int = 1) -> tuple[list[Any], int]:
    n = _u32_unpack(buf, o)[0]
    o += 4
    end = o + n
    if end > len(buf):
        raise IndexError("array truncated")
    result: list[Any] = []
    append = result.append
    dec = _DECODERS
    while o < end:
        tag = buf[o]
        if tag == 70 or tag == 65:  # F, A: one level deeper
            if depth >= MAX_DEPTH:
                raise _too_deep()
            v, o = (_table if tag == 70 else _array)(buf, o + 1, depth + 1)
        else:
            v, o = dec[tag](buf, o + 1)
        append(v)
    if o != end:
        raise IndexError("array content overruns its length")
    return result, end


def _d_unknown_factory(tag: int) -> _Decoder:
    def _d_unknown(buf: _Bytes, o: int) -> tuple[Any, int]:
        raise HardError(FRAME_ERROR, f"unknown field table type {chr(tag)!r} (0x{tag:02x})")

    return _d_unknown


_DECODERS: list[_Decoder] = [_d_unknown_factory(t) for t in range(256)]
for _tag, _fn in {
    "t": _d_bool,
    "b": _d_int8,
    "B": _d_uint8,
    "s": _d_int16,
    "u": _d_uint16,
    "I": _d_int32,
    "i": _d_uint32,
    "l": _d_int64,
    "L": _d_int64,  # RabbitMQ reads 'L' as signed
    "f": _d_float,
    "d": _d_double,
    "D": _d_decimal,
    "S": _d_longstr,
    "x": _d_bytearray,
    "A": _array,
    "T": _d_timestamp,
    "F": _table,
    "V": _d_void,
}.items():
    _DECODERS[ord(_tag)] = _fn
del _tag, _fn


def _malformed(what: str, exc: BaseException) -> HardError:
    return HardError(FRAME_ERROR, f"malformed {what}: {type(exc).__name__}")


def _copy_of_item(buf: memoryview, offset: int) -> bytes:
    """The length-prefixed item at ``offset`` as bytes: the decoders use bytes.decode(),
    which a memoryview lacks, and this bounds the copy to the item itself."""
    n = _u32_unpack(buf, offset)[0]
    return buf[offset : offset + 4 + n].tobytes()


def decode_table(buf: Buffer, offset: int = 0) -> tuple[dict[str, Any], int]:
    """Decode a length-prefixed field table at ``offset``; return (table, offset after it)."""
    try:
        if type(buf) is not memoryview:
            return _table(buf, offset)
        table, end = _table(_copy_of_item(buf, offset), 0)
        return table, offset + end
    except _DECODE_ERRORS as exc:
        raise _malformed("field table", exc) from None


def decode_array(buf: Buffer, offset: int = 0) -> tuple[list[Any], int]:
    """Decode a length-prefixed field array at ``offset``; return (list, offset after it)."""
    try:
        if type(buf) is not memoryview:
            return _array(buf, offset)
        items, end = _array(_copy_of_item(buf, offset), 0)
        return items, offset + end
    except _DECODE_ERRORS as exc:
        raise _malformed("field array", exc) from None


def decode_value(buf: Buffer, offset: int = 0) -> tuple[Any, int]:
    """Decode one field value (type tag + value) at ``offset``; return (value, new offset)."""
    try:
        if type(buf) is memoryview:
            value, end = decode_value(buf[offset:].tobytes(), 0)
            return value, end + offset
        return _DECODERS[buf[offset]](buf, offset + 1)
    except _DECODE_ERRORS as exc:
        raise _malformed("field value", exc) from None


# --------------------------------------------------------------------------- encoding
# Each encoder appends tag + value to a bytearray.

_Encoder = Callable[[bytearray, Any], None]


def _e_bool(out: bytearray, v: Any) -> None:
    out += b"t\x01" if v else b"t\x00"


def _e_int(out: bytearray, v: Any) -> None:
    v = int(v)
    if _INT32_MIN <= v <= _INT32_MAX:
        out += b"I"
        out += _i32.pack(v)
    elif _INT64_MIN <= v <= _INT64_MAX:
        out += b"l"
        out += _i64.pack(v)
    else:
        raise ValueError(f"integer {v} does not fit a signed 64-bit field value")


def _e_float(out: bytearray, v: Any) -> None:
    out += b"d"
    out += _f64.pack(v)


def _e_decimal(out: bytearray, v: Any) -> None:
    sign, digits, exponent = v.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"cannot encode non-finite decimal {v}")
    raw = 0
    for digit in digits:
        raw = raw * 10 + digit
    if exponent > 0:
        raw *= 10**exponent
        exponent = 0
    if sign:
        raw = -raw
    scale = -exponent
    if scale > 255 or not _INT32_MIN <= raw <= _INT32_MAX:
        raise ValueError(f"decimal {v} does not fit scale octet + int32")
    out += b"D"
    out += _dec.pack(scale, raw)


def _e_longstr_bytes(out: bytearray, v: Any) -> None:
    out += b"S"
    out += _u32.pack(len(v))
    out += v


def _e_str(out: bytearray, v: Any) -> None:
    _e_longstr_bytes(out, v.encode())


def _e_bytes(out: bytearray, v: Any) -> None:
    _e_longstr_bytes(out, bytes(v))


def _e_bytearray(out: bytearray, v: Any) -> None:
    out += b"x"
    out += _u32.pack(len(v))
    out += v


def _e_timestamp(out: bytearray, v: Any) -> None:
    if isinstance(v, datetime):
        if v.tzinfo is None:  # naive datetimes are taken as UTC
            v = calendar.timegm(v.timetuple())
        else:
            v = int(v.timestamp())
    v = int(v)
    if not 0 <= v < (1 << 64):
        raise ValueError(f"timestamp {v} out of uint64 range")
    out += b"T"
    out += _u64.pack(v)


def _e_void(out: bytearray, v: Any) -> None:
    out += b"V"


def _e_table(out: bytearray, v: Any) -> None:
    out += b"F"
    _table_into(out, v)


def _e_array(out: bytearray, v: Any) -> None:
    out += b"A"
    _array_into(out, v)


_ENCODERS: dict[type, _Encoder] = {
    bool: _e_bool,
    int: _e_int,
    float: _e_float,
    Decimal: _e_decimal,
    str: _e_str,
    bytes: _e_bytes,
    bytearray: _e_bytes,
    memoryview: _e_bytes,
    ByteArray: _e_bytearray,
    Timestamp: _e_timestamp,
    datetime: _e_timestamp,
    list: _e_array,
    tuple: _e_array,
    dict: _e_table,
    type(None): _e_void,
}

# Fallback for subclasses, most specific first.
_ENCODERS_BY_ISINSTANCE: tuple[tuple[type | tuple[type, ...], _Encoder], ...] = (
    (bool, _e_bool),
    (Timestamp, _e_timestamp),
    (int, _e_int),
    (float, _e_float),
    (Decimal, _e_decimal),
    (str, _e_str),
    (ByteArray, _e_bytearray),
    ((bytes, bytearray, memoryview), _e_bytes),
    ((list, tuple), _e_array),
    (Mapping, _e_table),
    (datetime, _e_timestamp),
)


def _value_into(out: bytearray, v: Any) -> None:
    enc = _ENCODERS.get(type(v))
    if enc is None:
        for types, candidate in _ENCODERS_BY_ISINSTANCE:
            if isinstance(v, types):
                enc = candidate
                break
        else:
            raise TypeError(f"cannot encode {type(v).__name__} as an AMQP field value")
    enc(out, v)


def _table_into(out: bytearray, table: Mapping[str, Any] | None) -> None:
    start = len(out)
    out += EMPTY_TABLE
    if table:
        for key, v in table.items():
            k = key.encode()
            if len(k) > 255:
                raise ValueError(f"field table key longer than 255 bytes: {key[:40]!r}...")
            out.append(len(k))
            out += k
            _value_into(out, v)
        _u32.pack_into(out, start, len(out) - start - 4)


def _array_into(out: bytearray, items: Any) -> None:
    start = len(out)
    out += EMPTY_TABLE
    if items:
        for v in items:
            _value_into(out, v)
        _u32.pack_into(out, start, len(out) - start - 4)


def encode_table(table: Mapping[str, Any] | None) -> bytes:
    """Encode ``table`` (``None`` = empty) with its 4-byte length prefix."""
    if not table:
        return EMPTY_TABLE
    out = bytearray()
    _table_into(out, table)
    return bytes(out)


def encode_array(items: Any) -> bytes:
    """Encode a list/tuple as a field array with its 4-byte length prefix."""
    out = bytearray()
    _array_into(out, items)
    return bytes(out)


def encode_value(value: Any) -> bytes:
    """Encode one field value as type tag + value."""
    out = bytearray()
    _value_into(out, value)
    return bytes(out)
