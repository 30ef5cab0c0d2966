"""Durable definitions: vhosts, users, permissions, exchanges, queues, bindings, policies.

Owns: the ``Definitions`` Structs and ``DefinitionsStore`` (one file under data_dir).

File format (``definitions.json``)::

    SHARDMQ-DEFINITIONS 1 <crc32 of body, 8 hex> <len(body)>\\n
    <body: JSON of Definitions; every ``arguments`` / ``definition`` table is the AMQP
     field-table encoding of the dict, base64, so Decimal, Timestamp, ByteArray, bytes,
     nested tables and the integer widths come back exactly as decode_table gives them>

Invariants:
- ``save`` is atomic: write ``definitions.json.tmp``, fsync it, keep the current file as
  ``definitions.json.prev`` (hard link), rename the tmp over the file, fsync the
  directory. A crash at any point leaves the old or the new state on disk, never a
  mix; a leftover ``.tmp`` is ignored (and removed) by ``load``.
- ``load`` never returns a half-read state: a file failing its header, length or CRC
  check is refused; the previous version is used instead (with an error log) and if
  there is none ``DefinitionsError`` is raised rather than starting empty.
- Exclusive and non-durable things are never saved (the caller filters; ``save``
  checks ``durable``).
"""

from __future__ import annotations

import base64
import logging
import os
import zlib
from typing import Any, Literal

import msgspec
from msgspec import Struct, field

from shardmq.amqp.errors import HardError
from shardmq.amqp.fieldtable import decode_table, encode_table
from shardmq.store.segments import fsync_dir

log = logging.getLogger("shardmq.store")

FILE_NAME = "definitions.json"
MAGIC = b"SHARDMQ-DEFINITIONS"
FORMAT = 1


class DefinitionsError(Exception):
    """The definitions on disk are unusable (and no older version is)."""


class VHostDef(Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    tags: list[str] = field(default_factory=list)


class UserDef(Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    password_hash: str = ""  # base64, as in RabbitMQ's definitions export
    hashing_algorithm: str = "rabbit_password_hashing_sha256"
    tags: list[str] = field(default_factory=list)


class PermissionDef(Struct, kw_only=True, forbid_unknown_fields=True):
    user: str
    vhost: str
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"


class ExchangeDef(Struct, kw_only=True, forbid_unknown_fields=True):
    vhost: str
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)


class QueueDef(Struct, kw_only=True, forbid_unknown_fields=True):
    vhost: str
    name: str
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)


class BindingDef(Struct, kw_only=True, forbid_unknown_fields=True):
    vhost: str
    source: str
    destination: str
    destination_type: Literal["queue", "exchange"] = "queue"
    routing_key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)


class PolicyDef(Struct, kw_only=True, forbid_unknown_fields=True):
    vhost: str
    name: str
    pattern: str
    apply_to: str = "all"
    priority: int = 0
    definition: dict[str, Any] = field(default_factory=dict)


class Definitions(Struct, kw_only=True, forbid_unknown_fields=True):
    version: int = 0  # the metadata sequencer's version these definitions reflect
    vhosts: list[VHostDef] = field(default_factory=list)
    users: list[UserDef] = field(default_factory=list)
    permissions: list[PermissionDef] = field(default_factory=list)
    exchanges: list[ExchangeDef] = field(default_factory=list)
    queues: list[QueueDef] = field(default_factory=list)
    bindings: list[BindingDef] = field(default_factory=list)
    policies: list[PolicyDef] = field(default_factory=list)


_TABLES = {"exchanges": "arguments", "queues": "arguments", "bindings": "arguments"}
_TABLES["policies"] = "definition"


def encode(defs: Definitions) -> bytes:
    """The file's bytes for ``defs`` (header line + body)."""
    for kind in ("exchanges", "queues"):
        for item in getattr(defs, kind):
            if not item.durable:
                raise ValueError(f"{kind[:-1]} {item.name!r} is not durable")
    doc: dict[str, Any] = msgspec.structs.asdict(defs)
    for kind, key in _TABLES.items():
        items = []
        for item in doc[kind]:
            d = msgspec.structs.asdict(item)
            d[key] = encode_table(d[key])
            items.append(d)
        doc[kind] = items
    body = msgspec.json.encode(doc)
    head = b"%s %d %08x %d\n" % (MAGIC, FORMAT, zlib.crc32(body), len(body))
    return head + body


def decode(data: bytes) -> Definitions:
    """Parse a file's bytes; raises ``DefinitionsError`` when anything is off."""
    head, nl, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not nl or len(parts) != 4 or parts[0] != MAGIC:
        raise DefinitionsError("not a definitions file (bad header)")
    try:
        fmt, crc, length = int(parts[1]), int(parts[2], 16), int(parts[3])
    except ValueError as exc:
        raise DefinitionsError(f"bad header {head!r}") from exc
    if fmt != FORMAT:
        raise DefinitionsError(f"unsupported format {fmt}")
    if len(body) != length:
        raise DefinitionsError(f"truncated: {len(body)} of {length} bytes")
    if zlib.crc32(body) != crc:
        raise DefinitionsError("checksum mismatch")
    try:
        doc = msgspec.json.decode(body)
        for kind, key in _TABLES.items():
            for item in doc.get(kind, ()):
                table, _ = decode_table(base64.b64decode(item.get(key, "AAAAAA==")))
                item[key] = table
        return msgspec.convert(doc, Definitions)
    except (msgspec.DecodeError, msgspec.ValidationError, HardError, ValueError) as exc:
        raise DefinitionsError(f"bad content: {exc}") from exc


class DefinitionsStore:
    """``definitions.json`` under ``data_dir``: ``load()`` and atomic ``save()``.

    ``save`` blocks for two fsyncs (a few ms): call it from the control plane, or from
    a thread when that matters."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.join(self.data_dir, FILE_NAME)
        self.tmp = self.path + ".tmp"
        self.prev = self.path + ".prev"

    def load(self) -> Definitions:
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)  # a save that never got to its rename
        errors = []
        for path in (self.path, self.prev):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            try:
                defs = decode(data)
            except DefinitionsError as exc:
                log.error("%s: %s", path, exc)
                errors.append(f"{path}: {exc}")
                continue
            if errors:
                log.error("using the previous definitions from %s", path)
            return defs
        if errors:
            raise DefinitionsError("; ".join(errors))
        return Definitions()

    def save(self, defs: Definitions) -> None:
        data = encode(defs)
        os.makedirs(self.data_dir, exist_ok=True)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.path.exists(self.path):
            link = self.prev + ".tmp"
            if os.path.exists(link):
                os.unlink(link)
            os.link(self.path, link)
            os.replace(link, self.prev)
        os.replace(self.tmp, self.path)
        fsync_dir(self.data_dir)
