"""Message storage behind a queue: the one interface a disk store slots into.

Owns: ``MessageStore`` (the interface), ``MemoryStore`` (transient messages),
``WorkerStorage`` (one worker's durable queue stores: their group-commit thread, the
once-per-loop-turn flush, the disk alarm; a priority queue's store is a
``priority.DiskPriorityStore`` of one ``DiskQueueStore`` per level) and ``ConfirmWaiter`` (a cross-worker publish
whose confirm waits for the stores of the owner worker).

Invariants:
- A store holds the *ready* messages of one queue in delivery order; ``len(store)``
  and ``bool(store)`` count them and must be O(1) (the hot path asks per message).
- ``take`` is only called on a non-empty store; the message taken belongs to the
  queue's consumers (unacked) until ``ack`` or ``requeue`` hands it back.
- ``rebind(old, new)``: the unacked ``old`` is ``new`` from now on (same ``seq``; a
  quorum queue's re-counted message, ``delivery_limit.py``), before ``new`` is requeued.
- ``requeue`` puts messages back at their original position relative to each other
  (ordered by ``seq``) and ahead of messages that were never delivered.
- Durable stores: a *confirm target* (``Channel``, ``ConfirmWaiter``) hands out a token
  per persistent publish (``durable_token()``, counted by the target) and hears back
  exactly once per token through ``stored(key, ok)``, from ``WorkerStorage`` when the
  store reports the record durable (ok) or failed (nack).
- Stores that buffered work are flushed once per loop turn (one ``call_soon`` per turn,
  never per message), then the committer thread is kicked once for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from shardmq.message import Message
from shardmq.store.commit import ThreadCommitter
from shardmq.store.disk import DiskMonitor
from shardmq.store.queue_store import DiskQueueStore, MessageCodec, queue_dir, sweep_deleted
from shardmq.store.settings import StoreSettings

if TYPE_CHECKING:
    from shardmq.broker.priority import DiskPriorityStore

log = logging.getLogger("shardmq.store")


class MessageStore(Protocol):
    def push(self, msg: Message, /) -> object: ...
    def take(self) -> Message: ...
    def peek(self) -> Message: ...
    def requeue(self, msgs: Iterable[Message]) -> None: ...
    def ack(self, msg: Message) -> None: ...
    def rebind(self, old: Message, new: Message) -> None: ...
    def purge(self) -> int: ...
    def __len__(self) -> int: ...


class MemoryStore(deque[Message]):
    """Transient messages in a deque (C-speed len/push/take). ``ack`` forgets nothing."""

    __slots__ = ()

    push = deque.append
    take = deque.popleft

    def peek(self) -> Message:
        return self[0]

    def requeue(self, msgs: Iterable[Message]) -> None:
        ordered = sorted(msgs, key=_seq, reverse=True)
        if not ordered:
            return
        if self and ordered[0].seq > self[0].seq:
            # Interleave with messages already back in the queue: rebuild in seq order.
            merged = sorted([*self, *ordered], key=_seq)
            self.clear()
            self.extend(merged)
            return
        self.extendleft(ordered)

    def ack(self, msg: Message) -> None:
        return None

    def rebind(self, old: Message, new: Message) -> None:
        """``new`` (same ``seq``) stands for the unacked ``old`` from now on."""
        return None

    def purge(self) -> int:
        n = len(self)
        self.clear()
        return n


def _seq(msg: Message) -> int:
    return msg.seq


def _ignore(ok: bool) -> None:
    return None


class ConfirmTarget(Protocol):
    def durable_token(self) -> tuple[Any, int]: ...
    def stored(self, key: int, ok: bool) -> None: ...


class ConfirmWaiter:
    """One publish that arrived from another worker and asked for a confirm: ``done(ok)``
    runs once every durable queue it went to has stored it (ok False if any failed).
    ``pending`` counts the tokens handed out and not yet back. Set ``done`` after
    publishing when ``pending`` is not 0 (tokens never come back during a publish)."""

    __slots__ = ("pending", "ok", "done")

    def __init__(self) -> None:
        self.pending = 0
        self.ok = True
        self.done: Callable[[bool], None] = _ignore

    def durable_token(self) -> tuple[Any, int]:
        self.pending += 1
        return (self, 0)

    def stored(self, key: int, ok: bool) -> None:
        if not ok:
            self.ok = False
        self.pending -= 1
        if not self.pending:
            self.done(self.ok)


class WorkerStorage:
    """The durable queue stores of one worker (one event loop): opens them under
    ``data_dir/queues``, flushes the dirty ones once per loop turn, routes their
    durable / failed tokens back to the confirm targets, and watches free disk space."""

    def __init__(
        self,
        data_dir: str,
        settings: StoreSettings,
        loop: asyncio.AbstractEventLoop,
        on_alarm: Callable[[bool], None],
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.settings = settings
        self.loop = loop
        os.makedirs(self.data_dir, exist_ok=True)
        swept = sweep_deleted(self.data_dir)
        if swept:
            log.info("removed %d queue director(ies) left by deletes before a crash", swept)
        self.committer = ThreadCommitter.from_settings(settings, loop)
        self.monitor = DiskMonitor(self.data_dir, settings.disk_free_limit, on_change=on_alarm)
        self.stores: set[DiskQueueStore | DiskPriorityStore] = set()
        self._dirty: list[DiskQueueStore] = []
        self._scheduled = False
        self.closed = False
        # called first in every ``flush`` (one worker: the definitions changes of the
        # turn are written and their fdatasync queued before any store's job)
        self.before_flush: Callable[[], None] | None = None

    def start(self) -> None:
        """Check free disk now, then every ``disk_check_interval`` seconds."""
        self.monitor.start(self.loop, self.settings.disk_check_interval)

    def open_queue(
        self, vhost: str, name: str, max_priority: int = 0, quorum: bool = False
    ) -> DiskQueueStore | DiskPriorityStore:
        """Open (and recover) the store of durable queue ``name``; a priority queue's
        store (``max_priority`` > 0) is a ``priority.DiskPriorityStore`` of one
        ``DiskQueueStore`` per level (it speaks the same contract). A quorum queue's
        records keep delivery counts (``delivery_limit.CountingCodec``)."""
        path = queue_dir(self.data_dir, vhost, name)
        if max_priority:
            from shardmq.broker.priority import open_disk_priority

            pstore = open_disk_priority(path, max_priority, self._open_store, self.committer)
            self.stores.add(pstore)
            return pstore
        if quorum:
            from shardmq.broker.delivery_limit import CountingCodec

            store = self._open_store(path, CountingCodec())
        else:
            store = self._open_store(path)
        self.stores.add(store)
        return store

    def _open_store(self, path: str, codec: MessageCodec | None = None) -> DiskQueueStore:
        return DiskQueueStore.open(
            path,
            settings=self.settings,
            committer=self.committer,
            on_durable=self._durable,
            on_failed=self._failed,
            on_dirty=self._on_dirty,
            codec=codec,
        )

    def drop(self, store: DiskQueueStore | DiskPriorityStore) -> None:
        """The queue was deleted: its directory goes, pending tokens complete."""
        self.stores.discard(store)
        if not store.closed:
            store.destroy()

    # ------------------------------------------------------------ per loop turn
    def _on_dirty(self, store: DiskQueueStore) -> None:
        self._dirty.append(store)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    @property
    def pending(self) -> bool:
        """Some store buffered work not flushed yet."""
        return bool(self._dirty)

    def flush(self) -> None:
        """Write what every dirty store buffered this turn; one committer kick."""
        self._scheduled = False
        if self.before_flush is not None:
            self.before_flush()
        dirty, self._dirty = self._dirty, []
        for store in dirty:
            if not store.closed:
                store.flush()
        self.committer.kick()

    @staticmethod
    def _durable(tokens: list[Any]) -> None:
        for target, key in tokens:
            target.stored(key, True)

    def _failed(self, tokens: list[Any], exc: OSError) -> None:
        log.error("storage write failed, %d publish(es) nacked: %s", len(tokens), exc)
        self.monitor.note_write_error(exc)
        for target, key in tokens:
            target.stored(key, False)

    # ------------------------------------------------------------ shutdown
    async def close(self) -> None:
        """Clean shutdown: flush and close every store, let the last confirms go out,
        stop the fsync thread."""
        if self.closed:
            return
        self.closed = True
        self.monitor.stop()
        for store in list(self.stores):
            store.close()
        self.committer.kick()
        await self.committer.wait_idle()
        self.committer.close()
