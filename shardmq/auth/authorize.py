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
- A connection whose permission is ``.*`` for all three (the common case) pays nothing
  per publish; otherwise one dict lookup per publish after the first to an exchange.
- The permission is read when the connection opens; a change applies to connections
  opened afterwards (as RabbitMQ caches it per channel).
"""

from __future__ import annotations

from shardmq.amqp.errors import ACCESS_REFUSED, SoftError
from shardmq.auth.access import Permission
from shardmq.broker import metadata as md

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
    """One open connection's permission in its vhost."""

    __slots__ = ("perm", "user", "vhost", "unrestricted", "_writable")

    def __init__(self, perm: Permission, user: str, vhost: str) -> None:
        self.perm = perm
        self.user = user
        self.vhost = vhost
        self.unrestricted = perm.configure == perm.write == perm.read == ".*"
        self._writable: dict[bytes, bool] = {}

    def check(self, kind: str, resource: str, name: str) -> None:
        if not self.unrestricted and not self.perm.allows(kind, name):
            raise refused(resource, name, self.vhost, self.user)

    def check_op(self, op: md.Op) -> None:
        if self.unrestricted:
            return
        for kind, resource, name in needs(op):
            self.check(kind, resource, name)

    def check_publish(self, exrk: bytes) -> None:
        """``write`` on the exchange of a publish (``exrk`` as the message holds it)."""
        el = exrk[0]
        key = exrk[: 1 + el]
        ok = self._writable.get(key)
        if ok is None:
            name = _ex(key[1:].decode("utf-8", "replace"))
            ok = self._writable[key] = self.perm.allows("write", name)
        if not ok:
            name = _ex(key[1:].decode("utf-8", "replace"))
            raise refused("exchange", name, self.vhost, self.user)
