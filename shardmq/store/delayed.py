"""The delayed-message store of one worker: persistent messages held by durable
``x-delayed-message`` exchanges, on disk until they have been routed.

Owns: ``DelayedStore`` — an append-only log of segment files under
``data_dir/delayed/w<slot>/`` (``00000001.log``, ...). Two record kinds:

- ``ADD``: id, due time (absolute wall-clock ms since the epoch), vhost, exchange,
  the publish's ``exrk`` bytes, channel / header size / frame max, and the content
  frames (``Message.raw``) exactly as received;
- ``DEL``: id (the message was routed, or dropped because its exchange is gone).

Each record is ``u32 length, u8 kind, payload, u32 crc32(kind + payload)``.

Invariants:
- A message is held in memory only as its due time, id and the location of its record
  in the log (``Loc``); the record is read back (``load``) when it is due.
- ``add`` buffers; ``flush`` (once per loop turn, scheduled by the store itself) writes
  the buffer, syncs it (``fsync`` "always"/"batch": fdatasync; "off": none) and then
  answers the confirm tokens of the adds it covered, ``stored(key, True)``, or
  ``stored(key, False)`` if the write failed.
- ``before_sync`` (when set) runs before each fdatasync of ``flush``; an error in it
  nacks the adds like a failed write.
- ``remove`` is called only once the routed copy is in every durable target (the
  caller waits for their stores), so a crash in between gives a duplicate, never a loss.
- A segment file is deleted when it and every older file hold no live ``ADD``: a
  ``DEL`` always sits in the same or a newer file than its ``ADD``, so deleting oldest
  first never brings a removed message back.
- Recovery reads every file in order; a truncated or corrupt tail is cut at the last
  whole record (a crash mid-write), with a warning.
- Slots beyond the current worker count (the broker restarted with fewer workers) are
  adopted by worker ``slot % workers``: their live messages are copied into its log,
  then their directory is removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

log = logging.getLogger("shardmq.store.delayed")

SEGMENT_SIZE = 64 * 1024 * 1024
ADD = 1
DEL = 2
_HEAD = struct.Struct(">IB")  # length of (kind + payload), kind
_CRC = struct.Struct(">I")
_ADD = struct.Struct(">QQHIIHHH")  # id, due, ch, hsize, fmax, len vhost, len exchange, len exrk
_ID = struct.Struct(">Q")

# Where a message's frames are: (segment number << 64) | (offset << 32) | length.
Loc = int


class Recovered(NamedTuple):
    id: int
    due: int  # wall-clock ms
    vhost: str
    exchange: str
    loc: Loc


class Held(NamedTuple):
    """A held message as ``load`` reads it back."""

    vhost: str
    exchange: str
    exrk: bytes
    ch: int
    hsize: int
    fmax: int
    raw: bytes


def _loc(seg: int, offset: int, length: int) -> Loc:
    return (seg << 64) | (offset << 32) | length


def _seg_of(loc: Loc) -> int:
    return loc >> 64


class _Segment:
    __slots__ = ("no", "path", "fd", "size", "live")

    def __init__(self, no: int, path: str, fd: int, size: int) -> None:
        self.no = no
        self.path = path
        self.fd = fd
        self.size = size
        self.live = 0


def delayed_dir(data_dir: str, slot: int) -> str:
    return os.path.join(data_dir, "delayed", f"w{slot}")


class DelayedStore:
    def __init__(
        self,
        directory: str,
        *,
        fsync: str = "always",
        loop: asyncio.AbstractEventLoop | None = None,
        segment_size: int = SEGMENT_SIZE,
    ) -> None:
        self.dir = directory
        self.fsync = fsync
        # called before each fdatasync (one worker: the definitions log is synced first,
        # so no delayed publish is confirmed before its exchange's declaration is)
        self.before_sync: Callable[[], None] | None = None
        self.loop = loop
        self.segment_size = segment_size
        self.segments: dict[int, _Segment] = {}
        self.current: _Segment | None = None
        self._buf = bytearray()
        self._tokens: list[tuple[Any, int]] = []
        self._scheduled = False
        self.closed = False
        self.next_id = 1
        os.makedirs(directory, exist_ok=True)

    # ------------------------------------------------------------ recovery
    def recover(self) -> list[Recovered]:
        """Read every segment: the messages added and not removed, in log order."""
        live: dict[int, Recovered] = {}
        names = sorted(n for n in os.listdir(self.dir) if n.endswith(".log"))
        for name in names:
            no = int(name[:-4])
            path = os.path.join(self.dir, name)
            fd = os.open(path, os.O_RDWR)
            seg = _Segment(no, path, fd, 0)
            self.segments[no] = seg
            seg.size = self._scan(seg, live)
        for r in live.values():
            self.segments[_seg_of(r.loc)].live += 1
            self.next_id = max(self.next_id, r.id + 1)
        self._open_current()
        self._collect()
        return sorted(live.values(), key=lambda r: (r.due, r.id))

    def _scan(self, seg: _Segment, live: dict[int, Recovered]) -> int:
        data = os.pread(seg.fd, os.fstat(seg.fd).st_size, 0)
        pos = 0
        end = len(data)
        while pos + _HEAD.size <= end:
            length, kind = _HEAD.unpack_from(data, pos)
            stop = pos + 4 + length + _CRC.size
            if length < 1 or stop > end:
                break
            body = data[pos + 4 : pos + 4 + length]
            (crc,) = _CRC.unpack_from(data, pos + 4 + length)
            if zlib.crc32(body) != crc:
                break
            if kind == ADD:
                rid, due, _ch, _hs, _fm, lv, lx, _le = _ADD.unpack_from(body, 1)
                o = 1 + _ADD.size
                vhost = body[o : o + lv].decode("utf-8", "surrogatepass")
                exchange = body[o + lv : o + lv + lx].decode("utf-8", "surrogatepass")
                live[rid] = Recovered(rid, due, vhost, exchange, _loc(seg.no, pos + 4, length))
            elif kind == DEL:
                (rid,) = _ID.unpack_from(body, 1)
                live.pop(rid, None)
            pos = stop
        if pos < end:
            log.warning(
                "delayed store %s: cut %d byte(s) of a truncated or corrupt tail",
                seg.path,
                end - pos,
            )
            os.ftruncate(seg.fd, pos)
        return pos

    def _open_current(self) -> None:
        no = max(self.segments, default=0) + 1
        path = os.path.join(self.dir, f"{no:08d}.log")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        seg = _Segment(no, path, fd, 0)
        self.segments[no] = seg
        self.current = seg
        _fsync_dir(self.dir)

    # ------------------------------------------------------------ writing
    def add(
        self,
        due: int,
        vhost: str,
        exchange: str,
        exrk: bytes,
        ch: int,
        hsize: int,
        fmax: int,
        raw: bytes,
        token: tuple[Any, int] | None = None,
        rid: int = 0,
    ) -> tuple[int, Loc]:
        """Append a message (written at the next flush); returns (id, location)."""
        seg = self.current
        assert seg is not None and not self.closed
        if seg.size + len(self._buf) >= self.segment_size and not self._buf:
            self._rotate()
            seg = self.current
            assert seg is not None
        if not rid:
            rid = self.next_id
            self.next_id += 1
        vb = vhost.encode("utf-8", "surrogatepass")
        xb = exchange.encode("utf-8", "surrogatepass")
        body = b"".join(
            (
                bytes((ADD,)),
                _ADD.pack(rid, due, ch, hsize, fmax, len(vb), len(xb), len(exrk)),
                vb,
                xb,
                exrk,
                raw,
            )
        )
        start = seg.size + len(self._buf)
        self._buf += _HEAD.pack(len(body), ADD)[:4]
        self._buf += body
        self._buf += _CRC.pack(zlib.crc32(body))
        seg.live += 1
        if token is not None:
            self._tokens.append(token)
        self._dirty()
        return rid, _loc(seg.no, start + 4, len(body))

    def remove(self, rid: int, loc: Loc) -> None:
        """The message was routed (into every durable target) or dropped."""
        if self.closed:
            return
        body = bytes((DEL,)) + _ID.pack(rid)
        self._buf += _HEAD.pack(len(body), DEL)[:4]
        self._buf += body
        self._buf += _CRC.pack(zlib.crc32(body))
        seg = self.segments.get(_seg_of(loc))
        if seg is not None:
            seg.live -= 1
        self._dirty()

    def load(self, loc: Loc) -> Held:
        """A held message, read back from its record."""
        seg = self.segments[_seg_of(loc)]
        length = loc & 0xFFFFFFFF
        offset = (loc >> 32) & 0xFFFFFFFF
        if seg is self.current and offset + length > seg.size:
            self.flush()  # still in the buffer: write it first
        body = os.pread(seg.fd, length, offset)
        _rid, _due, ch, hsize, fmax, lv, lx, le = _ADD.unpack_from(body, 1)
        o = 1 + _ADD.size
        vhost = body[o : o + lv].decode("utf-8", "surrogatepass")
        o += lv
        exchange = body[o : o + lx].decode("utf-8", "surrogatepass")
        o += lx
        exrk = body[o : o + le]
        return Held(vhost, exchange, exrk, ch, hsize, fmax, body[o + le :])

    def _dirty(self) -> None:
        if not self._scheduled and self.loop is not None:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write and sync what was buffered; answer the confirm tokens it covers."""
        self._scheduled = False
        if self.closed or not self._buf:
            return
        seg = self.current
        assert seg is not None
        buf, self._buf = bytes(self._buf), bytearray()
        tokens, self._tokens = self._tokens, []
        ok = True
        try:
            os.write(seg.fd, buf)
            seg.size += len(buf)
            if self.fsync != "off":
                if self.before_sync is not None:
                    self.before_sync()
                os.fdatasync(seg.fd)
        except OSError as exc:
            ok = False
            log.error("delayed store write failed, %d publish(es) nacked: %s", len(tokens), exc)
        for target, key in tokens:
            target.stored(key, ok)
        self._collect()

    def _rotate(self) -> None:
        self._open_current()

    def _collect(self) -> None:
        """Delete the oldest segments while they hold no live message."""
        for no in sorted(self.segments):
            seg = self.segments[no]
            if seg is self.current or seg.live > 0:
                return
            os.close(seg.fd)
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass
            del self.segments[no]

    @property
    def live(self) -> int:
        return sum(s.live for s in self.segments.values())

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        for seg in self.segments.values():
            os.close(seg.fd)
        self.segments.clear()
        self.current = None


def adoptable(data_dir: str, slot: int, workers: int) -> list[str]:
    """Directories of slots >= ``workers`` that worker ``slot`` takes over."""
    root = os.path.join(data_dir, "delayed")
    out: list[str] = []
    if not os.path.isdir(root):
        return out
    for name in sorted(os.listdir(root)):
        if name.startswith("w") and name[1:].isdigit():
            j = int(name[1:])
            if j >= workers and j % workers == slot:
                out.append(os.path.join(root, name))
    return out


def adopt(
    store: DelayedStore, directory: str, resolve: Callable[[Recovered], bool]
) -> list[Recovered]:
    """Copy the live messages of another slot's directory into ``store`` (those
    ``resolve`` keeps), sync, then remove that directory. Returns them as ``store``
    now holds them."""
    other = DelayedStore(directory, fsync="off")
    moved: list[Recovered] = []
    try:
        for r in other.recover():
            if resolve(r):
                h = other.load(r.loc)
                rid, loc = store.add(
                    r.due, h.vhost, h.exchange, h.exrk, h.ch, h.hsize, h.fmax, h.raw
                )
                moved.append(Recovered(rid, r.due, r.vhost, r.exchange, loc))
    finally:
        other.close()
    store.flush()
    shutil.rmtree(directory, ignore_errors=True)
    return moved


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
