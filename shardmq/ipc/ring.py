"""Single-producer single-consumer byte ring in POSIX shared memory.

Owns: the layout of one ring segment and the two halves of its protocol (one writer
process, one reader process; the same ``Ring`` class serves either role).

Layout (all header words are native unsigned 64-bit, 8-byte aligned)::

    0    line 0  magic, version, capacity                      (static after create)
    64   line 1  tail, writer_wait                             (written by the writer only)
    128  line 2  head, reader_sleep                            (written by the reader only)
    192  line 3  spare
    256  data    ``capacity`` bytes, used as a circular byte stream

``head`` and ``tail`` are monotonic byte counters (never wrapped); the byte at stream
position ``p`` lives at ``256 + p % capacity``. ``tail - head`` bytes are readable,
``capacity - (tail - head)`` are free.

Records are framed as a 4-byte little-endian length followed by the payload. The ring is a
byte stream: a record that does not fit before the end of the data area simply continues
at its start (the writer copies it in two pieces and the reader joins them), so there is no
padding and records of any size up to ``capacity - 4`` are written whole by
``try_write``. A record larger than that is streamed: its first part is written now, the
rest is kept by the writer (``pending``) and pushed as the reader frees space; the reader
collects a record that is only partly published into a private buffer, so a huge record
can pass through a small ring. A full ring makes ``try_write`` return False: never a drop,
never a block.

Memory ordering: the writer copies the record bytes first and then publishes the new
tail with one aligned 8-byte store (a ``'Q'`` memoryview item assignment compiles to a
single ``memcpy`` of 8 bytes, i.e. one ``mov``/``str``); the reader loads the tail, then
the bytes. On x86-64 (TSO: stores are not reordered with stores, loads not with loads)
this is sufficient, and so is the reader's mirror image (load the bytes, then store the
new head: x86 never lets a store pass an earlier load). On weaker models (aarch64) both
may be reordered; there the writer calls ``fence()`` before publishing the tail and the
reader after loading the tail and before publishing the head. ``fence()`` is an uncontended lock acquire/release, which is a full barrier on
x86-64 (``lock`` prefixed instructions) and acquire/release ordered on aarch64: close to,
but not formally, a full barrier there. That caveat is why the mesh also polls idle
rings on a slow timer.

Sleep/wake (doorbells, see ``doorbell.py``) is a store-buffer (Dekker) pattern, which TSO
does *not* order by itself, so both sides fence:

- reader: ``reader_sleep()`` stores a new non-zero sleep generation, fences, re-checks
  that the ring is still empty (else it must read instead of sleeping);
- writer: after publishing the tail, fences once per flush, then ``reader_needs_wake()``
  tells whether this sleep generation has not been rung yet (one ring per sleep).

The mirror image (``writer_wait`` / ``writer_needs_wake``) wakes a writer that is waiting
for free space.
"""

from __future__ import annotations

import mmap
import os
import platform
import struct
import threading
from collections.abc import Iterable

import posix_ipc

HEADER_SIZE = 256
MAGIC = 0x474E4952514D4853  # b"SHMQRING" little-endian
VERSION = 1
LEN = struct.Struct("<I")
MAX_RECORD = 0xFFFFFFFF

# word indices into the header viewed as 'Q'
_W_MAGIC = 0
_W_VERSION = 1
_W_CAPACITY = 2
_W_TAIL = 8
_W_WRITER_WAIT = 9
_W_HEAD = 16
_W_READER_SLEEP = 17

_pack_len = LEN.pack_into
_unpack_len = LEN.unpack_from

_fence_lock = threading.Lock()


def fence() -> None:
    """Best-effort full memory barrier (see the module docstring)."""
    _fence_lock.acquire()
    _fence_lock.release()


# x86-64 is TSO: publication (store data, store tail / load tail, load data) needs no fence.
_STRONG = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


class RingError(Exception):
    pass


class Ring:
    """One SPSC ring. Create it in one process, attach in the other(s)."""

    __slots__ = (
        "name",
        "capacity",
        "_shm",
        "_mm",
        "_mv",
        "_hdr",
        "_base",
        "_end",
        "_tail",
        "_head_seen",
        "_head",
        "_pending",
        "_partial",
        "_pwant",
        "_sleep_gen",
        "_wait_gen",
        "_rung_reader",
        "_rung_writer",
        "_reserved",
    )

    def __init__(self, name: str, shm: posix_ipc.SharedMemory, mm: mmap.mmap) -> None:
        self.name = name
        self._shm = shm
        self._mm = mm
        self._mv = memoryview(mm)
        hdr = self._mv[:HEADER_SIZE].cast("Q")
        self._hdr = hdr
        if hdr[_W_MAGIC] != MAGIC or hdr[_W_VERSION] != VERSION:
            self._release()
            raise RingError(f"{name}: not a shardmq ring (bad magic/version)")
        self.capacity: int = hdr[_W_CAPACITY]
        if HEADER_SIZE + self.capacity > len(mm):
            self._release()
            raise RingError(f"{name}: segment smaller than its header says")
        self._base = HEADER_SIZE
        self._end = HEADER_SIZE + self.capacity
        # writer-side state
        self._tail: int = hdr[_W_TAIL]
        self._head_seen: int = hdr[_W_HEAD]
        self._pending: memoryview | None = None
        self._reserved = 0
        self._wait_gen: int = hdr[_W_WRITER_WAIT]
        self._rung_reader = 0
        # reader-side state
        self._head: int = hdr[_W_HEAD]
        self._partial: bytearray | None = None
        self._pwant = -1
        self._sleep_gen: int = hdr[_W_READER_SLEEP]
        self._rung_writer = 0

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, name: str, capacity: int) -> Ring:
        """Create (exclusively) a new zeroed ring of ``capacity`` data bytes."""
        if capacity < 64:
            raise ValueError("ring capacity must be at least 64 bytes")
        capacity = (capacity + 63) & ~63
        shm = posix_ipc.SharedMemory(
            name, posix_ipc.O_CREX, mode=0o600, size=HEADER_SIZE + capacity
        )
        try:
            # reserve the pages now: a full /dev/shm must fail here, not SIGBUS later
            os.posix_fallocate(shm.fd, 0, HEADER_SIZE + capacity)
            mm = mmap.mmap(shm.fd, HEADER_SIZE + capacity)
        except BaseException:
            shm.close_fd()
            shm.unlink()
            raise
        shm.close_fd()
        hdr = memoryview(mm)[:HEADER_SIZE].cast("Q")
        hdr[_W_CAPACITY] = capacity
        hdr[_W_VERSION] = VERSION
        hdr[_W_MAGIC] = MAGIC
        hdr.release()
        return cls(name, shm, mm)

    @classmethod
    def attach(cls, name: str) -> Ring:
        shm = posix_ipc.SharedMemory(name)
        try:
            mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        return cls(name, shm, mm)

    def _release(self) -> None:
        if self._mm.closed:
            return
        self._hdr.release()
        self._mv.release()
        try:
            self._mm.close()
        except BufferError:  # a caller still holds a view from ``reserve``: gc unmaps
            pass

    def close(self) -> None:
        """Unmap (the segment itself stays until ``unlink``). Idempotent."""
        self._pending = None
        self._release()

    def unlink(self) -> None:
        """Remove the segment's name (mappings stay valid until closed). Idempotent."""
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    @property
    def closed(self) -> bool:
        return self._mm.closed

    def __repr__(self) -> str:
        return f"<Ring {self.name} cap={self.capacity}>"

    # ------------------------------------------------------------------ sizes
    def used(self) -> int:
        """Bytes published and not yet consumed (as seen from shared memory)."""
        hdr = self._hdr
        return hdr[_W_TAIL] - hdr[_W_HEAD]

    def free(self) -> int:
        """Bytes the writer could write now."""
        hdr = self._hdr
        return self.capacity - (hdr[_W_TAIL] - hdr[_W_HEAD])

    @property
    def max_record(self) -> int:
        """Largest payload ``try_write`` writes whole (larger ones are streamed)."""
        return self.capacity - 4

    @property
    def pending(self) -> int:
        """Bytes of a streamed oversize record still waiting to go into the ring."""
        p = self._pending
        return 0 if p is None else len(p)

    # ------------------------------------------------------------------ writer
    def _copy_in(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to stream position ``pos`` (wrapping). Caller checked space."""
        n = len(data)
        off = self._base + pos % self.capacity
        end = self._end
        if off + n <= end:
            self._mm[off : off + n] = data
        else:
            first = end - off
            mv = data if isinstance(data, memoryview) else memoryview(data)
            self._mm[off:end] = mv[:first]
            self._mm[self._base : self._base + n - first] = mv[first:]

    def _room(self, need: int) -> bool:
        if need <= self.capacity - (self._tail - self._head_seen):
            return True
        self._head_seen = self._hdr[_W_HEAD]
        return need <= self.capacity - (self._tail - self._head_seen)

    def _publish(self) -> None:
        if not _STRONG:
            fence()
        self._hdr[_W_TAIL] = self._tail

    def _pump(self) -> bool:
        """Push a pending oversize record; True when nothing is pending any more."""
        p = self._pending
        if p is None:
            return True
        free = self.capacity - (self._tail - self._head_seen)
        if free < len(p):
            self._head_seen = self._hdr[_W_HEAD]
            free = self.capacity - (self._tail - self._head_seen)
        if free <= 0:
            return False
        k = min(free, len(p))
        self._copy_in(self._tail, p[:k])
        self._tail += k
        if k == len(p):
            self._pending = None
            return True
        self._pending = p[k:]
        return False

    def try_write(self, data: bytes | bytearray | memoryview) -> bool:
        """Append one record. False (nothing written) when it does not fit now."""
        if self._pending is not None:
            done = self._pump()
            self._publish()
            if not done:
                return False
        n = len(data)
        need = n + 4
        tail = self._tail
        if need > self.capacity - (tail - self._head_seen):
            self._head_seen = self._hdr[_W_HEAD]
            if need > self.capacity - (tail - self._head_seen):
                if need <= self.capacity:
                    return False
                return self._write_oversize(data)
        off = self._base + tail % self.capacity
        if off + need <= self._end:
            mm = self._mm
            _pack_len(mm, off, n)
            mm[off + 4 : off + need] = data
        else:
            self._copy_in(tail, LEN.pack(n))
            self._copy_in(tail + 4, data)
        self._tail = tail + need
        if not _STRONG:
            fence()
        self._hdr[_W_TAIL] = tail + need
        return True

    def _write_oversize(self, data: bytes | bytearray | memoryview) -> bool:
        n = len(data)
        if n > MAX_RECORD:
            raise ValueError(f"record of {n} bytes is too large")
        free = self.capacity - (self._tail - self._head_seen)
        if free < 4:
            return False
        self._copy_in(self._tail, LEN.pack(n))
        self._tail += 4
        # keep our own copy of the rest: the caller may reuse its buffer
        self._pending = memoryview(bytes(data))
        self._pump()
        self._publish()
        return True

    def try_write_many(self, records: Iterable[bytes | bytearray | memoryview]) -> int:
        """Append records in order until one does not fit; publish once; return the count."""
        if self._pending is not None:
            done = self._pump()
            self._publish()
            if not done:
                return 0
        cap = self.capacity
        base = self._base
        end = self._end
        mm = self._mm
        tail = self._tail
        head = self._head_seen
        count = 0
        for data in records:
            n = len(data)
            need = n + 4
            if need > cap - (tail - head):
                head = self._head_seen = self._hdr[_W_HEAD]
                if need > cap - (tail - head):
                    if need > cap and count == 0:
                        self._tail = tail
                        if self._write_oversize(data):
                            return 1
                    break
            off = base + tail % cap
            if off + need <= end:
                _pack_len(mm, off, n)
                mm[off + 4 : off + need] = data
            else:
                self._copy_in(tail, LEN.pack(n))
                self._copy_in(tail + 4, data)
            tail += need
            count += 1
        if count:
            self._tail = tail
            self._publish()
        return count

    def write_bytes(self, data: bytes | bytearray | memoryview, start: int = 0) -> int:
        """Stream already framed bytes (``LEN`` + payload, back to back) into the ring.

        Copies as much of ``data[start:]`` as fits, possibly ending inside a record (the
        reader reassembles it), publishes, and returns the number of bytes copied. The
        caller keeps the rest and calls again later; it must never interleave this with
        ``try_write`` in the middle of a record.
        """
        if self._pending is not None and not self._pump():
            self._publish()
            return 0
        left = len(data) - start
        if left <= 0:
            return 0
        free = self.capacity - (self._tail - self._head_seen)
        if free < left:
            self._head_seen = self._hdr[_W_HEAD]
            free = self.capacity - (self._tail - self._head_seen)
            if free <= 0:
                return 0
        k = left if left <= free else free
        if start == 0 and k == len(data):
            self._copy_in(self._tail, data)
        else:
            mv = data if isinstance(data, memoryview) else memoryview(data)
            self._copy_in(self._tail, mv[start : start + k])
        self._tail += k
        self._publish()
        return k

    def reserve(self, n: int) -> memoryview | None:
        """Zero-copy write: a writable view of ``n`` payload bytes inside the ring, or None
        when there is no room or the slot would wrap (then use ``try_write``). Fill it and
        call ``commit()``; do not keep the view afterwards."""
        if self._pending is not None and not self._pump():
            self._publish()
            return None
        need = n + 4
        if not self._room(need):
            return None
        off = self._base + self._tail % self.capacity
        if off + need > self._end:
            return None
        _pack_len(self._mm, off, n)
        self._reserved = need
        return self._mv[off + 4 : off + need]

    def commit(self) -> None:
        """Publish the record prepared in the view returned by ``reserve``."""
        if not self._reserved:
            raise RingError("commit without reserve")
        self._tail += self._reserved
        self._reserved = 0
        self._publish()

    def reader_needs_wake(self) -> bool:
        """Writer, after publishing (and one ``fence()`` per batch): True when the reader
        announced a sleep that nobody rang for yet, i.e. ring its doorbell now."""
        gen = self._hdr[_W_READER_SLEEP]
        if gen and gen != self._rung_reader:
            self._rung_reader = gen
            return True
        return False

    def writer_wait(self, need: int = 1) -> bool:
        """Writer: announce it waits for ``need`` free bytes. Returns False when that space
        is already there (do not wait, write), True when the reader will ring."""
        self._wait_gen += 1
        self._hdr[_W_WRITER_WAIT] = self._wait_gen
        fence()
        self._head_seen = self._hdr[_W_HEAD]
        if self.capacity - (self._tail - self._head_seen) >= need:
            self._hdr[_W_WRITER_WAIT] = 0
            return False
        return True

    def writer_resume(self) -> None:
        if self._hdr[_W_WRITER_WAIT]:
            self._hdr[_W_WRITER_WAIT] = 0

    # ------------------------------------------------------------------ reader
    def _copy_out(self, pos: int, n: int) -> bytes:
        off = self._base + pos % self.capacity
        end = self._end
        if off + n <= end:
            return self._mm[off : off + n]
        return self._mm[off:end] + self._mm[self._base : self._base + n - (end - off)]

    @property
    def consumed(self) -> int:
        """Reader: bytes consumed so far (its head); grows also when ``read_all`` only
        collected part of a streamed record."""
        return self._head

    def readable(self) -> bool:
        """True when published bytes wait to be read."""
        return self._hdr[_W_TAIL] != self._head

    def read_all(self, limit: int = 1 << 62) -> list[bytes]:
        """Return up to ``limit`` complete records available now (copies, safe to keep)
        and free their space. Bytes of a record that is only partly published are moved
        to a private buffer so a writer streaming a huge record can go on."""
        head = self._head
        tail = self._hdr[_W_TAIL]
        if tail == head:
            return []
        if not _STRONG:
            fence()
        out: list[bytes] = []
        if self._partial is not None:
            head = self._read_partial(head, tail, out)
        cap = self.capacity
        base = self._base
        end = self._end
        mm = self._mm
        append = out.append
        unpack = _unpack_len
        left = limit - len(out)
        while head < tail and left > 0:
            # fast loop over the part of [head, tail) that does not wrap
            pos = base + head % cap
            lim = pos + (tail - head)
            if lim > end:
                lim = end
            start = pos
            while pos + 4 <= lim and left:
                e = pos + 4 + unpack(mm, pos)[0]
                if e > lim:
                    break
                append(mm[pos + 4 : e])
                pos = e
                left -= 1
            head += pos - start
            if head >= tail or not left:
                break
            if pos == end:
                continue
            # a record that straddles the end, or an incomplete one
            avail = tail - head
            if avail < 4:
                self._partial = bytearray(self._copy_out(head, avail))
                self._pwant = -1
                head = tail
                break
            need = 4 + LEN.unpack(self._copy_out(head, 4))[0]
            if need > avail:
                self._partial = bytearray(self._copy_out(head, avail))
                self._pwant = need
                head = tail
                break
            append(self._copy_out(head + 4, need - 4))
            head += need
            left -= 1
        self._head = head
        if not _STRONG:
            fence()  # our loads of the records before the store that frees them
        self._hdr[_W_HEAD] = head
        return out

    def _read_partial(self, head: int, tail: int, out: list[bytes]) -> int:
        buf = self._partial
        assert buf is not None
        if self._pwant < 0:
            k = min(4 - len(buf), tail - head)
            buf += self._copy_out(head, k)
            head += k
            if len(buf) < 4:
                return head
            self._pwant = 4 + LEN.unpack_from(buf)[0]
        k = min(self._pwant - len(buf), tail - head)
        if k:
            buf += self._copy_out(head, k)
            head += k
        if len(buf) == self._pwant:
            out.append(bytes(memoryview(buf)[4:]))
            self._partial = None
            self._pwant = -1
        return head

    def reader_sleep(self) -> bool:
        """Reader: announce it is going idle. True when it may sleep (ring still empty
        after the fence); False when data arrived meanwhile (read it instead)."""
        self._sleep_gen += 1
        self._hdr[_W_READER_SLEEP] = self._sleep_gen
        fence()
        if self._hdr[_W_TAIL] != self._head:
            self._hdr[_W_READER_SLEEP] = 0
            return False
        return True

    def reader_awake(self) -> None:
        """Reader: it is polling again; writers need not ring."""
        if self._hdr[_W_READER_SLEEP]:
            self._hdr[_W_READER_SLEEP] = 0

    def writer_needs_wake(self) -> bool:
        """Reader, after freeing space (and one ``fence()`` per batch): True when the
        writer waits for space and nobody rang for this wait yet."""
        gen = self._hdr[_W_WRITER_WAIT]
        if gen and gen != self._rung_writer:
            self._rung_writer = gen
            return True
        return False

    def discard(self) -> None:
        """Reader: drop everything published so far (and any partial record)."""
        self._partial = None
        self._pwant = -1
        self._head = self._hdr[_W_TAIL]
        self._hdr[_W_HEAD] = self._head


def unlink_quietly(name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        return False
    return True
