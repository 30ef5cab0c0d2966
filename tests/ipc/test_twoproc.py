"""Two real processes on one ring: streaming with checksums, and doorbell wake-ups
across processes (the fd inherited with ``pass_fds``, as the supervisor does)."""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from shardmq.ipc.doorbell import Doorbell
from shardmq.ipc.ring import Ring, fence
from tests.support.launch import REPO_ROOT

from . import procs

COUNT = 200_000


@pytest.mark.parametrize("mode", ["single", "many", "stream"])
def test_stream_between_processes(shm_name: Callable[[], str], mode: str) -> None:
    """A spawned writer streams varying-size records (some larger than the ring: 3000 B
    records through a 2 KiB ring in stream mode) while we read; every record arrives once,
    in order, with a valid checksum."""
    name = shm_name()
    capacity = 2048 if mode == "stream" else 64 * 1024
    count = COUNT if mode != "stream" else COUNT // 4
    ring = Ring.create(name, capacity)
    proc = mp.get_context("spawn").Process(
        target=procs.stream_writer, args=(name, count, mode), daemon=True
    )
    proc.start()
    try:
        seq = 0
        deadline = time.monotonic() + 60
        while seq < count:
            recs = ring.read_all(1024)
            if not recs:
                if not proc.is_alive() and not ring.readable():
                    break
                if time.monotonic() > deadline:
                    break
                os.sched_yield()
                continue
            for rec in recs:
                procs.check_record(rec, seq)
                seq += 1
        proc.join(10)
        assert proc.exitcode == 0
        assert seq == count
        assert ring.read_all() == []
        assert ring.used() == 0
    finally:
        if proc.is_alive():
            proc.kill()
        ring.close()


def _spawn(func: str, *args: object, pass_fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
    code = f"from tests.ipc.procs import {func}; {func}(*{args!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, pass_fds=pass_fds)


@pytest.mark.parametrize("prefer_eventfd", [True, False], ids=["eventfd", "pipe"])
def test_doorbell_wakes_sleeping_reader_across_processes(
    shm_name: Callable[[], str], prefer_eventfd: bool
) -> None:
    """We sleep on the doorbell (no polling: a lost wake-up is a 10 s timeout failure);
    a child process writes one record per round and rings only when we said we sleep."""
    rounds = 60
    name = shm_name()
    ring = Ring.create(name, 4096)
    bell = Doorbell.create(prefer_eventfd=prefer_eventfd)
    assert bell.kind == ("eventfd" if prefer_eventfd else "pipe")
    proc = _spawn("bell_writer", name, bell.spec(), rounds, pass_fds=bell.fds)
    try:
        got: list[int] = []
        rung_report: int | None = None
        wakeups = 0
        while rung_report is None:
            recs = ring.read_all()
            for rec in recs:
                if rec.startswith(b"rung"):
                    rung_report = int.from_bytes(rec[4:], "little")
                else:
                    got.append(int.from_bytes(rec, "little"))
            if recs:
                continue
            if not ring.reader_sleep():
                continue
            ready, _, _ = select.select([bell.fileno()], [], [], 10.0)
            ring.reader_awake()
            assert ready, "lost wake-up: no doorbell within 10 s"
            assert bell.clear()
            wakeups += 1
        assert proc.wait(10) == 0
        assert got == list(range(rounds))
        # the writer waited for each record to be consumed, so we slept before almost
        # every round: it rang, and we never woke without a ring
        assert rung_report >= rounds // 2
        assert wakeups <= rung_report + 1
    finally:
        if proc.poll() is None:
            proc.kill()
        bell.close()
        ring.close()


def test_sleepy_reader_child(shm_name: Callable[[], str]) -> None:
    """Mirror image: the child sleeps on an inherited eventfd, we write and ring."""
    rounds = 40
    name, out_name = shm_name(), shm_name()
    ring = Ring.create(name, 4096)
    out = Ring.create(out_name, 256)
    bell = Doorbell.create()
    proc = _spawn("sleepy_reader", name, bell.spec(), rounds, out_name, pass_fds=bell.fds)
    try:
        rung = 0
        for i in range(rounds):
            deadline = time.monotonic() + 10
            while ring.used():
                assert time.monotonic() < deadline, "child stopped reading"
                time.sleep(0.001)
            time.sleep(0.003)
            assert ring.try_write(bytes([i]))
            fence()
            if ring.reader_needs_wake():
                bell.ring()
                rung += 1
        assert proc.wait(15) == 0
        (report,) = out.read_all()
        got = int.from_bytes(report[:4], "little")
        wakeups = int.from_bytes(report[4:], "little")
        assert got == rounds
        assert 1 <= wakeups <= rung
    finally:
        if proc.poll() is None:
            proc.kill()
        bell.close()
        ring.close()
        out.close()
