"""What a worker adds to its status report for statistics: its message counters and a
few gauges of the process, read when a report is made (``workers.status``).

Owns: ``WorkerStats`` (the worker's ``shardmq.broker.stats.MessageStats`` snapshot,
its channels, consumers, unconfirmed publishes, and process gauges: event loop lag,
CPU seconds, resident memory, open file descriptors, cross-worker records read and
the fill of its outgoing rings), ``worker_stats(broker, probe, owned)`` and ``LagProbe`` (a
timer a second that measures how late the loop runs it).

Invariants: nothing here runs per message; a report walks the connections' channels
once. The lag probe is one timer per second per worker.
"""

from __future__ import annotations

import asyncio
import os
import resource
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.broker.queue import Queue

LAG_INTERVAL = 1.0  # seconds between two lag probes
_PAGE = os.sysconf("SC_PAGE_SIZE")


class WorkerStats(msgspec.Struct, kw_only=True):
    counters: dict[str, int]  # MessageStats.snapshot()
    channels: int
    consumers: int  # consumers of this worker's channels
    unconfirmed: int  # publishes on confirm channels not confirmed yet
    queues_owned: int
    loop_lag: float  # seconds: the last probe's lateness
    loop_lag_max: float  # the largest since the previous report
    cpu_seconds: float  # user + system of this process
    rss_bytes: int
    open_fds: int
    max_fds: int
    cross_records: int  # records read from other workers' rings
    ring_fill: float  # fullest outgoing ring, used / capacity (0 with one worker)
    memory_alarm: bool = False
    disk_alarm: bool = False


class LagProbe:
    """Measures the event loop's lateness: a timer every ``LAG_INTERVAL`` seconds notes
    how much later than asked it ran."""

    def __init__(self) -> None:
        self.lag = 0.0
        self.lag_max = 0.0
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + LAG_INTERVAL
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        self.lag = max(0.0, self._loop.time() - self._due)
        self.lag_max = max(self.lag_max, self.lag)
        self._arm()

    def take_max(self) -> float:
        m, self.lag_max = self.lag_max, self.lag
        return m

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _mesh_stats(broker: Broker) -> tuple[int, float]:
    """Records read from other workers and the fullest outgoing ring's fill."""
    shards = broker.shards
    link = getattr(shards, "link", None) if shards is not None else None
    records = int(getattr(link, "stats_records", 0))
    fill = 0.0
    for peer in getattr(link, "_peers", ()):
        ring = peer.data.ring
        if ring is not None and not ring.closed and ring.capacity:
            fill = max(fill, ring.used() / ring.capacity)
    return records, fill


def worker_stats(broker: Broker, probe: LagProbe | None, owned: list[Queue]) -> WorkerStats:
    """``owned``: the queues this worker owns (their counters are part of its totals)."""
    channels = consumers = unconfirmed = 0
    for conn in broker.connections:
        for ch in conn.channels.values():
            channels += 1
            consumers += len(ch.consumers)
            unconfirmed += len(ch.unconfirmed)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    records, fill = _mesh_stats(broker)
    return WorkerStats(
        counters=broker.stats.snapshot(owned),
        channels=channels,
        consumers=consumers,
        unconfirmed=unconfirmed,
        queues_owned=len(owned),
        loop_lag=probe.lag if probe is not None else 0.0,
        loop_lag_max=probe.take_max() if probe is not None else 0.0,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        rss_bytes=_rss(),
        open_fds=_open_fds(),
        max_fds=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        cross_records=records,
        ring_fill=fill,
        memory_alarm=broker.memory_alarm,
        disk_alarm=broker.disk_alarm,
    )
