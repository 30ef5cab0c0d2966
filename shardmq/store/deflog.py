"""The definitions log: an append-only file of definition changes since a snapshot.

Owns: the change-record codec (``encode_change`` / ``decode_change``), ``read_log`` (replay
one log file: its changes, where its valid records end, what stopped the scan) and
``LogFile`` (the open file being appended to: one write + fdatasync per commit).

File layout (``data_dir/definitions.<generation>.log``, framing from ``segments.py``)::

    magic b"SMQDLOG1"
    record*   u32 n | u32 crc | payload   (little endian; crc = crc32(payload) seeded
              with n ^ CRC_SEED, so a zero-filled tail is not a valid record)
    payload = msgpack [op, kind, item]: op 1 = put, 2 = delete; kind = the name of a
              ``Definitions`` list ("queues", ...); item = the definition as a map, each
              field table (``arguments`` / ``definition``) as its AMQP encoding (bytes),
              so tables come back exactly as ``decode_table`` gives them

Invariants:
- Records are absolute: a put is the whole definition as it now is, a delete says it is
  gone. Replaying any prefix of a log over its snapshot gives the state after that
  prefix, and replaying a log over a state that already includes it changes nothing.
- A log only grows by whole records, one ``os.write`` per commit; ``LogFile.size`` is
  the offset up to which the file holds whole records. A failed write is cut back.
- ``read_log`` stops at the first record that is not whole, fails its CRC or does not
  decode: nothing after it is applied (the state is always that of a prefix). It says
  whether that is a *torn tail* (the bad record runs to or past the end of the file, or
  the rest is zero fill: a write cut short by kill -9 or a power loss; nothing that was
  committed is lost) or *corruption* (valid-looking bytes follow the bad record: the
  disk damaged committed records; the records after it are lost).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shardmq.amqp.errors import HardError
from shardmq.amqp.fieldtable import decode_table, encode_table
from shardmq.store.segments import (
    FRAME,
    FRAME_SIZE,
    MAGIC_SIZE,
    SegmentFile,
    frame_record,
    fsync_dir,
)

log = logging.getLogger("shardmq.store")

LOG_MAGIC = b"SMQDLOG1"
PUT = 1
DELETE = 2
# the field table of each kind that has one
TABLE_FIELD = {"exchanges": "arguments", "queues": "arguments", "bindings": "arguments"}
TABLE_FIELD["policies"] = "definition"

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode


class BadRecord(Exception):
    """A record with a valid CRC whose content is not a change this version knows."""


def encode_change(op: int, kind: str, item: msgspec.Struct) -> bytes:
    """The framed bytes of one change record."""
    doc = msgspec.structs.asdict(item)
    key = TABLE_FIELD.get(kind)
    if key is not None:
        doc[key] = encode_table(doc[key])
    return frame_record(_encode([op, kind, doc]))


def decode_change(payload: bytes | memoryview, types: dict[str, type[Any]]) -> tuple[int, str, Any]:
    """``(op, kind, item)`` of one record payload; ``BadRecord`` when it is not one."""
    try:
        op, kind, doc = _decode(payload)
        if op not in (PUT, DELETE) or kind not in types or not isinstance(doc, dict):
            raise BadRecord(f"unknown change {op!r} {kind!r}")
        key = TABLE_FIELD.get(kind)
        if key is not None and key in doc:
            doc[key] = decode_table(doc[key], 0)[0] if doc[key] else {}
        return op, kind, msgspec.convert(doc, types[kind])
    except (msgspec.DecodeError, msgspec.ValidationError, HardError, ValueError, TypeError) as exc:
        raise BadRecord(str(exc)) from exc


@dataclass
class LogScan:
    """What ``read_log`` found: the decoded changes, the offset just past the last valid
    record (``end``), the file size, and when ``end < size`` why (``reason``) and whether
    it looks like corruption rather than a torn tail."""

    changes: list[tuple[int, str, Any]] = field(default_factory=list)
    end: int = 0
    size: int = 0
    reason: str | None = None
    corrupt: bool = False


def read_log(path: str, types: dict[str, type[Any]]) -> LogScan:
    """Scan one log file (missing = empty). Never raises for bad content."""
    try:
        seg, records, fs = SegmentFile.recover(path, LOG_MAGIC)
    except FileNotFoundError:
        return LogScan()
    except Exception as exc:  # CorruptSegment: a bad magic
        size = os.path.getsize(path)
        return LogScan(size=size, reason=str(exc), corrupt=size > 0)
    out = LogScan(size=seg.size)
    try:
        end = MAGIC_SIZE if seg.size else 0
        for off, payload in records:
            try:
                out.changes.append(decode_change(payload, types))
            except BadRecord as exc:
                out.reason = f"undecodable record at offset {off}: {exc}"
                out.corrupt = True
                end = off
                break
            end = off + FRAME_SIZE + len(payload)
        out.end = end
        if out.reason is None and end < seg.size:
            out.reason = fs.reason or "trailing garbage"
            out.corrupt = not _torn_tail(seg.fd, end, seg.size)
    finally:
        seg.close()
    return out


def _torn_tail(fd: int, end: int, size: int) -> bool:
    """True when the bytes from ``end`` are a record cut short (it runs to or past the
    end of the file) or zero fill; False when more data follows a bad record."""
    rest = os.pread(fd, size - end, end)
    if not rest.strip(b"\0"):
        return True
    if len(rest) < FRAME_SIZE:
        return True
    length, _ = FRAME.unpack_from(rest, 0)
    return FRAME_SIZE + length >= len(rest)


class LogFile:
    """The log being appended to. ``append`` writes whole records with one ``os.write``
    and fdatasyncs; on error the file is cut back to its last whole record."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size  # bytes on file, magic + whole records

    @classmethod
    def open(cls, path: str, end: int, *, sync_dir: bool = True) -> LogFile:
        """Open ``path`` for appending after its last valid record (``end``; 0: reset
        it, the magic goes out with the first append). A file that did not exist is
        created and, with ``sync_dir``, its directory entry made durable at once."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            if sync_dir:
                try:
                    fsync_dir(os.path.dirname(path))
                except OSError:
                    os.close(fd)
                    raise
        try:
            if os.fstat(fd).st_size != end:
                os.ftruncate(fd, end)
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd, end)

    def append(self, data: bytes | bytearray, sync: bool = True) -> None:
        if not self.size:
            data = LOG_MAGIC + data
        start = self.size
        try:
            done = 0
            with memoryview(data) as view:
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], start + done)
            if sync:
                os.fdatasync(self.fd)
        except OSError:
            try:
                os.ftruncate(self.fd, start)
            except OSError as exc2:
                log.error("%s: cannot cut back after a failed write: %s", self.path, exc2)
            raise
        self.size = start + len(data)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
