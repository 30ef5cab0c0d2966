"""AMQP 1.0 values as Python objects: the typed wrappers the codec reads and writes.

Owns: one small class per AMQP primitive type that a plain Python object cannot name
unambiguously (``UByte`` .. ``Long`` for the integer widths, ``Float`` for a 32-bit
float, ``Char``, ``Timestamp``, ``Symbol``, the three decimals), ``Described`` (a
described value whose descriptor is not a type of the spec) and ``Array`` (one element
type for every item).

Invariants:
- A wrapper is a subclass of the plain type (``UInt(5) == 5``), so protocol code reads
  values as ints, strs and bytes; the wrapper only tells the encoder which AMQP type to
  write. Plain Python objects map as: None -> null, bool -> boolean, int -> long,
  float -> double, str -> string, bytes -> binary, uuid.UUID -> uuid, list -> list,
  dict -> map.
- Nothing here encodes or decodes (``shardmq.amqp1.codec`` does).
"""

from __future__ import annotations

from typing import Any


class UByte(int):
    __slots__ = ()


class UShort(int):
    __slots__ = ()


class UInt(int):
    __slots__ = ()


class ULong(int):
    __slots__ = ()


class Byte(int):
    __slots__ = ()


class Short(int):
    __slots__ = ()


class Int(int):
    __slots__ = ()


class Long(int):
    __slots__ = ()


class Timestamp(int):
    """Milliseconds since the Unix epoch (signed 64 bits)."""

    __slots__ = ()


class Float(float):
    """A 32-bit IEEE 754 float (a plain float is written as a 64-bit double)."""

    __slots__ = ()


class Char(str):
    """One UTF-32 code point."""

    __slots__ = ()


class Symbol(str):
    """An ASCII symbolic value (descriptor names, capabilities, error conditions)."""

    __slots__ = ()


class Decimal32(bytes):
    """IEEE 754 decimal32, kept as its 4 bytes (no arithmetic here)."""

    __slots__ = ()


class Decimal64(bytes):
    __slots__ = ()


class Decimal128(bytes):
    __slots__ = ()


class Described:
    """A described value whose descriptor names no type of the spec."""

    __slots__ = ("descriptor", "value")

    def __init__(self, descriptor: Any, value: Any) -> None:
        self.descriptor = descriptor
        self.value = value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Described)
            and self.descriptor == other.descriptor
            and self.value == other.value
        )

    def __hash__(self) -> int:
        return hash((Described, repr(self.descriptor)))

    def __repr__(self) -> str:
        return f"Described({self.descriptor!r}, {self.value!r})"


class Array:
    """An AMQP array: ``items`` all of the AMQP type ``type`` (a primitive type name as
    in the spec: "symbol", "uint", "list", ...), described by ``descriptor`` if set."""

    __slots__ = ("type", "items", "descriptor")

    def __init__(self, type: str, items: list[Any], descriptor: Any = None) -> None:
        self.type = type
        self.items = items
        self.descriptor = descriptor

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Array)
            and self.type == other.type
            and self.items == other.items
            and self.descriptor == other.descriptor
        )

    def __hash__(self) -> int:
        return hash((Array, self.type, len(self.items)))

    def __repr__(self) -> str:
        return f"Array({self.type!r}, {self.items!r})"
