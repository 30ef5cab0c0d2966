"""Group commit: fsync off the event loop, confirm publishes once their bytes are durable.

Owns: ``CommitJob`` (what one store's ``flush()`` hands over), ``ThreadCommitter`` (one
background thread per event loop, shared by every queue store of that loop) and
``InlineCommitter`` (same contract, synchronous: tools, tests, shutdown).

How a publish becomes durable (policy "always")::

    loop turn k:  store.push(msg, token) ... store.flush()  -> os.pwrite (page cache)
                                                            -> CommitJob queued
                  (the jobs of all stores of one turn go to the thread together, from a
                  call_soon callback: one lock, one wake-up per turn)
    committer:    takes *every* job queued so far (all stores), fdatasync()s each file
                  once, fsyncs directories that got new files, then
                  loop.call_soon_threadsafe(complete) -> store.on_durable(tokens)
    loop turn k+n: confirms go out

While one round's fsyncs run, later flushes queue up and share the next round: under
load the number of fsyncs per second is bounded by the disk, not by the publish rate
(group commit). Confirm latency ~= time to the end of the loop turn + wait for the
round in progress + one fsync round (+ up to ``batch_interval_ms`` with "batch").

Invariants:
- Files are synced by path (open O_RDONLY, fdatasync, close): the committer never
  shares an fd with the loop thread, so stores may close and delete segments at any
  time. A file that no longer exists was deleted because everything in it was acked;
  its tokens count as durable.
- A job's completion runs on the loop thread, in submission order, exactly once; it
  reports an OSError when one of the job's data files or directories failed to sync.
- A *barrier* job (``barrier=True``: the definitions log that later confirms depend on,
  ``shardmq.broker.defsync``) that fails to sync fails every job of its round, and its
  files are synced again first in every later round, failing each round's jobs, until
  they sync: no confirm goes out between a failed barrier and its successful retry.
- Index files (acks, delivered markers) are synced at most every ``index_sync_ms``,
  after the round's confirms were posted: they never delay a confirm.
- Unlinks (fully acked segments) happen on the committer thread, after the round.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVarTuple

from shardmq.store.settings import FsyncPolicy, StoreSettings

log = logging.getLogger("shardmq.store")

# A record's token: whatever the store's user handed to ``push`` (the broker: a confirm
# target and key). The store only hands it back, exactly once, so it is any object.
Token = object
_Args = TypeVarTuple("_Args")


class JobOwner(Protocol):
    def _committed(self, job: CommitJob, exc: OSError | None) -> None: ...


class CommitJob:
    __slots__ = ("owner", "tokens", "data", "index", "dirs", "unlinks", "rmtree", "barrier")

    def __init__(
        self,
        owner: JobOwner | None,
        tokens: list[Token],
        data: list[str],
        index: list[str],
        dirs: list[str],
        unlinks: list[str],
        rmtree: str | None = None,
        *,
        barrier: bool = False,
    ) -> None:
        self.owner = owner
        self.tokens = tokens
        self.data = data  # files whose data must be durable before the tokens complete
        self.index = index  # files synced lazily (acks, delivered markers)
        self.dirs = dirs  # directories with new entries (synced with the data)
        self.unlinks = unlinks  # files to delete after the round
        self.rmtree = rmtree  # a whole queue directory to remove (queue.delete)
        self.barrier = barrier  # every later completion depends on ``data`` (module doc)


def _barrier_error(
    failed: dict[str, None], paths: list[str], sync: Callable[[str], OSError | None]
) -> OSError | None:
    """Sync the barrier files that failed before and ``paths``; keep in ``failed`` those
    that fail again, forget those that sync; the first error, or None."""
    first: OSError | None = None
    for path in (*failed, *paths):
        err = sync(path)
        if err is None:
            failed.pop(path, None)
        else:
            failed[path] = None
            if first is None:
                first = err
    return first


def sync_file(path: str) -> None:
    """fdatasync the file at ``path`` (opened by path, never a shared fd); a file that
    is gone counts as synced (see the module's invariants). Raises ``OSError``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # deleted: every message in it was acknowledged
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


_sync_file = sync_file  # the committers' name for it (tests replace it)


def _sync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("cannot delete %s: %s", path, exc)


class Committer(Protocol):
    policy: FsyncPolicy

    def submit(self, job: CommitJob) -> None: ...


class _Stats:
    __slots__ = ("rounds", "data_syncs", "dir_syncs", "index_syncs")

    def __init__(self) -> None:
        self.rounds = 0
        self.data_syncs = 0
        self.dir_syncs = 0
        self.index_syncs = 0


class InlineCommitter:
    """Synchronous committer: ``submit`` syncs, completes and deletes before returning.
    Blocks the caller for the fsync: meant for tools, tests and shutdown paths."""

    def __init__(self, policy: FsyncPolicy = "always", index_sync_ms: int = 0) -> None:
        self.policy = policy
        self.index_sync_ms = index_sync_ms
        self.stats = _Stats()
        self._index: dict[str, None] = {}
        self._index_at = 0.0
        self._barriers: dict[str, None] = {}  # barrier files whose sync failed

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> InlineCommitter:
        return cls(settings.fsync, settings.index_sync_ms)

    def submit(self, job: CommitJob) -> None:
        st = self.stats
        exc: OSError | None = None
        data = job.data
        if self.policy != "off" and (self._barriers or job.barrier):
            exc = _barrier_error(self._barriers, data if job.barrier else [], _try_sync)
            if job.barrier:
                data = []  # synced just now
        if self.policy != "off" and (data or job.dirs) and exc is None:
            st.rounds += 1
            try:
                for path in dict.fromkeys(data):
                    _sync_file(path)
                    st.data_syncs += 1
                for path in dict.fromkeys(job.dirs):
                    _sync_dir(path)
                    st.dir_syncs += 1
            except OSError as e:
                exc = e
        if job.owner is not None:
            job.owner._committed(job, exc)
        if self.policy != "off":
            self._index.update(dict.fromkeys(job.index))
            now = time.monotonic()
            if self._index and now - self._index_at >= self.index_sync_ms / 1000:
                self._index_at = now
                for path in self._index:
                    try:
                        _sync_file(path)
                        st.index_syncs += 1
                    except OSError as e:
                        log.error("index sync of %s failed: %s", path, e)
                self._index.clear()
        for path in job.unlinks:
            _remove(path)
        if job.rmtree:
            shutil.rmtree(job.rmtree, ignore_errors=True)

    def close(self) -> None:
        self._index.clear()


class ThreadCommitter:
    """One fsync thread for every store of one event loop (see module docstring).

    ``submit`` must be called on the loop thread. ``wait_idle()`` (a coroutine) resolves
    once every job submitted so far is fully processed (synced, completed, unlinked)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        policy: FsyncPolicy = "always",
        *,
        batch_interval_ms: int = 10,
        index_sync_ms: int = 100,
        sync_threads: int = 2,
    ) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.policy = policy
        self.batch_interval = batch_interval_ms / 1000
        self.index_interval = index_sync_ms / 1000
        self.stats = _Stats()
        self._cv = threading.Condition(threading.Lock())
        self._jobs: list[CommitJob] = []
        self._pending: list[CommitJob] = []  # loop thread: this turn's jobs
        self._kick_scheduled = False
        self._closing = False
        self._outstanding = 0  # loop thread only
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._pool = ThreadPoolExecutor(sync_threads) if sync_threads > 1 else None
        self._barriers: dict[str, None] = {}  # committer thread: barrier files that failed
        self._thread = threading.Thread(target=self._run, name="shardmq-fsync", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(
        cls, settings: StoreSettings, loop: asyncio.AbstractEventLoop | None = None
    ) -> ThreadCommitter:
        return cls(
            loop,
            settings.fsync,
            batch_interval_ms=settings.batch_interval_ms,
            index_sync_ms=settings.index_sync_ms,
            sync_threads=settings.sync_threads,
        )

    @property
    def closing(self) -> bool:
        """``close`` was called: ``submit`` raises."""
        return self._closing

    # ------------------------------------------------------------ loop thread
    def submit(self, job: CommitJob) -> None:
        if self.policy == "off":
            # Written is as good as it gets: complete now, delete in the background.
            if job.owner is not None:
                job.owner._committed(job, None)
            if not (job.unlinks or job.rmtree):
                return
            job = CommitJob(None, [], [], [], [], job.unlinks, job.rmtree)
        if self._closing:
            raise RuntimeError("committer is closed")
        self._outstanding += 1
        self._pending.append(job)
        if not self._kick_scheduled:
            self._kick_scheduled = True
            self.loop.call_soon(self._kick)

    def kick(self) -> None:
        """Hand this turn's jobs to the thread now (the broker calls it right after
        flushing every dirty store, instead of waiting for the scheduled kick)."""
        if self._pending:
            self._kick()

    def _kick(self) -> None:
        self._kick_scheduled = False
        jobs, self._pending = self._pending, []
        if jobs:
            with self._cv:
                self._jobs += jobs
                self._cv.notify()

    async def wait_idle(self) -> None:
        if self._outstanding:
            fut = self.loop.create_future()
            self._idle_waiters.append(fut)
            await fut

    def _complete(self, results: list[tuple[CommitJob, OSError | None]]) -> None:
        for job, exc in results:
            owner = job.owner
            if owner is not None:
                try:
                    owner._committed(job, exc)
                except Exception:
                    log.exception("commit completion failed")

    def _done(self, n: int) -> None:
        self._outstanding -= n
        if not self._outstanding and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _post(self, fn: Callable[[*_Args], None], *args: *_Args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    # ------------------------------------------------------------ committer thread
    def _run(self) -> None:
        cv = self._cv
        last_round = 0.0
        index: dict[str, None] = {}
        index_at = 0.0
        while True:
            with cv:
                while not self._jobs and not self._closing:
                    if index:
                        wait = index_at + self.index_interval - time.monotonic()
                        if wait <= 0:
                            break
                        cv.wait(wait)
                    else:
                        cv.wait()
                if self.policy == "batch" and self._jobs:
                    wait = last_round + self.batch_interval - time.monotonic()
                    if wait > 0:
                        cv.wait_for(lambda: self._closing, wait)
                jobs, self._jobs = self._jobs, []
                closing = self._closing
            if jobs:
                last_round = time.monotonic()
                self._round(jobs)
                for job in jobs:
                    index.update(dict.fromkeys(job.index))
            if index and (closing or time.monotonic() - index_at >= self.index_interval):
                index_at = time.monotonic()
                for path in index:
                    try:
                        _sync_file(path)
                        self.stats.index_syncs += 1
                    except OSError as e:
                        log.error("index sync of %s failed: %s", path, e)
                index.clear()
            for job in jobs:
                for path in job.unlinks:
                    _remove(path)
                if job.rmtree:
                    shutil.rmtree(job.rmtree, ignore_errors=True)
            if jobs:
                self._post(self._done, len(jobs))
            if closing:
                with cv:
                    if not self._jobs:
                        return

    def _round(self, jobs: list[CommitJob]) -> None:
        st = self.stats
        data: dict[str, None] = {}
        dirs: dict[str, None] = {}
        for job in jobs:
            data.update(dict.fromkeys(job.data))
            dirs.update(dict.fromkeys(job.dirs))
        errors: dict[str, OSError] = {}
        barrier = [p for job in jobs if job.barrier for p in job.data]
        failed: OSError | None = None
        if barrier or self._barriers:
            failed = _barrier_error(self._barriers, barrier, _try_sync)
            for p in barrier:
                data.pop(p, None)  # synced just now
        if data or dirs:
            st.rounds += 1
            paths = list(data)
            if self._pool is not None and len(paths) > 1:
                for path, err in zip(paths, self._pool.map(_try_sync, paths), strict=True):
                    if err is not None:
                        errors[path] = err
            else:
                for path in paths:
                    err = _try_sync(path)
                    if err is not None:
                        errors[path] = err
            st.data_syncs += len(paths)
            for path in dirs:
                try:
                    _sync_dir(path)
                except OSError as e:
                    errors[path] = e
            st.dir_syncs += len(dirs)
        results: list[tuple[CommitJob, OSError | None]] = []
        for job in jobs:
            exc = failed
            if errors and exc is None:
                for path in (*job.data, *job.dirs):
                    if path in errors:
                        exc = errors[path]
                        break
            if job.owner is not None:
                results.append((job, exc))
        if results:
            self._post(self._complete, results)

    def close(self) -> None:
        """Finish queued jobs (their completions are posted to the loop) and stop."""
        self._kick()
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown()


def _try_sync(path: str) -> OSError | None:
    try:
        _sync_file(path)
    except OSError as e:
        return e
    return None
