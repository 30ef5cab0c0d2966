"""An exchange: its declared attributes plus its routing table.

Owns: ``Exchange``. The routing table itself (direct / fanout / topic trie / headers)
lives in ``shardmq.broker.routing``; destinations (``Destination``) are ``Queue``,
``RemoteQueue`` or ``Exchange`` objects.

Invariants:
- ``sources`` on a destination mirrors the bindings: an exchange is in ``dest.sources``
  exactly while it has at least one binding to ``dest``.
- An auto-delete exchange goes away when its last binding as a source is removed, and
  only after it had one.
- The alternate exchange is read only through ``effective_alternate`` (a policy
  overlays the argument there).
- A destination's identity for consistent hashing (``dest_ident``) is its kind and
  name, the same in every process.
- ``st_in``/``st_out`` only grow; they are not the whole count while the vhost's route
  cache holds hits not folded in yet (``VHost.exchange_counts`` reads both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

from shardmq.broker.routing import Router, make_router

if TYPE_CHECKING:
    from shardmq.broker.policies import Policy
    from shardmq.broker.queue import Queue
    from shardmq.broker.remote import RemoteQueue

# What an exchange routes to: a queue here, a queue on another worker, or an exchange.
Destination = Union["Queue", "RemoteQueue", "Exchange"]


class Exchange:
    __slots__ = (
        "name",
        "type",
        "durable",
        "auto_delete",
        "internal",
        "arguments",
        "router",
        "had_bindings",
        "sources",
        "deleted",
        "policy",
        "st_in",
        "st_out",
    )

    def __init__(
        self,
        name: str,
        type: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.type = type
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}  # a decoded field table
        self.router: Router[Destination] = make_router(type, self.arguments, dest_ident)
        self.had_bindings = False
        self.sources: set[Exchange] = set()
        self.policy: Policy | None = None  # the policy that applies (``VHost.assign_policy``)
        self.deleted = False
        # messages clients published to it, and copies it routed to queues (RabbitMQ's
        # publish_in / publish_out; ``VHost.route`` counts them: see ``RouteEntry``)
        self.st_in = 0
        self.st_out = 0

    def __repr__(self) -> str:
        return f"Exchange({self.name!r}, {self.type!r})"


def effective_alternate(ex: Exchange) -> str | None:
    """The name of ``ex``'s alternate exchange, or None: its ``alternate-exchange``
    argument, else the ``alternate-exchange`` key of the policy that applies to it (the
    argument wins, as in RabbitMQ)."""
    ae = ex.arguments.get("alternate-exchange")
    if isinstance(ae, bytes):
        ae = ae.decode("utf-8", "surrogatepass")
    if isinstance(ae, str):
        return ae
    policy = ex.policy
    pae = policy.definition.get("alternate-exchange") if policy is not None else None
    return pae if isinstance(pae, str) else None


def dest_ident(dest: Destination) -> bytes:
    """A destination's identity, the same on every worker (queue or exchange, name)."""
    kind = b"e\x00" if isinstance(dest, Exchange) else b"q\x00"
    return kind + dest.name.encode("utf-8", "surrogatepass")
