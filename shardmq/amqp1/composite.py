"""Base classes of the spec's described types (the generated ``types_gen`` fills them).

Owns: ``Field`` (one field of a composite: its name, AMQP type, mandatory, multiple,
default), ``Composite`` (a described list: performatives, delivery states, source,
target, error, header, properties, SASL frames), ``Section`` (a described restricted
type: application-properties, data, amqp-value, annotations ...) and ``register``,
which tells the decoder (``codec.REGISTRY``) to build these objects.

Invariants:
- A composite is encoded as ``0x00``, its numeric descriptor as smallulong/ulong, then a
  list of its fields in spec order with trailing nulls dropped (list0 when all are
  null); a field is written as its declared primitive type (``handle`` as uint,
  ``role`` as boolean, ``fields`` as a map with symbol keys, a ``multiple`` symbol field
  given as a list as an array of symbols).
- Decoding fills absent (null) fields with the spec's default, and checks mandatory
  fields: a composite missing one, or not a list, is a ``DecodeError``.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from shardmq.amqp1 import codec
from shardmq.amqp1.codec import DecodeError, encode, encode_as, encode_map_as
from shardmq.amqp1.values import Array, Symbol, ULong

_MAP_FIELD_TYPES = frozenset(("fields", "annotations", "filter-set", "node-properties"))


class Field(NamedTuple):
    name: str  # the Python attribute (the spec's name, dashes as underscores)
    type: str  # the AMQP primitive it is written as ("*": any, by the value's type)
    mandatory: bool
    multiple: bool
    default: Any


class Composite:
    """A described list of the spec."""

    __slots__ = ()
    CODE: ClassVar[int] = 0
    SYMBOL: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[Field, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self.FIELDS
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} fields")
        for i, f in enumerate(fields):
            v = args[i] if i < len(args) else kwargs.pop(f.name, None)
            object.__setattr__(self, f.name, f.default if v is None else v)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unknown field(s) {sorted(kwargs)}")

    @classmethod
    def from_value(cls, value: Any) -> Composite:
        if not isinstance(value, list):
            raise DecodeError(f"{cls.SYMBOL}: a list expected")
        fields = cls.FIELDS
        if len(value) > len(fields):
            # later versions may add fields: the extra ones are ignored, as the spec asks
            value = value[: len(fields)]
        obj = cls.__new__(cls)
        n = len(value)
        for i, f in enumerate(fields):
            v = value[i] if i < n else None
            if v is None:
                if f.mandatory:
                    raise DecodeError(f"{cls.SYMBOL}: mandatory field {f.name} is missing")
                v = f.default
            elif f.multiple and isinstance(v, Array):
                v = v.items
            object.__setattr__(obj, f.name, v)
        return obj

    def encode_into(self, out: bytearray) -> None:
        out.append(0x00)
        encode(out, ULong(self.CODE))
        body = bytearray()
        values = [getattr(self, f.name) for f in self.FIELDS]
        while values and values[-1] is None:
            values.pop()
        for f, v in zip(self.FIELDS, values, strict=False):
            _encode_field(body, f, v)
        n = len(values)
        if n == 0:
            out.append(0x45)
        elif len(body) + 1 < 256:
            out.append(0xC0)
            out.append(len(body) + 1)
            out.append(n)
            out += body
        else:
            out.append(0xD0)
            out += (len(body) + 4).to_bytes(4, "big")
            out += n.to_bytes(4, "big")
            out += body

    def to_bytes(self) -> bytes:
        out = bytearray()
        self.encode_into(out)
        return bytes(out)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f.name) == getattr(other, f.name) for f in self.FIELDS
        )

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        parts = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in self.FIELDS
            if getattr(self, f.name) is not None
        ]
        return f"{type(self).__name__}({', '.join(parts)})"


def _encode_field(out: bytearray, f: Field, v: Any) -> None:
    if v is None:
        out.append(0x40)
    elif f.multiple and isinstance(v, list | tuple):
        t = f.type if f.type != "*" else "symbol"
        out_items = [Symbol(x) if t == "symbol" else x for x in v]
        encode(out, Array(t, out_items))
    elif f.type in _MAP_FIELD_TYPES and isinstance(v, dict):
        encode_map_as(out, v, "symbol")
    else:
        encode_as(out, v, f.type)


class Section:
    """A described value of a restricted type (the message sections, annotations)."""

    __slots__ = ("value",)
    CODE: ClassVar[int] = 0
    SYMBOL: ClassVar[str] = ""
    SOURCE: ClassVar[str] = "*"

    def __init__(self, value: Any) -> None:
        self.value = value

    @classmethod
    def from_value(cls, value: Any) -> Section:
        return cls(value)

    def encode_into(self, out: bytearray) -> None:
        out.append(0x00)
        encode(out, ULong(self.CODE))
        if (
            self.SOURCE == "map"
            and isinstance(self.value, dict)
            and self.SYMBOL.endswith("annotations:map")
        ):
            encode_map_as(out, self.value, "symbol")
        else:
            encode_as(out, self.value, self.SOURCE)

    def to_bytes(self) -> bytes:
        out = bytearray()
        self.encode_into(out)
        return bytes(out)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.value == other.value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


def register(*classes: type[Composite] | type[Section]) -> None:
    """Let the decoder build ``classes`` from their numeric and symbolic descriptors."""
    for cls in classes:
        builder = cls.from_value
        codec.REGISTRY[ULong(cls.CODE)] = builder
        codec.REGISTRY[Symbol(cls.SYMBOL)] = builder
