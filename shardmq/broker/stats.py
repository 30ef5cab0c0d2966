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
  already; no lock, no record per message, no time taken. Counters only grow (a
  restarted worker starts again from 0; the readers treat a drop as a restart).
- Worker-wide counts are kept where the client is (publisher's, consumer's worker);
  per-queue counts where the queue lives (its owner), so each event is counted once
  whatever the number of workers.
"""

from __future__ import annotations

from typing import Any

# the worker-wide counters, in the order reports carry them
FIELDS = (
    "published",  # basic.publish received (committed ones in tx mode)
    "routed",  # publishes routed to at least one queue
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


class MessageStats:
    """A worker's counters (``FIELDS``), bumped in place."""

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

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in FIELDS}


# a queue's own counters: slot on Queue -> the management API's name
QUEUE_FIELDS = {
    "st_publish": "publish",  # messages it took
    "st_deliver": "deliver_all",  # consume deliveries (either ack mode)
    "st_deliver_auto": "deliver_no_ack",  # of which to no-ack consumers
    "st_get": "get_all",  # basic.get-oks
    "st_get_auto": "get_no_ack",  # of which no-ack
    "st_ack": "ack",  # acknowledged deliveries and get-oks
    "st_redeliver": "redeliver",  # delivered or fetched again after a requeue
}


def queue_counters(q: Any) -> dict[str, int]:
    """A queue's counts by the management API's names: publish, deliver (manual ack),
    deliver_no_ack, get (manual ack), get_no_ack, deliver_get (all four), ack,
    redeliver."""
    deliver_all = q.st_deliver
    deliver_auto = q.st_deliver_auto
    get_all = q.st_get
    get_auto = q.st_get_auto
    return {
        "publish": q.st_publish,
        "deliver": deliver_all - deliver_auto,
        "deliver_no_ack": deliver_auto,
        "get": get_all - get_auto,
        "get_no_ack": get_auto,
        "deliver_get": deliver_all + get_all,
        "ack": q.st_ack,
        "redeliver": q.st_redeliver,
    }
