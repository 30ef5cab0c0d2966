"""Cross-shard data plane: one entry point for the broker to the two sides.

Owns: ``ShardRouter`` — the router the broker holds as ``broker.shards`` when it runs
with several workers. It reads every record that arrives from other workers and hands
it to the side that owns its kind, and forwards what the broker's connections call
to the side that does it:

- the user side (``shardmq.broker.xshard.user.UserSide``): this worker's publishers
  and consumers of queues owned elsewhere (``enqueue``, ``settle``, ``grant``,
  ``consume``, ``cancel``, ``get``, ``purge``, ``reply_exists``, ``tx_seq``,
  ``throttled``);
- the owner side (``shardmq.broker.xshard.owner.OwnerSide``): this worker's queues as
  other workers use them.

The record layouts are in ``shardmq.broker.xshard.records``.

Invariants:
- What a connection calls per message is the side's own bound method (no extra call
  per message through the router).
- A worker's death reaches both sides (``shard_down``), the user side first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from shardmq.broker.xshard.link import Link, Publisher
from shardmq.broker.xshard.owner import OwnerSide, ProxyConsumer, RemotePublisher
from shardmq.broker.xshard.user import UserSide

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

__all__ = [
    "Link",
    "OwnerSide",
    "ProxyConsumer",
    "Publisher",
    "RemotePublisher",
    "ShardRouter",
    "UserSide",
]

log = logging.getLogger("shardmq.shards")


class ShardRouter:
    def __init__(
        self,
        broker: Broker,
        link: Link,
        call_soon: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.broker = broker
        self.link = link
        self.owner = owner = OwnerSide(broker, link, link.incarnation)
        self.user = user = UserSide(broker, link, call_soon)
        # what the broker's connections call, bound straight to the user side
        self.enqueue = user.enqueue
        self.settle = user.settle
        self.grant = user.grant
        self.consume = user.consume
        self.cancel = user.cancel
        self.get = user.get
        self.purge = user.purge
        self.reply_exists = user.reply_exists
        self.tx_seq = user.tx_seq
        self.flush = user.flush
        self.throttled = user.throttled
        self._handlers = owner.handlers() | user.handlers()

    def on_records(self, src: int, records: list[bytes]) -> None:
        """Records from worker ``src`` (``Mesh.on_records``)."""
        handlers = self._handlers
        for rec in records:
            data = bytes(rec)
            try:
                handlers[data[0]](src, data)
            except Exception:
                log.exception("bad record type %d from worker %d", data[0] if data else -1, src)

    def on_writable(self, shard: int) -> None:
        """The ring to ``shard`` drained (``Mesh.on_writable``)."""
        self.user.on_writable(shard)
        self.owner.on_writable(shard)

    def shard_down(self, shard: int) -> None:
        """Worker ``shard`` died (it is being respawned empty)."""
        self.user.shard_down(shard)
        self.owner.shard_down(shard)
