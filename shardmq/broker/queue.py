"""A queue: ready messages, consumers, round-robin dispatch.

Owns: ``Queue``, ``DurableQueue`` (a durable queue whose persistent messages live in a
``DiskQueueStore``) and ``Consumer``; ``QueueConsumer`` is what a queue's consumer list
holds (a ``Consumer``, or a consumer on another worker). Delivery itself (delivery
tags, frames) belongs to the consumer's channel; the queue only picks who gets the next
message.

Invariants:
- A message is either in ``store`` (ready) or held by exactly one channel as unacked
  (or was delivered no-ack and is gone). ``redelivered`` flags messages that went back
  to ``store`` after a delivery.
- Dispatch happens whenever readiness can have changed: an ack that returned credit, a
  new consumer, a qos change, a writable socket, channel.flow on (and a consumer's
  own events: credit from another worker, a ring that drained). So a non-empty store
  means no consumer had room: a plain publish into it only appends (no dispatch
  attempt per message of a backlog), and a publish into an empty one goes to the next
  consumer with room or, without one, to the store.
- Round robin: consumers are tried in turn starting after the last one served, unless
  the queue has a single active consumer or consumers with priorities: then ``order``
  (``consumer_order.ConsumerOrder``) picks, kept current on every consumer change.
- Publishers throttled by this queue are released when the backlog drains, the queue
  is purged or deleted.
- ``publish(msg, conf)``: ``conf`` is the publisher's confirm target (or None). A plain
  ``Queue`` ignores it (its confirm goes out at once); a ``DurableQueue`` takes a token
  from it for every persistent message, and the confirm waits for that token.
- A ``DurableQueue`` shares its ``redelivered`` set with its store (recovered
  delivered-unacked messages come back redelivered), and its store is destroyed, not
  purged, when the queue is deleted.
- ``settings`` (``qargs.QueueSettings``) is the one place a queue reads its TTL,
  expiry, limits and dead-lettering from; ``apply_settings`` swaps it (policies).
  While ``features`` is ``PLAIN`` (0: no such setting, and no message with its own
  ``expiration`` seen) publish and dispatch take the plain path; ``TTL`` (one
  queue-level TTL is all) takes ``ttlqueue``'s lean one; otherwise (``FULL``)
  ``qfeatures`` does the per-message work. The mode is chosen when the settings change
  (``ttlqueue.mode``), so the plain path tests one int per publish and per dispatch. A
  durable queue that recovered messages starts ``FULL`` (any of them may carry its own
  ``expiration``, and paged ones are not read at recovery).
- The ready container is chosen once, here or by ``WorkerStorage.open_queue``: a
  ``MemoryStore`` / ``DiskQueueStore``, or for ``x-max-priority`` one per priority level
  (``priority.py``); the code below does not know which.
- ``requeue`` on a quorum queue counts the returns first (``delivery_limit.py``: the
  ``x-delivery-count`` copy takes the message's place, over the limit it is
  dead-lettered); ``get`` adds the count-0 header there. Messages the client returned
  (``back``: reject/nack with requeue, basic.recover) go to a quorum queue's back, in
  the order returned; a closed channel's go back to the front (RabbitMQ 3.10.8).
- ``settle`` is an ack; ``reject`` a reject/nack without requeue (dead-lettered
  ``rejected`` when the queue has a dead-letter exchange).
- ``expired`` / ``dead_lettered`` / ``dropped`` count messages that left by TTL, were
  dead-lettered (any reason) and were dropped or refused by a length limit; the
  ``st_*`` slots count messages published, delivered, fetched, acked and redelivered
  (``shardmq.broker.stats``): ``settle`` is a consumer's ack, ``settle_auto`` /
  ``settle_get_auto`` the settlement of a no-ack delivery / basic.get; a channel
  bumps ``st_deliver_manual`` when it takes a delivery to be acked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from shardmq.broker import delivery_limit, qfeatures, ttlqueue
from shardmq.broker.consumer_order import ConsumerOrder, single_active
from shardmq.broker.expiry import Timer, now_ms
from shardmq.broker.priority import MemoryPriorityStore, max_priority
from shardmq.broker.qargs import NO_SETTINGS, QueueSettings, effective, parse_queue_args
from shardmq.broker.qfeatures import FULL, PLAIN, TTL
from shardmq.broker.storage import ConfirmTarget, MemoryStore, MessageStore
from shardmq.message import Message
from shardmq.store.queue_store import RawCodec

if TYPE_CHECKING:
    from shardmq.broker.channel import Channel
    from shardmq.broker.exchange import Exchange
    from shardmq.broker.policies import Policy
    from shardmq.broker.priority import DiskPriorityStore
    from shardmq.broker.remote import RemoteQueue
    from shardmq.store.queue_store import DiskQueueStore

_persistent = RawCodec.persistent


# A queue with consumers whose backlog passes QUEUE_HIGH_WATER messages (or QUEUE_HIGH_BYTES) stops reading from the
# connections publishing to it until the backlog has halved
# (end-to-end flow control: publishers go at the consumers' pace, memory stays bounded).
# The byte limit is estimated as backlog x size of the message just published, which
# costs nothing per message and is exact for uniform workloads.
QUEUE_HIGH_WATER = 20000
QUEUE_HIGH_BYTES = 64 * 1024 * 1024


class QueueServices(Protocol):
    """What a queue's features need from its broker (``deadletter.BrokerServices``)."""

    def dead_letter(self, queue: Queue, msg: Message, reason: str, settle: bool) -> None:
        """Publish a dead-lettered copy of ``msg`` to the queue's DLX; when ``settle``,
        settle ``msg`` on the queue's store once the copy is stored."""

    def delete_expired(self, queue: Queue) -> None:
        """``x-expires`` passed unused: delete the queue everywhere."""


class Throttleable(Protocol):
    def throttle(self, queue: Queue, on: bool) -> None: ...


_C = TypeVar("_C", contravariant=True)


class DeliveryTarget(Protocol[_C]):
    """Where a queue hands a message for consumer ``_C``: its channel."""

    def deliver(self, consumer: _C, queue: Queue, msg: Message, redelivered: bool) -> None: ...


class QueueConsumer(Protocol):
    """What a queue's consumer list holds: a ``Consumer`` on a local channel, or a
    consumer on another worker (``shardmq.broker.xshard.owner.ProxyConsumer``). The
    queue asks ``ready()`` and calls ``c.channel.deliver(c, queue, msg, redelivered)``."""

    @property
    def exclusive(self) -> bool: ...

    @property
    def channel(self) -> DeliveryTarget[Self]: ...

    @property
    def priority(self) -> int: ...

    def ready(self) -> bool: ...


class Consumer:
    __slots__ = (
        "tag",
        "ctag",
        "channel",
        "queue",
        "no_ack",
        "exclusive",
        "prefetch",
        "unacked",
        "arguments",
        "priority",
    )

    def __init__(
        self,
        tag: str,
        ctag: bytes,
        channel: Channel,
        queue: Queue | RemoteQueue,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: dict[str, Any],
        priority: int = 0,
    ) -> None:
        self.tag = tag
        self.ctag = ctag
        self.channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments
        self.priority = priority  # x-priority (consumer_order.py)

    def ready(self) -> bool:
        ch = self.channel
        if not ch.active:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        limit = ch.global_prefetch
        if not limit:
            return True
        used = ch.consumer_unacked
        qos = ch.conn.qos
        if qos.granted:  # the channel also has consumers of queues on other workers
            used += qos.remote_held(ch)
        return used < limit


class Queue:
    __slots__ = (
        "name",
        "vhost",
        "durable",
        "exclusive",
        "owner",
        "auto_delete",
        "arguments",
        "store",
        "acks",
        "consumers",
        "rr",
        "had_consumers",
        "deleted",
        "policy",
        "redelivered",
        "sources",
        "throttled",
        "release_at",
        "_dispatching",
        "order",
        "settings",
        "features",
        "services",
        "ttl_timer",
        "expires_timer",
        "last_used",
        "ready_bytes",
        "expired",
        "dead_lettered",
        "dropped",
        "st_publish",
        "st_deliver_manual",
        "st_deliver_auto",
        "st_get",
        "st_get_auto",
        "st_ack",
        "st_redeliver",
    )

    def __init__(
        self,
        name: str,
        vhost: str,
        *,
        durable: bool = False,
        exclusive: bool = False,
        owner: int = 0,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        store: MessageStore | None = None,
    ) -> None:
        self.name = name
        self.vhost = vhost
        self.durable = durable
        self.exclusive = exclusive
        self.owner = owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        if store is None:  # the container: a deque, or one per level (priority.py)
            top = max_priority(self.arguments)
            store = MemoryPriorityStore(top) if top else MemoryStore()
        self.store: MessageStore = store
        # a store that keeps messages until acked (on disk); the memory ones forget
        # nothing, so a no-ack delivery skips the call (settle_auto)
        self.acks = not isinstance(store, MemoryStore | MemoryPriorityStore)
        self.consumers: list[QueueConsumer] = []
        self.rr = 0
        self.had_consumers = False
        self.deleted = False
        self.policy: Policy | None = None  # the policy that applies (``VHost.assign_policy``)
        self.redelivered: set[Message] = set()
        self.sources: set[Exchange] = set()
        self.throttled: set[Throttleable] = set()
        self.release_at = 0
        self._dispatching = False
        # single active consumer / consumer priorities; None: plain round robin
        self.order: ConsumerOrder | None = None
        self.services: QueueServices | None = None
        self.ttl_timer: Timer | None = None
        self.expires_timer: Timer | None = None
        self.last_used = now_ms()
        self.ready_bytes = 0
        self.expired = 0
        self.dead_lettered = 0
        self.dropped = 0
        # message counters (``shardmq.broker.stats.QUEUE_FIELDS``), read by reports
        self.st_publish = 0
        self.st_deliver_manual = 0
        self.st_deliver_auto = 0
        self.st_get = 0
        self.st_get_auto = 0
        self.st_ack = 0
        self.st_redeliver = 0
        self.settings = NO_SETTINGS
        self.features = PLAIN
        self.apply_settings(parse_queue_args(self.arguments, name, vhost))

    def apply_settings(self, settings: QueueSettings) -> None:
        """The queue's effective settings (its arguments, later overlaid by a policy)."""
        self.settings = settings
        self.features = ttlqueue.mode(self.features, settings)
        if isinstance(self.store, MemoryStore | MemoryPriorityStore):
            self.ready_bytes = sum(m.body_size for m in self.store)
        qfeatures.arm_expires(self)
        qfeatures.arm_head(self)
        if self.services is not None:  # live where it is owned: new limits apply now
            qfeatures.enforce_limits(self)

    def policy_changed(self) -> None:
        """A policy now applies (or none does): the effective settings are the
        arguments overlaid by its definition (``qargs.effective``). Called by the
        policies' ``VHost.assign_policy`` through its ``policy_changed`` hook; reads
        ``self.policy`` where the queue has one."""
        policy = getattr(self, "policy", None)
        definition = getattr(policy, "definition", None)
        own = parse_queue_args(self.arguments, self.name, self.vhost)
        self.apply_settings(effective(own, dict(definition) if definition else None))

    def start(self, services: QueueServices | None) -> None:
        """The broker made this queue where it lives: timers may run."""
        self.services = services
        if self.store:  # recovered: a message may have its own expiration
            self.features = FULL
        qfeatures.arm_expires(self)
        qfeatures.arm_head(self)

    def touch(self) -> None:
        """Used (basic.get, re-declare, a consumer left): x-expires counts from now."""
        self.last_used = now_ms()

    # ------------------------------------------------------------ messages
    def _push(self, msg: Message, conf: ConfirmTarget | None) -> None:
        self.store.push(msg)

    def _push_taken(self, msg: Message, conf: ConfirmTarget | None) -> None:
        """``msg`` goes straight to a consumer (the store is empty)."""

    def publish(self, msg: Message, conf: ConfirmTarget | None = None) -> None:
        self.st_publish += 1
        if self.features or msg.raw[19] & 0x01:  # settings, or the expiration property
            if self.features == TTL and not msg.raw[19] & 0x01:
                ttlqueue.publish(self, msg, conf)
            else:
                qfeatures.publish(self, msg, conf)
            return
        store = self.store
        if store:  # a backlog: no consumer had room when readiness last changed
            store.push(msg)
            return
        if self.consumers:
            c = self._next_consumer()
            if c is not None:
                c.channel.deliver(c, self, msg, False)
                return
        store.push(msg)  # (no consumer with room: nothing to dispatch)

    def dispatch(self) -> None:
        """Deliver ready messages while some consumer has credit."""
        if self.features:
            if self.features == TTL:
                ttlqueue.dispatch(self)
            else:
                qfeatures.dispatch(self)
            return
        if self._dispatching or self.deleted:
            return
        self._dispatching = True
        try:
            store = self.store
            redelivered = self.redelivered
            while store:
                c = self._next_consumer()
                if c is None:
                    break
                msg = store.take()
                if redelivered and msg in redelivered:
                    redelivered.discard(msg)
                    self.st_redeliver += 1
                    c.channel.deliver(c, self, msg, True)
                else:
                    c.channel.deliver(c, self, msg, False)
        finally:
            self._dispatching = False
        if self.throttled and len(self.store) <= self.release_at:
            self.release_publishers()

    def backed_up(self, msg_size: int) -> bool:
        n = len(self.store)
        return n > QUEUE_HIGH_WATER or n * msg_size > QUEUE_HIGH_BYTES

    def throttle(self, conn: Throttleable) -> None:
        """The queue is backed up while it has consumers: stop reading ``conn`` until
        the backlog halves."""
        if conn not in self.throttled:
            self.release_at = len(self.store) // 2
            self.throttled.add(conn)
            conn.throttle(self, True)

    def release_publishers(self) -> None:
        conns, self.throttled = self.throttled, set()
        for conn in conns:
            conn.throttle(self, False)

    def _next_consumer(self) -> QueueConsumer | None:
        cs = self.consumers
        n = len(cs)
        if n == 1:  # (whatever the order: the one consumer)
            c = cs[0]
            return c if c.ready() else None
        if self.order is not None:
            return self.order.next(cs)  # type: ignore[no-any-return]
        rr = self.rr
        for i in range(n):
            j = (rr + i) % n
            c = cs[j]
            if c.ready():
                self.rr = (j + 1) % n
                return c
        return None

    def get(self) -> tuple[Message, bool] | None:
        got = self._get()
        if got is not None:
            self.st_get += 1
            if got[1]:
                self.st_redeliver += 1
        return got

    def _get(self) -> tuple[Message, bool] | None:
        if self.features:
            got = qfeatures.get(self)
            if got is not None and self.settings.quorum:
                return delivery_limit.got(self, got[0]), got[1]
            return got
        if not self.store:
            return None
        msg = self.store.take()
        redelivered = self.redelivered
        if redelivered and msg in redelivered:
            redelivered.discard(msg)
            return msg, True
        return msg, False

    def settle(self, msg: Message) -> None:
        """The message is done with (acked by its consumer)."""
        self.st_ack += 1
        self.store.ack(msg)

    def settle_auto(self, msg: Message) -> None:
        """Delivered to a no-ack consumer: done with at once."""
        self.st_deliver_auto += 1
        if self.acks:
            self.store.ack(msg)

    def settle_get_auto(self, msg: Message) -> None:
        """Fetched by a no-ack basic.get: done with at once."""
        self.st_get_auto += 1
        self.store.ack(msg)

    def reject(self, msg: Message) -> None:
        """Rejected or nacked without requeue: dead-lettered, or done with."""
        if self.settings.dead_letter_exchange is not None:
            qfeatures.dead_letter(self, msg, qfeatures.REJECTED)
        else:
            self.store.ack(msg)

    def requeue(self, msgs: Iterable[Message], back: bool = False) -> None:
        """``msgs`` (unacked) come back, redelivered: to their places at the front, or,
        on a quorum queue when the client returned them (``back``: reject/nack with
        requeue, basic.recover), to the back in the order given, as RabbitMQ 3.10."""
        if self.deleted:
            return
        msgs = list(msgs)
        quorum = self.settings.quorum
        if quorum:  # counted; over x-delivery-limit: dead-lettered
            msgs = delivery_limit.returned(self, msgs)
        self.redelivered.update(msgs)
        if quorum and back:
            delivery_limit.to_back(self.store, msgs)
        else:
            self.store.requeue(msgs)
        if self.features:
            qfeatures.requeued(self, msgs)
        self.dispatch()

    def purge(self) -> int:
        if self.deleted:
            qfeatures.stop_timers(self)
        self.redelivered.clear()
        self.ready_bytes = 0
        n = self.store.purge()
        if self.throttled:
            self.release_publishers()
        return n

    @property
    def message_count(self) -> int:
        return len(self.store)

    def stats(self) -> dict[str, int]:
        """Counts for ``shardmq ctl`` (cheap: no per-message walk). ``unacked`` counts
        deliveries to consumers not yet acked (basic.get ones are not tracked here)."""
        n = len(self.store)
        return {
            "messages": n,
            "ready_in_memory": n,
            "ready_on_disk_only": 0,
            "unacked": sum(_unacked(c) for c in self.consumers),
            "consumers": len(self.consumers),
            "disk_bytes": 0,
            **self.counters(),
        }

    def counters(self) -> dict[str, int]:
        return {
            "expired": self.expired,
            "dead_lettered": self.dead_lettered,
            "dropped": self.dropped,
        }

    # ------------------------------------------------------------ consumers
    def add_consumer(self, c: QueueConsumer, dispatch: bool = True) -> None:
        self.consumers.append(c)
        self.had_consumers = True
        self.last_used = now_ms()
        if self.order is not None or c.priority or single_active(self.arguments):
            self._reorder()
        if dispatch:
            self.dispatch()

    def _reorder(self) -> None:
        """The consumer list changed on a queue with a single active consumer or
        consumer priorities (``consumer_order.py``)."""
        if self.order is None:
            self.order = ConsumerOrder(single_active(self.arguments))
        self.order.rebuild(self.consumers)

    def remove_consumer(self, c: QueueConsumer) -> bool:
        """Returns True when the queue should now be auto-deleted."""
        try:
            self.consumers.remove(c)
        except ValueError:
            return False
        if self.rr >= len(self.consumers):
            self.rr = 0
        if self.order is not None:
            self.order.rebuild(self.consumers)
        self.last_used = now_ms()
        return self.auto_delete and not self.consumers and self.had_consumers

    def exclusive_consumer(self) -> bool:
        return any(c.exclusive for c in self.consumers)

    def __repr__(self) -> str:
        return f"Queue({self.vhost!r}, {self.name!r})"


def _unacked(c: Any) -> int:
    """A local consumer's unacked count; a proxy of another worker's consumer holds
    its unacked deliveries as refs."""
    n = getattr(c, "unacked", None)
    return n if n is not None else len(getattr(c, "refs", ()))


class DurableQueue(Queue):
    """A durable, non-exclusive queue of this worker: persistent messages go to its
    ``DiskQueueStore`` (paged out beyond the store's memory budget), transient ones stay
    in memory, in the same order."""

    __slots__ = ("disk",)

    def __init__(
        self, name: str, vhost: str, *, store: DiskQueueStore | DiskPriorityStore, **kw: Any
    ) -> None:
        super().__init__(name, vhost, store=store, **kw)
        self.disk = store
        self.redelivered = store.redelivered

    def _push(self, msg: Message, conf: ConfirmTarget | None) -> None:
        token = conf.durable_token() if conf is not None and _persistent(msg) else None
        self.disk.push(msg, token)

    def _push_taken(self, msg: Message, conf: ConfirmTarget | None) -> None:
        token = conf.durable_token() if conf is not None and _persistent(msg) else None
        self.disk.push_taken(msg, token)  # before deliver: a no-ack delivery acks it

    def publish(self, msg: Message, conf: ConfirmTarget | None = None) -> None:
        self.st_publish += 1
        if self.features or msg.raw[19] & 0x01:
            if self.features == TTL and not msg.raw[19] & 0x01:
                ttlqueue.publish(self, msg, conf)
            else:
                qfeatures.publish(self, msg, conf)
            return
        token = conf.durable_token() if conf is not None and _persistent(msg) else None
        disk = self.disk
        if self.consumers and not disk:
            c = self._next_consumer()
            if c is not None:
                disk.push_taken(msg, token)  # before deliver: a no-ack delivery acks it
                c.channel.deliver(c, self, msg, False)
                return
        disk.push(msg, token)  # (a backlog, or no consumer with room: see Queue.publish)

    def purge(self) -> int:
        if self.deleted:  # being deleted: the store is destroyed right after
            qfeatures.stop_timers(self)
            n = len(self.disk)
            if self.throttled:
                self.release_publishers()
            return n
        return super().purge()

    def stats(self) -> dict[str, int]:
        st = self.disk.stats()
        st["consumers"] = len(self.consumers)
        st.update(self.counters())
        return st
