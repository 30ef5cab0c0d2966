"""A queue that lives on another worker, as this worker's metadata replica sees it.

Owns: ``RemoteQueue`` — the declared attributes and bindings of a queue owned by shard
``shard``, plus this worker's consumers of it. Publishing to it, consuming from it and
settling its messages go through ``shardmq.broker.shards`` to the owner; settles through
the ``router`` (a ``Settler``) it is made with.

Invariants: a ``RemoteQueue`` never holds messages; ``local_consumers`` are exactly the
consumers on this worker's connections registered with the owner for this queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shardmq.broker.exchange import Exchange
    from shardmq.broker.policies import Policy
    from shardmq.broker.queue import Consumer
    from shardmq.message import Message

# settle actions, as in shardmq.broker.xshard.records
ACK, DROP, REQUEUE, REQUEUE_BACK = 0, 1, 2, 3
# Credit window of remote consumers whose credit comes back as their socket drains.
REMOTE_WINDOW = 4096
# ...in returns of at least this much: a return is a record to the owner and, when its
# worker sleeps, a wake-up; at a moderate rate a return per burst would wake the owner
# once more per burst. Smaller than the window, so the owner never waits for it (when
# its credit runs out, the whole window is owed, which is more than this).
REMOTE_CREDIT_CHUNK = REMOTE_WINDOW // 8
# The same window in bytes: the owner stops delivering to such a consumer once this much
# is in flight uncredited (a socket that does not drain holds no more than this), and
# the consumer's worker returns its credit once it owes REMOTE_BYTES_CHUNK, whatever the
# count, so a stopped owner always gets credit back when the socket drains.
REMOTE_INFLIGHT_BYTES = 8 * 1024 * 1024
REMOTE_BYTES_CHUNK = REMOTE_INFLIGHT_BYTES // 8


class Settler(Protocol):
    """Where settles of a remote queue's messages go (the user side of
    ``shardmq.broker.shards``): to the owner ``shard``, batched per loop turn."""

    def settle(self, shard: int, ref: int, action: int) -> None: ...


class _Unrouted:
    """The settler of a queue replica made without a router (definitions only)."""

    def settle(self, shard: int, ref: int, action: int) -> None:
        raise RuntimeError(f"no router to settle ref {ref} on worker {shard}")


_UNROUTED = _Unrouted()


class RemoteQueue:
    # The owner holds the consumers; here the queue has none to dispatch to.
    consumers: tuple[()] = ()

    __slots__ = (
        "name",
        "vhost",
        "shard",
        "durable",
        "exclusive",
        "owner",
        "auto_delete",
        "arguments",
        "deleted",
        "sources",
        "local_consumers",
        "router",
        "policy",
        "st_deliver_manual",
    )

    def __init__(
        self,
        name: str,
        vhost: str,
        shard: int,
        *,
        durable: bool = False,
        exclusive: bool = False,
        owner: int = 0,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        router: Settler = _UNROUTED,
    ) -> None:
        self.name = name
        self.vhost = vhost
        self.shard = shard
        self.durable = durable
        self.exclusive = exclusive
        self.owner = owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.deleted = False
        self.policy: Policy | None = None  # the policy that applies (``VHost.assign_policy``)
        self.sources: set[Exchange] = set()
        self.local_consumers: dict[tuple[int, int, str], Consumer] = {}
        self.router = router
        # bumped by a Channel's delivery as on a Queue; the owner counts the queue's
        self.st_deliver_manual = 0

    # What a Channel calls on the queue of an unacked delivery (see channel.py):
    # settles travel to the owner, batched per loop turn. ``seq`` is the owner's ref
    # (0 for no-ack deliveries, which the owner settled already).
    def settle(self, msg: Message) -> None:
        if msg.seq:
            self.router.settle(self.shard, msg.seq, ACK)

    # no-ack deliveries and gets: the owner counted and settled them
    settle_auto = settle
    settle_get_auto = settle

    def reject(self, msg: Message) -> None:
        """Rejected without requeue: the owner dead-letters it if its queue says so."""
        if msg.seq:
            self.router.settle(self.shard, msg.seq, DROP)

    def requeue(self, msgs: list[Message], back: bool = False) -> None:
        action = REQUEUE_BACK if back else REQUEUE
        for m in msgs:
            if m.seq:
                self.router.settle(self.shard, m.seq, action)

    def dispatch(self) -> None:
        """Delivery decisions are the owner's."""

    def __repr__(self) -> str:
        return f"RemoteQueue({self.vhost!r}, {self.name!r}, shard={self.shard})"
