"""Definitions as snapshot + log: append and replay, group commit, a torn tail cut at
every byte of the last record, corruption mid-log (stop at the first bad record, keep
the prefix, log an error, keep a copy), compaction and a crash or an I/O error at each
of its steps, the previous snapshot + logs fallback, the format-1 file of the previous
version, and kill -9 of a process committing in a loop."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from shardmq.amqp.fieldtable import ByteArray, Timestamp
from shardmq.store import definitions as D
from shardmq.store.definitions import (
    BindingDef,
    Definitions,
    DefinitionsStore,
    ExchangeDef,
    QueueDef,
    VHostDef,
)
from shardmq.store.deflog import LOG_MAGIC, encode_change
from shardmq.store.segments import MAGIC_SIZE, frame_record

FIXTURE = Path(__file__).parent / "data" / "definitions-format1.json"
STEPS = [
    "log created",
    "snapshot written",
    "snapshot synced",
    "previous kept",
    "renamed",
    "directory synced",
]
ARGS = {"x-max-length": 10, "d": Decimal("1.25"), "ts": Timestamp(7), "raw": ByteArray(b"\0")}


def q(i: int, **kw: object) -> QueueDef:
    return QueueDef(vhost="/", name=f"q{i}", arguments=dict(ARGS), **kw)  # type: ignore[arg-type]


def state(store: DefinitionsStore) -> tuple[list[object], ...]:
    """The logical content (not the informational version)."""
    d = store.definitions()
    return (d.vhosts, d.exchanges, d.queues, d.bindings)


def loaded(path: Path, **kw: float) -> tuple[list[object], ...]:
    s = DefinitionsStore(str(path), **kw)  # type: ignore[arg-type]
    s.load()
    try:
        return state(s)
    finally:
        s.close()


def store_with(path: Path, n: int, **kw: float) -> DefinitionsStore:
    s = DefinitionsStore(str(path), **kw)  # type: ignore[arg-type]
    s.load()
    s.put(VHostDef(name="/"))
    s.put(ExchangeDef(vhost="/", name="x", type="topic", arguments={"a": Decimal("2.5")}))
    for i in range(n):
        s.put(q(i))
        s.commit()
    return s


# ---------------------------------------------------------------- append and replay
def test_changes_replay_exactly_and_deletes_stick(tmp_path: Path) -> None:
    s = store_with(tmp_path, 5)
    b = BindingDef(vhost="/", source="x", destination="q1", routing_key="a.*", arguments={"k": 1})
    s.put(b)
    s.delete(q(2))
    s.put(q(3, auto_delete=True))  # a put replaces
    s.commit()
    assert s.compactions == 0 and s.commits == 6  # all through the log, no snapshot yet
    assert not os.path.exists(s.path)
    back = DefinitionsStore(str(tmp_path))
    defs = back.load()
    assert defs.queues == [q(0), q(1), q(3, auto_delete=True), q(4)]
    assert type(defs.queues[0].arguments["ts"]) is Timestamp
    assert defs.bindings == [b] and defs.exchanges[0].arguments == {"a": Decimal("2.5")}
    back.delete(b)
    back.commit()
    assert loaded(tmp_path)[3] == []


def test_one_fdatasync_per_commit_however_many_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = store_with(tmp_path, 1)
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    for i in range(100, 200):
        s.put(q(i))
    assert s.pending and not calls  # nothing written before the commit
    assert s.commit() is True
    assert len(calls) == 1
    assert s.commit() is False  # nothing pending: no write, no sync
    assert len(calls) == 1
    assert len(loaded(tmp_path)[2]) == 101


def test_transient_things_are_refused(tmp_path: Path) -> None:
    s = DefinitionsStore(str(tmp_path))
    with pytest.raises(ValueError):
        s.put(QueueDef(vhost="/", name="t", durable=False))


# ---------------------------------------------------------------- torn tail
def test_torn_tail_at_every_byte_of_the_last_record_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    s = store_with(src, 3)
    before = state(s)
    last_start = s.log_bytes
    s.put(q(99))
    s.commit()
    after = state(s)
    end = s.log_bytes
    s.close()
    log_name = os.path.basename(s.log_path(s.generation))
    assert end - last_start > 8
    for cut in range(last_start, end + 1):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(src, work)
        with open(work / log_name, "r+b") as f:
            f.truncate(cut)
        caplog.clear()
        got = DefinitionsStore(str(work))
        got.load()
        assert state(got) == (after if cut == end else before), cut
        if last_start < cut < end:
            assert "torn tail" in caplog.text and "ERROR" not in caplog.text, cut
        # appending after the cut works and replays
        got.put(q(100))
        got.commit()
        got.close()
        if cut < end:  # the torn bytes were cut off before the append
            assert os.path.getsize(work / log_name) == last_start + len(
                encode_change(1, "queues", q(100))
            )
        assert [x.name for x in loaded(work)[2]][-1] == "q100"
        shutil.rmtree(work)


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = store_with(tmp_path, 3)
    expect = state(s)
    s.close()
    with open(s.log_path(s.generation), "ab") as f:
        f.write(b"\0" * 4096)
    assert loaded(tmp_path) == expect
    assert "torn tail" in caplog.text and "ERROR" not in caplog.text


def test_crash_before_the_magic_is_written(tmp_path: Path) -> None:
    s = DefinitionsStore(str(tmp_path))
    s.load()
    s.close()
    path = s.log_path(0)
    for head in (b"", LOG_MAGIC[:3]):
        with open(path, "wb") as f:
            f.write(head)
        assert loaded(tmp_path) == ([], [], [], [])


# ---------------------------------------------------------------- corruption mid-log
@pytest.mark.parametrize("damage", ["crc", "undecodable"])
def test_bad_record_mid_log_stops_replay_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """Decision: replay stops at the first bad record followed by more data; the state
    is that of the records before it (never one after a bad one), an ERROR says so and
    the damaged log is kept as ``.corrupt``; the broker starts and appends go on."""
    s = store_with(tmp_path, 6)
    s.close()
    path = s.log_path(s.generation)
    data = bytearray(open(path, "rb").read())
    # find the record of q3: each put(q(i)) was its own commit, so walk the frames
    pos, starts = MAGIC_SIZE, []
    while pos < len(data):
        starts.append(pos)
        pos += 8 + int.from_bytes(data[pos : pos + 4], "little")
    bad = starts[5]  # vhost, exchange, q0, q1, q2, [q3], q4, q5
    if damage == "crc":
        data[bad + 12] ^= 0x01
    else:
        payload = encode_change(1, "queues", q(3))[8:]
        # same length, valid CRC, but 0xc1 is a byte msgpack never uses
        data[bad : starts[6]] = frame_record(b"\xc1" + payload[1:])
    open(path, "wb").write(data)
    s2 = DefinitionsStore(str(tmp_path))
    s2.load()
    assert [x.name for x in state(s2)[2]] == ["q0", "q1", "q2"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "not applied" in errors[0].getMessage()
    assert open(path + ".corrupt", "rb").read() == bytes(data)
    s2.put(q(7))
    s2.commit()
    s2.close()
    assert [x.name for x in loaded(tmp_path)[2]] == ["q0", "q1", "q2", "q7"]


# ---------------------------------------------------------------- compaction
def test_compaction_when_the_log_outgrows_the_snapshot(tmp_path: Path) -> None:
    s = DefinitionsStore(str(tmp_path), compact_ratio=2.0, compact_min=4096)
    s.load()
    for i in range(400):
        s.put(q(i))
        s.commit()
        if i % 3 == 0:
            s.delete(q(i))
            s.commit()
    assert s.compactions >= 2
    snap = os.path.getsize(s.path)
    assert s.log_bytes <= max(4096, 2 * snap)  # bounded by the rule
    gens = sorted(int(n.split(".")[1]) for n in os.listdir(tmp_path) if n.endswith(".log"))
    assert gens == [s.generation - 1, s.generation]  # the current log and one before
    head = open(s.path, "rb").readline().split()
    assert head[1] == b"2" and int(head[4]) == s.generation
    expect = state(s)
    s.close()
    assert loaded(tmp_path) == expect
    assert len(expect[2]) == 400 - 134


def _compacting(path: Path) -> DefinitionsStore:
    s = store_with(path, 20, compact_ratio=4.0, compact_min=1 << 30)
    s.compact_min, s.compact_ratio = 0, 0.0  # the next commit compacts
    return s


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_each_compaction_step(tmp_path: Path, step: str) -> None:
    s = _compacting(tmp_path)
    s.delete(q(4))
    s.put(q(50))
    after = state(s)

    def crash(at: str) -> None:
        if at == step:
            raise SystemExit(f"simulated crash at {at}")

    s.crash_point = crash
    with pytest.raises(SystemExit):
        s.commit()
    # the changes were appended to the log before the compaction began: whatever step
    # the crash cut, the old snapshot + log or the new snapshot give the same state
    assert loaded(tmp_path) == after
    assert not os.path.exists(s.tmp)  # removed by load
    # and the data dir goes on working: commit, compact, load
    s2 = DefinitionsStore(str(tmp_path), compact_min=0, compact_ratio=0.0)
    s2.load()
    for i in (60, 61):
        s2.put(q(i))
        s2.commit()
    expect = state(s2)
    s2.close()
    assert loaded(tmp_path) == expect and expect[2][-1].name == "q61"
    assert expect[2][:-2] == after[2]


@pytest.mark.parametrize("step", STEPS)
def test_save_crash_at_each_step_leaves_old_or_new(tmp_path: Path, step: str) -> None:
    """``save`` (replace everything) is atomic: the rename is where the new one counts."""
    s = store_with(tmp_path, 5)
    before = state(s)
    new = Definitions(queues=[q(100), q(101)])

    def crash(at: str) -> None:
        if at == step:
            raise SystemExit(f"simulated crash at {at}")

    s.crash_point = crash
    with pytest.raises(SystemExit):
        s.save(new)
    got = loaded(tmp_path)
    if STEPS.index(step) >= STEPS.index("renamed"):
        assert got == ([], [], new.queues, [])
    else:
        assert got == before


@pytest.mark.parametrize("step", STEPS[:-1])
def test_io_error_at_each_compaction_step(
    tmp_path: Path, step: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = _compacting(tmp_path)
    s.put(q(50))
    after = state(s)

    def fail(at: str) -> None:
        if at == step:
            raise OSError(5, "simulated EIO")

    s.crash_point = fail
    assert s.commit() is True  # durable in the log: only the compaction failed
    assert "cannot compact" in caplog.text
    s.crash_point = lambda at: None
    s.put(q(51))
    assert s.commit() is True
    expect = state(s)
    assert expect[2][-2:] == [q(50), q(51)]
    s.close()
    assert loaded(tmp_path) == expect
    assert after[2] == expect[2][:-1]


def test_failed_append_is_cut_back_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = store_with(tmp_path, 3)
    size = s.log_bytes
    s.put(q(10))

    def eio(fd: int) -> None:
        raise OSError(5, "simulated EIO")

    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(OSError):
        s.commit()
    monkeypatch.undo()
    assert os.path.getsize(s.log_path(s.generation)) == size
    assert s.commit() is True
    expect = state(s)
    s.close()
    assert loaded(tmp_path) == expect and expect[2][-1].name == "q10"


def test_damaged_snapshot_uses_previous_one_and_every_log_since(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records are absolute, so previous snapshot + its log + the current log = now."""
    s = DefinitionsStore(str(tmp_path), compact_ratio=1.0, compact_min=2048)
    s.load()
    i = 0
    while s.compactions < 2 or s.log_bytes < 300:
        s.put(q(i))
        if i % 4 == 3:
            s.delete(q(i - 2))
        s.commit()
        i += 1
    expect = state(s)
    s.close()
    data = bytearray(open(s.path, "rb").read())
    data[len(data) // 2] ^= 0x20
    open(s.path, "wb").write(data)
    assert loaded(tmp_path) == expect
    assert "checksum" in caplog.text
    caplog.clear()
    assert loaded(tmp_path) == expect  # repaired into a fresh snapshot
    assert "ERROR" not in caplog.text


# ---------------------------------------------------------------- previous version
def test_format_1_file_of_the_previous_version_loads(tmp_path: Path) -> None:
    shutil.copy(FIXTURE, tmp_path / "definitions.json")
    s = DefinitionsStore(str(tmp_path), compact_min=0, compact_ratio=0.0)
    defs = s.load()
    assert defs.version == 7 and s.generation == 0
    assert [x.name for x in defs.queues] == ["v1.q", "v1.q2"]
    args = defs.queues[0].arguments
    assert args["d"] == Decimal("1.5") and type(args["ts"]) is Timestamp
    assert type(args["b"]) is ByteArray and args["x-max-length"] == 10
    assert defs.bindings == [
        BindingDef(
            vhost="/", source="v1.x", destination="v1.q", routing_key="a.#", arguments={"k": 1}
        )
    ]
    s.put(q(1))
    s.commit()  # compacts: the file is rewritten in format 2, the content kept
    s.close()
    assert open(tmp_path / "definitions.json", "rb").read().startswith(b"SHARDMQ-DEFINITIONS 2 ")
    back = DefinitionsStore(str(tmp_path)).load()
    assert [x.name for x in back.queues] == ["v1.q", "v1.q2", "q1"]
    assert back.queues[0].arguments == args


def test_unknown_format_is_refused() -> None:
    data = D.encode(Definitions()).replace(b"DEFINITIONS 2 ", b"DEFINITIONS 3 ", 1)
    with pytest.raises(D.DefinitionsError, match="unsupported format 3"):
        D.decode(data)


# ---------------------------------------------------------------- real kill -9
CHILD = r"""
import sys
from shardmq.store.definitions import DefinitionsStore, QueueDef
store = DefinitionsStore(sys.argv[1], compact_ratio=1.0, compact_min=4096)
store.load()
i = len(store.definitions().queues)
while True:
    for j in range(3):
        store.put(QueueDef(vhost="/", name=f"q{i + j}"))
    store.commit()
    i += 3
    sys.stdout.write(f"{i}\n")
    sys.stdout.flush()
"""


def test_kill_9_during_commits_and_compactions_keeps_every_commit(tmp_path: Path) -> None:
    """A child commits 3 queues at a time (compacting often) and is SIGKILLed at random
    moments: what loads is always whole commits, at least every one it reported."""
    root = Path(__file__).resolve().parents[2]
    total = 0
    for attempt in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, cwd=root
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first
        time.sleep(0.02 + 0.03 * attempt)
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read().split()
        proc.wait()
        reported = int(rest[-1]) if rest else int(first)
        names = [x.name for x in DefinitionsStore(str(tmp_path)).load().queues]
        assert len(names) % 3 == 0 and len(names) >= reported, (len(names), reported)
        assert len(names) <= reported + 3
        assert names == [f"q{i}" for i in range(len(names))]
        total = len(names)
    assert total > 0
