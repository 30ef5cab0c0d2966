"""Message storage behind a queue: the one interface a disk store slots into.

Owns: ``MessageStore`` (the interface) and ``MemoryStore`` (transient messages).

Invariants:
- A store holds the *ready* messages of one queue in delivery order; messages handed
  out by ``pop`` are the queue's (unacked) until ``ack`` or ``requeue`` gives them back.
- ``requeue`` puts messages back at their original position relative to each other
  (ordered by ``seq``) and ahead of messages that were never delivered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol

from shardmq.broker.message import Message


class MessageStore(Protocol):
    def push(self, msg: Message) -> None: ...
    def pop(self) -> Message | None: ...
    def requeue(self, msgs: Iterable[Message]) -> None: ...
    def ack(self, msg: Message) -> None: ...
    def purge(self) -> int: ...
    def __len__(self) -> int: ...


class MemoryStore:
    """Transient messages in a deque. ``ack`` has nothing to forget."""

    __slots__ = ("_ready", "pop", "push")

    def __init__(self) -> None:
        self._ready: deque[Message] = deque()
        self.push = self._ready.append

        popleft = self._ready.popleft

        def pop() -> Message | None:
            try:
                return popleft()
            except IndexError:
                return None

        self.pop = pop

    def requeue(self, msgs: Iterable[Message]) -> None:
        ordered = sorted(msgs, key=_seq, reverse=True)
        ready = self._ready
        if ready and ordered and ordered[0].seq > ready[0].seq:
            # Interleave with messages already requeued: rebuild in seq order.
            merged = sorted([*ready, *ordered], key=_seq)
            ready.clear()
            ready.extend(merged)
            return
        ready.extendleft(ordered)

    def ack(self, msg: Message) -> None:
        return None

    def purge(self) -> int:
        n = len(self._ready)
        self._ready.clear()
        return n

    def __len__(self) -> int:
        return len(self._ready)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._ready)


def _seq(msg: Message) -> int:
    return msg.seq
