"""AMQP 1.0 type system on the wire: encode and decode every primitive type, every
encoding of it, arrays and described types.

Owns: ``encode`` (a Python value, by its type, see ``shardmq.amqp1.values``),
``encode_as`` (a value as a named AMQP primitive type: how composite fields are written),
``decode`` (one value from a buffer) and ``DecodeError``; ``REGISTRY``, the described
types the decoder builds objects for (filled by ``shardmq.amqp1.composite`` from the
generated ``types_gen``).

Invariants:
- The encoder always picks the smallest encoding (uint0/smalluint, ulong0/smallulong,
  smallint/smalllong, true/false, list0, the 8-bit forms of binary, string, symbol,
  list and map when they fit); the decoder accepts every encoding of the spec.
- ``decode`` raises only ``DecodeError`` on malformed input, whatever the bytes
  (truncated, sizes that disagree with their contents, bad UTF-8, non-ASCII symbols,
  nesting deeper than ``MAX_DEPTH``, arrays of zero-width elements claiming millions),
  never another exception and never reads past its buffer.
- Array elements are written with one constructor, the widest the items need.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any

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

MAX_DEPTH = 64
MAX_EMPTY_ITEMS = 65536  # an array of zero-width items (null, true) no longer than this


class DecodeError(ValueError):
    """Malformed AMQP 1.0 data (the peer gets amqp:decode-error)."""


class EncodeError(TypeError):
    """A value that AMQP 1.0 cannot express (a bug of the caller)."""


# described type descriptor (ULong code or Symbol name) -> builder from the decoded value
REGISTRY: dict[object, Callable[[Any], Any]] = {}

_B = struct.Struct(">B")
_b = struct.Struct(">b")
_H = struct.Struct(">H")
_h = struct.Struct(">h")
_I = struct.Struct(">I")
_i = struct.Struct(">i")
_Q = struct.Struct(">Q")
_q = struct.Struct(">q")
_f = struct.Struct(">f")
_d = struct.Struct(">d")
_BB = struct.Struct(">BB")
_II = struct.Struct(">II")


# ---------------------------------------------------------------- encoding
def encode(out: bytearray, v: Any) -> None:
    """Append ``v`` to ``out`` with the AMQP type its Python type names."""
    t = type(v)
    fn = _BY_TYPE.get(t)
    if fn is not None:
        fn(out, v)
        return
    enc = getattr(v, "encode_into", None)
    if enc is not None:
        enc(out)
        return
    # subclasses of the plain types (an IntEnum, a str subclass of the caller)
    for base, fn in _BASES:
        if isinstance(v, base):
            fn(out, v)
            return
    raise EncodeError(f"cannot encode {t.__name__} as AMQP 1.0")


def encode_as(out: bytearray, v: Any, amqp_type: str) -> None:
    """Append ``v`` as the AMQP primitive ``amqp_type`` ("*": by its Python type)."""
    if v is None:
        out.append(0x40)
        return
    fn = _BY_NAME.get(amqp_type)
    if fn is None:
        encode(out, v)
    else:
        fn(out, v)


def _null(out: bytearray, v: Any) -> None:
    out.append(0x40)


def _bool(out: bytearray, v: Any) -> None:
    out.append(0x41 if v else 0x42)


def _ubyte(out: bytearray, v: Any) -> None:
    out.append(0x50)
    out += _B.pack(v)


def _ushort(out: bytearray, v: Any) -> None:
    out.append(0x60)
    out += _H.pack(v)


def _uint(out: bytearray, v: Any) -> None:
    if v == 0:
        out.append(0x43)
    elif v < 256:
        out.append(0x52)
        out.append(v)
    else:
        out.append(0x70)
        out += _I.pack(v)


def _ulong(out: bytearray, v: Any) -> None:
    if v == 0:
        out.append(0x44)
    elif v < 256:
        out.append(0x53)
        out.append(v)
    else:
        out.append(0x80)
        out += _Q.pack(v)


def _byte(out: bytearray, v: Any) -> None:
    out.append(0x51)
    out += _b.pack(v)


def _short(out: bytearray, v: Any) -> None:
    out.append(0x61)
    out += _h.pack(v)


def _int(out: bytearray, v: Any) -> None:
    if -128 <= v <= 127:
        out.append(0x54)
        out += _b.pack(v)
    else:
        out.append(0x71)
        out += _i.pack(v)


def _long(out: bytearray, v: Any) -> None:
    if -128 <= v <= 127:
        out.append(0x55)
        out += _b.pack(v)
    else:
        out.append(0x81)
        out += _q.pack(v)


def _float(out: bytearray, v: Any) -> None:
    out.append(0x72)
    out += _f.pack(v)


def _double(out: bytearray, v: Any) -> None:
    out.append(0x82)
    out += _d.pack(v)


def _fixed_bytes(code: int, width: int) -> Callable[[bytearray, Any], None]:
    def enc(out: bytearray, v: Any) -> None:
        if len(v) != width:
            raise EncodeError(f"0x{code:02x} takes {width} bytes, not {len(v)}")
        out.append(code)
        out += v

    return enc


def _char(out: bytearray, v: Any) -> None:
    if len(v) != 1:
        raise EncodeError("a char is one code point")
    out.append(0x73)
    out += _I.pack(ord(v))


def _timestamp(out: bytearray, v: Any) -> None:
    out.append(0x83)
    out += _q.pack(v)


def _uuid(out: bytearray, v: Any) -> None:
    out.append(0x98)
    out += v.bytes if isinstance(v, uuid.UUID) else bytes(v)


def _variable(
    code8: int, code32: int, data: bytes | bytearray | memoryview, out: bytearray
) -> None:
    n = len(data)
    if n < 256:
        out.append(code8)
        out.append(n)
    else:
        out.append(code32)
        out += _I.pack(n)
    out += data


def _binary(out: bytearray, v: Any) -> None:
    _variable(0xA0, 0xB0, v, out)


def _string(out: bytearray, v: Any) -> None:
    _variable(0xA1, 0xB1, str(v).encode("utf-8"), out)


def _symbol(out: bytearray, v: Any) -> None:
    try:
        data = str(v).encode("ascii")
    except UnicodeEncodeError:
        raise EncodeError(f"symbol {v!r} is not ASCII") from None
    _variable(0xA3, 0xB3, data, out)


def _compound(
    out: bytearray, code0: int | None, code8: int, code32: int, n: int, body: bytes
) -> None:
    if n == 0 and code0 is not None:
        out.append(code0)
    elif len(body) + 1 < 256 and n < 256:
        out.append(code8)
        out.append(len(body) + 1)
        out.append(n)
        out += body
    else:
        out.append(code32)
        out += _II.pack(len(body) + 4, n)
        out += body


def _list(out: bytearray, v: Any) -> None:
    body = bytearray()
    for item in v:
        encode(body, item)
    _compound(out, 0x45, 0xC0, 0xD0, len(v), bytes(body))


def _map(out: bytearray, v: Any) -> None:
    body = bytearray()
    for k, item in v.items():
        encode(body, k)
        encode(body, item)
    _compound(out, None, 0xC1, 0xD1, 2 * len(v), bytes(body))


def encode_map_as(out: bytearray, v: Any, key_type: str) -> None:
    """A map whose plain-str keys are written as ``key_type`` (``fields``: symbol keys;
    keys of another type keep theirs)."""
    body = bytearray()
    for k, item in v.items():
        if type(k) is str:
            encode_as(body, k, key_type)
        else:
            encode(body, k)
        encode(body, item)
    _compound(out, None, 0xC1, 0xD1, 2 * len(v), bytes(body))


def _described(out: bytearray, v: Any) -> None:
    out.append(0x00)
    encode(out, v.descriptor)
    encode(out, v.value)


# Array element constructors: (code, payload writer); the widest form of each type.
def _arr_int(fmt: struct.Struct) -> Callable[[bytearray, Any], None]:
    def w(out: bytearray, v: Any) -> None:
        out += fmt.pack(v)

    return w


def _arr_var(width: int) -> Callable[[bytearray, Any], None]:
    def w(out: bytearray, v: Any) -> None:
        data = v if isinstance(v, bytes | bytearray) else str(v).encode("utf-8")
        out += _I.pack(len(data)) if width == 4 else _B.pack(len(data))
        out += data

    return w


def _arr_compound(kind: str) -> Callable[[bytearray, Any], None]:
    def w(out: bytearray, v: Any) -> None:
        tmp = bytearray()
        if kind == "list":
            _list(tmp, v)
        else:
            _map(tmp, v)
        # rewrite as the 32-bit form (the array's constructor is the 32-bit code)
        body, count = _compound_parts(tmp)
        out += _II.pack(len(body) + 4, count)
        out += body

    return w


def _compound_parts(enc: bytearray) -> tuple[bytes, int]:
    code = enc[0]
    if code == 0x45:
        return b"", 0
    if code in (0xC0, 0xC1):
        return bytes(enc[3:]), enc[2]
    size, count = _II.unpack_from(enc, 1)
    return bytes(enc[9:]), count


def _arr_array(out: bytearray, v: Any) -> None:
    tmp = bytearray()
    _array(tmp, v)
    if tmp[0] == 0xE0:  # as array32
        size, count = tmp[1], tmp[2]
        out += _II.pack(size + 3, count)
        out += tmp[3:]
    else:
        out += tmp[1:]


_ARRAY_ELEMENTS: dict[str, tuple[int, Callable[[bytearray, Any], None]]] = {
    "null": (0x40, lambda out, v: None),
    "boolean": (0x56, lambda out, v: out.append(1 if v else 0)),
    "ubyte": (0x50, _arr_int(_B)),
    "ushort": (0x60, _arr_int(_H)),
    "uint": (0x70, _arr_int(_I)),
    "ulong": (0x80, _arr_int(_Q)),
    "byte": (0x51, _arr_int(_b)),
    "short": (0x61, _arr_int(_h)),
    "int": (0x71, _arr_int(_i)),
    "long": (0x81, _arr_int(_q)),
    "float": (0x72, _arr_int(_f)),
    "double": (0x82, _arr_int(_d)),
    "decimal32": (0x74, lambda out, v: out.extend(v)),
    "decimal64": (0x84, lambda out, v: out.extend(v)),
    "decimal128": (0x94, lambda out, v: out.extend(v)),
    "char": (0x73, lambda out, v: out.extend(_I.pack(ord(v)))),
    "timestamp": (0x83, _arr_int(_q)),
    "uuid": (0x98, lambda out, v: out.extend(v.bytes)),
    "binary": (0xB0, _arr_var(4)),
    "string": (0xB1, _arr_var(4)),
    "symbol": (0xB3, _arr_var(4)),
    "list": (0xD0, _arr_compound("list")),
    "map": (0xD1, _arr_compound("map")),
    "array": (0xF0, _arr_array),
}
_NARROW = {0xB0: 0xA0, 0xB1: 0xA1, 0xB3: 0xA3}


def _array(out: bytearray, v: Any) -> None:
    elem = _ARRAY_ELEMENTS.get(v.type)
    if elem is None:
        raise EncodeError(f"no array of {v.type}")
    code, write = elem
    items = v.items
    if code in _NARROW and all(
        len(x if isinstance(x, bytes | bytearray) else str(x).encode("utf-8")) < 256 for x in items
    ):
        code = _NARROW[code]
        write = _arr_var(1)
    ctor = bytearray()
    if v.descriptor is not None:
        ctor.append(0x00)
        encode(ctor, v.descriptor)
    ctor.append(code)
    body = bytearray(ctor)
    for item in items:
        write(body, item)
    n = len(items)
    if len(body) + 1 < 256 and n < 256:
        out.append(0xE0)
        out.append(len(body) + 1)
        out.append(n)
    else:
        out.append(0xF0)
        out += _II.pack(len(body) + 4, n)
    out += body


_BY_TYPE: dict[type, Callable[[bytearray, Any], None]] = {
    type(None): _null,
    bool: _bool,
    UByte: _ubyte,
    UShort: _ushort,
    UInt: _uint,
    ULong: _ulong,
    Byte: _byte,
    Short: _short,
    Int: _int,
    Long: _long,
    int: _long,
    Float: _float,
    float: _double,
    Decimal32: _fixed_bytes(0x74, 4),
    Decimal64: _fixed_bytes(0x84, 8),
    Decimal128: _fixed_bytes(0x94, 16),
    Char: _char,
    Timestamp: _timestamp,
    uuid.UUID: _uuid,
    bytes: _binary,
    bytearray: _binary,
    memoryview: _binary,
    str: _string,
    Symbol: _symbol,
    list: _list,
    tuple: _list,
    dict: _map,
    Array: _array,
    Described: _described,
}
_BASES: list[tuple[type, Callable[[bytearray, Any], None]]] = [
    (bool, _bool),
    (int, _long),
    (float, _double),
    (str, _string),
    (bytes, _binary),
]

_BY_NAME: dict[str, Callable[[bytearray, Any], None]] = {
    "null": _null,
    "boolean": _bool,
    "ubyte": _ubyte,
    "ushort": _ushort,
    "uint": _uint,
    "ulong": _ulong,
    "byte": _byte,
    "short": _short,
    "int": _int,
    "long": _long,
    "float": _float,
    "double": _double,
    "decimal32": _fixed_bytes(0x74, 4),
    "decimal64": _fixed_bytes(0x84, 8),
    "decimal128": _fixed_bytes(0x94, 16),
    "char": _char,
    "timestamp": _timestamp,
    "uuid": _uuid,
    "binary": _binary,
    "string": _string,
    "symbol": _symbol,
    "list": _list,
    "map": _map,
}


# ---------------------------------------------------------------- decoding
def decode(buf: bytes | bytearray, pos: int = 0, end: int | None = None) -> tuple[Any, int]:
    """One value at ``buf[pos:]`` (not past ``end``): (value, position after it)."""
    limit = len(buf) if end is None else end
    try:
        return _value(buf, pos, limit, 0)
    except DecodeError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"malformed value at {pos}: {exc}") from None
    except RecursionError:
        raise DecodeError("values nested too deep") from None


def decode_all(buf: bytes | bytearray, pos: int = 0) -> list[Any]:
    """Every value from ``pos`` to the end (e.g. the sections of a message)."""
    out = []
    n = len(buf)
    while pos < n:
        v, pos = decode(buf, pos)
        out.append(v)
    return out


def _need(pos: int, n: int, limit: int) -> int:
    end = pos + n
    if end > limit:
        raise DecodeError(f"{n} bytes needed at {pos}, only {limit - pos} left")
    return end


def _value(buf: bytes | bytearray, pos: int, limit: int, depth: int) -> tuple[Any, int]:
    if pos >= limit:
        raise DecodeError(f"value expected at {pos}: no data")
    code = buf[pos]
    pos += 1
    if code == 0x00:
        if depth >= MAX_DEPTH:
            raise DecodeError("values nested too deep")
        descriptor, pos = _value(buf, pos, limit, depth + 1)
        if isinstance(descriptor, Described):
            raise DecodeError("a descriptor cannot itself be described")
        value, pos = _value(buf, pos, limit, depth + 1)
        return _build(descriptor, value), pos
    return _payload(buf, pos, limit, code, depth)


def _build(descriptor: Any, value: Any) -> Any:
    try:
        builder = REGISTRY.get(descriptor)
    except TypeError:  # an unhashable descriptor (a list or map): not one of ours
        builder = None
    if builder is None:
        return Described(descriptor, value)
    return builder(value)


def _payload(
    buf: bytes | bytearray, pos: int, limit: int, code: int, depth: int
) -> tuple[Any, int]:
    fixed = _FIXED.get(code)
    if fixed is not None:
        width, read = fixed
        end = _need(pos, width, limit)
        return read(buf, pos), end
    if code in _VAR8 or code in _VAR32:
        if code in _VAR8:
            end = _need(pos, 1, limit)
            n = buf[pos]
        else:
            end = _need(pos, 4, limit)
            n = _I.unpack_from(buf, pos)[0]
        stop = _need(end, n, limit)
        data = bytes(buf[end:stop])
        kind = code & 0x0F
        if kind == 0:
            return data, stop
        if kind == 1:
            return data.decode("utf-8"), stop
        if any(b > 127 for b in data):
            raise DecodeError("symbol is not ASCII")
        return Symbol(data.decode("ascii")), stop
    if code in (0xC0, 0xC1, 0xD0, 0xD1):
        if depth >= MAX_DEPTH:
            raise DecodeError("values nested too deep")
        if code < 0xD0:
            _need(pos, 2, limit)
            size, count = buf[pos], buf[pos + 1]
            first = pos + 2
            stop = _need(pos + 1, size, limit)
        else:
            _need(pos, 8, limit)
            size, count = _II.unpack_from(buf, pos)
            first = pos + 8
            stop = _need(pos + 4, size, limit)
        if size < (1 if code < 0xD0 else 4):
            raise DecodeError("compound size smaller than its count")
        items = []
        p = first
        for _ in range(count):
            if p >= stop:
                raise DecodeError("compound holds fewer items than its count")
            item, p = _value(buf, p, stop, depth + 1)
            items.append(item)
        if p != stop:
            raise DecodeError("compound size disagrees with its items")
        if code & 1:  # map
            if count % 2:
                raise DecodeError("map with an odd number of items")
            result: dict[Any, Any] = {}
            for i in range(0, count, 2):
                try:
                    result[items[i]] = items[i + 1]
                except TypeError:
                    raise DecodeError("map key of an unhashable type") from None
            return result, stop
        return items, stop
    if code in (0xE0, 0xF0):
        return _array_payload(buf, pos, limit, code, depth)
    raise DecodeError(f"unknown constructor 0x{code:02x}")


def _array_payload(
    buf: bytes | bytearray, pos: int, limit: int, code: int, depth: int
) -> tuple[Any, int]:
    if depth >= MAX_DEPTH:
        raise DecodeError("values nested too deep")
    if code == 0xE0:
        _need(pos, 2, limit)
        size, count = buf[pos], buf[pos + 1]
        p = pos + 2
        stop = _need(pos + 1, size, limit)
    else:
        _need(pos, 8, limit)
        size, count = _II.unpack_from(buf, pos)
        p = pos + 8
        stop = _need(pos + 4, size, limit)
    if p > stop:
        raise DecodeError("array size smaller than its count")
    descriptor = None
    if p >= stop:
        raise DecodeError("array without an element constructor")
    ctor = buf[p]
    p += 1
    if ctor == 0x00:
        descriptor, p = _value(buf, p, stop, depth + 1)
        if p >= stop:
            raise DecodeError("array without an element constructor")
        ctor = buf[p]
        p += 1
    if ctor == 0x00:
        raise DecodeError("an array element constructor cannot be described twice")
    type_name = _TYPE_OF.get(ctor)
    if type_name is None:
        raise DecodeError(f"unknown array element constructor 0x{ctor:02x}")
    fixed = _FIXED.get(ctor)
    if fixed is not None and fixed[0] == 0 and count > MAX_EMPTY_ITEMS:
        raise DecodeError("array of zero-width items too long")
    items = []
    for _ in range(count):
        if p >= stop and not (fixed is not None and fixed[0] == 0):
            raise DecodeError("array holds fewer items than its count")
        item, p = _payload(buf, p, stop, ctor, depth + 1)
        if descriptor is not None:
            item = _build(descriptor, item)
        items.append(item)
    if p != stop:
        raise DecodeError("array size disagrees with its items")
    return Array(type_name, items, descriptor), stop


def _fx(fmt: struct.Struct, wrap: Callable[[Any], Any]) -> tuple[int, Callable[[Any, int], Any]]:
    return fmt.size, lambda buf, pos: wrap(fmt.unpack_from(buf, pos)[0])


def _const(v: Any) -> tuple[int, Callable[[Any, int], Any]]:
    return 0, lambda buf, pos: v


def _bool_byte(buf: Any, pos: int) -> bool:
    b = buf[pos]
    if b > 1:
        raise DecodeError(f"boolean octet {b} is neither 0 nor 1")
    return b == 1


def _char_of(buf: Any, pos: int) -> Char:
    cp = _I.unpack_from(buf, pos)[0]
    if cp > 0x10FFFF:
        raise DecodeError("char beyond Unicode")
    return Char(chr(cp))


_FIXED: dict[int, tuple[int, Callable[[Any, int], Any]]] = {
    0x40: _const(None),
    0x41: _const(True),
    0x42: _const(False),
    0x56: (1, _bool_byte),
    0x50: _fx(_B, UByte),
    0x60: _fx(_H, UShort),
    0x70: _fx(_I, UInt),
    0x52: _fx(_B, UInt),
    0x43: (0, lambda buf, pos: UInt(0)),
    0x80: _fx(_Q, ULong),
    0x53: _fx(_B, ULong),
    0x44: (0, lambda buf, pos: ULong(0)),
    0x51: _fx(_b, Byte),
    0x61: _fx(_h, Short),
    0x71: _fx(_i, Int),
    0x54: _fx(_b, Int),
    0x81: _fx(_q, Long),
    0x55: _fx(_b, Long),
    0x72: _fx(_f, Float),
    0x82: _fx(_d, float),
    0x74: (4, lambda buf, pos: Decimal32(buf[pos : pos + 4])),
    0x84: (8, lambda buf, pos: Decimal64(buf[pos : pos + 8])),
    0x94: (16, lambda buf, pos: Decimal128(buf[pos : pos + 16])),
    0x73: (4, _char_of),
    0x83: _fx(_q, Timestamp),
    0x98: (16, lambda buf, pos: uuid.UUID(bytes=bytes(buf[pos : pos + 16]))),
    0x45: (0, lambda buf, pos: []),
}
_VAR8 = frozenset((0xA0, 0xA1, 0xA3))
_VAR32 = frozenset((0xB0, 0xB1, 0xB3))
_TYPE_OF: dict[int, str] = {
    0x40: "null",
    0x41: "boolean",
    0x42: "boolean",
    0x56: "boolean",
    0x50: "ubyte",
    0x60: "ushort",
    0x70: "uint",
    0x52: "uint",
    0x43: "uint",
    0x80: "ulong",
    0x53: "ulong",
    0x44: "ulong",
    0x51: "byte",
    0x61: "short",
    0x71: "int",
    0x54: "int",
    0x81: "long",
    0x55: "long",
    0x72: "float",
    0x82: "double",
    0x74: "decimal32",
    0x84: "decimal64",
    0x94: "decimal128",
    0x73: "char",
    0x83: "timestamp",
    0x98: "uuid",
    0xA0: "binary",
    0xB0: "binary",
    0xA1: "string",
    0xB1: "string",
    0xA3: "symbol",
    0xB3: "symbol",
    0x45: "list",
    0xC0: "list",
    0xD0: "list",
    0xC1: "map",
    0xD1: "map",
    0xE0: "array",
    0xF0: "array",
}
