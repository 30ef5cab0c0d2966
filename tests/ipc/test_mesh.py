"""Mesh tests: create/attach/cleanup, stale segments of a crashed run, the data-dir lock,
flush-per-turn delivery, backpressure and ``on_writable``, peer restart with fresh rings,
and a cross-process echo over doorbells."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import posix_ipc
import pytest

from shardmq.ipc.control import F_GEN, ControlBlock, control_name
from shardmq.ipc.mesh import (
    INSTANCE_FILE,
    SHM_DIR,
    Mesh,
    MeshError,
    MeshHost,
    unlink_instance,
)
from tests.support.launch import REPO_ROOT


def segments(instance: str) -> list[str]:
    return sorted(e for e in os.listdir(SHM_DIR) if e.startswith(f"shardmq.{instance}."))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[MeshHost]:
    h = MeshHost(str(tmp_path / "data"), 3, 4096)
    try:
        yield h
    finally:
        h.close()


def meshes(host: MeshHost, **kw: float | int) -> list[Mesh]:
    return [Mesh.from_spec(host.spec(), s, **kw) for s in range(host.n)]


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_a_mesh_knows_its_incarnation_from_the_control_block(host: MeshHost) -> None:
    """The worker's incarnation is its slot's ``gen``, bumped by the supervisor before
    every spawn (refs handed to other workers embed it): 0 before any spawn."""
    assert host.begin_incarnation(1, renew_rings=False) == 1
    assert host.begin_incarnation(1, renew_rings=True) == 2
    ms = meshes(host)
    try:
        assert [m.incarnation for m in ms] == [0, 2, 0]
    finally:
        for m in ms:
            m.close()


def test_create_attach_cleanup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    h = MeshHost(str(data), 3, 4096)
    inst = h.instance
    # 6 data rings + 6 control rings + control block + counts; the instance file records the
    # instance and our pid
    assert len(segments(inst)) == 14
    assert (data / INSTANCE_FILE).read_text().split() == [inst, str(os.getpid())]
    ms = meshes(h)
    for m in ms:
        for k in range(3):
            if k != m.slot:
                assert m.outbox(k).name == ms[k].inbox(m.slot).name
                assert m.outbox(k).capacity == 4096
        with pytest.raises(MeshError):
            m.outbox(m.slot)
    for m in ms:
        m.close()
    h.close()
    assert segments(inst) == []
    assert not (data / INSTANCE_FILE).exists()


def test_data_dir_lock(host: MeshHost, tmp_path: Path) -> None:
    with pytest.raises(MeshError, match="in use by another running shardmq"):
        MeshHost(str(tmp_path / "data"), 2, 4096)


def test_stale_segments_of_crashed_run_are_removed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = (
        "import os, sys; from shardmq.ipc.mesh import MeshHost; "
        f"h = MeshHost({str(data)!r}, 3, 4096); print(h.instance, flush=True); os._exit(9)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 9
    stale = out.stdout.strip()
    try:
        assert len(segments(stale)) == 14  # a crash leaves them behind
        h = MeshHost(str(data), 3, 4096)
        try:
            assert segments(stale) == []
            assert h.stale_removed == 14
            assert h.instance != stale
            assert len(segments(h.instance)) == 14
        finally:
            h.close()
    finally:
        unlink_instance(stale)  # whatever happened above, leak nothing


def test_stale_instance_file_without_segments(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / INSTANCE_FILE).write_text("deadbeef 1\n")
    h = MeshHost(str(data), 2, 4096)
    try:
        assert h.stale_removed == 0
    finally:
        h.close()


def test_send_flush_receive_in_one_loop(host: MeshHost) -> None:
    async def main() -> None:
        m0, m1, m2 = meshes(host)
        got: dict[int, list[tuple[int, bytes]]] = {0: [], 1: [], 2: []}
        done = asyncio.Event()
        for m in (m0, m1, m2):
            m.on_records = lambda src, recs, s=m.slot: (  # type: ignore[misc]
                got[s].extend((src, r) for r in recs),
                done.set() if len(got[2]) >= 1000 and len(got[1]) >= 3 else None,
            )
            m.start()
        for i in range(1000):
            m0.send(2, i.to_bytes(4, "little"))
        m2.send(1, b"a")
        m2.send_parts(1, b"b", bytearray(b"c"), memoryview(b"d"))
        buf = m0.begin(1)
        buf += b"in-place"
        m0.end(buf)
        await done.wait()
        assert [r for _, r in got[2]] == [i.to_bytes(4, "little") for i in range(1000)]
        assert {s for s, _ in got[2]} == {0}
        # order holds per source; sources are read in turn
        assert [r for s, r in got[1] if s == 2] == [b"a", b"bcd"]
        assert [r for s, r in got[1] if s == 0] == [b"in-place"]
        assert got[0] == []
        # one flush per loop turn, not per record
        assert m0.stats_flushes <= 3
        for m in (m0, m1, m2):
            m.close()

    run(main())


def test_backpressure_and_on_writable(tmp_path: Path) -> None:
    h = MeshHost(str(tmp_path / "data"), 2, 256)

    async def main() -> None:
        m0, m1 = meshes(h, idle_poll=5.0)  # only doorbells may wake us in time
        writable: list[int] = []
        received: list[bytes] = []
        m0.on_writable = writable.append
        m1.on_records = lambda src, recs: received.extend(recs)  # type: ignore[assignment,misc]
        m0.start()
        recs = [i.to_bytes(2, "little") * 20 for i in range(100)]  # 44 B framed, 4.4 KiB
        for r in recs:
            m0.send(1, r)
        blocked = m0.flush()
        assert blocked == [1]
        assert m0.is_blocked(1) and m0.blocked == {1}
        assert 0 < m0.pending(1) < 100 * 44
        more = [b"more%d" % i for i in range(50)]
        for r in more:  # queued behind the blocked data (a second backlog chunk)
            m0.send(1, r)
        assert m0.flush() == [1]
        recs += more
        await asyncio.sleep(0.05)
        assert received == [] and writable == []  # nobody reads: nothing moves, nothing lost
        m1.start()  # reader frees space and rings the writer, which refills...
        for _ in range(400):
            if len(received) == len(recs) and writable:
                break
            await asyncio.sleep(0.01)
        assert received == recs
        assert writable == [1]
        assert not m0.is_blocked(1) and m0.pending(1) == 0
        m0.close()
        m1.close()

    try:
        run(main())
    finally:
        h.close()


def test_soft_limit_blocks_a_burst_before_the_ring_is_tried(host: MeshHost) -> None:
    """A burst queued within one loop turn reports blocked once it passes soft_limit
    (so the publisher is paused mid-turn), and on_writable follows when it went in."""

    async def main() -> None:
        m0, m1, m2 = meshes(host, idle_poll=5.0)
        m0.soft_limit = 100
        writable: list[int] = []
        received: list[bytes] = []
        m0.on_writable = writable.append
        m1.on_records = lambda src, recs: received.extend(recs)  # type: ignore[assignment,misc]
        m0.start()
        m1.start()
        m0.send(1, b"a" * 60)
        assert not m0.is_blocked(1)
        m0.send(1, b"b" * 60)
        assert m0.is_blocked(1)  # 120 bytes queued this turn, nothing tried yet
        assert not m0.is_blocked(2)
        for _ in range(200):
            if writable and len(received) == 2:
                break
            await asyncio.sleep(0.01)
        assert writable == [1]
        assert received == [b"a" * 60, b"b" * 60]
        assert not m0.is_blocked(1)
        m0.send(1, b"c" * 60)  # the count starts again after a flush
        assert not m0.is_blocked(1)
        for m in (m0, m1, m2):
            m.close()

    run(main())


def test_open_batches_take_items_until_anything_else_or_the_flush(host: MeshHost) -> None:
    """Batch records stay open for appends under their keys (several per target); another
    record for the same target, another match for the key, the size limit or the turn's
    flush closes them, and the reader gets every record whole, in the order opened."""

    async def main() -> None:
        m0, m1, m2 = meshes(host, idle_poll=5.0)
        got: list[bytes] = []
        m1.on_records = lambda src, recs: got.extend(map(bytes, recs))  # type: ignore[assignment,misc]
        m0.start()
        m1.start()
        m0.batch_limit = 64
        a = m0.open_batch(1, "a", b"A:")
        a += b"1"
        assert m0.batch(1, "a") is a
        assert m0.batch(1, "b") is None  # nothing open under that key
        assert m0.batch(2, "a") is None  # another target
        b = m0.open_batch(1, "b", b"B:", match=1)
        b += b"x"
        a += b"2"  # keys take items in any order
        assert m0.batch(1, "b", 1) is b
        assert m0.batch(1, "b", 2) is None  # another match closes "b"
        assert m0.batch(1, "b", 1) is None
        m0.send(1, b"plain")  # closes "a": an item appended later would overtake it
        assert m0.batch(1, "a") is None
        c = m0.open_batch(1, "a", b"C:")
        c += b"y" * 70
        assert m0.batch(1, "a") is None  # past batch_limit
        d = m0.open_batch(1, "a", b"D:")
        d += b"3"
        assert m0.batch(1, "a") is d
        for _ in range(200):
            if len(got) == 5:
                break
            await asyncio.sleep(0.01)
        assert got == [b"A:12", b"B:x", b"plain", b"C:" + b"y" * 70, b"D:3"]
        assert m0.batch(1, "a") is None  # the flush closed it
        # open batches count towards the soft limit
        m0.soft_limit = 100
        e = m0.open_batch(1, "e", b"")
        e += b"z" * 60
        f = m0.open_batch(1, "f", b"")
        f += b"z" * 30
        assert not m0.is_blocked(1)
        f += b"z" * 20
        assert m0.is_blocked(1) and 1 in m0.blocked_set
        for _ in range(200):
            if len(got) == 7:
                break
            await asyncio.sleep(0.01)
        assert got[5:] == [b"z" * 60, b"z" * 50]
        for m in (m0, m1, m2):
            m.close()

    run(main())


def test_control_lane_overtakes_bulk_data(tmp_path: Path) -> None:
    """Bulk data filling the data ring and a backlog behind it do not delay a control
    record: the reader gets it in its first read; order holds within each lane."""
    h = MeshHost(str(tmp_path / "data"), 2, 4096)

    async def main() -> None:
        m0, m1 = meshes(h, idle_poll=5.0)
        batches: list[list[bytes]] = []
        m1.on_records = lambda src, recs: batches.append(list(recs))  # type: ignore[assignment,misc]
        m0.start()
        bulk = [b"bulk%04d" % i + b"." * 100 for i in range(200)]  # ~22 KiB: ring + backlog
        for r in bulk:
            m0.send(1, r)
        m0.flush()
        assert m0.is_blocked(1)
        m0.send_control(1, b"credit-1")
        m0.send_control(1, b"credit-2")
        m0.flush()
        m1.start()
        for _ in range(400):
            if sum(map(len, batches)) == len(bulk) + 2:
                break
            await asyncio.sleep(0.01)
        got = [r for b in batches for r in b]
        assert got[:2] == [b"credit-1", b"credit-2"]
        assert [r for r in got if r.startswith(b"bulk")] == bulk
        m0.close()
        m1.close()

    try:
        run(main())
    finally:
        h.close()


def test_huge_record_through_small_ring(tmp_path: Path) -> None:
    h = MeshHost(str(tmp_path / "data"), 2, 1024)

    async def main() -> None:
        m0, m1 = meshes(h)
        big = os.urandom(200_000)
        got: list[bytes] = []
        m1.on_records = lambda src, recs: got.extend(recs)  # type: ignore[assignment,misc]
        m0.start()
        m1.start()
        m0.send(1, b"before")
        m0.send(1, big)
        m0.send(1, b"after")
        for _ in range(1000):
            if len(got) == 3:
                break
            await asyncio.sleep(0.005)
        assert got == [b"before", big, b"after"]
        m0.close()
        m1.close()

    try:
        run(main())
    finally:
        h.close()


def test_peer_restart_gets_fresh_rings(host: MeshHost) -> None:
    async def main() -> None:
        m0, m1, m2 = meshes(host)
        restarted: list[int] = []
        got0: list[tuple[int, bytes]] = []
        m0.on_peer_restart = restarted.append
        m0.on_records = lambda src, recs: got0.extend((src, r) for r in recs)  # type: ignore[assignment,misc]
        m0.start()
        old_out = m0.outbox(1).name
        # worker 1 published a record for 0, then "dies"; 0 staged data for 1
        m1.send(0, b"last words")
        m1.flush()
        m1.close()
        m0.send(1, b"old")  # queued, not yet flushed (this test's loop has not turned)
        gen_before = host.control.get(1, F_GEN)  # type: ignore[union-attr]
        host.begin_incarnation(1, renew_rings=True)
        assert host.control.get(1, F_GEN) == gen_before + 1  # type: ignore[union-attr]
        for _ in range(200):
            if restarted:
                break
            await asyncio.sleep(0.01)
        assert restarted == [1]
        assert got0 == [(1, b"last words")]  # complete records of the dead peer delivered
        assert m0.pending(1) == 0  # staged data for the dead peer dropped
        assert m0.outbox(1).name != old_out
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.SharedMemory(old_out)  # old ring unlinked
        # the new incarnation talks over the new rings and sees nothing stale
        new1 = Mesh.from_spec(host.spec(), 1)
        got1: list[tuple[int, bytes]] = []
        new1.on_records = lambda src, recs: got1.extend((src, r) for r in recs)  # type: ignore[assignment,misc]
        new1.start()
        m0.send(1, b"hello new")
        for _ in range(200):
            if got1:
                break
            await asyncio.sleep(0.01)
        assert got1 == [(0, b"hello new")]
        assert m2.check_control()  # worker 2 also switches (its test loop was not running)
        assert m2.outbox(1).name == new1.inbox(2).name
        for m in (m0, m2, new1):
            m.close()

    run(main())


def test_control_block_table_consistent(host: MeshHost) -> None:
    ctl = ControlBlock.attach(control_name(host.instance))
    try:
        seq, serials, gens = ctl.table()
        assert seq % 2 == 0
        assert len(serials) == 9 and all(serials[i * 3 + i] == 0 for i in range(3))
        assert len({s for s in serials if s}) == 6
        assert gens == [0, 0, 0]
        host.begin_incarnation(2, renew_rings=False)
        seq2, serials2, gens2 = ctl.table()
        assert seq2 == seq + 2 and serials2 == serials and gens2 == [0, 0, 1]
        ctl.beat(2)
        ctl.beat(2)
        assert ctl.heartbeat(2) == 2
        assert not ctl.is_ready(2)
        ctl.set_ready(2)
        assert ctl.is_ready(2) and not ctl.is_ready(0)
    finally:
        ctl.close()


def test_echo_across_processes(host: MeshHost) -> None:
    """Child worker 1 echoes what worker 0 (us) sends, over real doorbells."""
    count = 20_000
    code = f"from tests.ipc.procs import mesh_echo; mesh_echo({host.spec()!r}, 1, {count})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, pass_fds=host.pass_fds())

    async def main() -> None:
        m0 = Mesh.from_spec(host.spec(), 0)
        got: list[bytes] = []
        done = asyncio.Event()

        def on_records(src: int, recs: list[bytes]) -> None:
            assert src == 1
            got.extend(recs)
            if len(got) >= count:
                done.set()

        m0.on_records = on_records
        m0.start()
        for i in range(count):
            m0.send(1, i.to_bytes(4, "little"))
            if i % 500 == 499:
                await asyncio.sleep(0)  # let it flush, like a loop turn per socket read
        await done.wait()
        assert got == [b"\x01" + i.to_bytes(4, "little") for i in range(count)]
        assert m0.stats_wakeups >= 1
        m0.close()

    try:
        run(main())
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
