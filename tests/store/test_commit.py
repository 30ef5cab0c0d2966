"""Group commit with the threaded committer: one fsync for many publishes, flushes
during an fsync share the next one, confirms only after the fsync, batch spacing,
policy off, callbacks on the loop thread, unlinks off the loop."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from shardmq.store.commit import ThreadCommitter
from shardmq.store.queue_store import DiskQueueStore
from shardmq.store.settings import StoreSettings
from tests.store.helpers import files, make


class FsyncSpy:
    """Stands in for os.fdatasync: counts calls per file, optionally blocks."""

    def __init__(self, monkeypatch) -> None:
        self.real = os.fdatasync
        self.calls: list[tuple[float, str]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.lock = threading.Lock()
        monkeypatch.setattr(os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        with self.lock:
            self.calls.append((time.monotonic(), path))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.real(fd)

    def data(self) -> list[str]:
        return [p for _, p in self.calls if p.endswith(".seg")]

    def index(self) -> list[str]:
        return [p for _, p in self.calls if p.endswith(".idx")]


class Tokens:
    def __init__(self) -> None:
        self.durable: list[Any] = []
        self.failed: list[Any] = []
        self.threads: set[int] = set()

    def on_durable(self, tokens: list[Any]) -> None:
        self.threads.add(threading.get_ident())
        self.durable += tokens

    def on_failed(self, tokens: list[Any], exc: OSError) -> None:
        self.threads.add(threading.get_ident())
        self.failed += tokens


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def store_for(path, committer: ThreadCommitter, tokens: Tokens, **kw: Any) -> DiskQueueStore:
    settings = StoreSettings(**kw)
    return DiskQueueStore.open(
        str(path),
        settings=settings,
        committer=committer,
        on_durable=tokens.on_durable,
        on_failed=tokens.on_failed,
    )


def test_one_fsync_for_a_turn_of_1000_publishes(tmp_path, monkeypatch) -> None:
    spy = FsyncSpy(monkeypatch)
    tokens = Tokens()

    async def main() -> None:
        c = ThreadCommitter(policy="always", index_sync_ms=60_000)
        s = store_for(tmp_path / "q", c, tokens)
        for i in range(1000):
            assert s.push(make(b"%d" % i), i)
        s.flush()
        assert tokens.durable == []  # not before the fsync
        await c.wait_idle()
        assert sorted(tokens.durable) == list(range(1000))
        assert len(spy.data()) == 1
        # the new segment's entry, and the new queue directory's own entry in its parent
        assert c.stats.rounds == 1 and c.stats.dir_syncs == 2
        assert tokens.threads == {threading.get_ident()}  # called back on the loop thread
        for i in range(1000, 2000):
            s.push(make(b"%d" % i), i)
        s.flush()
        await c.wait_idle()
        assert len(spy.data()) == 2 and c.stats.dir_syncs == 2  # no new entry since
        c.close()

    run(main)


def test_flushes_during_an_fsync_share_the_next_one(tmp_path, monkeypatch) -> None:
    spy = FsyncSpy(monkeypatch)
    spy.gate = threading.Event()
    tokens = Tokens()

    async def main() -> None:
        c = ThreadCommitter(policy="always", index_sync_ms=60_000, sync_threads=1)
        s = store_for(tmp_path / "q", c, tokens)
        s.push(make(b"first"), "first")
        s.flush()
        while not spy.entered.is_set():  # the committer is now inside fsync #1
            await asyncio.sleep(0.001)
        for turn in range(20):
            for i in range(50):
                s.push(make(b"m"), (turn, i))
            s.flush()
            await asyncio.sleep(0)
        assert tokens.durable == []  # nobody confirmed while the fsync is stuck
        spy.gate.set()
        await c.wait_idle()
        assert len(tokens.durable) == 1 + 20 * 50
        assert len(spy.data()) == 2  # fsync #1 for "first", #2 for the 20 turns
        assert c.stats.rounds == 2
        c.close()

    run(main)


def test_stores_of_one_loop_share_rounds(tmp_path, monkeypatch) -> None:
    spy = FsyncSpy(monkeypatch)
    tokens = Tokens()

    async def main() -> None:
        c = ThreadCommitter(policy="always", index_sync_ms=60_000, sync_threads=3)
        stores = [store_for(tmp_path / f"q{i}", c, tokens) for i in range(3)]
        for n, s in enumerate(stores):
            for i in range(10):
                s.push(make(b"x"), (n, i))
        for s in stores:
            s.flush()
        await c.wait_idle()
        assert len(tokens.durable) == 30
        assert c.stats.rounds == 1
        assert len(set(spy.data())) == 3 and len(spy.data()) == 3
        c.close()

    run(main)


def test_batch_policy_spaces_fsyncs_and_confirms_after_them(tmp_path, monkeypatch) -> None:
    spy = FsyncSpy(monkeypatch)
    tokens = Tokens()
    interval_ms = 30

    async def main() -> None:
        c = ThreadCommitter(policy="batch", batch_interval_ms=interval_ms, index_sync_ms=60_000)
        s = store_for(tmp_path / "q", c, tokens)
        n = 0
        for _ in range(40):
            for _ in range(10):
                s.push(make(b"b"), n)
                n += 1
            s.flush()
            await asyncio.sleep(0.003)
        await c.wait_idle()
        assert sorted(tokens.durable) == list(range(n))
        starts = [t for t, p in spy.calls if p.endswith(".seg")]
        assert len(starts) >= 2
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert min(gaps) >= interval_ms / 1000 - 0.002
        assert len(starts) < 40  # fewer fsyncs than flushes
        c.close()

    run(main)


def test_policy_off_confirms_at_flush_without_fsync(tmp_path, monkeypatch) -> None:
    spy = FsyncSpy(monkeypatch)
    tokens = Tokens()

    async def main() -> None:
        c = ThreadCommitter(policy="off")
        s = store_for(tmp_path / "q", c, tokens, fsync="off")
        for i in range(100):
            s.push(make(b"o"), i)
        s.flush()
        assert sorted(tokens.durable) == list(range(100))  # synchronously, in flush()
        for _ in range(100):
            s.ack(s.take())
        s.flush()
        await c.wait_idle()
        c.close()

    run(main)
    assert spy.calls == []


def test_acks_are_synced_lazily_and_segments_unlinked_off_loop(tmp_path, monkeypatch) -> None:
    spy = FsyncSpy(monkeypatch)
    tokens = Tokens()
    unlinkers: set[str] = set()
    real_unlink = os.unlink

    def unlink(path, *a, **kw):
        unlinkers.add(threading.current_thread().name)
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", unlink)

    async def main() -> None:
        c = ThreadCommitter(policy="always", index_sync_ms=60_000)
        path = tmp_path / "q"
        s = store_for(path, c, tokens, segment_size=4096)
        for i in range(200):
            s.push(make(b"%0100d" % i), i)
        s.flush()
        await c.wait_idle()
        assert len(files(path, ".seg")) > 3
        for _ in range(20):  # many turns of acks
            for _ in range(10):
                s.ack(s.take())
            s.flush()
            await c.wait_idle()  # one round per turn
        # rate limited: the first index sync is due at once, the next one in 60 s
        assert spy.index() and len(spy.index()) == len(set(spy.index()))
        assert len(files(path, ".seg")) == 1
        assert unlinkers == {"shardmq-fsync"}
        c.close()

    run(main)


def test_fsync_error_nacks_through_the_loop(tmp_path, monkeypatch) -> None:
    tokens = Tokens()

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    async def main() -> None:
        c = ThreadCommitter(policy="always")
        s = store_for(tmp_path / "q", c, tokens)
        monkeypatch.setattr(os, "fdatasync", eio)
        s.push(make(b"a"), "a")
        s.flush()
        await c.wait_idle()
        monkeypatch.undo()
        assert tokens.failed == ["a"] and tokens.durable == []
        assert s.error is not None and s.error.errno == errno.EIO
        s.push(make(b"b"), "b")
        s.flush()
        await c.wait_idle()
        assert tokens.durable == ["b"]
        c.close()

    run(main)
