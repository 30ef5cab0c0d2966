"""Mesh of rings between N workers: one SPSC ring per ordered pair, plus doorbells.

Owns: ``MeshHost`` (supervisor side: names, creates, renews and removes the shared
memory of one broker instance, and the doorbells) and ``Mesh`` (worker side: buffered
sends flushed once per loop turn, reading inboxes, sleep/wake, backpressure, peer
restarts). Everything a worker keeps per other worker is one ``Peer``: its data and
control ``Lane`` (outgoing ring, pieces queued this turn, backlog the ring had no room
for), its two inboxes, ring serials, open batch records, bytes queued this turn and
its doorbell; a peer restart replaces the rings of one ``Peer`` and drops its queues.

Naming: a broker instance gets a random id, written with the supervisor's pid to
``data_dir/shm.instance`` (which is also ``flock``-ed while the supervisor lives, so two
brokers cannot share a data dir). Segments are ``/shardmq.<instance>.ctl`` (control
block), ``/shardmq.<instance>.counts`` (``shardmq.ipc.counts``) and ``/shardmq.<instance>.<i>.<j>.<serial>`` (ring i -> j). On start, the segments
of the instance recorded in that file (a crashed previous run) are unlinked; on clean
exit everything is unlinked and the file removed.

Peer restart: when worker j dies, the supervisor creates fresh rings for every pair with
j (new serials), publishes them in the control block (seqlock) and rings every doorbell.
A surviving worker then delivers the complete records the dead peer had published, drops
what it had staged for it, switches to the new rings and calls ``on_peer_restart(j)``.
The new incarnation of j never sees a byte meant for its predecessor.

Worker protocol per loop turn: ``send`` queues a length header and a reference to the
record for its target and schedules one ``flush`` (``call_soon``); ``flush`` joins each
target's pieces (one C-level copy) and streams the result into its ring (partial records
allowed: the reader reassembles), rings the doorbell of a target whose reader sleeps, and
reports targets it could not empty (backpressure: the caller pauses its producers until
``on_writable(j)``). Measured with ``python -m loadtest.ringbench``: queue-and-join beats
per-record writes into the ring (``Ring.try_write``/``reserve``) in CPython, because the
per-call overhead, not the copy, dominates. Batch records (``open_batch``/``batch``) go
further: a record stays open this turn and takes one item per message for the same
destination, so the reader pays one header, one lookup and one callback per batch; a
batch closes when anything else is queued for its target (order holds), at the flush,
or at ``batch_limit`` bytes, and open batches count towards ``soft_limit``. Nothing is
ever dropped, except
data addressed to a peer that died. Reading: while records keep arriving the worker polls
its inboxes once per loop turn (no syscalls); after a turn with nothing it announces
sleep in every inbox header and waits on its doorbell. A slow timer (``idle_poll``) is a
safety net for a missed wake-up on weakly ordered CPUs and notices control changes.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import secrets
import struct
from collections.abc import Callable

import posix_ipc  # type: ignore[import-not-found]  # (no type stubs)

from shardmq.ipc.control import F_GEN, F_PID, ControlBlock, control_name, ring_name
from shardmq.ipc.counts import SharedCounts, counts_name
from shardmq.ipc.doorbell import Doorbell
from shardmq.ipc.ring import Ring, fence

log = logging.getLogger("shardmq.ipc")

INSTANCE_FILE = "shm.instance"
SHM_DIR = "/dev/shm"
_LEN = struct.Struct("<I")
_pack_len = _LEN.pack
_pack_len_into = _LEN.pack_into
_PLACEHOLDER = b"\0\0\0\0"
# Each ordered pair also has a small control ring (lane 1) for records that must not
# wait behind bulk data (credit, settles, confirms): the bulk ring may hold a megabyte of
# publishes that the reader needs ~100 ms to get through.
CONTROL_RING_CAPACITY = 64 * 1024


class MeshError(Exception):
    pass


# ---------------------------------------------------------------------- stale segments
def unlink_instance(instance: str) -> int:
    """Unlink every segment of ``instance``; returns how many were removed."""
    removed = 0
    prefix = f"shardmq.{instance}."
    names: set[str] = set()
    try:
        names.update("/" + e for e in os.listdir(SHM_DIR) if e.startswith(prefix))
    except OSError:
        pass
    # without a /dev/shm listing: walk the control block's ring table
    try:
        ctl = ControlBlock.attach(control_name(instance))
    except (posix_ipc.ExistentialError, ValueError, OSError):
        ctl = None
    if ctl is not None:
        n = ctl.n
        for i in range(n):
            for j in range(n):
                if i != j and ctl.serial(i, j):
                    names.add(ring_name(instance, i, j, ctl.serial(i, j)))
                    names.add(ring_name(instance, i, j, ctl.serial(i, j), 1))
        ctl.close()
        names.add(control_name(instance))
        names.add(counts_name(instance))
    for name in names:
        try:
            posix_ipc.unlink_shared_memory(name)
            removed += 1
        except posix_ipc.ExistentialError:
            pass
    return removed


class InstanceLock:
    """``data_dir/shm.instance``: the lock of a running broker and the name of its shm."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, INSTANCE_FILE)
        os.makedirs(data_dir, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                other = _read_instance_file(self.path)
                who = f" (pid {other[1]})" if other else ""
                raise MeshError(
                    f"data dir {data_dir} is in use by another running shardmq{who}"
                ) from None
            raise
        self.stale = _read_instance_file(self.path)
        self.stale_removed = 0
        if self.stale:
            self.stale_removed = unlink_instance(self.stale[0])
        self.instance = secrets.token_hex(4)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{self.instance} {os.getpid()}\n".encode(), 0)
        os.fsync(self.fd)

    def release(self, remove: bool = True) -> None:
        if self.fd < 0:
            return
        if remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)  # drops the flock
        self.fd = -1


def _read_instance_file(path: str) -> tuple[str, int] | None:
    try:
        with open(path, encoding="ascii") as f:
            parts = f.read().split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(parts) < 2 or not parts[0].isalnum():
        return None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return None


# ---------------------------------------------------------------------- supervisor side
class MeshHost:
    """Supervisor side: owns the instance's shared memory and every worker's doorbell."""

    def __init__(
        self, data_dir: str, n: int, ring_capacity: int, *, prefer_eventfd: bool = True
    ) -> None:
        if n < 2:
            raise ValueError("a mesh needs at least two workers")
        self.n = n
        self.ring_capacity = ring_capacity
        self.lock = InstanceLock(data_dir)
        self.instance = self.lock.instance
        self._serial = 0
        self._names: dict[tuple[int, int], tuple[str, str]] = {}
        self.doorbells: list[Doorbell] = []
        self.control: ControlBlock | None = None
        self.counts: SharedCounts | None = None  # connections per vhost/user (limits)
        try:
            self.control = ControlBlock.create(control_name(self.instance), n)
            self.counts = SharedCounts.create(counts_name(self.instance), n)
            self.doorbells = [Doorbell.create(prefer_eventfd=prefer_eventfd) for _ in range(n)]
            self.control.begin_update()
            for i in range(n):
                for j in range(n):
                    if i != j:
                        self._new_ring(i, j)
            self.control.end_update()
        except BaseException:
            self.close()
            raise

    @property
    def stale_removed(self) -> int:
        return self.lock.stale_removed

    def _new_ring(self, i: int, j: int) -> None:
        assert self.control is not None
        self._serial += 1
        name = ring_name(self.instance, i, j, self._serial)
        cname = ring_name(self.instance, i, j, self._serial, 1)
        Ring.create(name, self.ring_capacity).close()
        Ring.create(cname, CONTROL_RING_CAPACITY).close()
        old = self._names.get((i, j))
        self._names[(i, j)] = (name, cname)
        self.control.set_serial(i, j, self._serial)
        for gone in old or ():
            try:
                posix_ipc.unlink_shared_memory(gone)
            except posix_ipc.ExistentialError:
                pass

    def pass_fds(self) -> tuple[int, ...]:
        return tuple(fd for d in self.doorbells for fd in d.fds)

    def spec(self) -> str:
        """What a worker needs to attach: instance, n and the doorbell fds."""
        return f"{self.instance}/{self.n}/" + ",".join(d.spec() for d in self.doorbells)

    def begin_incarnation(self, slot: int, *, renew_rings: bool) -> int:
        """Before (re)spawning ``slot``: bump its incarnation and, for a respawn, replace
        every ring to and from it. Survivors are rung so they switch. Returns the gen."""
        ctl = self.control
        assert ctl is not None
        ctl.begin_update()
        try:
            if renew_rings:
                for k in range(self.n):
                    if k != slot:
                        self._new_ring(k, slot)
                        self._new_ring(slot, k)
            gen = ctl.get(slot, F_GEN) + 1
            ctl.put(slot, F_GEN, gen)
            ctl.put(slot, F_PID, 0)
        finally:
            ctl.end_update()
        if renew_rings:
            for k, bell in enumerate(self.doorbells):
                if k != slot:
                    bell.ring()
        return gen

    def set_pid(self, slot: int, pid: int) -> None:
        assert self.control is not None
        self.control.put(slot, F_PID, pid)

    def close(self) -> None:
        """Unlink every segment, close the doorbells, remove the instance file."""
        for names in self._names.values():
            for name in names:
                try:
                    posix_ipc.unlink_shared_memory(name)
                except posix_ipc.ExistentialError:
                    pass
        self._names.clear()
        if self.control is not None:
            self.control.close()
            self.control.unlink()
            self.control = None
        if self.counts is not None:
            self.counts.close()
            self.counts.unlink()
            self.counts = None
        for d in self.doorbells:
            d.close()
        self.doorbells = []
        self.lock.release()


# ---------------------------------------------------------------------- worker side
RecordsCallback = Callable[[int, list[bytes]], None]
SlotCallback = Callable[[int], None]
Piece = bytes | bytearray | memoryview


def _ignore_records(src: int, records: list[bytes]) -> None:
    log.warning("mesh: %d record(s) from worker %d and no on_records handler", len(records), src)


def _ignore_slot(slot: int) -> None:
    pass


class Lane:
    """One outgoing ring to a peer and what is queued for it: the pieces queued this
    turn (``stage``, joined at the flush) and the flushed data the ring had no room for
    yet (``backlog``, oldest first)."""

    __slots__ = ("ring", "stage", "backlog")

    def __init__(self) -> None:
        self.ring: Ring | None = None
        self.stage: list[Piece] = []
        self.backlog: list[bytes | memoryview] = []

    def pending(self) -> int:
        return sum(map(len, self.stage)) + sum(map(len, self.backlog))

    def clear(self) -> None:
        self.stage.clear()
        self.backlog.clear()

    def write(self, ring: Ring) -> int:
        """Move what is queued into ``ring`` (this lane's), as much as fits; the rest
        stays in ``backlog``. Returns the bytes written."""
        st = self.stage
        bl = self.backlog
        if st:
            data = b"".join(st)
            st.clear()
            if not bl:
                # the common case: one copy into a buffer, one into the ring
                k = ring.write_bytes(data)
                if k < len(data):
                    bl.append(memoryview(data)[k:])
                return k
            bl.append(data)
        written = 0
        while bl:
            chunk = bl[0]
            k = ring.write_bytes(chunk)
            written += k
            if k < len(chunk):
                if k:
                    bl[0] = memoryview(chunk)[k:]
                break
            del bl[0]
        return written


class Peer:
    """Another worker, as this worker's mesh sees it: its data lane and control lane
    (outgoing rings and what is queued for them), its two inboxes, the ring serials
    they were attached by, the batch records open for it, the bytes queued for it this
    turn and its doorbell. (The ``Mesh`` keeps one for its own slot too, never attached,
    so that a slot indexes its list directly.)"""

    __slots__ = (
        "slot",
        "bell",
        "data",
        "control",
        "inbox",
        "cinbox",
        "serial_out",
        "serial_in",
        "batches",
        "staged",
        "marked",
    )

    def __init__(self, slot: int, bell: Doorbell) -> None:
        self.slot = slot
        self.bell = bell
        self.data = Lane()
        self.control = Lane()
        self.inbox: Ring | None = None
        self.cinbox: Ring | None = None
        self.serial_out = 0
        self.serial_in = 0
        # the open batch records (``Mesh.batch``/``open_batch``) by key, as (match, buffer)
        self.batches: dict[object, tuple[object, bytearray]] = {}
        # bytes queued since the last flush (``send``/``send_parts`` and closed batches):
        # a publisher whose socket yields megabytes in one loop turn must be stopped
        # mid-turn (``Mesh.is_blocked``), or every record behind its burst waits for it
        self.staged = 0
        self.marked = False  # in the mesh's list of peers to flush

    def open_sizes(self) -> int:
        return sum([len(buf) for _m, buf in self.batches.values()])

    def close_batches(self) -> None:
        """Write the length of every open batch record: they take no more items."""
        opened = self.batches
        if not opened:
            return
        n = 0
        for _m, buf in opened.values():
            size = len(buf) - 4
            _pack_len_into(buf, 0, size)
            n += size
        opened.clear()
        self.staged += n

    def pending(self) -> int:
        return self.data.pending() + self.control.pending()

    def drop_queued(self) -> None:
        """Forget everything queued for this peer (it died)."""
        self.data.clear()
        self.control.clear()
        self.batches.clear()
        self.staged = 0


class Mesh:
    """Worker side of the mesh for worker ``slot``: one ``Peer`` per other worker.

    Callbacks (set as attributes):
      - ``on_records(src, records)``: complete records that arrived from worker ``src``.
      - ``on_writable(dst)``: the staged data for ``dst`` that a previous ``flush``
        reported as blocked has all gone into the ring.
      - ``on_peer_restart(peer)``: ``peer`` died and was replaced (fresh rings).
    """

    def __init__(
        self,
        instance: str,
        slot: int,
        n: int,
        doorbells: list[Doorbell],
        *,
        read_batch: int = 1024,
        idle_poll: float = 0.1,
    ) -> None:
        self.instance = instance
        self.slot = slot
        self.n = n
        self.doorbells = doorbells
        self.bell = doorbells[slot]
        self.read_batch = read_batch
        self.idle_poll = idle_poll
        self.control = ControlBlock.attach(control_name(instance))
        if self.control.n != n:
            raise MeshError(f"control block is for {self.control.n} workers, not {n}")
        # this incarnation of the slot: the supervisor bumps its ``gen`` before every
        # spawn (0 for a mesh whose host never spawned anything, e.g. in tests)
        self.incarnation: int = self.control.get(slot, F_GEN)
        self.on_records: RecordsCallback = _ignore_records
        self.on_writable: SlotCallback = _ignore_slot
        self.on_peer_restart: SlotCallback = _ignore_slot
        # by slot (our own never attached), and the others
        self._by_slot = [Peer(k, doorbells[k]) for k in range(n)]
        self._peers = [p for p in self._by_slot if p.slot != slot]
        self._cwaiting: set[Peer] = set()  # control data the ring had no room for
        self.soft_limit = 256 * 1024  # queued bytes past which ``is_blocked`` says so
        # an open batch record takes items until it is this large (then a new one opens):
        # a record is read only once all of it is in the ring
        self.batch_limit = 32 * 1024
        self._open: list[Peer] = []  # peers that have open batch records
        self._dirty: list[Peer] = []  # peers with something to flush (``Peer.marked``)
        self._blocked: set[int] = set()
        # the same set, for callers that test membership instead of calling is_blocked
        # (it changes when is_blocked or a flush says so; never replaced)
        self.blocked_set = self._blocked
        self._seq = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._poll_scheduled = False
        self._sleeping = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.stats_flushes = 0
        self.stats_records = 0  # records read from the inboxes (status reports)
        self.stats_wakeups = 0
        self._sync_rings(first=True)

    @classmethod
    def from_spec(cls, spec: str, slot: int, **kw: float | int) -> Mesh:
        """Attach as worker ``slot`` to what ``MeshHost.spec`` describes; ``kw``:
        ``read_batch`` and ``idle_poll``."""
        unknown = kw.keys() - {"read_batch", "idle_poll"}
        if unknown:
            raise TypeError(f"Mesh.from_spec: unknown option(s) {sorted(unknown)}")
        instance, n, bells = spec.split("/")
        doorbells = [Doorbell.from_spec(s) for s in bells.split(",")]
        return cls(
            instance,
            slot,
            int(n),
            doorbells,
            read_batch=int(kw.get("read_batch", 1024)),
            idle_poll=float(kw.get("idle_poll", 0.1)),
        )

    # ------------------------------------------------------------------ rings
    def outbox(self, j: int) -> Ring:
        ring = self._by_slot[j].data.ring
        if ring is None:
            raise MeshError(f"no ring {self.slot} -> {j}")
        return ring

    def inbox(self, i: int) -> Ring:
        ring = self._by_slot[i].inbox
        if ring is None:
            raise MeshError(f"no ring {i} -> {self.slot}")
        return ring

    def _sync_rings(self, first: bool = False) -> None:
        """Attach the rings named in the control table; handle replaced peers."""
        for _attempt in range(50):
            seq, serials, _gens = self.control.table()
            n = self.n
            me = self.slot
            try:
                for p in self._peers:
                    k = p.slot
                    so = serials[me * n + k]
                    si = serials[k * n + me]
                    if so != p.serial_out or si != p.serial_in:
                        self._replace_peer(p, so, si, restarted=not first)
            except posix_ipc.ExistentialError:
                continue  # replaced again while we attached: read the table again
            self._seq = seq
            return
        raise MeshError("could not attach the mesh rings")

    def _replace_peer(self, p: Peer, so: int, si: int, *, restarted: bool) -> None:
        k = p.slot
        attached: list[Ring] = []
        try:
            for name in (
                ring_name(self.instance, self.slot, k, so),
                ring_name(self.instance, k, self.slot, si),
                ring_name(self.instance, self.slot, k, so, 1),
                ring_name(self.instance, k, self.slot, si, 1),
            ):
                attached.append(Ring.attach(name))
        except BaseException:
            for r in attached:
                r.close()
            raise
        new_out, new_in, new_cout, new_cin = attached
        for inbox in (p.cinbox, p.inbox):  # what the old peer sent, control first
            if inbox is not None:
                left = inbox.read_all()
                if left:
                    self.on_records(k, left)
                inbox.close()
        old_out = p.data.ring
        if old_out is not None:
            old_out.close()
            dropped = p.pending()
            if dropped:
                log.info("mesh: dropping %d queued byte(s) for restarted worker %d", dropped, k)
            p.drop_queued()
            self._cwaiting.discard(p)
        if p.control.ring is not None:
            p.control.ring.close()
        p.data.ring = new_out
        p.inbox = new_in
        p.control.ring = new_cout
        p.cinbox = new_cin
        p.serial_out = so
        p.serial_in = si
        if self._sleeping:
            new_in.reader_sleep()
            new_cin.reader_sleep()
        if restarted:
            self._blocked.discard(k)
            self.on_peer_restart(k)

    def check_control(self) -> bool:
        """Pick up ring changes published by the supervisor; True if something changed."""
        if self.control.seq == self._seq:
            return False
        self._sync_rings()
        return True

    def peer_ready(self, k: int) -> bool:
        return self.control.is_ready(k)

    # ------------------------------------------------------------------ sending
    def _mark(self, p: Peer) -> None:
        if not p.marked:
            p.marked = True
            self._dirty.append(p)
            if not self._flush_scheduled and self._loop is not None:
                self._flush_scheduled = True
                self._loop.call_soon(self.flush)

    def send(self, dst: int, record: Piece) -> None:
        """Queue one record for worker ``dst`` (never ``self.slot``). The mesh keeps a
        reference until the next flush: do not mutate a bytearray/memoryview before."""
        p = self._by_slot[dst]
        st = p.data.stage
        if not st:
            self._mark(p)
        elif p.batches:
            p.close_batches()
        n = len(record)
        st.append(_pack_len(n))
        st.append(record)
        p.staged += n

    def send_control(self, dst: int, record: Piece) -> None:
        """Queue one record on the control lane to ``dst``: it overtakes bulk data
        queued or in the data ring (order is kept among control records only). Never
        reports backpressure: control traffic is bounded by its producers."""
        p = self._by_slot[dst]
        lane = p.control
        st = lane.stage
        if not st and not lane.backlog:
            self._mark(p)
        st.append(_pack_len(len(record)))
        st.append(record)

    def send_parts(self, dst: int, *parts: Piece) -> None:
        """Queue one record made of ``parts`` (no concatenation by the caller)."""
        p = self._by_slot[dst]
        st = p.data.stage
        if not st:
            self._mark(p)
        elif p.batches:
            p.close_batches()
        n = sum(map(len, parts))
        st.append(_pack_len(n))
        st.extend(parts)
        p.staged += n

    def begin(self, dst: int) -> bytearray:
        """Encode in place: returns a buffer to append the record's bytes to (after its
        4 placeholder bytes); then call ``end(buf)``. Queued like ``send``."""
        p = self._by_slot[dst]
        st = p.data.stage
        if not st:
            self._mark(p)
        elif p.batches:
            p.close_batches()
        buf = bytearray(_PLACEHOLDER)
        st.append(buf)
        return buf

    @staticmethod
    def end(buf: bytearray) -> None:
        _pack_len_into(buf, 0, len(buf) - 4)

    def batch(self, dst: int, key: object, match: object = None) -> bytearray | None:
        """The record for ``dst`` open under ``key`` (``open_batch``), to append one more
        item to, or None. A record stays open until anything else is queued for ``dst``
        (``send``, ``send_parts``, ``begin``), this turn's flush, or until it reaches
        ``batch_limit`` bytes or is asked for with another ``match`` (those close it: the
        caller opens a new one). Records open under different keys take items in any
        order, so give one key to whatever must stay in order."""
        p = self._by_slot[dst]
        opened = p.batches
        entry = opened.get(key)
        if entry is None:
            return None
        buf = entry[1]
        if entry[0] == match and len(buf) < self.batch_limit:
            return buf
        del opened[key]  # full, or another match: it closes
        n = len(buf) - 4
        _pack_len_into(buf, 0, n)
        p.staged += n
        return None

    def open_batch(self, dst: int, key: object, head: bytes, match: object = None) -> bytearray:
        """Queue a record for ``dst`` that starts with ``head`` and stays open: the caller
        appends items to the returned buffer, this turn, for as long as ``batch(dst,
        key, match)`` returns it. Its length is written when it closes. Many items, one
        record: one header to read, one lookup of the queue or consumer, one callback
        on the reading side."""
        p = self._by_slot[dst]
        st = p.data.stage
        if not st:
            self._mark(p)
        opened = p.batches
        if opened:
            entry = opened.pop(key, None)  # one still open under ``key`` closes
            if entry is not None:
                old = entry[1]
                n = len(old) - 4
                _pack_len_into(old, 0, n)
                p.staged += n
        if not opened:
            self._open.append(p)
        buf = bytearray(_PLACEHOLDER)
        buf += head
        st.append(buf)
        opened[key] = (match, buf)
        return buf

    def pending(self, dst: int) -> int:
        """Bytes queued for ``dst`` and not yet in its ring."""
        return self._by_slot[dst].pending()

    def is_blocked(self, dst: int) -> bool:
        """True while the ring to ``dst`` is full, or once more than ``soft_limit`` bytes
        were queued for it this turn; ``on_writable(dst)`` follows when all of it went
        into the ring."""
        if dst in self._blocked:
            return True
        p = self._by_slot[dst]
        if p.staged + p.open_sizes() > self.soft_limit:
            self._blocked.add(dst)
            return True
        return False

    @property
    def blocked(self) -> frozenset[int]:
        return frozenset(self._blocked)

    def flush(self) -> list[int]:
        """Write what fits of every queue; returns the targets still blocked (their
        ring is full; ``on_writable`` follows once all their data went in)."""
        self._flush_scheduled = False
        if self._open:
            for p in self._open:
                p.close_batches()
            self._open.clear()
        dirty = self._dirty
        if not dirty:
            return []
        self._dirty = []
        self.stats_flushes += 1
        written: list[Peer] = []
        full: list[Peer] = []
        cwaiting = self._cwaiting
        for p in dirty:
            p.marked = False
            p.staged = 0
            lane = p.control
            if lane.stage or lane.backlog:
                ring = lane.ring
                if ring is not None:
                    lane.write(ring)
                    written.append(p)
                    if lane.backlog:
                        cwaiting.add(p)
                        if not ring.writer_wait(1):
                            self._schedule_flush()
                    else:
                        cwaiting.discard(p)
            lane = p.data
            ring = lane.ring
            if ring is None or not (lane.stage or lane.backlog):
                continue
            if lane.write(ring) and (not written or written[-1] is not p):
                written.append(p)
            if lane.backlog:
                full.append(p)
        if written:
            fence()
            for p in written:
                o, c = p.data.ring, p.control.ring
                if (o is not None and o.reader_needs_wake()) or (
                    c is not None and c.reader_needs_wake()
                ):
                    p.bell.ring()
        blocked = self._blocked
        if blocked:
            for p in dirty:
                lane = p.data
                if p.slot in blocked and not lane.backlog and not lane.stage:
                    blocked.discard(p.slot)
                    if lane.ring is not None:
                        lane.ring.writer_resume()
                    self.on_writable(p.slot)
        for p in full:
            if not p.marked:
                p.marked = True
                self._dirty.append(p)
            self._block(p)
        for p in cwaiting:
            if not p.marked:
                p.marked = True
                self._dirty.append(p)
        return [p.slot for p in full]

    def _block(self, p: Peer) -> None:
        ring = p.data.ring
        assert ring is not None
        self._blocked.add(p.slot)
        if not ring.writer_wait(1):
            # space appeared meanwhile: try again on the next turn
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def _retry_blocked(self) -> None:
        if self._blocked or self._cwaiting:
            self.flush()

    # ------------------------------------------------------------------ receiving
    def poll(self) -> int:
        """Read every inbox once (up to ``batch`` records each); returns records read
        (at least 1 for an inbox that only delivered part of a streamed record)."""
        got = 0
        on_records = self.on_records
        batch = self.read_batch
        read: list[Peer] = []
        for p in self._peers:
            k = p.slot
            cring = p.cinbox
            if cring is not None and cring.readable():
                before = cring.consumed
                crecs = cring.read_all()
                if cring.consumed != before:
                    got += len(crecs) or 1
                    read.append(p)
                if crecs:
                    try:
                        on_records(k, crecs)
                    except Exception:
                        log.exception("mesh: on_records(%d) failed", k)
            ring = p.inbox
            if ring is None:
                continue
            before = ring.consumed
            recs = ring.read_all(batch)
            if ring.consumed != before:
                if not read or read[-1] is not p:
                    read.append(p)
                got += len(recs) or 1  # part of a streamed record counts as activity
            if recs:
                try:
                    on_records(k, recs)
                except Exception:
                    log.exception("mesh: on_records(%d) failed", k)
        if read:
            fence()
            for p in read:
                ring = p.inbox
                cring = p.cinbox
                if (ring is not None and ring.writer_needs_wake()) | (
                    cring is not None and cring.writer_needs_wake()
                ):
                    p.bell.ring()
        self.stats_records += got
        return got

    def _run_poll(self) -> None:
        self._poll_scheduled = False
        if self._closed:
            return
        got = self.poll()
        if self._blocked:
            self._retry_blocked()
        if got:
            self._schedule_poll()
        else:
            self._go_to_sleep()

    def _schedule_poll(self) -> None:
        if not self._poll_scheduled and self._loop is not None:
            self._poll_scheduled = True
            self._loop.call_soon(self._run_poll)

    def _inboxes(self) -> list[Ring]:
        return [r for p in self._peers for r in (p.inbox, p.cinbox) if r is not None]

    def _go_to_sleep(self) -> None:
        inboxes = self._inboxes()
        for ring in inboxes:
            if not ring.reader_sleep():
                for r in inboxes:
                    r.reader_awake()
                self._sleeping = False
                self._schedule_poll()
                return
        self._sleeping = True

    def _on_doorbell(self) -> None:
        self.bell.clear()
        self.stats_wakeups += 1
        self._wake()

    def _wake(self) -> None:
        self.check_control()
        if self._sleeping:
            self._sleeping = False
            for ring in self._inboxes():
                ring.reader_awake()
        self._run_poll()

    def _tick(self) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        self._timer = loop.call_later(self.idle_poll, self._tick)
        if self.control.seq != self._seq:
            self._wake()
        elif self._sleeping:
            if any(r.readable() for r in self._inboxes()):
                self._wake()
            elif self._blocked or self._cwaiting:
                self._retry_blocked()
        elif not self._poll_scheduled:
            self._wake()

    # ------------------------------------------------------------------ lifecycle
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Watch the doorbell on ``loop`` and start reading."""
        loop = loop or asyncio.get_running_loop()
        self._loop = loop
        loop.add_reader(self.bell.fileno(), self._on_doorbell)
        self._timer = loop.call_later(self.idle_poll, self._tick)
        if self._dirty:
            self._schedule_flush()
        self._schedule_poll()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.bell.fileno())
            except (ValueError, OSError, RuntimeError):
                pass
            if self._timer is not None:
                self._timer.cancel()
        for p in self._peers:
            for ring in (p.inbox, p.data.ring, p.cinbox, p.control.ring):
                if ring is not None:
                    ring.close()
            p.inbox = p.cinbox = p.data.ring = p.control.ring = None
        self.control.close()
