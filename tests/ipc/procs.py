"""Child-process bodies for the two-process ipc tests (importable by ``spawn``)."""

from __future__ import annotations

import os
import select
import struct
import time
import zlib

from shardmq.ipc.doorbell import Doorbell
from shardmq.ipc.ring import LEN, Ring, fence

SEQ = struct.Struct("<QI")  # sequence number, crc32 of the body


def make_record(seq: int) -> bytes:
    """Deterministic record of varying size (0..~3000 bytes of body) with a checksum."""
    size = (seq * 7919) % 97 if seq % 50 else (seq * 31) % 3000
    body = (seq.to_bytes(8, "little") * (size // 8 + 1))[:size]
    return SEQ.pack(seq, zlib.crc32(body)) + body


def check_record(rec: bytes, expect_seq: int) -> None:
    seq, crc = SEQ.unpack_from(rec)
    body = rec[SEQ.size :]
    if seq != expect_seq or zlib.crc32(body) != crc or rec != make_record(seq):
        raise AssertionError(
            f"record {expect_seq}: got seq {seq}, crc ok={zlib.crc32(body) == crc}"
        )


def stream_writer(name: str, count: int, mode: str) -> None:
    """Write ``count`` checksummed records, spinning when the ring is full."""
    ring = Ring.attach(name)
    try:
        seq = 0
        if mode == "single":
            while seq < count:
                rec = make_record(seq)
                while not ring.try_write(rec):
                    os.sched_yield()
                seq += 1
        elif mode == "many":
            while seq < count:
                batch = [make_record(s) for s in range(seq, min(seq + 64, count))]
                done = 0
                while done < len(batch):
                    k = ring.try_write_many(batch[done:])
                    done += k
                    if not k:
                        os.sched_yield()
                seq += len(batch)
        else:  # stream
            while seq < count:
                recs = [make_record(s) for s in range(seq, min(seq + 64, count))]
                buf = b"".join(LEN.pack(len(r)) + r for r in recs)
                pos = 0
                while pos < len(buf):
                    k = ring.write_bytes(buf, pos)
                    pos += k
                    if not k:
                        os.sched_yield()
                seq += len(recs)
    finally:
        ring.close()


def bell_writer(name: str, bell_spec: str, rounds: int) -> None:
    """For each round: wait until the reader sleeps, write one record, ring if asked."""
    ring = Ring.attach(name)
    bell = Doorbell.from_spec(bell_spec)
    rung = 0
    try:
        for i in range(rounds):
            deadline = time.monotonic() + 10
            while ring.used():  # previous record not consumed yet
                if time.monotonic() > deadline:
                    raise TimeoutError("reader did not consume")
                time.sleep(0.001)
            time.sleep(0.002 * (i % 3))
            assert ring.try_write(i.to_bytes(4, "little"))
            fence()
            if ring.reader_needs_wake():
                bell.ring()
                rung += 1
        # tell the parent how many times we rang (one record, never wakes needed after)
        while not ring.try_write(b"rung" + rung.to_bytes(4, "little")):
            time.sleep(0.001)
        fence()
        if ring.reader_needs_wake():
            bell.ring()
    finally:
        ring.close()


def sleepy_reader(name: str, bell_spec: str, rounds: int, out_name: str) -> None:
    """Read ``rounds`` records sleeping on the doorbell (no timeout polling); report on
    the ring ``out_name`` how many records and how many wake-ups it saw."""
    ring = Ring.attach(name)
    out = Ring.attach(out_name)
    bell = Doorbell.from_spec(bell_spec)
    got = 0
    wakeups = 0
    try:
        while got < rounds:
            recs = ring.read_all()
            got += len(recs)
            if recs:
                continue
            if not ring.reader_sleep():
                continue
            r, _, _ = select.select([bell.fileno()], [], [], 10.0)
            ring.reader_awake()
            if not r:
                raise TimeoutError("no doorbell within 10 s")
            bell.clear()
            wakeups += 1
        out.try_write(got.to_bytes(4, "little") + wakeups.to_bytes(4, "little"))
    finally:
        ring.close()
        out.close()


def mesh_echo(spec: str, slot: int, expect: int) -> None:
    """Worker-like child: attach the mesh as ``slot``, echo every record back to its
    sender (prefixed by our slot), exit after ``expect`` records."""
    import asyncio

    from shardmq.ipc.mesh import Mesh

    async def main() -> None:
        mesh = Mesh.from_spec(spec, slot)
        done = asyncio.Event()
        seen = 0

        def on_records(src: int, recs: list[bytes]) -> None:
            nonlocal seen
            for r in recs:
                mesh.send(src, bytes([slot]) + r)
            seen += len(recs)
            if seen >= expect:
                done.set()

        mesh.on_records = on_records
        mesh.start()
        await asyncio.wait_for(done.wait(), 30)
        while any(mesh.pending(k) for k in range(mesh.n) if k != slot):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        mesh.close()

    asyncio.run(main())
