"""The broker of one worker: vhosts, users, live connections.

Owns: ``Broker`` — the root of the domain state of one shard, plus the hooks that
cross connections (a deleted queue cancels consumers on every connection).

Invariants: no I/O here; the net layer creates connections through
``new_connection`` and flushes their output.
"""

from __future__ import annotations

import hmac
import platform
from collections.abc import Callable

from shardmq import __version__
from shardmq.amqp import methods as M
from shardmq.amqp.connection import AMQPConnection
from shardmq.broker.connection import BrokerConnection
from shardmq.broker.queue import Queue
from shardmq.broker.vhost import VHost
from shardmq.config import Config

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


class Broker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.users = {u.name: u for u in config.users}
        self.vhosts: dict[str, VHost] = {}
        for name in config.vhosts or ["/"]:
            self.add_vhost(name)
        self.connections: set[BrokerConnection] = set()
        self.alarm = False  # memory high watermark passed
        self.server_properties = {
            "product": "shardmq",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "copyright": "shardmq authors",
            "information": "https://pypi.org/project/shardmq/",
            "cluster_name": f"shardmq@{platform.node()}",
            "capabilities": dict(CAPABILITIES),
        }

    def add_vhost(self, name: str) -> VHost:
        vh = self.vhosts.get(name)
        if vh is None:
            vh = self.vhosts[name] = VHost(name)
            vh.on_queue_deleted = self._queue_deleted
        return vh

    def check_password(self, user: str, password: str) -> bool:
        u = self.users.get(user)
        if u is None:
            return False
        return hmac.compare_digest(u.password.encode(), password.encode())

    def new_connection(self, wake: Callable[[AMQPConnection], None], peer: str) -> BrokerConnection:
        return BrokerConnection(self, wake, peer)

    def _queue_deleted(self, q: Queue) -> None:
        consumers, q.consumers = q.consumers, []
        for c in consumers:
            conn = c.channel.conn
            c.channel.consumers.pop(c.tag, None)
            if conn.client_capabilities.get("consumer_cancel_notify") and c.channel.number in (
                conn.channels
            ):
                conn.send_method(c.channel.number, M.BasicCancel(consumer_tag=c.tag, no_wait=True))

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
