"""The supervisor's definitions log, synced by whoever needs it first (several workers).

Owns: ``publish_log`` (supervisor: after every append to the definitions log, and every
sync of it, the log's state goes into the control block: generation, appends written,
appends synced) and ``WorkerLogSync`` (a worker: before a store commit round, it
fdatasyncs the supervisor's log itself when an append is not known synced yet).

Why: with several workers a durable declare / bind / delete is applied by the
supervisor's sequencer, which appends its record to ``definitions.<G>.log`` and
broadcasts the op to the workers at once: the -ok does not wait for an fdatasync (a
kill -9 of any process loses nothing: the bytes are in the kernel). The supervisor
syncs the log in the background (one fdatasync per ``durable.SYNC_DELAY`` batch, on its
own committer thread; skipped when a worker synced it meanwhile). What depends on a
declaration is a confirm (publisher confirm, ``tx.commit-ok``, a delayed message's
confirm, an AMQP 1.0 settlement) that a worker's store sends after its commit round:
``WorkerLogSync.queue_sync`` runs first in every ``WorkerStorage.flush`` and puts the
log's fdatasync (by path: the same inode the supervisor appends to) into that round,
ahead of the stores' jobs.

Invariants:
- No confirm on any worker precedes the fdatasync of a declaration it depends on. The
  supervisor publishes ``written`` before anyone hears of the append (before the
  broadcast); a message that depends on the declaration reaches a store after its
  declare-ok, so the flush that writes it reads a ``written`` that counts the append
  and queues the log's sync in the same round or an earlier one (rounds complete in
  submission order, each after syncing all of its files); a delayed message's store
  syncs the log inline first (``sync_now``).
- The synced count in the control block never exceeds what is on disk: a process
  raises it only to a count it read before an fdatasync of the log that returned
  (a log file gone was deleted by a compaction, which synced every append first).
- A failed fdatasync of the log is logged and fails every store job of its commit
  round, and of every later round until a retry syncs it (the sync job is a
  ``barrier``: ``shardmq.store.commit``): no confirm goes out meanwhile (the stores
  nack them); the count is not raised.
"""

from __future__ import annotations

import logging
import os

from shardmq.broker.durable import DefinitionsKeeper
from shardmq.ipc.control import ControlBlock
from shardmq.store.commit import CommitJob, Committer, sync_file
from shardmq.store.definitions import log_path

log = logging.getLogger("shardmq.definitions")


def publish_log(keeper: DefinitionsKeeper, control: ControlBlock) -> None:
    """Supervisor: keep ``control``'s definitions words in step with ``keeper``'s log
    (now, after every commit and every sync), and let its deferred sync be skipped
    when a worker synced the log already."""
    store = keeper.store

    def publish() -> None:
        if not control.closed:  # a sync completing during shutdown
            control.publish_definitions(store.generation, store.appends, store.appends_synced)

    def elsewhere(upto: int) -> bool:
        return not control.closed and control.definitions_synced_upto >= upto

    keeper.on_log = publish
    keeper.synced_elsewhere = elsewhere
    publish()


class WorkerLogSync:
    """A worker's side: syncs the supervisor's definitions log before its store commit
    rounds when it is behind (see the module docstring)."""

    def __init__(self, control: ControlBlock, data_dir: str, committer: Committer) -> None:
        self.control = control
        self.data_dir = os.path.abspath(data_dir)
        self.committer = committer
        self._submitted = 0  # highest append count a queued sync covers
        self.syncs = 0  # fdatasyncs of the log this worker asked for (tests, stats)

    def queue_sync(self) -> None:
        """First in every ``WorkerStorage.flush``: a log sync job ahead of the stores'
        when an append is not known synced and no queued job covers it."""
        if self.control.closed:
            return  # shutting down, after the mesh: the supervisor syncs at its stop
        due = self.control.definitions_due()
        if due is None:
            return
        written, generation = due
        if written <= self._submitted:
            return  # a job of this round or an earlier one syncs it
        self._submitted = written
        self.syncs += 1
        path = log_path(self.data_dir, generation)
        self.committer.submit(CommitJob(self, [written], [path], [], [], [], barrier=True))

    def sync_now(self) -> None:
        """fdatasync the log now if it is behind (the delayed-message store, before its
        own fdatasync). Raises ``OSError``."""
        if self.control.closed:
            return
        due = self.control.definitions_due()
        if due is None:
            return
        written, generation = due
        # (a log that is gone was compacted: the compaction synced every append first)
        sync_file(log_path(self.data_dir, generation))
        self.syncs += 1
        self.control.definitions_synced(written)

    def _committed(self, job: CommitJob, exc: OSError | None) -> None:
        written = job.tokens[0]
        assert isinstance(written, int)
        if exc is not None:
            log.error("cannot sync the definitions log: %s", exc)
            self._submitted = 0
            return
        if not self.control.closed:
            self.control.definitions_synced(written)
