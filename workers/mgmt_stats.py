"""Statistics across workers for the management API and Prometheus: counts summed over
every worker, and rates from successive samples.

Owns: ``StatsHistory`` (one per data dir in the serving process, ``history_for``):
``fetch`` asks every worker for its report now (``workers.status``), ``observe`` folds
reports in: worker-wide counters summed into totals that never go back (a respawned
worker starts from 0 again: what it counted before is kept), per-queue counters as the
owners report them; a sample is kept every ``INTERVAL`` seconds (RabbitMQ's default
statistics interval) and rates are the difference of the last two samples over their
time. While a server uses the history (``start``/``stop``) it fetches every
``INTERVAL`` seconds, so counts are at most that old even when nobody asks; a request
(``fresh``) gets the last reports at once when they are at most ``INTERVAL`` old
(starting a new gathering when they are over ``MAX_AGE``, for the requests after it),
so a request never waits for the workers unless nothing recent is known, and
concurrent requests share one fetch. Also the RabbitMQ shapes built from them:
``overview_message_stats``, ``churn_rates``, ``queue_message_stats``,
``exchange_message_stats`` (publish_in/out, summed over the workers' replicas).

Invariants: nothing here touches the message path (workers only bump integers and
answer report requests). Memory: each queue's eight counters as a tuple, in the last
report and in the two samples rates are taken from (shared while they are the same);
two integers per exchange that clients published to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec

from workers.status import REQUEST_TIMEOUT, WorkerReport, _ask, status_dir

log = logging.getLogger("shardmq.management")

INTERVAL = 5.0  # seconds between samples (RabbitMQ's collect_statistics_interval)
# seconds a request may reuse the last reports: however often a dashboard polls, the
# workers make at most one report a second for it
MAX_AGE = 1.0
QKey = tuple[str, str]

# /api/overview message_stats: RabbitMQ's name -> the sum of these worker counters
OVERVIEW_FIELDS: dict[str, tuple[str, ...]] = {
    "publish": ("published",),
    "confirm": ("confirmed",),
    "return_unroutable": ("unroutable_returned",),
    "drop_unroutable": ("unroutable_dropped",),
    "deliver": ("deliver_manual",),
    "deliver_no_ack": ("deliver_auto",),
    "get": ("get_manual",),
    "get_no_ack": ("get_auto",),
    "get_empty": ("get_empty",),
    "deliver_get": ("deliver_manual", "deliver_auto", "get_manual", "get_auto"),
    "redeliver": ("redelivered",),
    "ack": ("acked",),
}
CHURN_FIELDS = {
    "channel_closed": "channels_closed",
    "channel_created": "channels_opened",
    "connection_closed": "connections_closed",
    "connection_created": "connections_opened",
    "queue_created": "queues_created",
    "queue_declared": "queues_declared",
    "queue_deleted": "queues_deleted",
}


# a queue's counters, in this order (``shardmq.broker.stats.queue_counters``' names)
QUEUE_KEYS = (
    "ack",
    "deliver",
    "deliver_get",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "publish",
    "redeliver",
)

_DETAILS = tuple(k + "_details" for k in QUEUE_KEYS)
_NO_RATE: dict[str, float] = {"rate": 0.0}
_NONE: dict[str, int] = {}

# index of a counter in the tuples of ``StatsHistory.queues``
QUEUE_INDEX = {k: i for i, k in enumerate(QUEUE_KEYS)}


class Sample(msgspec.Struct):
    t: float
    totals: dict[str, int]
    queues: dict[QKey, tuple[int, ...]]  # QUEUE_KEYS' values
    exchanges: dict[QKey, tuple[int, int]] = msgspec.field(default_factory=dict)


class StatsHistory:
    def __init__(self, data_dir: str, interval: float = INTERVAL) -> None:
        self.data_dir = data_dir
        self.interval = interval
        self.totals: dict[str, int] = {}  # worker counters summed, never going back
        self.queues: dict[QKey, tuple[int, ...]] = {}  # QUEUE_KEYS, as last reported
        # (publish_in, publish_out) of each exchange, summed over the workers' replicas
        self.exchanges: dict[QKey, tuple[int, int]] = {}
        self.reports: list[WorkerReport] = []  # the last fetch's
        self.fetched_at = 0.0  # time.monotonic() of the last fetch (0: never)
        self.rates: dict[str, float] = {}
        self._prev: Sample | None = None  # the sample before ``_last`` (queue rates)
        self._seen: dict[int, tuple[int, dict[str, int]]] = {}  # slot -> (pid, counters)
        self._last: Sample | None = None
        self._users = 0
        self._inflight: asyncio.Future[list[WorkerReport]] | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ gathering
    async def fetch(self) -> list[WorkerReport]:
        """Every live worker's report, asked now and at once, folded in."""
        paths = sorted(status_dir(self.data_dir).glob("worker-*.sock"))
        answers = await asyncio.gather(*(_ask(p, REQUEST_TIMEOUT) for p in paths))
        reports: list[WorkerReport] = []
        for answer in answers:
            if isinstance(answer, bool):
                continue
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                reports.append(msgspec.json.decode(answer, type=WorkerReport))
        self.observe(reports)
        return reports

    def observe(self, reports: list[WorkerReport], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.reports = reports
        self.fetched_at = now
        totals = self.totals
        owned = 0
        for rep in reports:
            st = rep.stats
            if st is None:
                continue
            owned += st.queues_owned
            before = self._seen.get(rep.slot)
            prev = before[1] if before is not None and before[0] == rep.pid else {}
            for k, v in st.counters.items():
                gained = v - prev.get(k, 0)
                totals[k] = totals.get(k, 0) + (gained if gained >= 0 else v)
            self._seen[rep.slot] = (rep.pid, st.counters)
        totals["queues_deleted"] = max(0, totals.get("queues_created", 0) - owned)
        queues: dict[QKey, tuple[int, ...]] = {}
        for r in reports:
            for q in r.queues:
                queues[(q.vhost, q.name)] = tuple(q.message_stats.get(k, 0) for k in QUEUE_KEYS)
                q.message_stats = _NONE  # kept as the tuple only (memory per queue)
        self.queues = queues
        exchanges: dict[QKey, tuple[int, int]] = {}
        for r in reports:
            for x in r.exchanges:
                key = (x.vhost, x.name)
                n_in, n_out = exchanges.get(key, (0, 0))
                exchanges[key] = (n_in + x.publish_in, n_out + x.publish_out)
        self.exchanges = exchanges
        last = self._last
        if last is None or now - last.t >= self.interval:
            sample = Sample(now, dict(totals), self.queues, exchanges)
            if last is not None:
                span = now - last.t
                self.rates = {
                    k: max(0.0, (v - last.totals.get(k, 0)) / span) for k, v in totals.items()
                }
            self._prev, self._last = last, sample

    async def fresh(self, max_age: float = MAX_AGE) -> list[WorkerReport]:
        """The last fetch's reports when not older than ``max_age`` seconds; up to
        ``interval`` old, the same while a new fetch starts for the next request (the
        answer does not wait for the workers: RabbitMQ's statistics are up to 5 s old
        too); older, or none yet, a new fetch (requests meanwhile share it)."""
        age = time.monotonic() - self.fetched_at
        if self.fetched_at and age <= max_age:
            return self.reports
        inflight = self._refresh()
        if self.fetched_at and age <= self.interval:
            return self.reports
        return await asyncio.shield(inflight)

    def _refresh(self) -> asyncio.Future[list[WorkerReport]]:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self.fetch())
            self._inflight.add_done_callback(self._fetched)
        return self._inflight

    def _fetched(self, fut: asyncio.Future[list[WorkerReport]]) -> None:
        self._inflight = None
        if not fut.cancelled():
            fut.exception()  # retrieved: each awaiting request sees it

    # ------------------------------------------------------------------ sampling
    def start(self) -> None:
        """A server uses this history: sample every ``interval`` until the last stops."""
        self._users += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._users -= 1
        if self._users > 0 or self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            try:
                await self.fetch()
            except Exception as exc:  # never let sampling die: the next one may work
                log.warning("statistics: gathering the workers' reports failed: %s", exc)
            await asyncio.sleep(self.interval)

    # ------------------------------------------------------------------ shapes
    def _stat(self, out: dict[str, Any], name: str, value: int, rate: float) -> None:
        out[name] = value
        out[name + "_details"] = {"rate": round(rate, 1)}

    def overview_message_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, parts in OVERVIEW_FIELDS.items():
            value = sum(self.totals.get(p, 0) for p in parts)
            rate = sum(self.rates.get(p, 0.0) for p in parts)
            self._stat(out, name, value, rate)
        return out

    def churn_rates(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, field in CHURN_FIELDS.items():
            self._stat(out, name, self.totals.get(field, 0), self.rates.get(field, 0.0))
        return out

    def queue_message_stats(self, vhost: str, name: str) -> dict[str, Any]:
        """The queue's ``message_stats`` (zero rates share one ``_details`` object:
        treat as read-only)."""
        key = (vhost, name)
        counts = self.queues.get(key)
        if counts is None:
            return {}
        a, b = self._prev, self._last
        old = a.queues.get(key) if a is not None else None
        new = b.queues.get(key) if b is not None else None
        out: dict[str, Any] = {}
        if a is None or b is None or old is None or new is None or old == new:
            for k, kd, v in zip(QUEUE_KEYS, _DETAILS, counts, strict=True):
                out[k] = v
                out[kd] = _NO_RATE
            return out
        span = b.t - a.t
        for k, kd, v, x, y in zip(QUEUE_KEYS, _DETAILS, counts, old, new, strict=True):
            out[k] = v
            out[kd] = {"rate": round(max(0.0, (y - x) / span), 1)}
        return out

    def exchange_message_stats(self, vhost: str, name: str) -> dict[str, Any] | None:
        """The exchange's ``message_stats`` as RabbitMQ's: ``publish_in`` once a client
        published to it, ``publish_out`` once it routed a copy to a queue (each with
        its rate); None before either (RabbitMQ then leaves ``message_stats`` out)."""
        key = (vhost, name)
        counts = self.exchanges.get(key)
        if counts is None:
            return None
        a, b = self._prev, self._last
        old = a.exchanges.get(key, (0, 0)) if a is not None else None
        new = b.exchanges.get(key, (0, 0)) if b is not None else None
        out: dict[str, Any] = {}
        for i, k in enumerate(("publish_in", "publish_out")):
            if not counts[i]:
                continue
            rate = 0.0
            if a is not None and b is not None and old is not None and new is not None:
                rate = max(0.0, (new[i] - old[i]) / (b.t - a.t))
            self._stat(out, k, counts[i], rate)
        return out


_HISTORIES: dict[str, StatsHistory] = {}


def history_for(data_dir: str) -> StatsHistory:
    """The one history of the broker on ``data_dir`` in this process (management and
    Prometheus share it)."""
    h = _HISTORIES.get(data_dir)
    if h is None:
        h = _HISTORIES[data_dir] = StatsHistory(data_dir)
    return h
