"""Global prefetch (``basic.qos`` with ``global=true``) across workers.

Owns: ``GlobalQos`` — for one client connection, the credit its channels' global
prefetch limits grant to consumers of queues that live on other workers, and the
deliveries from those workers held back ("parked") because local deliveries took the
room meanwhile.

Invariants:
- A channel's global limit covers its unacked deliveries, the credit granted to its
  remote consumers (``granted``) and its parked deliveries: together they never exceed
  the limit (``rebalance`` grants one delivery at a time round the consumers).
- Credit an empty remote queue cannot use goes back (``credit_idle(c, n)``) and the
  consumer is ``idle`` until its owner says a message waits (``credit_idle(c, 0)``).
- Parked deliveries keep arrival order; their credit is returned only once they are
  delivered, and those whose consumer or channel is gone go back to their queue.
- ``after_settle()`` is the one hook the connection calls whenever room may have grown
  (ack, reject, cancel, qos change, channel closed, socket writable); it costs two
  truth tests when no channel of the connection uses a global limit remotely.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from shardmq.broker.remote import REMOTE_WINDOW, REQUEUE, RemoteQueue

if TYPE_CHECKING:
    from shardmq.broker.channel import Channel
    from shardmq.broker.connection import BrokerConnection
    from shardmq.broker.queue import Consumer
    from shardmq.message import Message


class GlobalQos:
    __slots__ = ("conn", "granted", "idle", "parked")

    def __init__(self, conn: BrokerConnection) -> None:
        self.conn = conn
        # remote consumers under a global prefetch limit -> credit granted, not yet used
        self.granted: dict[Consumer, int] = {}
        self.idle: set[Consumer] = set()  # their queue was empty: no credit for now
        # deliveries from other workers held back by a channel's global prefetch limit
        self.parked: deque[tuple[Consumer, Message, bool]] = deque()

    def after_settle(self) -> None:
        """Room may have grown on a channel: deliver what it admits, grant the rest."""
        if self.parked or self.granted:
            self.unpark()

    def track(self, c: Consumer) -> None:
        """``c`` consumes from another worker's queue under its channel's global limit."""
        self.granted[c] = 0

    def park(self, consumer: Consumer, msg: Message, redelivered: bool) -> None:
        self.parked.append((consumer, msg, redelivered))

    def unpark(self) -> None:
        """Deliver held remote deliveries the channels now admit (those whose consumer
        or channel is gone go back to their queue), then grant remote consumers credit
        for the rest."""
        parked = self.parked
        conn = self.conn
        router = conn.broker.shards
        while parked:
            consumer, msg, redelivered = parked[0]
            ch = consumer.channel
            if ch.closing or ch.consumers.get(consumer.tag) is not consumer or conn.closing:
                parked.popleft()
                q = consumer.queue
                if router is not None and isinstance(q, RemoteQueue):  # parked: always remote
                    router.settle(q.shard, msg.seq, REQUEUE)
                continue
            limit = ch.global_prefetch
            if not ch.active or (limit and ch.consumer_unacked >= limit):
                return
            parked.popleft()
            ch.deliver(consumer, consumer.queue, msg, redelivered)
        if self.granted:
            self.rebalance()

    def remote_held(self, ch: Channel) -> int:
        """Deliveries the channel's global prefetch limit already owes to consumers of
        queues on other workers: credit granted to them and deliveries parked here. A
        local queue counts them too, or both sides fill the same room."""
        held = sum([n for c, n in self.granted.items() if c.channel is ch])
        if self.parked:
            held += sum([1 for p in self.parked if p[0].channel is ch])
        return held

    def credit_idle(self, c: Consumer, returned: int) -> None:
        """The owner of ``c``'s queue gave ``returned`` credits back (its queue is
        empty), or (0) says a message waits for ``c`` again."""
        if returned:
            self.granted[c] = max(0, self.granted[c] - returned)
            self.idle.add(c)
        else:
            self.idle.discard(c)
        self.rebalance()

    def rebalance(self) -> None:
        """Grant credit to remote consumers under a global limit, one delivery at a time
        round the channel's consumers, so that unacked + credit never exceeds the limit.
        (A consumer of an empty queue keeps the credit it holds: the others share the
        rest of the window.)"""
        granted = self.granted
        conn = self.conn
        by_channel: dict[Channel, list[Consumer]] = {}
        for c in list(granted):
            ch = c.channel
            if ch.closing or ch.consumers.get(c.tag) is not c or conn.closing:
                del granted[c]
                self.idle.discard(c)
            elif c in self.idle:
                continue
            else:
                by_channel.setdefault(ch, []).append(c)
        router = conn.broker.shards
        if router is None:
            return
        for ch, consumers in by_channel.items():
            limit = ch.global_prefetch
            grants: dict[Consumer, int] = {}
            if not limit:  # the limit was lifted: top everyone up to a window
                for c in consumers:
                    if granted[c] < REMOTE_WINDOW // 2:
                        grants[c] = REMOTE_WINDOW - granted[c]
            else:
                room = limit - ch.consumer_unacked - sum(granted[c] for c in consumers)
                room -= sum(1 for p in self.parked if p[0].channel is ch)
                while room > 0:
                    given = False
                    for c in consumers:
                        if room <= 0:
                            break
                        if c.prefetch and c.unacked + granted[c] + grants.get(c, 0) >= c.prefetch:
                            continue
                        grants[c] = grants.get(c, 0) + 1
                        room -= 1
                        given = True
                    if not given:
                        break
            for c, n in grants.items():
                granted[c] += n
                router.grant(c, n)
