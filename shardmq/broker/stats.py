"""Message counters of one worker: plain integers, bumped on the message path, read at
intervals by whoever gathers the workers' reports (``workers.status``).

Owns: ``MessageStats`` (one per ``Broker``: the worker-wide counts RabbitMQ calls its
"global" and channel counters: messages received, routed, unroutable dropped or
returned, delivered by consume with and without acks, fetched by basic.get, acked,
confirmed, redelivered; connection, channel and queue churn) and ``queue_counters``
(the per-queue counts a ``Queue`` keeps in its own ``st_*`` slots, named as the
management API names them).

Invariants:
- Counting costs one ``+= 1`` (or ``+= n``) on an attribute where the event happens
  already; no lock, no record per message, no time taken; and each event is counted
  once: a no-ack publish-and-deliver costs three bumps (published on the connection,
  publish and deliver_no_ack on the queue).
- Deliveries, gets and redeliveries are counted by the queue (on the worker that owns
  it), and the worker's totals of them are its queues' sums (``snapshot``) plus what
  its deleted queues had counted (``fold``, when a queue goes). ``routed`` is
  ``published`` less the unroutable ones (a delayed exchange's held message counts as
  routed). Everything else is counted where the client is (publisher's, consumer's
  worker). Counters only grow (a restarted worker starts again from 0; the readers
  treat a drop as a restart).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# the worker-wide counters, in the order reports carry them
FIELDS = (
    "published",  # basic.publish received (committed ones in tx mode)
    "routed",  # publishes routed to at least one queue (computed)
    "unroutable_dropped",  # routed nowhere, not mandatory
    "unroutable_returned",  # routed nowhere, mandatory: basic.return
    "confirmed",  # publishes confirmed (basic.ack) to confirm-mode publishers
    "deliver_auto",  # consume deliveries to no-ack consumers
    "deliver_manual",  # consume deliveries to consumers that ack
    "get_auto",  # basic.get-ok with no-ack
    "get_manual",  # basic.get-ok to be acked
    "get_empty",  # basic.get-empty
    "redelivered",  # deliveries and get-oks with the redelivered flag
    "acked",  # messages acknowledged by consumers (basic.ack, one per message)
    "connections_opened",
    "connections_closed",
    "channels_opened",
    "channels_closed",
    "queues_declared",  # queue.declare (passive or not) by clients of this worker
    "queues_created",  # queues made on this worker (it owns them)
)


# worker totals that are sums of its queues' counters (and of its deleted queues')
FROM_QUEUES = ("deliver_auto", "deliver_manual", "get_auto", "get_manual", "redelivered")


class MessageStats:
    """A worker's counters (``FIELDS``), bumped in place; ``FROM_QUEUES`` and
    ``routed`` are computed by ``snapshot``."""

    __slots__ = FIELDS

    def __init__(self) -> None:
        self.published = 0
        self.routed = 0
        self.unroutable_dropped = 0
        self.unroutable_returned = 0
        self.confirmed = 0
        self.deliver_auto = 0
        self.deliver_manual = 0
        self.get_auto = 0
        self.get_manual = 0
        self.get_empty = 0
        self.redelivered = 0
        self.acked = 0
        self.connections_opened = 0
        self.connections_closed = 0
        self.channels_opened = 0
        self.channels_closed = 0
        self.queues_declared = 0
        self.queues_created = 0

    def fold(self, q: Any) -> None:
        """Queue ``q`` (of this worker) is gone: keep what it counted."""
        self.deliver_auto += q.st_deliver_auto
        self.deliver_manual += q.st_deliver_manual
        self.get_auto += q.st_get_auto
        self.get_manual += q.st_get - q.st_get_auto
        self.redelivered += q.st_redeliver

    def snapshot(self, queues: Iterable[Any] = ()) -> dict[str, int]:
        """The counters, with this worker's live ``queues`` (those it owns) added."""
        out = {name: getattr(self, name) for name in FIELDS}
        da = dm = ga = g = rd = 0
        for q in queues:
            da += q.st_deliver_auto
            dm += q.st_deliver_manual
            ga += q.st_get_auto
            g += q.st_get
            rd += q.st_redeliver
        out["deliver_auto"] += da
        out["deliver_manual"] += dm
        out["get_auto"] += ga
        out["get_manual"] += g - ga
        out["redelivered"] += rd
        out["routed"] = self.published - self.unroutable_dropped - self.unroutable_returned
        return out


# a queue's own counters: slot on Queue -> the management API's name
QUEUE_FIELDS = {
    "st_publish": "publish",  # messages it took
    "st_deliver_manual": "deliver",  # consume deliveries to be acked
    "st_deliver_auto": "deliver_no_ack",  # consume deliveries to no-ack consumers
    "st_get": "get_all",  # basic.get-oks
    "st_get_auto": "get_no_ack",  # of which no-ack
    "st_ack": "ack",  # acknowledged deliveries and get-oks
    "st_redeliver": "redeliver",  # delivered or fetched again after a requeue
}


def queue_counters(q: Any) -> dict[str, int]:
    """A queue's counts by the management API's names: publish, deliver (manual ack),
    deliver_no_ack, get (manual ack), get_no_ack, deliver_get (all four), ack,
    redeliver."""
    manual = q.st_deliver_manual
    deliver_auto = q.st_deliver_auto
    get_all = q.st_get
    get_auto = q.st_get_auto
    return {
        "publish": q.st_publish,
        "deliver": manual,
        "deliver_no_ack": deliver_auto,
        "get": get_all - get_auto,
        "get_no_ack": get_auto,
        "deliver_get": manual + deliver_auto + get_all,
        "ack": q.st_ack,
        "redeliver": q.st_redeliver,
    }
