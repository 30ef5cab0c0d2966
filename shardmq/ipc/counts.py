"""Shared counters by name: what each worker holds, readable by every other worker.

Owns: ``SharedCounts``, the POSIX shared-memory segment ``/shardmq.<instance>.counts``
(created by the supervisor's ``MeshHost`` beside the control block, unlinked with it)
in which each worker publishes, per key (a vhost's or a user's name, with a kind
prefix), how many connections or channels it holds, plus a few per-worker totals
(queued messages, for the systemd STATUS= line). ``shardmq.broker.conn_limits`` uses
it to enforce ``max-connections`` and ``max-channels`` across workers.

Layout (native unsigned 64-bit words)::

    0                      header: magic, version, n, capacity
    8 + s * slot_words     slot s: seq, messages, 6 spare words, then ``capacity``
                           entries of two words: key hash (0 = empty), count

Invariants:
- Every slot has one writer: its worker. A count is one aligned word store; a new
  entry writes its count before its hash, so a reader that finds the hash reads a
  count that belongs to it (x86-64 keeps stores in order; elsewhere a fence).
- Entries are found by linear probing from ``hash % capacity``; they are never
  removed one by one. When half the table is in use, the writer rebuilds it with only
  the keys whose count is not 0, under the slot's seqlock (``seq`` odd while it
  writes); a reader retries while a rebuild is under way or happened meanwhile. One
  entry always stays empty; a key that finds no room is not published (logged once:
  it needs more than ``capacity / 2`` vhosts and users live on one worker).
- A worker zeroes its slot when it attaches (a new incarnation holds nothing; its
  predecessor's counts die with it).
- Hashes are 64-bit BLAKE2b of the key: two keys sharing one is not expected (if they
  did, they would share a count, which can only refuse too early, never admit more).
"""

from __future__ import annotations

import hashlib
import logging
import mmap

from shardmq.ipc.ring import fence
from shardmq.ipc.segment import WordSegment

log = logging.getLogger("shardmq.ipc")

MAGIC = 0x544E434D4853  # b"SHMCNT"
VERSION = 1
CAPACITY = 8192  # entries per slot (128 KiB); rebuilt when half full
_HEAD = 8
_SLOT_HEAD = 8
W_SEQ, W_MESSAGES = 0, 1
_READ_TRIES = 100_000


def counts_name(instance: str) -> str:
    return f"/shardmq.{instance}.counts"


def key_hash(key: str) -> int:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h or 1


class SharedCounts(WordSegment):
    MAGIC = MAGIC
    VERSION = VERSION
    WHAT = "counts segment"
    __slots__ = ("n", "capacity", "slot_words", "_used", "_full")

    def __init__(self, name: str, mm: mmap.mmap) -> None:
        super().__init__(name, mm)
        w = self._w
        self.n: int = w[2]
        self.capacity: int = w[3]
        self.slot_words = _SLOT_HEAD + 2 * self.capacity
        self._used = 0  # entries in our own slot (the writer's view)
        self._full = False  # told the log once that the table is full

    @staticmethod
    def size_for(n: int, capacity: int = CAPACITY) -> int:
        return 8 * (_HEAD + n * (_SLOT_HEAD + 2 * capacity))

    @classmethod
    def create(cls, name: str, n: int, capacity: int = CAPACITY) -> SharedCounts:
        return cls._create(name, cls.size_for(n, capacity), (n, capacity))

    # ------------------------------------------------------------ writer (own slot)
    def _base(self, slot: int) -> int:
        return _HEAD + slot * self.slot_words

    def reset(self, slot: int) -> None:
        """A new incarnation of ``slot``: nothing held."""
        base = self._base(slot)
        w = self._w
        w[base + W_SEQ] = w[base + W_SEQ] + 1
        fence()
        w[base + 1 : base + self.slot_words] = memoryview(bytes(8 * (self.slot_words - 1))).cast(
            "Q"
        )
        fence()
        w[base + W_SEQ] = w[base + W_SEQ] + 1
        self._used = 0

    def put_total(self, slot: int, word: int, value: int) -> None:
        self._w[self._base(slot) + word] = value

    def set(self, slot: int, h: int, count: int, *, rebuilt: bool = False) -> None:
        """Publish ``count`` for key hash ``h`` in our ``slot``."""
        w = self._w
        cap = self.capacity
        entries = self._base(slot) + _SLOT_HEAD
        i = h % cap
        for _ in range(cap):
            at = entries + 2 * i
            got = w[at]
            if got == h:
                w[at + 1] = count
                return
            if got == 0:
                if not count:
                    return
                if self._used * 2 >= cap and not rebuilt and self._rebuild(slot):
                    self.set(slot, h, count, rebuilt=True)
                    return
                if self._used >= cap - 1:  # one entry stays empty: probes end
                    break
                w[at + 1] = count
                fence()
                w[at] = h
                self._used += 1
                return
            i = (i + 1) % cap
        self._table_full()

    def _rebuild(self, slot: int) -> bool:
        """Drop the entries whose count is 0; False (nothing done) when the live ones
        alone fill half the table."""
        base = self._base(slot)
        entries = base + _SLOT_HEAD
        w = self._w
        live = [
            (w[entries + 2 * i], w[entries + 2 * i + 1])
            for i in range(self.capacity)
            if w[entries + 2 * i] and w[entries + 2 * i + 1]
        ]
        if len(live) * 2 >= self.capacity:
            return False
        w[base + W_SEQ] = w[base + W_SEQ] + 1
        fence()
        end = entries + 2 * self.capacity
        w[entries:end] = memoryview(bytes(8 * (end - entries))).cast("Q")
        self._used = 0
        for h, count in live:
            i = h % self.capacity
            while w[entries + 2 * i]:
                i = (i + 1) % self.capacity
            w[entries + 2 * i + 1] = count
            w[entries + 2 * i] = h
            self._used += 1
        fence()
        w[base + W_SEQ] = w[base + W_SEQ] + 1
        return True

    def _table_full(self) -> None:
        if not self._full:
            self._full = True
            log.error(
                "%s: more than %d vhosts and users hold connections on this worker: the "
                "others are not counted against limits across workers",
                self.name,
                self.capacity // 2,
            )

    # ------------------------------------------------------------ readers
    def get(self, slot: int, h: int) -> int:
        """``slot``'s published count for key hash ``h`` (0 when absent)."""
        w = self._w
        base = self._base(slot)
        entries = base + _SLOT_HEAD
        cap = self.capacity
        for _ in range(_READ_TRIES):
            seq = w[base + W_SEQ]
            if seq & 1:
                continue
            fence()
            count = 0
            i = h % cap
            for _ in range(cap):
                got = w[entries + 2 * i]
                if got == h:
                    count = w[entries + 2 * i + 1]
                    break
                if got == 0:
                    break
                i = (i + 1) % cap
            fence()
            if w[base + W_SEQ] == seq:
                return count
        return 0  # its writer died mid-rebuild: its successor resets the slot

    def total(self, slot: int, word: int) -> int:
        return self._w[self._base(slot) + word]
