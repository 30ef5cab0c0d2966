"""The supervisor's definitions log synced by whoever needs it first (several workers):
the control block's words, the supervisor's publication after each append / sync /
compaction, a worker's sync job queued ahead of its stores', and the supervisor's
batched sync skipped once a worker synced the log."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardmq.broker import defsync
from shardmq.broker import metadata as md
from shardmq.broker.defsync import WorkerLogSync, publish_log
from shardmq.broker.durable import DefinitionsKeeper
from shardmq.broker.remote import RemoteQueue
from shardmq.ipc.control import ControlBlock
from shardmq.store.commit import CommitJob
from shardmq.store.definitions import DefinitionsStore, QueueDef


class HeldCommitter:
    """A committer whose jobs wait in a list until the test completes them."""

    policy = "always"
    closing = False

    def __init__(self) -> None:
        self.jobs: list[CommitJob] = []

    def submit(self, job: CommitJob) -> None:
        self.jobs.append(job)

    def complete(self, exc: OSError | None = None) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            assert job.owner is not None
            job.owner._committed(job, exc)


@pytest.fixture
def control() -> Iterator[ControlBlock]:
    name = f"/shardmq.test{os.getpid()}.defsync.ctl"
    ctl = ControlBlock.create(name, 2)
    try:
        yield ctl
    finally:
        ctl.close()
        ctl.unlink()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def _keeper(tmp_path: Path, **store: Any) -> DefinitionsKeeper:
    def placeholder(name: str, vhost: str, **kw: Any) -> RemoteQueue:
        return RemoteQueue(name, vhost, md.shard_for(vhost, name, 2), **kw)

    return DefinitionsKeeper(
        md.Metadata(["/"], placeholder), DefinitionsStore(str(tmp_path), **store)
    )


def _published(
    tmp_path: Path, control: ControlBlock, loop: asyncio.AbstractEventLoop, **store: Any
) -> tuple[DefinitionsKeeper, HeldCommitter]:
    """A keeper whose syncs go through a held supervisor committer (returned), its log
    published in ``control`` as the supervisor publishes it."""
    keeper = _keeper(tmp_path, **store)
    sup = HeldCommitter()
    keeper.sync_through(sup, loop)  # type: ignore[arg-type]
    publish_log(keeper, control)
    return keeper, sup


def _declare(keeper: DefinitionsKeeper, name: str) -> None:
    keeper.store.put(QueueDef(vhost="/", name=name))
    keeper.commit()


def test_control_block_words(control: ControlBlock) -> None:
    other = ControlBlock.attach(control.name)
    try:
        assert other.definitions_due() is None
        control.publish_definitions(3, 5, 2)
        assert other.definitions_due() == (5, 3)
        other.definitions_synced(4)
        assert control.definitions_synced_upto == 4
        other.definitions_synced(1)  # a max: never lowered by a stale value
        assert control.definitions_synced_upto == 4
        other.definitions_synced(5)
        assert control.definitions_due() is None
    finally:
        other.close()


def test_declare_is_published_written_and_a_worker_syncs_it_first(
    tmp_path: Path, control: ControlBlock, loop: asyncio.AbstractEventLoop
) -> None:
    keeper, sup = _published(tmp_path, control, loop)
    _declare(keeper, "q1")
    # written (the -ok may go out), not synced: a worker's round must sync it first
    assert keeper.store.appends == 1 and keeper.store.appends_synced == 0
    assert control.definitions_due() == (1, keeper.store.generation)

    worker = HeldCommitter()
    wsync = WorkerLogSync(control, str(tmp_path), worker)  # type: ignore[arg-type]
    wsync.queue_sync()
    assert len(worker.jobs) == 1
    assert worker.jobs[0].data == [keeper.store.log_path(keeper.store.generation)]
    wsync.queue_sync()  # the queued job covers it: no second one
    assert len(worker.jobs) == 1
    worker.complete()
    assert control.definitions_due() is None

    # the supervisor's batched sync finds it done: no job, and the store knows
    keeper.queue_sync()
    assert sup.jobs == []
    assert keeper.store.appends_synced == 1


def test_supervisor_syncs_when_no_worker_did(
    tmp_path: Path, control: ControlBlock, loop: asyncio.AbstractEventLoop
) -> None:
    keeper, sup = _published(tmp_path, control, loop)
    _declare(keeper, "q1")
    _declare(keeper, "q2")
    keeper.queue_sync()
    assert len(sup.jobs) == 1 and sup.jobs[0].tokens == [2]  # one for the batch
    assert control.definitions_due() == (2, keeper.store.generation)
    sup.complete()
    assert control.definitions_due() is None
    assert keeper.store.appends_synced == 2


def test_failed_worker_sync_is_tried_again(
    tmp_path: Path, control: ControlBlock, loop: asyncio.AbstractEventLoop
) -> None:
    keeper, _sup = _published(tmp_path, control, loop)
    _declare(keeper, "q1")
    worker = HeldCommitter()
    wsync = WorkerLogSync(control, str(tmp_path), worker)  # type: ignore[arg-type]
    wsync.queue_sync()
    worker.complete(OSError(5, "EIO"))
    assert control.definitions_due() is not None
    wsync.queue_sync()
    assert len(worker.jobs) == 1
    worker.complete()
    assert control.definitions_due() is None


def test_compaction_publishes_the_new_generation_synced(
    tmp_path: Path, control: ControlBlock, loop: asyncio.AbstractEventLoop
) -> None:
    keeper, _sup = _published(tmp_path, control, loop, compact_min=1, compact_ratio=0.0)
    generation = keeper.store.generation
    _declare(keeper, "q1")  # appended, synced at once, compacted
    assert keeper.store.generation > generation
    assert control.definitions_due() is None


def test_sync_now_fdatasyncs_the_log_by_path(
    tmp_path: Path,
    control: ControlBlock,
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keeper, _sup = _published(tmp_path, control, loop)
    _declare(keeper, "q1")
    synced: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(defsync.os, "fdatasync", fdatasync)
    wsync = WorkerLogSync(control, str(tmp_path), HeldCommitter())  # type: ignore[arg-type]
    wsync.sync_now()
    assert synced == [keeper.store.log_path(keeper.store.generation)]
    assert control.definitions_due() is None
    wsync.sync_now()  # nothing due: no second fdatasync
    assert len(synced) == 1


def test_nothing_touches_a_closed_control_block(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """Shutdown: a sync completing after the mesh closed neither fails nor writes."""
    ctl = ControlBlock.create(f"/shardmq.test{os.getpid()}.defsync2.ctl", 2)
    try:
        keeper, sup = _published(tmp_path, ctl, loop)
        _declare(keeper, "q1")
        worker = HeldCommitter()
        wsync = WorkerLogSync(ctl, str(tmp_path), worker)  # type: ignore[arg-type]
        wsync.queue_sync()
        keeper.queue_sync()
    finally:
        ctl.close()
        ctl.unlink()
    worker.complete()
    sup.complete()
    wsync.queue_sync()
    wsync.sync_now()
    keeper.close()
    assert keeper.store.appends_synced == 1
