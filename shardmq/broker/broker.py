"""The broker of one worker: vhosts, users, live connections.

Owns: ``Broker`` — the root of the domain state of one shard, plus the hooks that
cross connections (a deleted queue cancels consumers on every connection).

Invariants: no I/O here; the net layer creates connections through
``new_connection`` and flushes their output.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import platform
from collections.abc import Callable
from typing import Any

from shardmq import __version__
from shardmq.amqp.connection import AMQPConnection
from shardmq.amqp.errors import AMQPError
from shardmq.broker.connection import BrokerConnection
from shardmq.broker.metadata import Metadata, Op, shard_for
from shardmq.broker.queue import Consumer, Queue
from shardmq.broker.remote import RemoteQueue
from shardmq.broker.vhost import AnyQueue
from shardmq.config import Config

log = logging.getLogger("shardmq.broker")

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": False,
}


class LocalSequencer:
    """One worker: metadata ops apply at once, in this process, in call order."""

    synchronous = True

    def __init__(self, metadata: Metadata) -> None:
        self.metadata = metadata

    def execute(self, op: Op) -> Any:
        return self.metadata.apply(op)

    def fire(self, op: Op) -> None:
        """Apply an op nobody waits for (auto-delete, exclusive owner gone)."""
        try:
            self.metadata.apply(op)
        except AMQPError as exc:
            log.debug("internal op %r not applied: %s", op, exc.reply_text)


class Broker:
    def __init__(self, config: Config, *, slot: int = 0, workers: int = 1) -> None:
        self.config = config
        self.slot = slot
        self.workers = workers
        self.users = {u.name: u for u in config.users}
        self.metadata = Metadata(config.vhosts or ["/"], self._make_queue)
        self.metadata.on_queue_deleted = self._queue_deleted
        self.vhosts = self.metadata.vhosts
        self.sequencer: Any = LocalSequencer(self.metadata)
        self.shards: Any = None  # the cross-shard router when workers > 1
        self.connections: set[BrokerConnection] = set()
        self.conns_by_gid: dict[int, BrokerConnection] = {}
        self.current_publisher: BrokerConnection | None = None  # for ring backpressure
        self.alarm = False  # memory high watermark passed
        self._conn_ids = itertools.count(1)
        self.server_properties = {
            "product": "shardmq",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "copyright": "shardmq authors",
            "information": "https://pypi.org/project/shardmq/",
            "cluster_name": f"shardmq@{platform.node()}",
            "capabilities": dict(CAPABILITIES),
            "worker": slot,
        }

    def new_gid(self) -> int:
        """A connection id unique across workers: the slot in the high 32 bits."""
        return (self.slot << 32) | next(self._conn_ids)

    def _make_queue(self, name: str, vhost: str, **kw: Any) -> AnyQueue:
        if self.workers > 1:
            shard = shard_for(vhost, name, self.workers)
            if shard != self.slot:
                rq = RemoteQueue(name, vhost, shard, **kw)
                rq.router = self.shards
                return rq
        return Queue(name, vhost, **kw)

    def check_password(self, user: str, password: str) -> bool:
        u = self.users.get(user)
        if u is None:
            return False
        return hmac.compare_digest(u.password.encode(), password.encode())

    def new_connection(self, wake: Callable[[AMQPConnection], None], peer: str) -> BrokerConnection:
        return BrokerConnection(self, wake, peer)

    def _queue_deleted(self, q: AnyQueue) -> None:
        """Consumers of a deleted queue on this worker's connections get basic.cancel."""
        if isinstance(q, Queue):
            consumers = [c for c in q.consumers if isinstance(c, Consumer)]
            q.consumers = []
        else:
            consumers = list(q.local_consumers.values())
            q.local_consumers.clear()
        for c in consumers:
            c.channel.conn.cancel_consumer(c)

    def set_memory_alarm(self, on: bool) -> None:
        """Block (or unblock) every connection that publishes."""
        if on == self.alarm:
            return
        self.alarm = on
        for conn in list(self.connections):
            if conn.published:
                conn.memory_alarm(on)

    def close_all(self, code: int, text: str) -> None:
        for conn in list(self.connections):
            conn.server_close(code, text)
