"""Record framing, chunked scans, cut-back of truncated / corrupt tails, failed writes."""

from __future__ import annotations

import errno
import logging
import os
import random

import pytest

from shardmq.store import segments
from shardmq.store.segments import (
    FRAME_SIZE,
    MAGIC_SIZE,
    CorruptSegment,
    FileScan,
    SegmentFile,
    append_record,
    frame_record,
    scan,
)

MAGIC = b"TESTSEG1"


def payloads(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(rnd.choice((0, 1, 7, 100, 5000, 70000))) for _ in range(n)]


def write_file(path: str, items: list[bytes]) -> list[int]:
    """Write a segment with ``items``; returns each record's offset."""
    seg = SegmentFile.create(path, MAGIC)
    offsets = []
    for p in items:
        offsets.append(seg.end)
        append_record(seg.buf, p)
    seg.write_out()
    seg.close()
    return offsets


def recover(path: str, chunk: int = segments.READ_CHUNK) -> tuple[SegmentFile, list, bool]:
    seg, records, fs = SegmentFile.recover(path, MAGIC, chunk)
    got = [(off, bytes(p)) for off, p in records]
    cut = seg.finish_recovery(fs)
    return seg, got, cut


def test_frame_and_scan_round_trip() -> None:
    items = payloads(50)
    buf = bytearray()
    for p in items:
        append_record(buf, p)
    assert bytes(buf) == b"".join(frame_record(p) for p in items)
    got = [bytes(p) for _, p in scan(buf, 0)]
    assert got == items
    offsets = [off for off, _ in scan(buf, 0, base=100)]
    assert offsets[0] == 100
    assert offsets[1] == 100 + FRAME_SIZE + len(items[0])


@pytest.mark.parametrize("chunk", [64, 1000, 4 << 20])
def test_file_round_trip_any_chunk(tmp_path, chunk: int) -> None:
    path = str(tmp_path / "a.seg")
    items = payloads(40, seed=chunk)
    offsets = write_file(path, items)
    seg, got, cut = recover(path, chunk)
    assert not cut
    assert [p for _, p in got] == items
    assert [o for o, _ in got] == offsets
    assert seg.size == os.path.getsize(path)
    # appending after recovery continues the file
    append_record(seg.buf, b"more")
    seg.write_out()
    seg.close()
    _, got2, _ = recover(path, chunk)
    assert [p for _, p in got2] == [*items, b"more"]


def test_truncated_tail_cut_back_at_every_length(tmp_path, caplog) -> None:
    items = [b"a" * 10, b"b" * 300, b"c" * 33]
    path = str(tmp_path / "t.seg")
    offsets = write_file(path, items)
    full = open(path, "rb").read()
    last = offsets[-1]
    for cut_at in range(last + 1, len(full)):
        with open(path, "wb") as f:
            f.write(full[:cut_at])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="shardmq.store"):
            seg, got, cut = recover(path, chunk=128)
        seg.close()
        assert cut
        assert [p for _, p in got] == items[:-1]
        assert os.path.getsize(path) == last
        assert any("cutting" in r.message for r in caplog.records)


def test_corrupt_tail_is_cut_back(tmp_path, caplog) -> None:
    items = payloads(10, seed=3)
    path = str(tmp_path / "c.seg")
    offsets = write_file(path, items)
    data = bytearray(open(path, "rb").read())
    victim = 7
    data[offsets[victim] + FRAME_SIZE + len(items[victim]) // 2] ^= 0x40
    if not items[victim]:
        data[offsets[victim] + 4] ^= 0x01  # empty payload: hit the crc itself
    open(path, "wb").write(data)
    with caplog.at_level(logging.WARNING, logger="shardmq.store"):
        seg, got, cut = recover(path, chunk=1 << 20)
    assert cut
    assert [p for _, p in got] == items[:victim]
    assert seg.size == offsets[victim] == os.path.getsize(path)
    assert any("crc" in r.message for r in caplog.records)
    # the store keeps working after the cut
    append_record(seg.buf, b"after")
    seg.write_out()
    seg.close()
    _, got2, cut2 = recover(path)
    assert not cut2
    assert [p for _, p in got2] == [*items[:victim], b"after"]


def test_garbage_length_and_zero_fill(tmp_path) -> None:
    items = [b"x" * 20, b"y" * 20]
    path = str(tmp_path / "g.seg")
    write_file(path, items)
    good = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\xff\xff\xff\x7f" + b"\x00" * 100)  # absurd length
    seg, got, cut = recover(path)
    seg.close()
    assert cut and [p for _, p in got] == items and os.path.getsize(path) == good
    with open(path, "ab") as f:
        f.write(b"\x00" * 4096)  # a preallocated / zero-filled tail (length 0, crc 0)
    seg, got, cut = recover(path)
    seg.close()
    assert cut and [p for _, p in got] == items and os.path.getsize(path) == good


def test_empty_and_partial_header_files(tmp_path) -> None:
    path = str(tmp_path / "e.seg")
    open(path, "wb").close()
    seg, got, cut = recover(path)
    assert got == [] and not cut
    seg.write_out()  # writes the magic
    seg.close()
    assert open(path, "rb").read() == MAGIC
    open(path, "wb").write(MAGIC[:3])
    seg, got, cut = recover(path)
    assert got == [] and cut
    append_record(seg.buf, b"z")
    seg.write_out()
    seg.close()
    assert [p for _, p in recover(path)[1]] == [b"z"]


def test_bad_magic_is_refused(tmp_path) -> None:
    path = str(tmp_path / "m.seg")
    open(path, "wb").write(b"NOTMAGIC" + frame_record(b"x"))
    with pytest.raises(CorruptSegment):
        SegmentFile.recover(path, MAGIC)


def test_failed_write_cuts_back_and_drops_buffer(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "f.seg")
    seg = SegmentFile.create(path, MAGIC)
    append_record(seg.buf, b"first")
    seg.write_out()
    good = seg.size
    real_pwrite = os.pwrite

    def half_then_enospc(fd: int, data, offset: int) -> int:
        if len(data) > 10:
            real_pwrite(fd, bytes(data[:10]), offset)  # a short write lands on disk...
            return 10
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(os, "pwrite", half_then_enospc)
    append_record(seg.buf, b"second" * 10)
    with pytest.raises(OSError) as info:
        seg.write_out()
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert seg.size == good and not seg.buf
    assert os.path.getsize(path) == good  # the partial record was cut off
    append_record(seg.buf, b"third")
    seg.write_out()
    seg.close()
    assert [p for _, p in recover(path)[1]] == [b"first", b"third"]


def test_filescan_reports_end(tmp_path) -> None:
    path = str(tmp_path / "s.seg")
    items = payloads(5)
    write_file(path, items)
    fd = os.open(path, os.O_RDONLY)
    try:
        fs = FileScan(fd, MAGIC_SIZE, os.path.getsize(path), chunk=100)
        assert [bytes(p) for _, p in fs] == items
        assert fs.end == os.path.getsize(path) and fs.reason is None
    finally:
        os.close(fd)
