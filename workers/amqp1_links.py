"""AMQP 1.0 link recovery across workers: which worker keeps a lost link's deliveries.

Owns: the markers (an empty file ``data_dir/status/amqp1-links/<digest>-<slot>`` while
worker ``slot`` keeps deliveries parked under a key, ``digest`` a SHA-1 of the key:
vhost, container-id, link name), ``install`` (the ``LinkRecovery.hooks`` of a worker of
several: it writes and removes its markers, says which other worker has a key parked
(``where``) and asks that worker to release it (``reclaim``) for a link attached here)
and the op ``amqp1_release_link`` (the client's outcomes applied to the parked
deliveries of a key, the rest back to their queue now; the answer is their
delivery-tags, in hex, for the new link's attach).

Invariants:
- Nothing is done per message or per attach beyond one ``stat`` per other worker for a
  receiving link that finds nothing parked here; files are touched only when a link is
  lost without a close and when its deliveries are taken or requeued.
- A marker left by a worker that died names deliveries that died with it (their queues
  took them back): asking that slot's new incarnation releases nothing, and the marker
  is removed then. The release is asynchronous; a worker that cannot be reached leaves
  the deliveries to its time-out (none is lost either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardmq.adapter.amqp10_recovery import Key, Reclaimed, recovery_of
from workers.status import status_dir
from workers.worker_ops import OpError, call_worker, op

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

log = logging.getLogger("shardmq.amqp1")

MARKERS = "amqp1-links"


def _digest(key: Key) -> str:
    return hashlib.sha1("\0".join(key).encode("utf-8", "surrogatepass")).hexdigest()


class MarkerHooks:
    def __init__(self, data_dir: str, slot: int, workers: int) -> None:
        self.data_dir = data_dir
        self.dir = status_dir(data_dir) / MARKERS
        self.slot = slot
        self.workers = workers
        self._tasks: set[asyncio.Task[None]] = set()

    def _marker(self, key: Key, slot: int) -> Path:
        return self.dir / f"{_digest(key)}-{slot}"

    def parked(self, key: Key) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._marker(key, self.slot).touch()
        except OSError as exc:
            log.warning("amqp1 link recovery marker not written: %s", exc)

    def unparked(self, key: Key) -> None:
        with contextlib.suppress(OSError):
            self._marker(key, self.slot).unlink()

    def where(self, key: Key) -> int | None:
        for slot in range(self.workers):
            if slot != self.slot and self._marker(key, slot).exists():
                return slot
        return None

    def reclaim(self, slot: int, key: Key, outcomes: dict[str, str], done: Reclaimed) -> None:
        task = asyncio.ensure_future(self._release(slot, key, outcomes, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(
        self, slot: int, key: Key, outcomes: dict[str, str], done: Reclaimed
    ) -> None:
        args = {"key": list(key), "outcomes": outcomes}
        try:
            got = await call_worker(self.data_dir, slot, "amqp1_release_link", args)
        except OpError as exc:
            log.info("amqp1 link '%s': worker %d not asked to release: %s", key[2], slot, exc)
            done(None)
            return
        tags = [bytes.fromhex(t) for t in got] if isinstance(got, list) else []
        if not tags:  # a marker of an incarnation that died: nothing behind it
            with contextlib.suppress(OSError):
                self._marker(key, slot).unlink()
        done(tags)


def install(broker: Broker, data_dir: str) -> None:
    """Give this worker's link recovery the markers (a worker of several only)."""
    if broker.workers > 1 and broker.config.amqp1.link_recovery_timeout > 0:
        recovery_of(broker).hooks = MarkerHooks(data_dir, broker.slot, broker.workers)


@op("amqp1_release_link")
def release_link(broker: Broker, args: dict[str, Any]) -> list[str]:
    key = args.get("key")
    if not (isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key)):
        return []
    raw = args.get("outcomes")
    outcomes = (
        {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(raw, dict)
        else {}
    )
    tags = recovery_of(broker).release((key[0], key[1], key[2]), outcomes)
    return [t.hex() for t in tags]
