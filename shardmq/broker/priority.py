"""Priority queues (``x-max-priority``): the ready-message container of such a queue.

Owns: ``max_priority`` (a queue's ``x-max-priority``, 0 for a plain queue),
``message_priority`` (a message's ``priority`` property read from its raw content
header, without decoding the properties), ``PriorityStore`` (one ``MessageStore`` per
priority level, behind the ``MessageStore`` interface), its two kinds
``MemoryPriorityStore`` (levels are ``MemoryStore`` deques) and ``DiskPriorityStore``
(levels are ``DiskQueueStore``s in ``<queue dir>/pNNN``, one per level), and
``open_disk_priority`` (opens and recovers those).

A queue picks its container once, when it is made (``Queue.__init__``,
``WorkerStorage.open_queue``): a plain queue keeps its ``MemoryStore`` /
``DiskQueueStore`` and never passes through here.

Invariants (RabbitMQ's):
- A message's level is ``min(priority, max)``; no ``priority`` property is level 0.
- ``take``/``peek`` serve the highest non-empty level, FIFO within a level; so
  drop-head (max-length) and TTL expiry work on the overall head, as RabbitMQ's
  priority queues do (it drops the head that would be delivered next, the highest
  priority one, and expires only from that head).
- ``requeue`` hands each message back to its own level, where the level store puts it
  back at its original place (before the messages never delivered): a requeued
  message keeps its place by priority.
- Memory: no level exists before a message of that priority arrives. A memory level is
  dropped as soon as it is empty; a disk level stays open while the queue lives (it
  may hold unacked messages and pending writes), and only levels with messages are
  opened at recovery.
- Each disk level pages on its own: the store's ``queue_memory_budget`` holds per level
  (a priority queue's ready messages in memory are at most levels x budget).
- ``len``: a running count for memory levels; a sum over the open disk levels.
- Disk levels share one ``redelivered`` set (the queue's) and the worker's committer;
  ``destroy`` removes the whole queue directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from shardmq.amqp.fieldtable import Timestamp
from shardmq.broker.storage import MemoryStore
from shardmq.message import Message
from shardmq.store.commit import CommitJob, Committer, Token
from shardmq.store.queue_store import DiskQueueStore

MAX_PRIORITY = 255
_LEVEL_DIR = re.compile(r"p([0-9]{3})")


def max_priority(arguments: dict[str, Any] | None) -> int:
    """The queue's ``x-max-priority`` (already validated at declare), 0 when the queue
    has none (RabbitMQ 3.10 also takes 0 as a plain queue)."""
    if not arguments:
        return 0
    v = arguments.get("x-max-priority")
    if isinstance(v, bool) or not isinstance(v, int) or isinstance(v, Timestamp):
        return 0
    return v if 0 < v <= MAX_PRIORITY else 0


def message_priority(raw: bytes) -> int:
    """The ``priority`` property of the content header at ``raw[7:]`` (0 when absent);
    ``raw[19:21]`` are the property flags (the layout ``Message.raw`` has)."""
    flags = raw[19] << 8 | raw[20]
    if not flags & 0x0800:
        return 0
    p = 21
    if flags & 0x8000:  # content-type
        p += 1 + raw[p]
    if flags & 0x4000:  # content-encoding
        p += 1 + raw[p]
    if flags & 0x2000:  # headers
        p += 4 + int.from_bytes(raw[p : p + 4], "big")
    if flags & 0x1000:  # delivery-mode
        p += 1
    return raw[p]


class LevelStore(Protocol):
    """What one priority level is (``MemoryStore``, ``DiskQueueStore``)."""

    def push(self, msg: Message, /) -> object: ...
    def take(self) -> Message: ...
    def peek(self) -> Message: ...
    def requeue(self, msgs: Iterable[Message]) -> None: ...
    def ack(self, msg: Message) -> None: ...
    def rebind(self, old: Message, new: Message) -> None: ...
    def purge(self) -> int: ...
    def __len__(self) -> int: ...


_S = TypeVar("_S", bound=LevelStore)


class PriorityStore(Generic[_S]):
    """Ready messages by level; ``levels`` holds only the levels made so far."""

    __slots__ = ("max", "levels", "top")

    def __init__(self, max_priority: int) -> None:
        self.max = max_priority
        self.levels: dict[int, _S] = {}
        self.top = -1  # highest level with ready messages, -1: none

    def level_of(self, msg: Message) -> int:
        p = message_priority(msg.raw)
        return p if p < self.max else self.max

    def _new_level(self, level: int) -> _S:
        raise NotImplementedError

    def _level(self, level: int) -> _S:
        s = self.levels.get(level)
        if s is None:
            s = self.levels[level] = self._new_level(level)
        return s

    def _drained(self, level: int) -> None:
        """Level ``level`` (the top) has no ready message left: find the next top."""
        self.top = max((lv for lv, s in self.levels.items() if len(s)), default=-1)

    def peek(self) -> Message:
        return self.levels[self.top].peek()

    def take(self) -> Message:
        top = self.top
        s = self.levels[top]
        msg = s.take()
        if not len(s):
            self._drained(top)
        return msg

    def ack(self, msg: Message) -> None:
        s = self.levels.get(self.level_of(msg))
        if s is not None:
            s.ack(msg)

    def rebind(self, old: Message, new: Message) -> None:
        s = self.levels.get(self.level_of(old))
        if s is not None:
            s.rebind(old, new)

    def requeue(self, msgs: Iterable[Message]) -> None:
        by_level: dict[int, list[Message]] = {}
        for m in msgs:
            by_level.setdefault(self.level_of(m), []).append(m)
        for level, group in by_level.items():
            self._level(level).requeue(group)
            if level > self.top and len(self.levels[level]):
                self.top = level

    def _pushed(self, level: int) -> None:
        if level > self.top:
            self.top = level

    def purge(self) -> int:
        n = sum(s.purge() for s in self.levels.values())
        self.top = -1
        return n

    def __bool__(self) -> bool:
        return self.top >= 0


class MemoryPriorityStore(PriorityStore[MemoryStore]):
    """Transient messages by level; an empty level is dropped at once."""

    __slots__ = ("n",)

    def __init__(self, max_priority: int) -> None:
        super().__init__(max_priority)
        self.n = 0

    def _new_level(self, level: int) -> MemoryStore:
        return MemoryStore()

    def push(self, msg: Message, /) -> None:
        level = self.level_of(msg)
        s = self.levels.get(level)
        if s is None:
            s = self.levels[level] = MemoryStore()
        s.append(msg)
        self.n += 1
        if level > self.top:
            self.top = level

    def take(self) -> Message:
        top = self.top
        s = self.levels[top]
        msg = s.popleft()
        self.n -= 1
        if not s:
            del self.levels[top]
            self.top = max(self.levels, default=-1)
        return msg

    def ack(self, msg: Message) -> None:
        return None

    def requeue(self, msgs: Iterable[Message]) -> None:
        msgs = list(msgs)
        super().requeue(msgs)
        self.n += len(msgs)

    def purge(self) -> int:
        n = self.n
        self.levels.clear()
        self.top = -1
        self.n = 0
        return n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Message]:
        """Every ready message, highest level first (delivery order)."""
        for level in sorted(self.levels, reverse=True):
            yield from self.levels[level]


class DiskPriorityStore(PriorityStore[DiskQueueStore]):
    """A durable priority queue's levels, each a ``DiskQueueStore`` in ``path/pNNN``
    (made by ``open_level``). Speaks ``DiskQueueStore``'s broker contract."""

    __slots__ = ("path", "open_level", "committer", "redelivered", "recovered", "closed")

    def __init__(
        self,
        path: str,
        max_priority: int,
        open_level: Callable[[str], DiskQueueStore],
        committer: Committer,
    ) -> None:
        super().__init__(max_priority)
        self.path = path
        self.open_level = open_level
        self.committer = committer
        self.redelivered: set[Message] = set()
        self.recovered = 0
        self.closed = False

    def _new_level(self, level: int) -> DiskQueueStore:
        s = self.open_level(os.path.join(self.path, f"p{level:03d}"))
        self.redelivered |= s.redelivered
        s.redelivered = self.redelivered  # one set for the queue (cleared whole by purge)
        return s

    def push(self, msg: Message, token: Token = None) -> bool:
        level = self.level_of(msg)
        r = self._level(level).push(msg, token)
        if level > self.top:
            self.top = level
        return r

    def push_taken(self, msg: Message, token: Token = None) -> bool:
        return self._level(self.level_of(msg)).push_taken(msg, token)

    def __len__(self) -> int:
        return sum(len(s) for s in self.levels.values())

    def __bool__(self) -> bool:
        top = self.top
        if top < 0:
            return False
        if len(self.levels[top]):
            return True
        self._drained(top)  # (a failed write took paged messages of the top level)
        return self.top >= 0

    def recover(self) -> None:
        """Open the levels that exist on disk; keep those holding messages."""
        if not os.path.isdir(self.path):
            os.makedirs(self.path, exist_ok=True)
            return
        for name in sorted(os.listdir(self.path)):
            m = _LEVEL_DIR.fullmatch(name)
            if m is None:
                continue
            level = int(m.group(1))
            s = self._new_level(level)
            if s.recovered:
                self.levels[level] = s
                self.recovered += s.recovered
                if level > self.top:
                    self.top = level
            else:
                s.close()

    def flush(self) -> None:
        for s in self.levels.values():
            s.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for s in self.levels.values():
            s.close()

    def destroy(self) -> None:
        """The queue was deleted: every level's pending work completes, the directory
        goes (renamed aside at once, removed by the committer)."""
        for s in self.levels.values():
            if not s.closed:
                s.destroy()
        self.levels.clear()
        self.top = -1
        self.closed = True
        doomed = f"{self.path}.deleted-{os.getpid()}-{id(self):x}"
        try:
            os.replace(self.path, doomed)
        except OSError:
            doomed = self.path
        self.committer.submit(CommitJob(None, [], [], [], [], [], doomed))

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {
            "messages": 0,
            "ready_in_memory": 0,
            "ready_on_disk_only": 0,
            "ready_persistent": 0,
            "unacked": 0,
            "memory_bytes": 0,
            "segments": 0,
            "disk_bytes": 0,
        }
        for s in self.levels.values():
            for k, v in s.stats().items():
                total[k] = total.get(k, 0) + v
        return total


def open_disk_priority(
    path: str,
    max_priority: int,
    open_level: Callable[[str], DiskQueueStore],
    committer: Committer,
) -> DiskPriorityStore:
    """Open (creating if needed) a durable priority queue's directory and recover its
    levels."""
    store = DiskPriorityStore(path, max_priority, open_level, committer)
    store.recover()
    return store


__all__ = [
    "MAX_PRIORITY",
    "DiskPriorityStore",
    "MemoryPriorityStore",
    "PriorityStore",
    "max_priority",
    "message_priority",
    "open_disk_priority",
]
