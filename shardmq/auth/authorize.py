"""Which permission each AMQP operation needs, and the check (RabbitMQ's rules).

Owns: ``needs`` (a metadata op -> the (permission, resource kind, name) triples it
requires, as RabbitMQ's access-control guide tabulates them), ``refused`` (the 403
ACCESS_REFUSED channel error with RabbitMQ's text) and ``Authorizer`` (one connection's
permission in its vhost, with a cache of exchanges it may publish to).

Invariants:
- queue.declare / exchange.declare need ``configure`` on the object unless passive;
  queue.bind needs ``write`` on the queue and ``read`` on the exchange; exchange.bind
  ``write`` on the destination and ``read`` on the source (unbinds alike);
  queue.delete / exchange.delete ``configure``; basic.publish ``write`` on the exchange;
  basic.get / basic.consume / queue.purge ``read`` on the queue. The default exchange
  is checked under the name ``amq.default``.
- Topic permissions (per user, vhost and topic exchange: write/read regexes on the
  routing key) are checked on publish (write) and on bind/unbind (read) to a topic
  exchange they name; other exchanges are not affected.
- A connection whose permission is ``.*`` for all three and has no topic rules (the
  common case) pays one attribute test per publish (``Authorizer.fast``); otherwise
  one dict lookup per publish after the first to an exchange.
- A change of users or permissions applies to the next operation of every open
  connection (``Access.version``; ``Access`` also clears every live ``fast`` flag
  at once, so the publish path need not compare versions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardmq.amqp.codec import exrk_names
from shardmq.amqp.errors import ACCESS_REFUSED, SoftError
from shardmq.auth.access import Access, Permission, TopicPermission
from shardmq.broker import metadata as md

if TYPE_CHECKING:
    from shardmq.broker.vhost import VHost

Need = tuple[str, str, str]  # (configure | write | read, "queue" | "exchange", name)


def _ex(name: str) -> str:
    return name or "amq.default"


def needs(op: md.Op) -> list[Need]:
    if isinstance(op, md.DeclareQueue):
        return [] if op.passive else [("configure", "queue", op.name)]
    if isinstance(op, md.DeclareExchange):
        return [] if op.passive else [("configure", "exchange", _ex(op.name))]
    if isinstance(op, md.DeleteQueue):
        return [("configure", "queue", op.name)]
    if isinstance(op, md.DeleteExchange):
        return [("configure", "exchange", _ex(op.name))]
    if isinstance(op, md.Bind):  # Unbind too
        dest_kind = "queue" if op.dest_is_queue else "exchange"
        return [("write", dest_kind, op.dest), ("read", "exchange", _ex(op.source))]
    return []


def refused(kind: str, name: str, vhost: str, user: str) -> SoftError:
    return SoftError(
        ACCESS_REFUSED, f"access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"
    )


class Authorizer:
    """One open connection's rights in its vhost, following changes at once: the
    decision caches are dropped whenever ``access.version`` moved."""

    __slots__ = (
        "access",
        "user",
        "vhost",
        "perm",
        "topics",
        "unrestricted",
        "version",
        "fast",
        "_writable",
        "__weakref__",
    )

    def __init__(self, access: Access, user: str, vhost: VHost) -> None:
        self.access = access
        self.user = user
        self.vhost = vhost
        self.version = -1
        self.perm: Permission | None = None
        self.topics: dict[str, TopicPermission] = {}
        self.unrestricted = False
        self._writable: dict[bytes, bool] = {}
        self.fast = False  # nothing to check on publish, as of ``version``
        self.refresh()
        access.watch(self)

    def stale(self) -> None:
        """Users or permissions changed (``Access``): the next publish checks again."""
        self.fast = False

    def refresh(self) -> None:
        access = self.access
        self.version = access.version
        self.perm = perm = access.permission(self.user, self.vhost.name)
        self.topics = access.topics.get((self.vhost.name, self.user), {})
        self.unrestricted = (
            perm is not None
            and perm.configure == perm.write == perm.read == ".*"
            and not self.topics
        )
        self._writable = {}
        self.fast = self.unrestricted

    @property
    def free(self) -> bool:
        """Nothing to check (the common case: ``.*`` everywhere, no topic rules)."""
        if self.version != self.access.version:
            self.refresh()
        return self.unrestricted

    def check(self, kind: str, resource: str, name: str) -> None:
        if self.free:
            return
        if self.perm is None or not self.perm.allows(kind, name):
            raise refused(resource, name, self.vhost.name, self.user)

    def check_op(self, op: md.Op) -> None:
        if self.free:
            return
        for kind, resource, name in needs(op):
            self.check(kind, resource, name)
        if isinstance(op, md.Bind) and self.topics:
            self._check_topic("read", op.source, op.routing_key)

    def check_publish(self, exrk: bytes) -> None:
        """``write`` on the exchange of a publish (``exrk`` as the message holds it),
        and on its routing key where a topic permission covers the exchange."""
        if self.free:
            return
        el = exrk[0]
        key = exrk[: 1 + el]
        ok = self._writable.get(key)
        if ok is None:
            name = _ex(key[1:].decode("utf-8", "replace"))
            ok = self.perm is not None and self.perm.allows("write", name)
            self._writable[key] = ok
        if not ok:
            raise refused(
                "exchange", _ex(key[1:].decode("utf-8", "replace")), self.vhost.name, self.user
            )
        if self.topics:
            exchange, routing_key = exrk_names(exrk)
            self._check_topic("write", exchange, routing_key)

    def _check_topic(self, kind: str, exchange: str, routing_key: str) -> None:
        tp = self.topics.get(exchange)
        if tp is None:
            return
        ex = self.vhost.exchanges.get(exchange)
        if ex is None or ex.type != "topic":
            return
        if not tp.allows(kind, routing_key):
            raise SoftError(
                ACCESS_REFUSED,
                f"access to topic '{routing_key}' in exchange '{exchange}' in vhost "
                f"'{self.vhost.name}' refused for user '{self.user}'",
            )
