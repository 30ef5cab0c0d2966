"""Generator for ``shardmq/amqp/methods.py`` and ``constants.py`` from the AMQP 0-9-1 XML spec.

Owns: turning ``spec/amqp0-9-1.extended.xml`` (AMQP 0-9-1 with RabbitMQ's extensions)
(plus ``spec/rabbitmq-extensions.xml``: connection.blocked/unblocked/update-secret,
access.request, NO_ROUTE) into straight-line Python: one class per method with ``__slots__``, a ``decode``
classmethod and an ``encode`` method, plus constants, the ``METHODS`` table,
``decode_method`` and ``BasicProperties``.

Usage::

    python -m shardmq.amqp.gen_methods           # (re)write methods.py and constants.py
    python -m shardmq.amqp.gen_methods --check   # exit 1 if either is stale

``constants.py`` (frame types, reply codes and their names, soft/hard, class ids) is the
one source of those numbers: ``methods``, ``errors``, ``codec`` and the connection all
import them from there.

Invariants:
- output is a pure function of the XML (deterministic, no timestamps), so ``--check`` is
  a byte comparison;
- generated decoders only raise ``HardError`` (FRAME_ERROR) on malformed input;
- consecutive fixed-size fields (and the length prefix of the string that follows them)
  are read/written with a single precompiled ``struct.Struct``;
- the generated modules type-check with mypy (a generator change is checked with
  ``mypy shardmq/amqp``); the field hints are ``HINTS`` (a longstr attribute is ``bytes``).
"""

from __future__ import annotations

import argparse
import keyword
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
SPEC_PATH = HERE / "spec" / "amqp0-9-1.extended.xml"
EXTENSIONS_PATH = HERE / "spec" / "rabbitmq-extensions.xml"  # what the extended XML lacks
SPEC_PATHS = (SPEC_PATH, EXTENSIONS_PATH)
OUT_PATH = HERE / "methods.py"
CONSTANTS_PATH = HERE / "constants.py"

# Primitive AMQP types that are a fixed number of bytes: struct letter, size.
FIXED: dict[str, str] = {"octet": "B", "short": "H", "long": "I", "longlong": "Q", "timestamp": "Q"}
VARIABLE = {"shortstr", "longstr", "table"}
PRIMITIVES = set(FIXED) | VARIABLE | {"bit"}

# Python type hints and __init__ defaults per primitive type.
HINTS = {
    "octet": "int",
    "short": "int",
    "long": "int",
    "longlong": "int",
    "timestamp": "int",
    "shortstr": "str",
    "longstr": "bytes | str",
    "table": "dict[str, Any] | None",
    "bit": "bool",
}
DEFAULTS = {
    "octet": "0",
    "short": "0",
    "long": "0",
    "longlong": "0",
    "timestamp": "0",
    "shortstr": '""',
    "longstr": 'b""',
    "table": "None",
    "bit": "False",
}

# Content property renames: the XML calls basic's last property "reserved"; RabbitMQ and
# every client call it cluster-id.
PROPERTY_RENAMES = {("basic", "reserved"): "cluster-id"}


@dataclass
class Field:
    name: str  # as in the XML, e.g. "routing-key"
    type: str  # primitive type

    @property
    def attr(self) -> str:
        return py_name(self.name)


@dataclass
class MethodSpec:
    class_name: str
    class_id: int
    name: str
    method_id: int
    synchronous: bool
    content: bool
    fields: list[Field]
    responses: list[str] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.class_name}.{self.name}"

    @property
    def py_class(self) -> str:
        return camel(self.class_name) + camel(self.name)


@dataclass
class ClassSpec:
    name: str
    class_id: int
    methods: list[MethodSpec]
    properties: list[Field]


@dataclass
class Spec:
    major: int
    minor: int
    revision: int
    port: int
    constants: list[tuple[str, int, str | None]]  # name, value, "soft-error"/"hard-error"/None
    classes: list[ClassSpec]


def py_name(xml_name: str) -> str:
    name = xml_name.replace("-", "_")
    return name + "_" if keyword.iskeyword(name) else name


def bytes_literal(data: bytes) -> str:
    """``b"AMQP\\x00..."``: printable ASCII letters as is, everything else as \\xNN."""
    return (
        'b"'
        + "".join(chr(c) if chr(c).isascii() and chr(c).isalnum() else f"\\x{c:02x}" for c in data)
        + '"'
    )


def camel(xml_name: str) -> str:
    return "".join(part.capitalize() for part in xml_name.split("-"))


def const_name(xml_name: str) -> str:
    return xml_name.replace("-", "_").upper()


def load_spec(paths: tuple[Path, ...] = SPEC_PATHS) -> Spec:
    """Parse the spec file(s). Later files add constants, classes and methods (a class that
    exists already gets the new methods); classes and methods come out sorted by index."""
    domains: dict[str, str] = {}
    constants: dict[str, tuple[str, int, str | None]] = {}
    classes: dict[str, ClassSpec] = {}
    roots = [ET.parse(path).getroot() for path in paths]

    def resolve(el: ET.Element) -> str:
        t = el.attrib.get("type") or domains[el.attrib["domain"]]
        while t not in PRIMITIVES:  # domains may refer to domains
            t = domains[t]
        return t

    for root in roots:
        for d in root.iter("domain"):
            domains[d.attrib["name"]] = d.attrib["type"]
        for c in root.findall("constant"):
            name = const_name(c.attrib["name"])
            constants[name] = (name, int(c.attrib["value"]), c.attrib.get("class"))
        for c in root.findall("class"):
            cname = c.attrib["name"]
            cid = int(c.attrib["index"])
            cls = classes.setdefault(cname, ClassSpec(cname, cid, [], []))
            if cls.class_id != cid:
                raise ValueError(f"class {cname}: conflicting index {cid} != {cls.class_id}")
            cls.properties += [
                Field(PROPERTY_RENAMES.get((cname, f.attrib["name"]), f.attrib["name"]), resolve(f))
                for f in c.findall("field")
            ]
            for m in c.findall("method"):
                cls.methods.append(
                    MethodSpec(
                        class_name=cname,
                        class_id=cid,
                        name=m.attrib["name"],
                        method_id=int(m.attrib["index"]),
                        synchronous=m.attrib.get("synchronous") == "1",
                        content=m.attrib.get("content") == "1",
                        fields=[Field(f.attrib["name"], resolve(f)) for f in m.findall("field")],
                        responses=[r.attrib["name"] for r in m.findall("response")],
                    )
                )
    for cls in classes.values():
        cls.methods.sort(key=lambda m: m.method_id)
        ids = [m.method_id for m in cls.methods]
        if len(set(ids)) != len(ids):
            raise ValueError(f"class {cls.name}: duplicate method index")

    # other constants (frame types and sizes) in file order, then reply codes by value
    def is_reply(c: tuple[str, int, str | None]) -> bool:
        return c[2] is not None or c[0].startswith("REPLY_")

    other = [c for c in constants.values() if not is_reply(c)]
    replies = sorted((c for c in constants.values() if is_reply(c)), key=lambda c: c[1])
    main = roots[0]
    return Spec(
        major=int(main.attrib["major"]),
        minor=int(main.attrib["minor"]),
        revision=int(main.attrib["revision"]),
        port=int(main.attrib["port"]),
        constants=other + replies,
        classes=sorted(classes.values(), key=lambda c: c.class_id),
    )


# --------------------------------------------------------------------------- code model


class StructRegistry:
    """Collects the struct formats the generated module needs (one Struct per format)."""

    def __init__(self) -> None:
        self.formats: set[str] = {"HH", "H", "B", "Q"}

    def name(self, fmt: str) -> str:
        self.formats.add(fmt)
        return f"_S_{fmt}"

    def emit(self) -> list[str]:
        return [f'_S_{fmt} = struct.Struct("!{fmt}")' for fmt in sorted(self.formats)]


SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8}

# First lines of every decoder that reads a shortstr. ``slice.decode()`` is the cheapest
# way from bytes/bytearray to str (``str(slice, "utf-8")`` and ``codecs.utf_8_decode``
# cost ~100 ns more per field), but a memoryview has no ``.decode()``: one type check per
# decode sends a memoryview to a copy (the connection passes bytes or bytearray).
MEMORYVIEW_GUARD = [
    "        if type(buf) is memoryview:  # its slices have no .decode(): decode a copy",
    "            return cls.decode(buf[offset:].tobytes())",
]


def _decode_ops(fields: list[Field]) -> list[tuple]:
    """Field list -> ops: ("fix", fmt, target) | ("bits", var, [attrs]) | ("sstr"/"lstr", attr, nvar)
    | ("table", attr). Length prefixes are "fix" ops targeting the n-variable."""
    ops: list[tuple] = []
    nstr = 0
    nbits = 0
    bit_group: list[str] | None = None
    for f in fields:
        if f.type == "bit":
            if bit_group is None or len(bit_group) == 8:
                bit_group = []
                ops.append(("fix", "B", f"bits{nbits}"))
                ops.append(("bits", f"bits{nbits}", bit_group))
                nbits += 1
            bit_group.append(f.attr)
            continue
        bit_group = None
        if f.type in FIXED:
            ops.append(("fix", FIXED[f.type], f.attr))
        elif f.type in ("shortstr", "longstr"):
            nstr += 1
            ops.append(("fix", "B" if f.type == "shortstr" else "I", f"n{nstr}"))
            ops.append(("sstr" if f.type == "shortstr" else "lstr", f.attr, f"n{nstr}"))
        elif f.type == "table":
            ops.append(("table", f.attr))
        else:  # pragma: no cover - guarded by PRIMITIVES
            raise ValueError(f.type)
    return ops


def gen_decode(m: MethodSpec, structs: StructRegistry) -> list[str]:
    out = [
        "    @classmethod",
        f"    def decode(cls, buf: Buffer, offset: int = 0) -> {m.py_class}:",
    ]
    if not m.fields:
        out.append("        return _new(cls)")
        return out
    ops = _decode_ops(m.fields)
    fields = {f.attr for f in m.fields}

    def target(name: str) -> str:
        return f"self.{name}" if name in fields else name

    body: list[str] = ["o = offset"]
    pending_bits: list[tuple[str, list[str]]] = []
    i = 0
    last_is_slice = False
    has_shortstr = False
    while i < len(ops):
        op = ops[i]
        if op[0] == "fix":
            fmt, targets = "", []
            while i < len(ops) and ops[i][0] in ("fix", "bits"):
                if ops[i][0] == "fix":
                    fmt += ops[i][1]
                    targets.append(target(ops[i][2]))
                else:
                    pending_bits.append((ops[i][1], ops[i][2]))
                i += 1
            if fmt == "B":
                body.append(f"{targets[0]} = buf[o]")
            else:
                lhs = f"({targets[0]},)" if len(targets) == 1 else ", ".join(targets)
                body.append(f"{lhs} = {structs.name(fmt)}.unpack_from(buf, o)")
            body.append(f"o += {sum(SIZES[c] for c in fmt)}")
            last_is_slice = False
            continue
        if op[0] == "sstr":
            body.append(f"self.{op[1]} = buf[o : o + {op[2]}].decode()")
            body.append(f"o += {op[2]}")
            last_is_slice = True
            has_shortstr = True
        elif op[0] == "lstr":
            body.append(f"self.{op[1]} = bytes(buf[o : o + {op[2]}])")
            body.append(f"o += {op[2]}")
            last_is_slice = True
        elif op[0] == "table":
            body.append(f"self.{op[1]}, o = decode_table(buf, o)")
            last_is_slice = False
        i += 1
    if not last_is_slice and body[-1].startswith("o += "):
        body.pop()  # nothing reads past the last fixed group
    if last_is_slice:
        body.append("if o > len(buf):")
        body.append('    raise IndexError("truncated")')
    if has_shortstr:
        out.extend(MEMORYVIEW_GUARD)
    out.append("        self = _new(cls)")
    out.append("        try:")
    out.extend("            " + line for line in body)
    out.append("        except _DECODE_ERRORS as exc:")
    out.append("            raise _malformed(cls, exc) from None")
    for var, attrs in pending_bits:
        for bit, attr in enumerate(attrs):
            out.append(f"        self.{attr} = ({var} & {1 << bit}) != 0")
    out.append("        return self")
    return out


_EncodeItem = (
    tuple[Literal["fmt"], str, str] | tuple[Literal["bits"], list[str]] | tuple[Literal["raw"], str]
)


def _pack_expr(structs: StructRegistry, fmt: str, args: list[str]) -> str:
    return f"{structs.name(fmt)}.pack({', '.join(args)})"


def gen_encode(m: MethodSpec, structs: StructRegistry) -> list[str]:
    out = ["    def encode(self) -> bytes:"]
    header = m.class_id.to_bytes(2, "big") + m.method_id.to_bytes(2, "big")
    if not m.fields:
        out.append(f"        return {bytes_literal(header)}")
        return out
    pre: list[str] = []
    # items: ("fmt", letter, expr) (one struct value) | ("bits", [attrs]) (one octet)
    # | ("raw", expr) (bytes appended as they are)
    items: list[_EncodeItem] = [("fmt", "H", str(m.class_id)), ("fmt", "H", str(m.method_id))]
    bit_group: list[str] | None = None
    for f in m.fields:
        if f.type == "bit":
            if bit_group is None or len(bit_group) == 8:
                bit_group = []
                items.append(("bits", bit_group))
            bit_group.append(f.attr)
            continue
        bit_group = None
        if f.type in FIXED:
            items.append(("fmt", FIXED[f.type], f"self.{f.attr}"))
        elif f.type == "shortstr":
            var = f"{f.attr}_b"
            pre.append(f"{var} = self.{f.attr}.encode()")
            pre.append(f"if len({var}) > 255:")
            pre.append(f'    raise _shortstr_too_long("{m.full_name}.{f.attr}")')
            items.append(("fmt", "B", f"len({var})"))
            items.append(("raw", var))
        elif f.type == "longstr":
            var = f"{f.attr}_b"  # bytes: __init__ encodes a str
            pre.append(f"{var} = self.{f.attr}")
            items.append(("fmt", "I", f"len({var})"))
            items.append(("raw", var))
        elif f.type == "table":
            items.append(("raw", f"encode_table(self.{f.attr})"))
    parts: list[str] = []
    fmt, args = "", []
    nbits = 0
    for item in items:
        if item[0] == "fmt" or item[0] == "bits":
            if item[0] == "fmt":
                fmt += item[1]
                args.append(item[2])
            else:
                fmt += "B"
                attrs = item[1]
                var = f"bits{nbits}"
                nbits += 1
                if len(attrs) == 1:
                    pre.append(f"{var} = 1 if self.{attrs[0]} else 0")
                else:
                    terms = [f"({1 << b} if self.{a} else 0)" for b, a in enumerate(attrs)]
                    if len(" | ".join(terms)) + len(var) + 11 <= 100:
                        pre.append(f"{var} = " + " | ".join(terms))
                    else:
                        pre.append(f"{var} = (")
                        pre.append(f"    {terms[0]}")
                        pre.extend(f"    | {t}" for t in terms[1:])
                        pre.append(")")
                args.append(var)
            continue
        if fmt:
            parts.append(_pack_expr(structs, fmt, args))
            fmt, args = "", []
        parts.append(item[1])
    if fmt:
        parts.append(_pack_expr(structs, fmt, args))
    out.extend("        " + line for line in pre)
    if len(parts) == 1:
        expr = parts[0]
        line = f"        return {expr}"
        if len(line) <= 100:
            out.append(line)
        else:
            out.append(f"        return {expr.split('(', 1)[0]}(")
            for a in expr.split("(", 1)[1][:-1].split(", "):
                out.append(f"            {a},")
            out.append("        )")
    elif len(parts) == 2 and len(f"        return {parts[0]} + {parts[1]}") <= 100:
        out.append(f"        return {parts[0]} + {parts[1]}")
    else:
        out.append('        return b"".join(')
        out.append("            (")
        for p in parts:
            out.append(f"                {p},")
        out.append("            )")
        out.append("        )")
    return out


def gen_init(
    fields: list[Field], hint_overrides: dict[str, str] | None = None, all_none: bool = False
) -> list[str]:
    params = []
    for f in fields:
        hint = HINTS[f.type]
        default = DEFAULTS[f.type]
        if all_none:
            hint = hint if hint.endswith("| None") else f"{hint} | None"
            default = "None"
        params.append(f"{f.attr}: {hint} = {default}")
    one_line = f"    def __init__(self, {', '.join(params)}) -> None:"
    out = []
    if len(one_line) <= 100:
        out.append(one_line)
    else:
        out.append("    def __init__(")
        out.append("        self,")
        out.extend(f"        {p}," for p in params)
        out.append("    ) -> None:")
    for f in fields:
        if f.type == "longstr":  # the attribute is always bytes (as decoded); str is encoded
            out.append(
                f"        self.{f.attr} = {f.attr}.encode() if isinstance({f.attr}, str) else {f.attr}"
            )
        else:
            out.append(f"        self.{f.attr} = {f.attr}")
    return out


def _tuple_literal(names: list[str], indent: str) -> list[str]:
    if not names:
        return ["()"]
    if len(names) == 1:
        return [f'("{names[0]}",)']
    one = "(" + ", ".join(f'"{n}"' for n in names) + ")"
    if len(indent) + len(one) + 20 <= 100:
        return [one]
    return ["("] + [f'{indent}    "{n}",' for n in names] + [f"{indent})"]


def gen_method_class(
    m: MethodSpec, by_name: dict[str, MethodSpec], structs: StructRegistry
) -> list[str]:
    layout = ", ".join(f"{f.attr}:{f.type}" for f in m.fields) or "no arguments"
    flags = []
    if m.synchronous:
        flags.append("synchronous")
    if m.content:
        flags.append("carries content")
    doc = f"{m.full_name} ({m.class_id}, {m.method_id})"
    if flags:
        doc += ", " + ", ".join(flags)
    out = [f"class {m.py_class}(Method):", f'    """{doc}.', "", f"    Wire: {layout}."]
    out[-1:] = _wrap_doc(f"Wire: {layout}.", "    ")
    out.append('    """')
    out.append("")
    slots = _tuple_literal([f.attr for f in m.fields], "    ")
    out.append(f"    __slots__ = {slots[0]}")
    out.extend(slots[1:])
    out.append(f"    CLASS_ID = {m.class_id}")
    out.append(f"    METHOD_ID = {m.method_id}")
    out.append(f"    INDEX = 0x{(m.class_id << 16) | m.method_id:08X}")
    out.append(f'    NAME = "{m.full_name}"')
    out.append(f"    SYNCHRONOUS = {m.synchronous}")
    out.append(f"    HAS_CONTENT = {m.content}")
    out.append("    FIELDS = __slots__")
    # a literal (not ``= __slots__``): type checkers check match statements against it
    out.append(f"    __match_args__ = {slots[0]}")
    out.extend(slots[1:])
    resp = [by_name[f"{m.class_name}.{r}"] for r in m.responses]
    if resp:
        inner = ", ".join(f"0x{(r.class_id << 16) | r.method_id:08X}" for r in resp)
        out.append(
            f"    RESPONSES = ({inner},)" if len(resp) == 1 else f"    RESPONSES = ({inner})"
        )
    out.append("")
    if m.fields:
        out.extend(gen_init(m.fields))
        out.append("")
    out.extend(gen_decode(m, structs))
    out.append("")
    out.extend(gen_encode(m, structs))
    return out


def _wrap_doc(text: str, indent: str, width: int = 96) -> list[str]:
    words = text.split(" ")
    lines, cur = [], indent
    for w in words:
        if len(cur) + len(w) + 1 > width and cur.strip():
            lines.append(cur.rstrip())
            cur = indent + "    "
        cur += w + " "
    lines.append(cur.rstrip())
    return lines


def gen_properties(c: ClassSpec, structs: StructRegistry) -> list[str]:
    props = c.properties
    if len(props) > 15:  # pragma: no cover - would need flag continuation on encode
        raise ValueError("more than 15 properties not supported")
    bits = {p.attr: 1 << (15 - i) for i, p in enumerate(props)}
    cls_name = camel(c.name) + "Properties"
    out = [
        f"class {cls_name}:",
        f'    """Content header properties of class {c.name} (all optional, ``None`` = absent).',
        "",
        "    ``decode`` starts at the first 16-bit property-flags word (after class-id, weight",
        "    and body-size); flag words with bit 0 set are followed by another, whose flags are",
        "    ignored. ``encode`` returns flags + property list. Property bit 15 = first property.",
        '    """',
        "",
    ]
    slots = _tuple_literal([p.attr for p in props], "    ")
    out.append(f"    __slots__ = {slots[0]}")
    out.extend(slots[1:])
    out.append(f"    CLASS_ID = {c.class_id}")
    out.append("    FIELDS = __slots__")
    out.append("    FLAGS: ClassVar[dict[str, int]] = {")
    out.extend(f'        "{p.attr}": 0x{bits[p.attr]:04X},' for p in props)
    out.append("    }")
    out.append("")
    out.extend(gen_init(props, all_none=True))
    out.append("")
    # decode
    out.append("    @classmethod")
    out.append(f"    def decode(cls, buf: Buffer, offset: int = 0) -> {cls_name}:")
    out.extend(MEMORYVIEW_GUARD)
    out.append("        self = _new(cls)")
    out.append("        try:")
    body = [
        f"({'flags'},) = {structs.name('H')}.unpack_from(buf, offset)",
        "o = offset + 2",
        "more = flags",
        "while more & 1:",
        f"    (more,) = {structs.name('H')}.unpack_from(buf, o)",
        "    o += 2",
    ]
    last_slice_possible = False
    for p in props:
        body.append(f"if flags & 0x{bits[p.attr]:04X}:")
        if p.type == "shortstr":
            body += [
                "    n = buf[o]",
                f"    self.{p.attr} = buf[o + 1 : o + 1 + n].decode()",
                "    o += 1 + n",
            ]
            last_slice_possible = True
        elif p.type == "longstr":
            body += [
                f"    (n,) = {structs.name('I')}.unpack_from(buf, o)",
                f"    self.{p.attr} = bytes(buf[o + 4 : o + 4 + n])",
                "    o += 4 + n",
            ]
            last_slice_possible = True
        elif p.type == "table":
            body.append(f"    self.{p.attr}, o = decode_table(buf, o)")
        elif p.type == "octet":
            body += [f"    self.{p.attr} = buf[o]", "    o += 1"]
        elif p.type in FIXED:
            fmt = FIXED[p.type]
            body += [
                f"    (self.{p.attr},) = {structs.name(fmt)}.unpack_from(buf, o)",
                f"    o += {SIZES[fmt]}",
            ]
        else:  # pragma: no cover - no bit properties in 0-9-1 basic
            raise ValueError(f"unsupported property type {p.type}")
        body += ["else:", f"    self.{p.attr} = None"]
    if last_slice_possible:
        body += ["if o > len(buf):", '    raise IndexError("truncated")']
    out.extend("            " + line for line in body)
    out.append("        except _DECODE_ERRORS as exc:")
    out.append("            raise _malformed(cls, exc) from None")
    out.append("        return self")
    out.append("")
    # encode
    out.append("    def encode(self) -> bytes:")
    out.append("        flags = 0")
    out.append('        parts = [b""]')
    for p in props:
        # one local per property (each has its own type), named after it
        v = p.attr
        if v in ("self", "flags", "parts", "b"):  # pragma: no cover - not in 0-9-1
            raise ValueError(f"property name {v!r} clashes with a local of encode()")
        out.append(f"        {v} = self.{p.attr}")
        out.append(f"        if {v} is not None:")
        out.append(f"            flags |= 0x{bits[p.attr]:04X}")
        if p.type == "shortstr":
            out += [
                f"            b = {v}.encode()",
                "            if len(b) > 255:",
                f'                raise _shortstr_too_long("{cls_name}.{p.attr}")',
                f"            parts.append({structs.name('B')}.pack(len(b)))",
                "            parts.append(b)",
            ]
        elif p.type == "longstr":
            out += [
                f"            b = {v}.encode() if isinstance({v}, str) else bytes({v})",
                f"            parts.append({structs.name('I')}.pack(len(b)))",
                "            parts.append(b)",
            ]
        elif p.type == "table":
            out.append(f"            parts.append(encode_table({v}))")
        else:
            out.append(f"            parts.append({structs.name(FIXED[p.type])}.pack({v}))")
    out.append(f"        parts[0] = {structs.name('H')}.pack(flags)")
    out.append('        return b"".join(parts)')
    out.append("")
    out.append("    def __eq__(self, other: object) -> bool:")
    out.append("        if type(other) is not type(self):")
    out.append("            return NotImplemented")
    out.append("        return all(getattr(self, f) == getattr(other, f) for f in self.FIELDS)")
    out.append("")
    out.append("    __hash__ = None  # type: ignore[assignment]")
    out.append("")
    out.append("    def __repr__(self) -> str:")
    out.append("        present = ((f, getattr(self, f)) for f in self.FIELDS)")
    out.append('        args = ", ".join(f"{f}={v!r}" for f, v in present if v is not None)')
    out.append('        return f"{type(self).__name__}({args})"')
    return out


HEADER = '''\
"""AMQP 0-9-1 method classes, constants and content properties.

GENERATED by ``python -m shardmq.amqp.gen_methods`` from
``shardmq/amqp/spec/amqp0-9-1.extended.xml`` + ``rabbitmq-extensions.xml``;
do not edit, change the generator or the spec files instead.

Owns: one class per method of every class in the spec, each with ``__slots__`` = its
fields, ``decode(buf, offset)`` (offset = first argument byte, after class-id/method-id)
and ``encode()`` (the whole method frame payload: class-id, method-id, arguments);
``METHODS`` (INDEX -> class), ``decode_method(payload)`` and ``BasicProperties``.

Invariants: decoders accept bytes/bytearray/memoryview (one with a shortstr decodes a
memoryview from a copy) and raise only ``HardError`` (FRAME_ERROR for malformed input,
COMMAND_INVALID for an unknown method); shortstr fields decode to ``str``, longstr to
``bytes`` (a constructor also takes a ``str`` and stores it UTF-8 encoded), tables to
``dict`` (``None`` in a constructor means an empty table); bits are packed LSB first.
The module type-checks (mypy): ``__match_args__`` is a literal tuple.
"""

# fmt: off
from __future__ import annotations

import struct
from typing import Any, ClassVar

from shardmq.amqp.errors import AMQPError, HardError
from shardmq.amqp.fieldtable import decode_table, encode_table

Buffer = bytes | bytearray | memoryview
'''

RUNTIME = '''\
_DECODE_ERRORS = (IndexError, struct.error, UnicodeDecodeError, ValueError, TypeError)


def _malformed(cls: type, exc: BaseException) -> HardError:
    return HardError(
        FRAME_ERROR,
        f"malformed {cls.NAME if hasattr(cls, 'NAME') else cls.__name__}: "
        f"{exc.__class__.__name__}",
        getattr(cls, "CLASS_ID", 0),
        getattr(cls, "METHOD_ID", 0),
    )


_new = object.__new__


def _shortstr_too_long(what: str) -> ValueError:
    return ValueError(f"{what}: shortstr longer than 255 bytes")


class Method:
    """Base of all method classes. Subclasses set the class attributes below."""

    __slots__ = ()
    CLASS_ID: ClassVar[int] = 0
    METHOD_ID: ClassVar[int] = 0
    INDEX: ClassVar[int] = 0
    NAME: ClassVar[str] = ""
    SYNCHRONOUS: ClassVar[bool] = False
    HAS_CONTENT: ClassVar[bool] = False
    FIELDS: ClassVar[tuple[str, ...]] = ()
    RESPONSES: ClassVar[tuple[int, ...]] = ()  # INDEX of the methods that answer this one

    @classmethod
    def decode(cls, buf: Buffer, offset: int = 0) -> Method:
        raise NotImplementedError

    def encode(self) -> bytes:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for name in self.FIELDS:
            a = getattr(self, name)
            b = getattr(other, name)
            if a != b and not ((a is None and b == {}) or (b is None and a == {})):
                return False  # (None and {} are both the empty table)
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({args})"
'''

TAIL = '''\
def decode_method(payload: Buffer) -> Method:
    """Decode a method frame payload (class-id, method-id, arguments)."""
    if len(payload) < 4:
        raise HardError(FRAME_ERROR, f"method frame payload too short ({len(payload)} bytes)")
    class_id, method_id = _S_HH.unpack_from(payload, 0)
    cls = METHODS.get(class_id << 16 | method_id)
    if cls is None:
        raise HardError(
            COMMAND_INVALID,
            f"unknown method class_id={class_id} method_id={method_id}",
            class_id,
            method_id,
        )
    try:
        return cls.decode(payload, 4)
    except AMQPError as exc:  # e.g. a bad field table: attach the method's ids
        if not exc.class_id:
            exc.class_id = class_id
            exc.method_id = method_id
        raise
'''


def constant_names(spec: Spec) -> list[str]:
    """Every name ``constants.py`` defines (re-exported by ``methods.py``)."""
    names = ["PROTOCOL_HEADER", "VERSION", "PORT"]
    names += [name for name, _, _ in spec.constants]
    names += ["ERROR_CLASSES", "SOFT_ERRORS", "HARD_ERRORS", "REPLY_NAMES", "CLASS_IDS"]
    names += [f"CLASS_{const_name(c.name)}" for c in spec.classes]
    return names


CONSTANTS_HEADER = '''\
"""AMQP 0-9-1 constants: protocol header, frame types, reply codes, class ids.

GENERATED by ``python -m shardmq.amqp.gen_methods`` from
``shardmq/amqp/spec/amqp0-9-1.extended.xml`` + ``rabbitmq-extensions.xml``;
do not edit, change the generator or the spec files instead.

Owns: the numbers of the protocol, in one place (a leaf module: it imports nothing).
"""

# fmt: off
from __future__ import annotations
'''


def generate_constants(spec: Spec) -> str:
    out: list[str] = [CONSTANTS_HEADER]
    out.append("# Protocol")
    header = bytes([0, spec.major, spec.minor, spec.revision])
    out.append(f"PROTOCOL_HEADER = {bytes_literal(b'AMQP' + header)}")
    out.append(f"VERSION = ({spec.major}, {spec.minor}, {spec.revision})")
    out.append(f"PORT = {spec.port}")
    out.append("")
    out.append("# Constants")
    for name, value, _ in spec.constants:
        out.append(f"{name} = {value}")
    out.append("")
    out.append('# Reply code -> "soft-error" (closes the channel) or "hard-error" (the connection)')
    out.append("ERROR_CLASSES: dict[int, str] = {")
    for name, _, kind in spec.constants:
        if kind:
            out.append(f'    {name}: "{kind}",')
    out.append("}")
    out.append(
        "SOFT_ERRORS: frozenset[int] = frozenset("
        'c for c, k in ERROR_CLASSES.items() if k == "soft-error")'
    )
    out.append(
        "HARD_ERRORS: frozenset[int] = frozenset("
        'c for c, k in ERROR_CLASSES.items() if k == "hard-error")'
    )
    out.append("")
    out.append("# Reply code -> its name in the spec (as RabbitMQ prints it in reply texts)")
    out.append("REPLY_NAMES: dict[int, str] = {")
    for name, _, kind in spec.constants:
        if kind:
            out.append(f'    {name}: "{name}",')
    out.append("}")
    out.append("")
    out.append("# Class ids")
    for c in spec.classes:
        out.append(f"CLASS_{const_name(c.name)} = {c.class_id}")
    ids = ", ".join(f"CLASS_{const_name(c.name)}" for c in spec.classes)
    out.append(f"CLASS_IDS: frozenset[int] = frozenset(({ids}))")
    return "\n".join(out) + "\n"


def generate(spec: Spec) -> str:
    structs = StructRegistry()
    by_name = {m.full_name: m for c in spec.classes for m in c.methods}
    body: list[str] = []
    for c in spec.classes:
        for m in c.methods:
            body.append("")
            body.append("")
            body.extend(gen_method_class(m, by_name, structs))
    props_code: list[str] = []
    for c in spec.classes:
        if c.properties:
            props_code += ["", ""] + gen_properties(c, structs)

    out: list[str] = [HEADER]
    out.append("# The protocol's numbers live in constants.py; re-exported here as M.<NAME>")
    out.append("from shardmq.amqp.constants import (")
    for name in constant_names(spec):
        out.append(f"    {name},")
    out.append(")")
    out.append("")
    out.extend(structs.emit())
    out.append("")
    out.append("")
    out.append(RUNTIME.rstrip("\n"))
    out.extend(body)
    out.extend(props_code)
    out.append("")
    out.append("")
    out.append("METHODS: dict[int, type[Method]] = {")
    for c in spec.classes:
        for m in c.methods:
            out.append(f"    {m.py_class}.INDEX: {m.py_class},")
    out.append("}")
    out.append("")
    out.append("")
    out.append(TAIL.rstrip("\n"))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if methods.py is stale")
    parser.add_argument("--spec", type=Path, nargs="+", default=list(SPEC_PATHS))
    parser.add_argument("--out", type=Path, default=OUT_PATH)
    parser.add_argument("--constants-out", type=Path, default=CONSTANTS_PATH)
    args = parser.parse_args(argv)
    spec = load_spec(tuple(args.spec))
    outputs = [(args.out, generate(spec)), (args.constants_out, generate_constants(spec))]
    if args.check:
        stale = 0
        for path, code in outputs:
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != code:
                print(
                    f"{path} is out of date: run python -m shardmq.amqp.gen_methods",
                    file=sys.stderr,
                )
                stale = 1
        return stale
    for path, code in outputs:
        path.write_text(code, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
