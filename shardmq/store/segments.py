"""Append-only segment files of CRC-checked, length-prefixed records.

Owns: the on-disk record framing shared by message segments and their index files,
``SegmentFile`` (one file: its fd, its flushed size and its not-yet-written buffer) and
the recovery scan that cuts a corrupt or truncated tail back to the last whole record.

File layout::

    magic (8 bytes, e.g. b"SMQSEG01")
    record*   where record = u32 n | u32 crc | payload (n bytes)     (little endian)
              crc = crc32(payload) seeded with n ^ CRC_SEED, so that a zero-filled tail
              (length 0, crc 0) is not a valid record and a bad length fails the check

Invariants:
- A file only ever grows by whole records, appended by one ``os.write`` per flush of
  the buffer; ``size`` is the offset up to which the file is known to hold whole,
  valid records. Bytes past ``size`` (a torn write, a crash mid-write, a failed write)
  are cut off by ``ftruncate`` either right after the failed write or at the next open.
- ``scan`` stops at the first record whose length runs past the end of the data or
  whose CRC does not match: everything before it is whole and valid.
- Record payloads are opaque here; their first byte is a record type by convention.
- ``SegmentFile`` never fsyncs: durability is the committer's job (see queue_store.py),
  which syncs by path so that no fd is shared across threads.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator

log = logging.getLogger("shardmq.store")

FRAME = struct.Struct("<II")  # payload length, crc
CRC_SEED = 0x5EED5EED
FRAME_SIZE = FRAME.size
MAGIC_SIZE = 8
# A record longer than this is treated as garbage (a corrupt length field), not read.
MAX_RECORD = 1 << 30
READ_CHUNK = 4 << 20

_pack_frame = FRAME.pack
_unpack_frame = FRAME.unpack_from
_crc32 = zlib.crc32


class CorruptSegment(Exception):
    """A segment file that cannot be used at all (wrong magic, unreadable)."""


def frame_record(payload: bytes) -> bytes:
    """The framed bytes of one record (for tests and cold paths)."""
    n = len(payload)
    return _pack_frame(n, _crc32(payload, n ^ CRC_SEED)) + payload


def append_record(buf: bytearray, payload: bytes | bytearray | memoryview) -> None:
    """Append one framed record to ``buf``."""
    n = len(payload)
    buf += _pack_frame(n, _crc32(payload, n ^ CRC_SEED))
    buf += payload


def scan(
    data: bytes | bytearray | memoryview, pos: int, base: int = 0
) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(file_offset, payload)`` for every whole, valid record of ``data`` from
    ``pos``; stops silently at the first truncated or corrupt record. ``base`` is the
    file offset of ``data[0]``. Payloads are views into ``data``: copy what you keep."""
    view = memoryview(data)
    end = len(view)
    while pos + FRAME_SIZE <= end:
        length, crc = _unpack_frame(view, pos)
        start = pos + FRAME_SIZE
        stop = start + length
        if length > MAX_RECORD or stop > end:
            return
        payload = view[start:stop]
        if _crc32(payload, length ^ CRC_SEED) != crc:
            return
        yield base + pos, payload
        pos = stop


class FileScan:
    """Chunked scan of a whole file: iterate for ``(offset, payload)``; afterwards
    ``end`` is the offset just past the last whole valid record and ``reason`` says why
    the scan stopped before the end of the file (None when it reached it cleanly).

    Memory stays bounded by ``chunk`` (or by the largest record)."""

    __slots__ = ("fd", "start", "size", "chunk", "end", "reason")

    def __init__(self, fd: int, start: int, size: int, chunk: int = READ_CHUNK) -> None:
        self.fd = fd
        self.start = start
        self.size = size
        self.chunk = chunk
        self.end = start
        self.reason: str | None = None

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        fd, size = self.fd, self.size
        off = self.start
        while off < size:
            want = min(self.chunk, size - off)
            data = os.pread(fd, want, off)
            if len(data) < FRAME_SIZE:
                self.reason = f"truncated record header at offset {off}"
                return
            length, _ = _unpack_frame(data, 0)
            if length > MAX_RECORD:
                self.reason = f"bad record length {length} at offset {off}"
                return
            if FRAME_SIZE + length > len(data):
                if off + FRAME_SIZE + length > size:
                    self.reason = f"truncated record at offset {off}"
                    return
                data = os.pread(fd, FRAME_SIZE + length, off)
            consumed = 0
            for roff, payload in scan(data, 0, off):
                consumed = roff - off + FRAME_SIZE + len(payload)
                yield roff, payload
            if consumed == 0:
                self.reason = f"corrupt record (crc mismatch) at offset {off}"
                return
            # A chunk that ends in a partial record is re-read from there; a record that
            # fails its CRC mid-chunk is met again first in the next read (consumed == 0).
            off += consumed
            self.end = off


class SegmentFile:
    """One append-only file. Writes are buffered in ``buf`` and written by ``write_out``."""

    __slots__ = ("path", "magic", "fd", "size", "buf")

    def __init__(self, path: str, magic: bytes, fd: int, size: int) -> None:
        self.path = path
        self.magic = magic
        self.fd = fd
        self.size = size  # bytes on file, all whole records
        self.buf = bytearray()

    @classmethod
    def create(cls, path: str, magic: bytes) -> SegmentFile:
        """A new empty file; the magic goes out with the first ``write_out``."""
        assert len(magic) == MAGIC_SIZE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        seg = cls(path, magic, fd, 0)
        seg.buf += magic
        return seg

    @classmethod
    def reopen(cls, path: str, magic: bytes) -> SegmentFile:
        """An existing (recovered) file, to append to."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        seg = cls(path, magic, fd, size)
        if size == 0:
            seg.buf += magic
        return seg

    @classmethod
    def recover(
        cls, path: str, magic: bytes, chunk: int = READ_CHUNK
    ) -> tuple[SegmentFile, Iterator[tuple[int, memoryview]], FileScan]:
        """Open an existing file for recovery. Returns the file, an iterator over its
        valid records and the scan; once the iterator is exhausted call
        ``finish_recovery(scan)`` to cut a bad tail."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, MAGIC_SIZE, 0)
        except OSError:
            os.close(fd)
            raise
        if len(head) < MAGIC_SIZE and magic.startswith(head):
            # Crashed right after creation: an empty (or partial-magic) file.
            seg = cls(path, magic, fd, 0)
            seg.buf += magic
            fs = FileScan(fd, 0, 0)
            fs.reason = f"short header ({len(head)} bytes)" if head else None
            return seg, iter(()), fs
        if head != magic:
            os.close(fd)
            raise CorruptSegment(f"{path}: bad magic {head!r}")
        seg = cls(path, magic, fd, size)
        fs = FileScan(fd, MAGIC_SIZE, size, chunk)
        return seg, iter(fs), fs

    def finish_recovery(self, fs: FileScan) -> bool:
        """After a recovery scan: cut the file back to its last whole record (with a
        warning). Returns True when something was cut."""
        if self.size == 0:
            if fs.reason:
                log.warning("%s: %s, rewriting header", self.path, fs.reason)
                os.ftruncate(self.fd, 0)
                return True
            return False
        if fs.end < self.size:
            log.warning(
                "%s: %s; cutting %d bytes, back to the last whole record at offset %d",
                self.path,
                fs.reason or "trailing garbage",
                self.size - fs.end,
                fs.end,
            )
            os.ftruncate(self.fd, fs.end)
            self.size = fs.end
            return True
        return False

    @property
    def end(self) -> int:
        """Offset just past the last buffered record (where the next record goes)."""
        return self.size + len(self.buf)

    def write_out(self) -> int:
        """Write the buffer with one ``os.write`` (looping only on short writes).

        On error the file is cut back to its previous size (best effort) and the error
        is re-raised; the buffer is dropped either way. Returns bytes written."""
        buf = self.buf
        n = len(buf)
        if not n:
            return 0
        fd = self.fd
        start = self.size
        try:
            done = os.pwrite(fd, buf, start)
            if done < n:
                with memoryview(buf) as view:
                    while done < n:
                        done += os.pwrite(fd, view[done:], start + done)
        except OSError:
            self.buf = bytearray()
            try:
                os.ftruncate(fd, start)
            except OSError as exc2:
                log.error("%s: cannot cut back after a failed write: %s", self.path, exc2)
            raise
        self.size = start + n
        self.buf = bytearray()
        return n

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def fsync_dir(path: str) -> None:
    """Make directory entries (created, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
