"""Disk-backed message store of one durable queue (the broker's ``MessageStore``).

Owns: ``DiskQueueStore`` (ready list, unacked bookkeeping, paging, recovery) for one
queue directory, and the message codecs that turn a broker ``Message`` into a record.

Directory layout (``NNNN`` = 16 hex digits, increasing)::

    NNNN.seg   message records, in publish order       (magic b"SMQSEG01")
    NNNN.idx   acks / delivered markers / purge-keeps   (magic b"SMQIDX01")
               for the messages of NNNN.seg only; deleted together with it.

Message record payload (little endian)::

    u8 type=1 | u8 flags | u64 sid | u64 aux | u16 len(exrk) | u32 len(a) | exrk | a | b

``sid`` is the store's own sequence (monotonic across restarts); ``aux, a, b`` are the
codec's (``RawCodec``: channel << 32 | fmax, the raw content frames, and either
nothing or 8 bytes: ``Message.ts``, the wall-clock ms the message entered a queue with
a TTL, so its deadline is absolute across restarts; records without it, as older
segments hold, load with ``ts`` 0). Flag 1
= the message went to a consumer as it was written (``push_taken``). Index records::

    u8 type (2 ack, 3 delivered, 4 keep) | u32 n | n x u64 sid

Invariants:
- Only persistent messages (delivery_mode 2) are written; transient messages of a
  durable queue live in memory only, in the same order (negative ``sid`` internally).
- Ready messages leave in ``sid`` order: the in-memory head ``_ready`` first, then the
  *region* (``_rg_n`` messages: persistent ones on disk only, read in order from the
  cursor ``_rd_seg/_rd_off``, merged by sid with the transient ones in ``_rg_trans``).
  Once a region exists, every new persistent push goes to it (disk only) until it
  drains: memory stays within ``queue_memory_budget`` plus the unacked messages.
- ``seg.live`` counts the persistent messages of a segment not yet acked (ready,
  paged, unacked). A sealed segment whose ``live`` reaches 0 is deleted with its index:
  disk space and recovery time follow the live data, not the history.
- A live message at recovery = a message record not acked (and kept by the latest
  ``keep`` record, written by ``purge``); delivered markers make it come back with
  redelivered=true (``redelivered`` set, shared with the queue).
- The directory exists once a persistent message was written (``_make_dir`` before the
  first segment); a queue opened without one does no directory I/O until then
  (``destroy`` then has nothing to remove).
- Every ``flush()`` writes each dirty file with one write, then hands one
  ``CommitJob`` to the committer; tokens of pushed messages come back exactly once,
  through ``on_durable(tokens)`` or ``on_failed(tokens, exc)``, possibly in a different
  order than pushed and possibly from inside ``flush()`` (policy "off", write errors).
- A failed write cuts the segment back and seals it; the messages of the lost records
  stay deliverable from memory (when in memory) but are never acked on disk and are
  reported through ``on_failed`` so the broker can nack their publishes.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import shutil
import struct
import sys
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from shardmq.message import Message
from shardmq.store.commit import CommitJob, Committer, InlineCommitter, Token
from shardmq.store.segments import (
    CRC_SEED,
    FRAME_SIZE,
    MAGIC_SIZE,
    READ_CHUNK,
    CorruptSegment,
    SegmentFile,
    append_record,
    fsync_dir,
)
from shardmq.store.settings import StoreSettings

log = logging.getLogger("shardmq.store")

SEG_MAGIC = b"SMQSEG01"
IDX_MAGIC = b"SMQIDX01"

T_MSG = 1
T_ACK = 2
T_DELIVERED = 3
T_KEEP = 4
F_DELIVERED = 1  # written by push_taken: handed to a consumer as it was stored

META = struct.Struct("<BBQQHI")  # type, flags, sid, aux, len(exrk), len(a)
META_SIZE = META.size
IDX_HEAD = struct.Struct("<BI")
_FRAME = struct.Struct("<II")
_pack_meta = META.pack
_unpack_meta = META.unpack_from
_pack_frame = _FRAME.pack
_unpack_frame = _FRAME.unpack_from
_crc32 = zlib.crc32
_U32BE = struct.Struct(">I")
_TS = struct.Struct("<Q")  # Message.ts in a record's ``b`` part
_LITTLE = sys.byteorder == "little"

MSG_OVERHEAD = 160  # bytes a ready message costs in memory beyond its content


def delivery_mode(buf: bytes, pos: int) -> int:
    """delivery-mode of a content header whose property flags are at ``buf[pos]``,
    without decoding the properties (0 when absent)."""
    flags = buf[pos] << 8 | buf[pos + 1]
    if not flags & 0x1000:
        return 0
    p = pos + 2
    if flags & 0x8000:  # content-type
        p += 1 + buf[p]
    if flags & 0x4000:  # content-encoding
        p += 1 + buf[p]
    if flags & 0x2000:  # headers
        p += 4 + _U32BE.unpack_from(buf, p)[0]
    return buf[p]


class MessageCodec(Protocol):
    def persistent(self, msg: Message) -> bool: ...
    def parts(self, msg: Message) -> tuple[int, bytes, bytes, bytes]: ...
    def load(self, aux: int, exrk: bytes, a: bytes, b: bytes, seq: int) -> Message: ...
    def size(self, msg: Message) -> int: ...


class RawCodec:
    """``Message(exrk, raw, ch, hsize, fmax, seq)``: the received content frames."""

    @staticmethod
    def persistent(msg: Message) -> bool:
        return delivery_mode(msg.raw, 19) == 2

    @staticmethod
    def parts(msg: Message) -> tuple[int, bytes, bytes, bytes]:
        ts = msg.ts
        return msg.ch << 32 | msg.fmax, msg.exrk, msg.raw, _TS.pack(ts) if ts else b""

    @staticmethod
    def load(aux: int, exrk: bytes, a: bytes, b: bytes, seq: int) -> Message:
        hsize = int.from_bytes(a[3:7], "big")
        msg = Message(exrk, a, aux >> 32, hsize, aux & 0xFFFFFFFF, seq)  # type: ignore[call-arg]
        if len(b) >= 8:
            msg.ts = _TS.unpack_from(b)[0]
        return msg

    @staticmethod
    def size(msg: Message) -> int:
        return len(msg.raw) + MSG_OVERHEAD


def default_codec() -> MessageCodec:
    """The codec of ``shardmq.message.Message``."""
    return RawCodec()


def _sids(data: memoryview) -> array[int]:
    arr = array("Q")
    arr.frombytes(data)
    if not _LITTLE:
        arr.byteswap()
    return arr


def _sid_bytes(arr: array[int]) -> bytes:
    if _LITTLE:
        return arr.tobytes()
    swapped = array("Q", arr)
    swapped.byteswap()
    return swapped.tobytes()


class _Seg:
    """One segment: its data file, its index file and the live bookkeeping."""

    __slots__ = (
        "num",
        "data",
        "idx",
        "idx_path",
        "first",
        "last",
        "live",
        "acks",
        "delivs",
        "keep",
        "dirty",
        "idirty",
        "tokens",
        "buf_first",
        "buf_count",
        "buf_region",
        "recovered",
        "r_dead",
        "r_keep",
        "r_delivered",
        "doomed",
        "deleted",
    )

    def __init__(self, num: int, data: SegmentFile, idx_path: str, first: int) -> None:
        self.num = num
        self.data = data
        self.idx: SegmentFile | None = None
        self.idx_path = idx_path
        self.first = first  # lowest sid that can be in it
        self.last = first - 1  # highest sid written to it
        self.live = 0
        self.acks = array("Q")  # pending index records
        self.delivs = array("Q")
        self.keep: array[int] | None = None
        self.dirty = False  # data buffered, not yet written
        self.idirty = False  # index records pending
        self.tokens: list[Token] = []  # tokens of the buffered records
        self.buf_first = 0  # sid range and counts of the buffered records
        self.buf_count = 0
        self.buf_region = 0
        self.recovered = False
        # recovered segments only, for paging: acked / not kept / delivered sids
        self.r_dead: set[int] | None = None
        self.r_keep: set[int] | None = None
        self.r_delivered: set[int] | None = None
        self.doomed = False  # nothing lives in it: deleted after its index is written
        self.deleted = False


def _noop(*args: object) -> None:
    return None


def queue_dir(data_dir: str, vhost: str, queue: str) -> str:
    """The directory of a durable queue: ``data_dir/queues/<sha256(vhost NUL queue)[:32]>``
    (names may hold any character and be 255 bytes long; a hash is always a valid name)."""
    digest = hashlib.sha256(f"{vhost}\0{queue}".encode()).hexdigest()[:32]
    return os.path.join(data_dir, "queues", digest)


def sweep_deleted(data_dir: str) -> int:
    """Remove queue directories left half-deleted by a crash (call once at start-up,
    before opening stores). Returns how many were removed."""
    root = os.path.join(data_dir, "queues")
    n = 0
    if os.path.isdir(root):
        for name in os.listdir(root):
            if ".deleted-" in name:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                n += 1
    return n


class DiskQueueStore:
    """The ready messages of one durable queue, persistent ones on disk.

    Broker contract (beyond ``MessageStore``):

    - ``push(msg, token) -> bool``: True when the message is being persisted; its token
      then completes through ``on_durable`` / ``on_failed``. False for a transient
      message (nothing to wait for: confirm at once).
    - ``push_taken(msg, token) -> bool``: the message goes straight to a consumer (the
      queue's fast path when it is empty); stored as delivered-unacked.
    - ``flush()`` once per event-loop turn, after all pushes/acks of the turn.
    - ``redelivered``: the set of messages whose next delivery must say redelivered;
      the queue should use this very set as its own ``Queue.redelivered``.
    """

    def __init__(
        self,
        path: str,
        *,
        settings: StoreSettings | None = None,
        committer: Committer | None = None,
        on_durable: Callable[[list[Token]], None] | None = None,
        on_failed: Callable[[list[Token], OSError], None] | None = None,
        on_dirty: Callable[[DiskQueueStore], None] | None = None,
        codec: MessageCodec | None = None,
    ) -> None:
        """Use ``DiskQueueStore.open``."""
        s = settings if settings is not None else StoreSettings()
        self.path = os.path.abspath(path)
        self.settings = s
        self.committer: Committer = (
            committer if committer is not None else InlineCommitter.from_settings(s)
        )
        self.on_durable: Callable[[list[Token]], None] = on_durable or _noop
        self.on_failed: Callable[[list[Token], OSError], None] = on_failed or _noop
        self.on_dirty = on_dirty
        self._scheduled = False  # on_dirty was called since the last flush
        codec = codec if codec is not None else default_codec()
        self._codec = codec
        self._persistent = codec.persistent
        self._parts = codec.parts
        self._load = codec.load
        self._size = codec.size
        self._seg_size = s.segment_size
        self._budget = s.queue_memory_budget
        self._page_target = max(s.queue_memory_budget // 2, 1)
        self._read_chunk = min(max(s.queue_memory_budget // 4, 64 * 1024), READ_CHUNK)

        self._ready: deque[Message] = deque()
        self._rsids: deque[int] = deque()
        self._mem = 0
        self._unacked: dict[Message, int] = {}
        self.redelivered: set[Message] = set()
        self.recovered = 0

        # region: ready messages beyond the memory budget
        self._rg_n = 0
        self._rg_trans: deque[tuple[int, Message]] = deque()
        self._rd_seg: _Seg | None = None
        self._rd_off = 0
        self._rd_buf = b""
        self._rd_boff = 0

        self._segs: list[_Seg] = []
        self._firsts: list[int] = []
        self._cur: _Seg | None = None
        self._hint: _Seg | None = None
        self._next_sid = 1
        self._next_num = 1
        self._last_len = 0  # framed size of the record _append just buffered

        self._wdirty: list[_Seg] = []
        self._doomed: list[_Seg] = []
        self._idirty: list[_Seg] = []
        self._written_tokens: list[Token] = []
        self._free_tokens: list[Token] = []
        self._failed: list[tuple[list[Token], OSError]] = []
        self._sync_data: list[str] = []
        self._sync_index: list[str] = []
        self._new_files = False
        self._new_dir = False  # created by _make_dir: queues/ synced with the next round
        self._no_dir = False  # the directory does not exist yet (``open`` found none)
        self._unlinks: list[str] = []
        self._inflight = 0
        self.error: OSError | None = None
        self.closed = False

    # ================================================================ open / recovery
    @classmethod
    def open(
        cls,
        path: str,
        *,
        settings: StoreSettings | None = None,
        committer: Committer | None = None,
        on_durable: Callable[[list[Token]], None] | None = None,
        on_failed: Callable[[list[Token], OSError], None] | None = None,
        on_dirty: Callable[[DiskQueueStore], None] | None = None,
        codec: MessageCodec | None = None,
    ) -> DiskQueueStore:
        """Open the queue directory ``path`` (created with the first segment when it
        does not exist) and recover its messages: in order, acked ones dropped, delivered-unacked ones in
        ``redelivered``. Corrupt or truncated tails are cut back with a warning."""
        self = cls(
            path,
            settings=settings,
            committer=committer,
            on_durable=on_durable,
            on_failed=on_failed,
            on_dirty=on_dirty,
            codec=codec,
        )
        if not os.path.isdir(self.path):
            # created with the first segment (``_roll``), not here: a durable declare
            # costs no mkdir, and a queue that never holds a persistent message never
            # has a directory; nothing to recover
            self._no_dir = True
            return self
        self._recover()
        return self

    def _make_dir(self) -> None:
        """Create the queue directory (first segment); its entry in queues/ is made
        durable with the first commit round, before any message in it is confirmed."""
        os.makedirs(self.path, exist_ok=True)
        self._no_dir = False
        self._new_dir = True

    def _recover(self) -> None:
        nums: list[int] = []
        for name in os.listdir(self.path):
            stem, dot, ext = name.partition(".")
            if dot and ext in ("seg", "idx") and len(stem) == 16:
                try:
                    nums.append(int(stem, 16))
                except ValueError:
                    continue
        nums = sorted(set(nums))
        max_sid = 0
        budget = self._budget
        region_from = 0  # sid where the region starts (0: none yet)
        cut = False
        for num in nums:
            seg_path, idx_path = self._paths(num)
            if not os.path.exists(seg_path):
                if os.path.exists(idx_path):
                    os.unlink(idx_path)
                continue
            dead, keep, delivered, idx_max = self._read_index(idx_path)
            max_sid = max(max_sid, idx_max)
            try:
                data, records, fs = SegmentFile.recover(seg_path, SEG_MAGIC, READ_CHUNK)
            except CorruptSegment as exc:
                log.error("%s; moving it aside", exc)
                os.replace(seg_path, seg_path + ".corrupt")
                continue
            seg = _Seg(num, data, idx_path, 0)
            seg.recovered = True
            first = 0
            live = 0
            for off, payload in records:
                if len(payload) < META_SIZE:
                    continue
                typ, flags, sid, aux, exlen, alen = _unpack_meta(payload)
                if typ != T_MSG:
                    continue
                if not first:
                    first = sid
                seg.last = sid
                if sid > max_sid:
                    max_sid = sid
                if sid in dead or (keep is not None and sid not in keep):
                    continue
                live += 1
                redeliv = flags & F_DELIVERED or sid in delivered
                if not region_from:
                    p = META_SIZE
                    exrk = bytes(payload[p : p + exlen])
                    p += exlen
                    a = bytes(payload[p : p + alen])
                    b = bytes(payload[p + alen :])
                    msg = self._load(aux, exrk, a, b, sid)
                    size = self._size(msg)
                    if self._mem + size <= budget or not self._ready:
                        self._ready.append(msg)
                        self._rsids.append(sid)
                        self._mem += size
                        if redeliv:
                            self.redelivered.add(msg)
                        continue
                    region_from = sid
                    self._rd_seg = seg
                    self._rd_off = off
                self._rg_n += 1
            if data.finish_recovery(fs):
                cut = True
            seg.first = first or max_sid + 1
            seg.live = live
            if not live:
                data.close()
                os.unlink(seg_path)
                if os.path.exists(idx_path):
                    os.unlink(idx_path)
                continue
            if seg is not self._rd_seg:
                data.close()  # reopened if paging gets to it; recovered files get no writes
            if region_from:
                seg.r_dead = {s for s in dead if s >= region_from} or None
                if keep is not None:
                    seg.r_keep = {s for s in keep if s >= region_from}
                seg.r_delivered = {s for s in delivered if s >= region_from} or None
            self._segs.append(seg)
            self._firsts.append(seg.first)
        self._next_sid = max_sid + 1
        self._next_num = (nums[-1] + 1) if nums else 1
        self.recovered = len(self._ready) + self._rg_n
        if cut:
            fsync_dir(self.path)
        if self.recovered:
            log.info(
                "%s: recovered %d messages (%d redelivered, %d paged) in %d segments",
                self.path,
                self.recovered,
                len(self.redelivered),
                self._rg_n,
                len(self._segs),
            )

    def _read_index(self, path: str) -> tuple[set[int], set[int] | None, set[int], int]:
        dead: set[int] = set()
        keep: set[int] | None = None
        delivered: set[int] = set()
        top = 0
        if not os.path.exists(path):
            return dead, keep, delivered, top
        try:
            idx, records, fs = SegmentFile.recover(path, IDX_MAGIC)
        except CorruptSegment as exc:
            log.error("%s; ignoring it (acks in it are lost)", exc)
            os.replace(path, path + ".corrupt")
            return dead, keep, delivered, top
        try:
            for _, payload in records:
                if len(payload) < IDX_HEAD.size:
                    continue
                typ, n = IDX_HEAD.unpack_from(payload)
                sids = _sids(payload[IDX_HEAD.size : IDX_HEAD.size + 8 * n])
                if sids:
                    top = max(top, max(sids))
                if typ == T_ACK:
                    dead.update(sids)
                elif typ == T_DELIVERED:
                    delivered.update(sids)
                elif typ == T_KEEP:
                    keep = set(sids) if keep is None else keep.intersection(sids)
            idx.finish_recovery(fs)
        finally:
            idx.close()
        return dead, keep, delivered, top

    def _paths(self, num: int) -> tuple[str, str]:
        stem = os.path.join(self.path, f"{num:016x}")
        return stem + ".seg", stem + ".idx"

    # ================================================================ segments
    def _seal(self) -> None:
        """No more appends to the current segment (retired if nothing in it lives)."""
        old = self._cur
        self._cur = None
        if old is not None:
            if not old.live:
                self._retire(old)
            else:
                self._release_fd(old)

    def _release_fd(self, seg: _Seg) -> None:
        """Close a sealed segment's data fd while nothing needs it (reopened for
        page-in reads): open fds per queue stay ~ current + the one being read."""
        if seg is not self._cur and seg is not self._rd_seg and not seg.data.buf:
            seg.data.close()

    def _retire(self, seg: _Seg) -> None:
        """A sealed segment none of whose messages lives: deleted at the end of the next
        write-out, once its last index records (the acks that killed it) are written,
        so that a crash before the unlink cannot bring those messages back."""
        if not seg.doomed and not seg.deleted:
            seg.doomed = True
            self._doomed.append(seg)
            self._dirty()

    def _dirty(self) -> None:
        """Something waits for ``flush()``: tell the broker once per flush."""
        if not self._scheduled:
            self._scheduled = True
            if self.on_dirty is not None:
                self.on_dirty(self)

    def _roll(self, sid: int) -> _Seg | None:
        """Seal the current segment and start a new one whose first sid is ``sid``."""
        self._seal()
        num = self._next_num
        seg_path, idx_path = self._paths(num)
        try:
            if self._no_dir:
                self._make_dir()
            data = SegmentFile.create(seg_path, SEG_MAGIC)
        except OSError as exc:
            self._note_error(exc, f"cannot create {seg_path}")
            return None
        self._next_num = num + 1
        seg = _Seg(num, data, idx_path, sid)
        self._segs.append(seg)
        self._firsts.append(sid)
        self._cur = seg
        self._new_files = True
        return seg

    def _seg_of(self, sid: int) -> _Seg:
        seg = self._hint
        if seg is not None and seg.first <= sid <= seg.last and not seg.deleted:
            return seg
        seg = self._segs[bisect.bisect_right(self._firsts, sid) - 1]
        self._hint = seg
        return seg

    def _seg_after(self, num: int) -> _Seg | None:
        for seg in self._segs:
            if seg.num > num:
                return seg
        return None

    def _drop(self, seg: _Seg) -> None:
        """Delete a retired segment (files unlinked by the committer)."""
        seg.deleted = True
        i = self._segs.index(seg)
        del self._segs[i]
        del self._firsts[i]
        if self._cur is seg:
            self._cur = None
        if self._hint is seg:
            self._hint = None
        if seg.tokens:
            # Buffered but never written, and already acked: nothing to make durable.
            self._free_tokens += seg.tokens
            seg.tokens = []
        seg.data.buf = bytearray()
        seg.data.close()
        self._unlinks.append(seg.data.path)
        if seg.idx is not None:
            seg.idx.close()
            seg.idx = None
        self._unlinks.append(seg.idx_path)

    def _note_error(self, exc: OSError, what: str) -> None:
        self.error = exc
        log.error("%s: %s: %s", self.path, what, exc)

    # ================================================================ MessageStore
    def push(self, msg: Message, token: Token = None) -> bool:
        sid = self._next_sid
        self._next_sid = sid + 1
        if not self._persistent(msg):
            if self._rg_n:
                self._rg_trans.append((-sid, msg))
                self._rg_n += 1
            else:
                self._ready.append(msg)
                self._rsids.append(-sid)
                self._mem += self._size(msg)
            return False
        size = self._size(msg)
        region = self._rg_n != 0 or self._mem + size > self._budget
        seg = self._append(msg, sid, 0, token)
        if seg is None:  # cannot write: keep it in memory, nack it
            self._ready.append(msg)
            self._rsids.append(-sid)
            self._mem += size
            return True
        if region:
            if self._rd_seg is None:  # nothing of the region on disk yet: it starts here
                self._rd_seg = seg
                self._rd_off = seg.data.end - self._last_len
                self._rd_buf = b""
            self._rg_n += 1
            seg.buf_region += 1
        else:
            self._ready.append(msg)
            self._rsids.append(sid)
            self._mem += size
        return True

    def _append(self, msg: Message, sid: int, flags: int, token: Token) -> _Seg | None:
        seg = self._cur
        if seg is None or seg.data.end >= self._seg_size:
            seg = self._roll(sid)
            if seg is None:
                if token is not None:
                    self._failed.append(([token], self.error or OSError("store unavailable")))
                    self._dirty()
                return None
        aux, exrk, a, b = self._parts(msg)
        meta = _pack_meta(T_MSG, flags, sid, aux, len(exrk), len(a))
        n = META_SIZE + len(exrk) + len(a) + len(b)
        crc = _crc32(a, _crc32(exrk, _crc32(meta, n ^ CRC_SEED)))
        buf = seg.data.buf
        if b:
            crc = _crc32(b, crc)
            buf += _pack_frame(n, crc)
            buf += meta
            buf += exrk
            buf += a
            buf += b
        else:
            buf += _pack_frame(n, crc)
            buf += meta
            buf += exrk
            buf += a
        self._last_len = FRAME_SIZE + n
        seg.last = sid
        seg.live += 1
        if not seg.dirty:
            seg.dirty = True
            seg.buf_first = sid
            self._wdirty.append(seg)
            if not self._scheduled:
                self._dirty()
        seg.buf_count += 1
        if token is not None:
            seg.tokens.append(token)
        return seg

    def push_taken(self, msg: Message, token: Token = None) -> bool:
        """Store a message that bypassed the ready list and went straight to a consumer
        (call only while the store is empty, as ``Queue.publish`` does); it is unacked
        from now on, and comes back redelivered if the broker dies before the ack."""
        sid = self._next_sid
        self._next_sid = sid + 1
        if not self._persistent(msg):
            self._unacked[msg] = -sid
            return False
        if self._append(msg, sid, F_DELIVERED, token) is None:
            sid = -sid
        self._unacked[msg] = sid
        return True

    def peek(self) -> Message:
        """The next ready message (the store is not empty), left in place."""
        ready = self._ready
        if not ready:
            self._page_in()
        return ready[0]

    def take(self) -> Message:
        ready = self._ready
        if not ready:
            self._page_in()
        msg = ready.popleft()
        sid = self._rsids.popleft()
        self._mem -= self._size(msg)
        self._unacked[msg] = sid
        if sid > 0:
            seg = self._hint
            if seg is None or not seg.first <= sid <= seg.last or seg.deleted:
                seg = self._seg_of(sid)
            seg.delivs.append(sid)
            if not seg.idirty:
                seg.idirty = True
                self._idirty.append(seg)
                if not self._scheduled:
                    self._dirty()
        return msg

    def ack(self, msg: Message) -> None:
        sid = self._unacked.pop(msg, 0)
        if sid <= 0:
            return
        seg = self._hint
        if seg is None or not seg.first <= sid <= seg.last or seg.deleted:
            seg = self._seg_of(sid)
        seg.live -= 1
        seg.acks.append(sid)
        if not seg.idirty:
            seg.idirty = True
            self._idirty.append(seg)
            if not self._scheduled:
                self._dirty()
        if not seg.live and seg is not self._cur:
            self._retire(seg)

    def rebind(self, old: Message, new: Message) -> None:
        """The unacked ``old`` is ``new`` from now on (same record on disk)."""
        sid = self._unacked.pop(old, None)
        if sid is not None:
            self._unacked[new] = sid

    def requeue(self, msgs: Iterable[Message]) -> None:
        unacked = self._unacked
        items: list[tuple[int, int, Message]] = []
        for m in msgs:
            sid = unacked.pop(m, None)
            if sid is not None:
                items.append((abs(sid), sid, m))
        if not items:
            return
        items.sort(key=_first)
        ready, rsids = self._ready, self._rsids
        size = self._size
        self._mem += sum(size(m) for _, _, m in items)
        if not rsids or items[-1][0] < abs(rsids[0]):
            ready.extendleft(m for _, _, m in reversed(items))
            rsids.extendleft(s for _, s, _ in reversed(items))
            return
        merged = sorted(
            [*items, *((abs(s), s, m) for s, m in zip(rsids, ready, strict=True))], key=_first
        )
        ready.clear()
        rsids.clear()
        ready.extend(m for _, _, m in merged)
        rsids.extend(s for _, s, _ in merged)

    def purge(self) -> int:
        n = len(self)
        self._ready.clear()
        self._rsids.clear()
        self._mem = 0
        self._rg_n = 0
        self._rg_trans.clear()
        self._rd_seg = None
        self._rd_buf = b""
        self.redelivered.clear()
        self._seal()  # a keep record must cover a sealed segment
        outstanding: dict[int, array[int]] = {}
        for sid in self._unacked.values():
            if sid > 0:
                outstanding.setdefault(self._seg_of(sid).num, array("Q")).append(sid)
        for seg in self._segs:
            if seg.doomed:
                continue
            keep = outstanding.get(seg.num, array("Q"))
            seg.live = len(keep)
            seg.buf_region = 0
            seg.keep = keep
            seg.acks = array("Q")
            seg.r_dead = seg.r_keep = seg.r_delivered = None
            if not seg.idirty:
                seg.idirty = True
                self._idirty.append(seg)
                self._dirty()
            if not seg.live:
                self._retire(seg)
        return n

    def __len__(self) -> int:
        return len(self._ready) + self._rg_n

    def __bool__(self) -> bool:
        return bool(self._ready) or self._rg_n != 0

    # alias: the brief's name for the recovered redelivered set
    @property
    def recovered_redelivered(self) -> set[Message]:
        return self.redelivered

    # ================================================================ paging
    def _page_in(self) -> None:
        """Move region messages into memory, in order, up to about half the budget."""
        ready, rsids = self._ready, self._rsids
        trans = self._rg_trans
        size_of = self._size
        target = self._page_target
        while self._rg_n:
            item = self._next_on_disk()
            if item is None:
                if not trans:
                    log.error("%s: %d paged messages missing on disk", self.path, self._rg_n)
                    self._rg_n = 0
                    break
                sid, msg = trans.popleft()
            else:
                sid, msg = item
                while trans and -trans[0][0] < sid:
                    tsid, tmsg = trans.popleft()
                    ready.append(tmsg)
                    rsids.append(tsid)
                    self._mem += size_of(tmsg)
                    self._rg_n -= 1
            ready.append(msg)
            rsids.append(sid)
            self._mem += size_of(msg)
            self._rg_n -= 1
            if self._mem >= target:
                break
        if not self._rg_n:
            self._rd_seg = None
            self._rd_buf = b""

    def _next_on_disk(self) -> tuple[int, Message] | None:
        """The next live region message on disk, advancing the cursor; None when the
        region has nothing more on disk."""
        while True:
            seg = self._rd_seg
            if seg is None:
                return None
            if seg.deleted:
                self._rd_seg = self._seg_after(seg.num)
                self._rd_off = MAGIC_SIZE
                self._rd_buf = b""
                continue
            data = seg.data
            off = self._rd_off
            if off >= data.size:
                if data.buf and seg.dirty:
                    self._write_out()  # region records still buffered: write them now
                    self._dirty()  # their tokens wait for the next flush's commit
                    continue
                nxt = self._seg_after(seg.num)
                if nxt is None:
                    return None
                self._rd_seg = nxt
                self._rd_off = MAGIC_SIZE
                self._rd_buf = b""
                self._release_fd(seg)
                continue
            buf = self._rd_buf
            rel = off - self._rd_boff
            if rel < 0 or rel + FRAME_SIZE > len(buf):
                buf = self._refill(seg, off, FRAME_SIZE)
                rel = 0
            length, crc = _unpack_frame(buf, rel)
            end = rel + FRAME_SIZE + length
            if end > len(buf):
                if off + FRAME_SIZE + length > data.size:
                    log.error("%s: record at %d runs past the end", data.path, off)
                    self._rd_off = data.size
                    continue
                buf = self._refill(seg, off, FRAME_SIZE + length)
                rel = 0
                end = FRAME_SIZE + length
            payload = memoryview(buf)[rel + FRAME_SIZE : end]
            self._rd_off = off + FRAME_SIZE + length
            if _crc32(payload, length ^ CRC_SEED) != crc or length < META_SIZE:
                log.error("%s: corrupt record at %d skipped", data.path, off)
                continue
            typ, flags, sid, aux, exlen, alen = _unpack_meta(payload)
            if typ != T_MSG:
                continue
            redeliv = False
            if seg.recovered:
                if seg.r_dead is not None and sid in seg.r_dead:
                    continue
                if seg.r_keep is not None and sid not in seg.r_keep:
                    continue
                redeliv = bool(flags & F_DELIVERED) or (
                    seg.r_delivered is not None and sid in seg.r_delivered
                )
            elif flags & F_DELIVERED:
                continue
            p = META_SIZE
            exrk = bytes(payload[p : p + exlen])
            p += exlen
            a = bytes(payload[p : p + alen])
            b = bytes(payload[p + alen :])
            msg = self._load(aux, exrk, a, b, sid)
            if redeliv:
                self.redelivered.add(msg)
            return sid, msg

    def _refill(self, seg: _Seg, off: int, need: int) -> bytes:
        n = min(max(self._read_chunk, need), seg.data.size - off)
        data = seg.data
        if data.fd < 0:
            data.fd = os.open(data.path, os.O_RDONLY | os.O_CLOEXEC)
        buf = data.pread(n, off)
        if len(buf) < need:
            raise OSError(f"{seg.data.path}: short read at {off}")
        self._rd_buf = buf
        self._rd_boff = off
        return buf

    # ================================================================ flush / commit
    def _write_out(self) -> None:
        """Write every buffered data and index record (one write per file)."""
        if self._wdirty:
            segs, self._wdirty = self._wdirty, []
            for seg in segs:
                seg.dirty = False
                if seg.deleted:
                    continue
                if seg.doomed:
                    # everything in the buffer is acked already: no need to write it
                    seg.data.buf = bytearray()
                    self._free_tokens += seg.tokens
                    seg.tokens = []
                    seg.buf_count = seg.buf_region = 0
                    continue
                try:
                    seg.data.write_out()
                except OSError as exc:
                    self._write_failed(seg, exc)
                    continue
                self._sync_data.append(seg.data.path)
                if seg.tokens:
                    self._written_tokens += seg.tokens
                    seg.tokens = []
                seg.buf_count = seg.buf_region = 0
                if seg is not self._cur:
                    self._release_fd(seg)
        if self._idirty:
            segs, self._idirty = self._idirty, []
            for seg in segs:
                seg.idirty = False
                if not seg.deleted:
                    self._write_index(seg)
        if self._doomed:
            doomed, self._doomed = self._doomed, []
            for seg in doomed:
                if not seg.deleted:
                    self._drop(seg)

    def _write_failed(self, seg: _Seg, exc: OSError) -> None:
        tokens, seg.tokens = seg.tokens, []
        self._note_error(exc, f"write to {seg.data.path} failed, {len(tokens)} publishes nacked")
        if tokens:
            self._failed.append((tokens, exc))
            self._dirty()
        if seg.buf_count:
            self._forget_sids(seg.buf_first, seg.last)
            seg.live -= seg.buf_count
            self._rg_n -= seg.buf_region
            if self._rg_n <= len(self._rg_trans):
                # nothing of the region is left on disk (the lost records were its end)
                self._rd_seg = None
        seg.buf_count = seg.buf_region = 0
        if self._cur is seg:
            self._seal()  # do not append after a failed write: start a new file
        elif not seg.live:
            self._retire(seg)

    def _forget_sids(self, lo: int, hi: int) -> None:
        """Records lo..hi never made it to disk: the messages still in memory become
        transient (negative sid), so nothing acks or marks them on disk."""
        rsids = self._rsids
        if rsids and any(lo <= s <= hi for s in rsids):
            fixed = [-s if lo <= s <= hi else s for s in rsids]
            rsids.clear()  # in place: _page_in may hold a reference
            rsids.extend(fixed)
        unacked = self._unacked
        for msg, s in unacked.items():
            if lo <= s <= hi:
                unacked[msg] = -s

    def _write_index(self, seg: _Seg) -> None:
        out = bytearray()
        if seg.keep is not None:
            payload = IDX_HEAD.pack(T_KEEP, len(seg.keep)) + _sid_bytes(seg.keep)
            append_record(out, payload)
            seg.keep = None
        if seg.delivs:
            append_record(out, IDX_HEAD.pack(T_DELIVERED, len(seg.delivs)) + _sid_bytes(seg.delivs))
            seg.delivs = array("Q")
        if seg.acks:
            append_record(out, IDX_HEAD.pack(T_ACK, len(seg.acks)) + _sid_bytes(seg.acks))
            seg.acks = array("Q")
        if not out:
            return
        try:
            idx = seg.idx
            if idx is None:
                if os.path.exists(seg.idx_path):
                    idx = SegmentFile.reopen(seg.idx_path, IDX_MAGIC)
                else:
                    idx = SegmentFile.create(seg.idx_path, IDX_MAGIC)
                    self._new_files = True
                seg.idx = idx
            idx.buf += out
            idx.write_out()
        except OSError as exc:
            # Acks lost: those messages may be delivered again after a restart.
            self._note_error(exc, f"index write to {seg.idx_path} failed")
            return
        self._sync_index.append(seg.idx_path)

    def flush(self) -> None:
        """Write what this turn buffered and hand it to the committer. Call once per
        event-loop turn (or when ``on_dirty`` said so); cheap when there is nothing to do."""
        self._scheduled = False
        if self._wdirty or self._idirty or self._doomed:
            self._write_out()
        if self._failed:
            failed, self._failed = self._failed, []
            for tokens, exc in failed:
                self.on_failed(tokens, exc)
        if self._free_tokens:
            free, self._free_tokens = self._free_tokens, []
            self.on_durable(free)
        if self._written_tokens or self._sync_data or self._sync_index or self._unlinks:
            job = CommitJob(
                self,
                self._written_tokens,
                self._sync_data,
                self._sync_index,
                ([self.path] if self._new_files else [])
                + ([os.path.dirname(self.path)] if self._new_dir else []),
                self._unlinks,
            )
            self._new_dir = False
            self._written_tokens = []
            self._sync_data = []
            self._sync_index = []
            self._unlinks = []
            self._new_files = False
            self._inflight += 1
            self.committer.submit(job)

    def _committed(self, job: CommitJob, exc: OSError | None) -> None:
        self._inflight -= 1
        if exc is None:
            if job.tokens:
                self.on_durable(job.tokens)
            return
        # fsync failed: the page cache may have dropped the data; never trust the file
        # again for new writes, and nack what this round was meant to make durable.
        self._note_error(exc, f"fsync failed, {len(job.tokens)} publishes nacked")
        self._seal()
        if job.tokens:
            self.on_failed(job.tokens, exc)

    # ================================================================ lifecycle
    def close(self) -> None:
        """Flush and close the files (clean shutdown). Pending tokens still complete
        through the committer."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        for seg in self._segs:
            seg.data.close()
            if seg.idx is not None:
                seg.idx.close()

    def destroy(self) -> None:
        """The queue was deleted: drop everything and remove the directory (renamed
        aside at once, deleted in the committer's thread when it has one)."""
        self._ready.clear()
        self._rsids.clear()
        self._unacked.clear()
        self._rg_n = 0
        self._rg_trans.clear()
        self.redelivered.clear()
        tokens: list[Token] = self._written_tokens + self._free_tokens
        for seg in self._segs:
            tokens += seg.tokens
            seg.tokens = []
            seg.data.close()
            if seg.idx is not None:
                seg.idx.close()
        self._segs.clear()
        self._firsts.clear()
        self._written_tokens, self._free_tokens = [], []
        self._wdirty.clear()
        self._idirty.clear()
        self.closed = True
        if tokens:
            self.on_durable(tokens)  # the queue is gone: nothing left to wait for
        # Rename first (instant), delete in the background: a queue re-declared right
        # away under the same name starts from an empty directory.
        if self._no_dir:
            return  # nothing was ever written: no directory to remove
        doomed = f"{self.path}.deleted-{os.getpid()}-{id(self):x}"
        try:
            os.replace(self.path, doomed)
        except OSError as exc:
            self._note_error(exc, "cannot move the deleted queue's directory aside")
            doomed = self.path
        self.committer.submit(CommitJob(None, [], [], [], [], [], doomed))

    # ================================================================ introspection
    def stats(self) -> dict[str, int]:
        """Counts for ``shardmq ctl``: ready messages in memory and on disk only,
        unacked, persistent messages on disk, segments and their bytes."""
        persistent_ready = sum(1 for s in self._rsids if s > 0)
        return {
            "messages": len(self),
            "ready_in_memory": len(self._ready) + len(self._rg_trans),
            "ready_on_disk_only": self._rg_n - len(self._rg_trans),
            "ready_persistent": persistent_ready + self._rg_n - len(self._rg_trans),
            "unacked": len(self._unacked),
            "memory_bytes": self._mem,
            "segments": len(self._segs),
            "disk_bytes": sum(s.data.end for s in self._segs),
        }


def _first(item: tuple[int, int, Message]) -> int:
    return item[0]
