"""Message storage behind a queue: the one interface a disk store slots into.

Owns: ``MessageStore`` (the interface) and ``MemoryStore`` (transient messages).

Invariants:
- A store holds the *ready* messages of one queue in delivery order; ``len(store)``
  and ``bool(store)`` count them and must be O(1) (the hot path asks per message).
- ``take`` is only called on a non-empty store; the message taken belongs to the
  queue's consumers (unacked) until ``ack`` or ``requeue`` hands it back.
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
    def take(self) -> Message: ...
    def requeue(self, msgs: Iterable[Message]) -> None: ...
    def ack(self, msg: Message) -> None: ...
    def purge(self) -> int: ...
    def __len__(self) -> int: ...


class MemoryStore(deque[Message]):
    """Transient messages in a deque (C-speed len/push/take). ``ack`` forgets nothing."""

    __slots__ = ()

    push = deque.append
    take = deque.popleft

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

    def purge(self) -> int:
        n = len(self)
        self.clear()
        return n


def _seq(msg: Message) -> int:
    return msg.seq
