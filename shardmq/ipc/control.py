"""Control block: the small shared-memory segment the supervisor and workers share.

Owns: per-slot liveness (incarnation, pid, heartbeat, ready, load), the table of
ring serials that names the current ring of each ordered worker pair, and the sync
state of the supervisor's definitions log (``shardmq.broker.defsync``).

Layout (native unsigned 64-bit words)::

    0            header: magic, version, n, seq,
                 defs_written  supervisor: appends written to the definitions log
                 defs_gen      supervisor: generation of the log being appended to
                 defs_synced   any process: appends known to be fdatasynced (a max:
                               raised by whoever synced the log, see below)
    64 + 64*s    slot s (one cache line):
                   gen        supervisor: incarnation of the slot, bumped at every spawn
                   pid        supervisor: pid of the current incarnation
                   heartbeat  worker: bumped on a timer by the worker's event loop
                   ready_gen  worker: ``gen`` once that incarnation is ready
                   conns      worker: client connections it serves now
                   accepted   worker: sockets it received by hand-off (monotonic)
                   rss        worker: its resident bytes, for the broker-wide memory
                              alarm (``workers.lifecycle.MemoryWatch``)
                   fd_alarm   worker: 1 while its file descriptors run short
                              (``shardmq.net.limits.Admission``)
    64 + 64*n    ring table: n*n words, serial of ring i -> j at [i*n + j] (0 on i == j)

Invariants: every word has exactly one writer (noted above), except ``defs_synced``:
each writer only ever stores a count whose appends it saw synced (its own fdatasync,
or a compaction), read-compare-store without a lock, so a lost race can move it back
(an extra fdatasync later), never past what is on disk. ``defs_gen`` is stored before
the ``defs_written`` of the first append to that generation's log, and a reader loads
``defs_written`` first: the generation it then reads names a log holding every append
it counts, or a later one (after a compaction, which synced them all). The supervisor changes
``gen`` and the ring table under a seqlock (``seq`` odd while it writes), so a worker
reads a consistent table with ``table()``. Ring i -> j of serial k is the POSIX shared
memory segment ``ring_name(instance, i, j, k)``. ``gen`` of a slot is set before its
process is spawned and never changes while it lives: a worker reads its own once, at
attach (``Mesh.incarnation``), and the refs it hands to other workers embed it, so
nothing addressed to a dead incarnation is mistaken for the new one's.
"""

from __future__ import annotations

import mmap
import time

from shardmq.ipc.ring import fence
from shardmq.ipc.segment import WordSegment

MAGIC = 0x4C5443514D4853  # b"SHMQCTL"
VERSION = 2  # 2: the definitions log's words in the header
_SLOT0 = 8  # word index of slot 0
_SLOT_WORDS = 8
_W_SEQ = 3
_W_DEFS_WRITTEN = 4
_W_DEFS_GEN = 5
_W_DEFS_SYNCED = 6

F_GEN, F_PID, F_HEARTBEAT, F_READY, F_CONNS, F_ACCEPTED, F_RSS, F_FD_ALARM = range(8)


def control_name(instance: str) -> str:
    return f"/shardmq.{instance}.ctl"


def ring_name(instance: str, i: int, j: int, serial: int, lane: int = 0) -> str:
    """Lane 0: the data ring i -> j; lane 1: its control ring (same serial)."""
    return f"/shardmq.{instance}.{i}.{j}.{serial}" + ("c" if lane else "")


class ControlBlock(WordSegment):
    MAGIC = MAGIC
    VERSION = VERSION
    WHAT = "control block"
    __slots__ = ("n", "_table0")

    def __init__(self, name: str, mm: mmap.mmap) -> None:
        super().__init__(name, mm)
        w = self._w
        self.n: int = w[2]
        self._table0 = _SLOT0 + self.n * _SLOT_WORDS

    @staticmethod
    def size_for(n: int) -> int:
        return 8 * (_SLOT0 + n * _SLOT_WORDS + n * n)

    @classmethod
    def create(cls, name: str, n: int) -> ControlBlock:
        return cls._create(name, cls.size_for(n), (n,))

    # ------------------------------------------------------------------ slots
    def get(self, slot: int, field: int) -> int:
        return self._w[_SLOT0 + slot * _SLOT_WORDS + field]

    def put(self, slot: int, field: int, value: int) -> None:
        self._w[_SLOT0 + slot * _SLOT_WORDS + field] = value

    def beat(self, slot: int) -> None:
        """Worker: one heartbeat."""
        i = _SLOT0 + slot * _SLOT_WORDS + F_HEARTBEAT
        self._w[i] = self._w[i] + 1

    def heartbeat(self, slot: int) -> int:
        return self.get(slot, F_HEARTBEAT)

    def set_ready(self, slot: int) -> None:
        """Worker: this incarnation of ``slot`` is ready."""
        self.put(slot, F_READY, self.get(slot, F_GEN))

    def total(self, field: int) -> int:
        """``field`` summed over the slots whose current incarnation is ready."""
        return sum(self.get(s, field) for s in range(self.n) if self.is_ready(s))

    def is_ready(self, slot: int) -> bool:
        gen = self.get(slot, F_GEN)
        return gen != 0 and self.get(slot, F_READY) == gen

    # ------------------------------------------------------------------ definitions log
    def publish_definitions(self, generation: int, written: int, synced: int) -> None:
        """Supervisor: the log ``generation`` is being appended to, ``written`` appends
        so far (each whole in the kernel), ``synced`` of them known on disk. Call it
        before anyone hears of the last append."""
        w = self._w
        w[_W_DEFS_GEN] = generation
        fence()
        w[_W_DEFS_WRITTEN] = written
        self.definitions_synced(synced)

    def definitions_due(self) -> tuple[int, int] | None:
        """``(written, generation)`` when some append is not known synced, else None:
        an fdatasync of log ``generation`` then makes every append up to ``written``
        durable (or a compaction already did)."""
        w = self._w
        written = w[_W_DEFS_WRITTEN]
        if written <= w[_W_DEFS_SYNCED]:
            return None
        fence()
        return written, w[_W_DEFS_GEN]

    @property
    def definitions_synced_upto(self) -> int:
        """Appends known to be fdatasynced."""
        return self._w[_W_DEFS_SYNCED]

    def definitions_synced(self, upto: int) -> None:
        """Any process: appends ``<= upto`` are on disk (it synced the log)."""
        w = self._w
        if w[_W_DEFS_SYNCED] < upto:
            w[_W_DEFS_SYNCED] = upto

    # ------------------------------------------------------------------ seqlock
    @property
    def seq(self) -> int:
        return self._w[_W_SEQ]

    def begin_update(self) -> None:
        """Supervisor: start changing gens/ring serials (seq becomes odd)."""
        self._w[_W_SEQ] = self._w[_W_SEQ] + 1
        fence()

    def end_update(self) -> None:
        fence()
        self._w[_W_SEQ] = self._w[_W_SEQ] + 1

    def set_serial(self, i: int, j: int, serial: int) -> None:
        self._w[self._table0 + i * self.n + j] = serial

    def serial(self, i: int, j: int) -> int:
        return self._w[self._table0 + i * self.n + j]

    def table(self, timeout: float = 5.0) -> tuple[int, list[int], list[int]]:
        """Consistent snapshot: (seq, ring serials flat n*n, gens)."""
        w = self._w
        n = self.n
        t0 = self._table0
        deadline = time.monotonic() + timeout
        while True:
            s1 = w[_W_SEQ]
            if not s1 & 1:
                fence()
                serials = w[t0 : t0 + n * n].tolist()
                gens = [w[_SLOT0 + s * _SLOT_WORDS + F_GEN] for s in range(n)]
                fence()
                if w[_W_SEQ] == s1:
                    return s1, serials, gens
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: control table stayed locked")
            time.sleep(0)
