"""Durable definitions: vhosts, users, permissions, exchanges, queues, bindings, policies.

Owns: the ``Definitions`` Structs, the snapshot codec and ``DefinitionsStore``: a
snapshot file plus a log of the changes since it (``deflog.py``), under data_dir.

Files::

    definitions.json          the snapshot: a header line + JSON of Definitions
        SHARDMQ-DEFINITIONS 2 <crc32 of body, 8 hex> <len(body)> <generation>\\n
        (format 1, written by earlier versions, has no generation: read as 0)
        every ``arguments`` / ``definition`` table is the AMQP field-table encoding of
        the dict, base64, so Decimal, Timestamp, ByteArray, bytes, nested tables and the
        integer widths come back exactly as decode_table gives them
    definitions.json.prev     the previous snapshot (fallback if the file is damaged)
    definitions.<G>.log       the changes made after snapshot generation G

How a change becomes durable: ``put`` / ``delete`` update the in-memory state and
buffer a log record; ``commit`` appends every buffered record with one write and one
fdatasync (group commit: the caller commits once per loop turn). With ``defer_sync``
set, ``commit`` only writes (a process crash, kill -9, loses nothing: the bytes are in
the kernel) and hands the fdatasync to the owner, who reports it with ``synced``
(``unsynced`` says whether one is outstanding; ``sync`` does it now; ``close`` does it
too). The owner decides what may depend on a change before it is synced (see
``shardmq.broker.durable.DefinitionsKeeper.sync_through``). When the log has grown
beyond ``compact_ratio`` x the snapshot (and ``compact_min`` bytes), ``commit`` then
compacts: the whole state goes into a new snapshot of generation G+1 and an empty log
G+1 starts; log G is kept for the ``.prev`` fallback, older ones are deleted. Cost per
change: O(the change), plus the compactions, O(all definitions) each but at most one
per ``compact_ratio`` x snapshot bytes of log: amortized O(1).

Invariants:
- A snapshot is written atomically: ``definitions.json.tmp``, fsync, the current file
  kept as ``definitions.json.prev`` (hard link), rename, fsync of the directory. The
  new log G+1 exists (empty, synced) before the rename. A crash at any point leaves
  snapshot G with log G, or snapshot G+1 with log G+1 (empty): the old or the new state,
  never a mix; a leftover ``.tmp`` and logs newer than the snapshot are removed by
  ``load``.
- ``load`` = snapshot G + replay of log G, and writes nothing (unless it repairs, see
  below): the log is opened for appending by the first ``commit``. A torn tail (kill -9 or power loss mid-write:
  a record cut short or zero fill) is cut off with a warning; it can only hold a commit
  that never returned. A damaged record followed by more data (disk corruption) stops
  the replay there: the state is that of the records before it, an ERROR is logged, the
  damaged log is copied aside as ``.corrupt`` for inspection, and the broker starts.
  Never half a record, never a record after a bad one.
- A snapshot failing its header, length or CRC check is refused: the previous one is
  used with every log from its generation on (records are absolute, so replaying log G
  over snapshot G-1 + log G-1 gives the same state), an error is logged and the state is
  compacted into a fresh snapshot; if there is none ``DefinitionsError`` is raised
  rather than starting empty.
- A failed write or fsync raises ``OSError`` from ``commit``; the in-memory state is
  kept and the next ``commit`` writes all of it as a fresh snapshot. A failed deferred
  fdatasync (``synced`` with an error) is logged and does the same.
- A compaction never starts over an unsynced log: the append before it is synced at
  once (snapshot G + log G must be on disk before snapshot G+1 replaces them), and a
  finished compaction counts every earlier append as synced.
- Exclusive and non-durable things are never saved (the caller filters; ``put`` and
  ``save`` check ``durable``).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import zlib
from collections.abc import Callable, Hashable
from typing import Any, Literal

import msgspec
from msgspec import Struct, field

from shardmq.amqp.errors import HardError
from shardmq.amqp.fieldtable import decode_table, encode_table
from shardmq.store.deflog import DELETE, PUT, TABLE_FIELD, LogFile, encode_change, read_log
from shardmq.store.segments import fsync_dir

log = logging.getLogger("shardmq.store")

FILE_NAME = "definitions.json"


def log_path(data_dir: str, generation: int) -> str:
    """The changes log after snapshot ``generation`` in ``data_dir`` (also read by the
    workers' ``broker.defsync``, which has no store of its own)."""
    return os.path.join(data_dir, f"definitions.{generation}.log")


MAGIC = b"SHARDMQ-DEFINITIONS"
FORMAT = 2
READABLE_FORMATS = (1, 2)
LOG_NAME = re.compile(r"^definitions\.(\d+)\.log$")


class DefinitionsError(Exception):
    """The definitions on disk are unusable (and no older version is)."""


class VHostDef(Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    limits: dict[str, int] | None = None  # None: none set; {} set empty (RabbitMQ keeps it)


class UserDef(Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    password_hash: str = ""  # base64, as in RabbitMQ's definitions export
    hashing_algorithm: str = "rabbit_password_hashing_sha256"
    tags: list[str] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)


class PermissionDef(Struct, kw_only=True, forbid_unknown_fields=True):
    user: str
    vhost: str
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"


class TopicPermissionDef(Struct, kw_only=True, forbid_unknown_fields=True):
    user: str
    vhost: str
    exchange: str
    write: str = ""
    read: str = ""


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
    topic_permissions: list[TopicPermissionDef] = field(default_factory=list)
    exchanges: list[ExchangeDef] = field(default_factory=list)
    queues: list[QueueDef] = field(default_factory=list)
    bindings: list[BindingDef] = field(default_factory=list)
    policies: list[PolicyDef] = field(default_factory=list)


KINDS: dict[str, type[Any]] = {
    "vhosts": VHostDef,
    "users": UserDef,
    "permissions": PermissionDef,
    "topic_permissions": TopicPermissionDef,
    "exchanges": ExchangeDef,
    "queues": QueueDef,
    "bindings": BindingDef,
    "policies": PolicyDef,
}
KIND_OF: dict[type[Any], str] = {t: k for k, t in KINDS.items()}
AnyDef = (
    VHostDef
    | UserDef
    | PermissionDef
    | TopicPermissionDef
    | ExchangeDef
    | QueueDef
    | BindingDef
    | PolicyDef
)


def _key(kind: str, item: Any) -> Hashable:
    """What identifies a definition of ``kind`` (a put replaces, a delete removes it)."""
    if kind in ("vhosts", "users"):
        return item.name
    if kind == "permissions":
        return (item.user, item.vhost)
    if kind == "topic_permissions":
        return (item.user, item.vhost, item.exchange)
    if kind == "bindings":
        args = encode_table(item.arguments) if item.arguments else b""
        return (
            item.vhost,
            item.source,
            item.destination_type,
            item.destination,
            item.routing_key,
            args,
        )
    return (item.vhost, item.name)


def _check_durable(kind: str, item: Any) -> None:
    if kind in ("exchanges", "queues") and not item.durable:
        raise ValueError(f"{kind[:-1]} {item.name!r} is not durable")


def encode(defs: Definitions, generation: int = 0) -> bytes:
    """The snapshot file's bytes for ``defs`` (header line + body)."""
    for kind in ("exchanges", "queues"):
        for item in getattr(defs, kind):
            _check_durable(kind, item)
    doc: dict[str, Any] = msgspec.structs.asdict(defs)
    for kind, key in TABLE_FIELD.items():
        items = []
        for item in doc[kind]:
            d = msgspec.structs.asdict(item)
            d[key] = base64.b64encode(encode_table(d[key])).decode()
            items.append(d)
        doc[kind] = items
    body = msgspec.json.encode(doc)
    head = b"%s %d %08x %d %d\n" % (MAGIC, FORMAT, zlib.crc32(body), len(body), generation)
    return head + body


def decode_snapshot(data: bytes) -> tuple[Definitions, int]:
    """Parse a snapshot file's bytes: ``(definitions, generation)``; raises
    ``DefinitionsError`` when anything is off. Reads format 1 (generation 0) and 2."""
    head, nl, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not nl or len(parts) not in (4, 5) or parts[0] != MAGIC:
        raise DefinitionsError("not a definitions file (bad header)")
    try:
        fmt, crc, length = int(parts[1]), int(parts[2], 16), int(parts[3])
        generation = int(parts[4]) if len(parts) == 5 else 0
    except ValueError as exc:
        raise DefinitionsError(f"bad header {head!r}") from exc
    if fmt not in READABLE_FORMATS or len(parts) != (4 if fmt == 1 else 5):
        raise DefinitionsError(f"unsupported format {fmt}")
    if len(body) != length:
        raise DefinitionsError(f"truncated: {len(body)} of {length} bytes")
    if zlib.crc32(body) != crc:
        raise DefinitionsError("checksum mismatch")
    try:
        doc = msgspec.json.decode(body)
        for kind, key in TABLE_FIELD.items():
            for item in doc.get(kind, ()):
                table, _ = decode_table(base64.b64decode(item.get(key, "AAAAAA==")))
                item[key] = table
        return msgspec.convert(doc, Definitions), generation
    except (msgspec.DecodeError, msgspec.ValidationError, HardError, ValueError) as exc:
        raise DefinitionsError(f"bad content: {exc}") from exc


def decode(data: bytes) -> Definitions:
    """Parse a snapshot file's bytes (see ``decode_snapshot``)."""
    return decode_snapshot(data)[0]


def _header_generation(path: str) -> int:
    """The generation in a snapshot's header line (0 when unreadable)."""
    try:
        with open(path, "rb") as f:
            parts = f.readline(256).split()
        return int(parts[4]) if len(parts) == 5 else 0
    except (OSError, ValueError):
        return 0


class DefinitionsStore:
    """Snapshot + log under ``data_dir``: ``load()``, then ``put`` / ``delete`` and
    ``commit()`` (group commit), or ``save()`` to replace everything at once.

    ``commit`` blocks for one write and one fdatasync (a compaction: a snapshot write,
    three fsyncs); call it once per loop turn for all the changes of the turn."""

    def __init__(
        self, data_dir: str, *, compact_ratio: float = 4.0, compact_min: int = 256 * 1024
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.join(self.data_dir, FILE_NAME)
        self.tmp = self.path + ".tmp"
        self.prev = self.path + ".prev"
        self.compact_ratio = compact_ratio
        self.compact_min = compact_min
        self.version = 0  # written into the next snapshot (informational)
        self.generation = 0  # of the snapshot loaded / written, and of the log appended to
        self._state: dict[str, dict[Hashable, Any]] = {k: {} for k in KINDS}
        self._buf = bytearray()
        self._log: LogFile | None = None
        self._reopen: tuple[int, list[int]] | None = None  # (end, logs) until opened
        self._snapshot_bytes = 0
        self._loaded = False
        self._broken = False  # a write failed: the next commit writes a fresh snapshot
        self.commits = 0  # log appends (written; durable once synced)
        # Deferred fdatasync (set by the owner, e.g. the worker's group committer):
        # called with (log path, append number) after an append that was written and
        # not synced; returns True when it will sync it (then ``synced`` is called) and
        # False when the caller must sync now. None: every append is synced at once.
        self.defer_sync: Callable[[str, int], bool] | None = None
        self._written = 0  # appends so far
        self._synced = 0  # appends known to be on disk (fdatasync returned)
        self.compactions = 0
        # tests inject failures here: called with the name of each step of a compaction
        self.crash_point: Callable[[str], None] = _no_crash

    def log_path(self, generation: int) -> str:
        return log_path(self.data_dir, generation)

    @property
    def log_bytes(self) -> int:
        """Bytes in the current log (0 when it does not exist yet)."""
        if self._log is not None:
            return self._log.size
        return self._reopen[0] if self._reopen is not None else 0

    @property
    def pending(self) -> bool:
        """Changes made and not committed yet."""
        return bool(self._buf) or self._broken

    @property
    def appends(self) -> int:
        """Appends written to the log so far (by this process; a count, not bytes)."""
        return self._written

    @property
    def appends_synced(self) -> int:
        """Appends known to be on disk (a compaction counts every earlier one)."""
        return self._synced

    @property
    def unsynced(self) -> bool:
        """Some committed change is written to the log but not fdatasynced yet."""
        return self._synced < self._written

    def synced(self, upto: int, exc: OSError | None = None) -> None:
        """The deferred fdatasync of appends ``<= upto`` returned (``exc``: it failed:
        the next commit writes the whole state as a fresh, fsynced snapshot)."""
        if exc is not None:
            log.error("cannot sync the definitions log: %s", exc)
            self._broken = True
            return
        self._synced = max(self._synced, upto)

    def sync(self) -> None:
        """fdatasync the log now if an append is not known to be on disk."""
        if self.unsynced and self._log is not None:
            os.fdatasync(self._log.fd)
            self._synced = self._written

    # ------------------------------------------------------------ load
    def load(self) -> Definitions:
        self.close()
        self._buf.clear()
        self._broken = False
        for leftover in (self.tmp, self.prev + ".tmp"):
            if os.path.exists(leftover):
                os.unlink(leftover)  # a snapshot write that never got to its rename
        errors: list[str] = []
        defs, generation, fallback = Definitions(), 0, False
        found = False
        for path in (self.path, self.prev):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            try:
                defs, generation = decode_snapshot(data)
            except DefinitionsError as exc:
                log.error("%s: %s", path, exc)
                errors.append(f"{path}: {exc}")
                continue
            if errors:
                log.error("using the previous definitions from %s", path)
            fallback = path == self.prev
            self._snapshot_bytes = len(data)
            found = True
            break
        if not found and errors:
            raise DefinitionsError("; ".join(errors))
        self.version = defs.version
        self._state = {k: {} for k in KINDS}
        for kind in KINDS:
            table = self._state[kind]
            for item in getattr(defs, kind):
                table[_key(kind, item)] = item
        logs = self._log_generations()
        # the main snapshot: its own log; the previous one: every log from its on
        chain = [generation]
        if fallback:
            while generation + len(chain) in logs:
                chain.append(generation + len(chain))
        end, repair = self._replay(chain)
        self._loaded = True
        if fallback or repair:
            self.generation = max([generation, *logs])
            self._compact()  # a sane snapshot + log pair again
        else:
            # opened (a torn tail cut, stale logs removed) by the first commit: a
            # load alone writes nothing
            self.generation = generation
            self._reopen = (end, logs)
        return self.definitions()

    def _open_log(self) -> LogFile | None:
        if self._reopen is None:
            return None
        end, logs = self._reopen
        os.makedirs(self.data_dir, exist_ok=True)
        self._log = LogFile.open(self.log_path(self.generation), end)
        self._reopen = None
        for g in logs:
            if g > self.generation or g < self.generation - 1:
                _remove(self.log_path(g))  # from a compaction cut short / stale
        return self._log

    def _replay(self, chain: list[int]) -> tuple[int, bool]:
        """Apply the logs of ``chain`` in order. Returns where the last log's valid
        records end, and whether the chain stopped early (a damaged log before the
        last: the state needs a fresh snapshot)."""
        end = 0
        for i, generation in enumerate(chain):
            path = self.log_path(generation)
            scan = read_log(path, KINDS)
            for op, kind, item in scan.changes:
                table = self._state[kind]
                if op == PUT:
                    table[_key(kind, item)] = item
                elif op == DELETE:
                    table.pop(_key(kind, item), None)
            end = scan.end
            if scan.reason is None:
                continue
            lost = scan.size - scan.end
            if scan.corrupt:
                aside = path + ".corrupt"
                shutil.copyfile(path, aside)
                log.error(
                    "%s: %s; the %d byte(s) from offset %d are not applied (the changes "
                    "they held are lost; the file is kept as %s)",
                    path,
                    scan.reason,
                    lost,
                    scan.end,
                    aside,
                )
            else:
                log.warning(
                    "%s: %s; cutting a torn tail of %d byte(s) at offset %d",
                    path,
                    scan.reason,
                    lost,
                    scan.end,
                )
            if i < len(chain) - 1:
                return end, True
        return end, False

    def _log_generations(self) -> list[int]:
        try:
            names = os.listdir(self.data_dir)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(LOG_NAME.match, names) if m)

    def definitions(self) -> Definitions:
        """The state now (committed or not)."""
        s = self._state
        return Definitions(version=self.version, **{k: list(s[k].values()) for k in KINDS})

    # ------------------------------------------------------------ changes
    def put(self, item: AnyDef) -> None:
        """Add or replace a definition (durable after the next ``commit``)."""
        kind = KIND_OF[type(item)]
        _check_durable(kind, item)
        if not self._loaded:
            self.load()
        self._state[kind][_key(kind, item)] = item
        self._buf += encode_change(PUT, kind, item)

    def delete(self, item: AnyDef) -> None:
        """Remove a definition (matched by its identity: name, or a binding's fields)."""
        kind = KIND_OF[type(item)]
        if not self._loaded:
            self.load()
        if self._state[kind].pop(_key(kind, item), None) is not None:
            self._buf += encode_change(DELETE, kind, item)

    def commit(self) -> bool:
        """Make every change so far durable: one append + fdatasync of the log, or a
        compaction when the log has grown too big (or the last write failed). Returns
        True when it wrote something; raises ``OSError`` when that failed."""
        if not (self._buf or self._broken):
            return False
        log_file = self._log or self._open_log()
        limit = max(self.compact_min, self.compact_ratio * self._snapshot_bytes)
        if self._broken or log_file is None:
            self._compact()
            return True
        # synced at once when compacting next (snapshot G + log G must hold the whole
        # state on disk before the compaction starts) or when nobody syncs it later
        compacting = log_file.size + len(self._buf) > limit
        defer = self.defer_sync if not compacting else None
        try:
            # into the log even when compacting next: the previous snapshot + its log
            # must give the state the new snapshot has (the fallback relies on it)
            log_file.append(self._buf, sync=defer is None)
            self._written += 1
            if defer is None or not defer(log_file.path, self._written):
                if defer is not None:
                    os.fdatasync(log_file.fd)
                self._synced = self._written
        except OSError:
            self._broken = True
            self._buf.clear()
            raise
        self._buf.clear()
        self.commits += 1
        if log_file.size > limit:
            try:
                self._compact(log_intact=True)
            except OSError as exc:
                # the changes are durable in the log: only the compaction is retried
                log.error("cannot compact the definitions log: %s", exc)
        return True

    def save(self, defs: Definitions) -> None:
        """Replace everything with ``defs``, atomically (a compaction)."""
        for kind in ("exchanges", "queues"):
            for item in getattr(defs, kind):
                _check_durable(kind, item)
        if not self._loaded:
            self.generation = max([*self._log_generations(), _header_generation(self.path)])
            self._loaded = True
        self.version = defs.version
        self._state = {k: {_key(k, i): i for i in getattr(defs, k)} for k in KINDS}
        self._compact()

    # ------------------------------------------------------------ compaction
    def _compact(self, log_intact: bool = False) -> None:
        """Write the whole state as snapshot G+1 with an empty log G+1 (see the module
        doc for the order of the steps and why each crash point is safe).
        ``log_intact``: snapshot G + log G hold the whole state already (a compaction
        after a successful append), so a failure before the rename loses nothing."""
        self._broken = True  # until it completed
        self._buf.clear()
        generation = max([self.generation, *self._log_generations()]) + 1
        data = encode(self.definitions(), generation)
        os.makedirs(self.data_dir, exist_ok=True)
        crash = self.crash_point
        new_log = LogFile.open(self.log_path(generation), 0, sync_dir=False)  # synced below
        renamed = False
        try:
            new_log.append(b"")  # the magic, synced: the file is whole before it counts
            crash("log created")
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                crash("snapshot written")
                os.fsync(fd)
            finally:
                os.close(fd)
            crash("snapshot synced")
            if os.path.exists(self.path):
                link = self.prev + ".tmp"
                if os.path.exists(link):
                    os.unlink(link)
                os.link(self.path, link)
                os.replace(link, self.prev)
            crash("previous kept")
            os.replace(self.tmp, self.path)
            renamed = True
            crash("renamed")
            fsync_dir(self.data_dir)
            crash("directory synced")
        except BaseException:
            if not renamed:
                new_log.close()
                # with log_intact the next commit appends; else it compacts again
                self._broken = not log_intact
                raise
            # the new snapshot is in place: go on with its log, but it may not be
            # durable yet (its directory was not synced): the next commit compacts again
            self._switch(new_log, generation, len(data))
            raise
        self._switch(new_log, generation, len(data))
        self._broken = False
        self._synced = self._written  # the snapshot (fsynced) holds every append
        self.compactions += 1
        for g in self._log_generations():
            if g < generation - 1:
                _remove(self.log_path(g))

    def _switch(self, new_log: LogFile, generation: int, snapshot_bytes: int) -> None:
        if self._log is not None:
            self._log.close()
        self._log = new_log
        self._reopen = None
        self.generation = generation
        self._snapshot_bytes = snapshot_bytes

    def close(self) -> None:
        """Close the log, fdatasyncing what was written and not synced yet."""
        self._reopen = None
        if self._log is not None:
            try:
                self.sync()
            except OSError as exc:
                log.error("cannot sync the definitions log: %s", exc)
            self._log.close()
            self._log = None


def _no_crash(step: str) -> None:
    return None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("cannot delete %s: %s", path, exc)
