"""The systemd ``STATUS=`` line (``systemctl status shardmq``): workers, connections and
queued messages, refreshed every ``INTERVAL`` seconds.

Owns: ``queued_messages`` (the messages in the queues one broker process owns: ready
and unacknowledged, as ``messages`` in ``ctl status``), ``WorkerTotals`` (a worker of N
publishes that number in its slot of the shared counts, ``shardmq.ipc.counts``),
``status_text`` and ``StatusLine`` (the process systemd started sends the line: the
supervisor summing the workers' connections from the control block and their queued
messages from the counts segment, or the one-process broker from its own broker).

Invariants: the work is O(queues) per process every ``INTERVAL`` seconds, never per
message; the line is sent only when it changed, and only where systemd listens
(``workers.sdnotify.notify`` is a no-op elsewhere). It starts after READY=1 and stops
before STOPPING=1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from shardmq.broker.queue import Queue
from shardmq.ipc.control import F_CONNS, ControlBlock
from shardmq.ipc.counts import W_MESSAGES, SharedCounts
from workers.sdnotify import notify

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

INTERVAL = 5.0  # seconds, RabbitMQ's statistics interval


def queued_messages(broker: Broker) -> int:
    """Messages (ready + unacked) in the queues this process owns."""
    total = 0
    for vh in broker.vhosts.values():
        for q in vh.queues.values():
            if isinstance(q, Queue):
                total += q.message_count
    return total


def status_text(workers: int, connections: int, messages: int) -> str:
    w = "worker" if workers == 1 else "workers"
    c = "connection" if connections == 1 else "connections"
    m = "queued message" if messages == 1 else "queued messages"
    return f"{workers} {w}, {connections} {c}, {messages} {m}"


class _Every:
    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
        self.loop = loop
        self.fn = fn
        self._handle: asyncio.TimerHandle | None = None

    def start(self, delay: float = 0.0) -> None:
        if delay:
            self._handle = self.loop.call_later(delay, self._tick)
        else:
            self._tick()

    def _tick(self) -> None:
        self.fn()
        self._handle = self.loop.call_later(INTERVAL, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def supervisor_gather(n: int, control: ControlBlock, counts: SharedCounts) -> tuple[int, int, int]:
    """The supervisor of ``n`` workers: ready workers, their connections, their messages."""
    ready = [s for s in range(n) if control.is_ready(s)]
    conns = sum(control.get(s, F_CONNS) for s in ready)
    messages = sum(counts.total(s, W_MESSAGES) for s in ready)
    return len(ready), conns, messages


class WorkerTotals(_Every):
    """A worker of N: its queued messages into its slot of the shared counts."""

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, self.publish)
        self.broker = broker

    def publish(self) -> None:
        shared = self.broker.counts.shared
        if shared is not None:
            shared.put_total(self.broker.slot, W_MESSAGES, queued_messages(self.broker))


class StatusLine(_Every):
    """Sends ``STATUS=`` with what ``gather()`` returns (workers, connections,
    messages), when it changed (start it with ``delay=INTERVAL`` after READY=1, whose
    own STATUS= says where the broker listens)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, gather: Callable[[], tuple[int, int, int]]
    ) -> None:
        super().__init__(loop, self.send)
        self.gather = gather
        self.last = ""

    def send(self) -> None:
        text = status_text(*self.gather())
        if text != self.last:
            self.last = text
            notify(f"STATUS={text}")
