"""A client connection as the broker sees it, whatever protocol it speaks.

Owns: ``BrokerConnection`` — authentication result, vhost, the connection's channels
(``Channel``), its exclusive queues, flow control (queues and rings that throttle it,
the broker's alarms, a full socket) and routing a publish; ``GlobalQos`` (in
``qos.py``) for its channels' global prefetch across workers. ``ClientLink`` is what a
protocol adapter gives it: the way to reach the client (reading on/off, blocked,
server-side consumer cancel, close). The AMQP 0-9-1 adapter
(``shardmq.adapter.amqp091``) owns frames, methods and replies and calls the
operations here; an AMQP 1.0 adapter plugs in beside it and uses the same ones.

Invariants:
- Nothing here touches a socket or a frame: output goes through ``ClientLink`` and
  each channel's ``ChannelSink``. Errors are ``SoftError`` (the channel) and
  ``HardError`` (the connection), carrying RabbitMQ's reply codes; the adapter maps
  them onto its protocol.
- Exclusive queues die with the connection; consumers die with their channel.
- Reading is paused while any throttle cause or an alarm holds; resumed only when
  none does.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Protocol

from shardmq.amqp.errors import (
    INTERNAL_ERROR,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    HardError,
    SoftError,
)
from shardmq.auth.access import Access
from shardmq.auth.authorize import Authorizer
from shardmq.broker import metadata as md
from shardmq.broker.channel import Channel, ChannelSink
from shardmq.broker.qos import GlobalQos
from shardmq.broker.queue import Consumer, Queue
from shardmq.broker.remote import REMOTE_BYTES_CHUNK, REMOTE_CREDIT_CHUNK, RemoteQueue
from shardmq.broker.storage import ConfirmWaiter
from shardmq.broker.vhost import HELD, AnyQueue, VHost, delay_of
from shardmq.message import Message
from shardmq.oplog import event

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

log = logging.getLogger("shardmq.connection")


# The vhost of a connection that is not open yet (never routes: the engine allows no
# channel before connection.open).
def peer_host(peer: str) -> str:
    """The address part of ``peer`` ("host:port", as the listener names connections)."""
    return peer.rsplit(":", 1)[0].strip("[]")


def is_loopback(peer: str) -> bool:
    """``peer`` ("host:port") is a loopback address."""
    host = peer_host(peer)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return bool((mapped or addr).is_loopback)


NOT_OPEN = VHost("")
UNOPENED = Authorizer(Access(), "", NOT_OPEN)  # may do nothing

# What throttles a connection (``throttle(cause, on)``): a backed-up local queue, or a
# tuple naming a full ring ("shard", n) or a backed-up queue on another worker
# ("queue", shard, name); only compared and hashed here.
ThrottleCause = object


class ClientLink(Protocol):
    """How the domain reaches the client of a connection (the protocol adapter)."""

    def set_reading(self, active: bool) -> None:
        """Flow control: stop or resume reading from the client."""

    def blocked(self, on: bool, reason: str) -> None:
        """An alarm blocks (or no longer blocks) this publishing connection."""

    def consumer_cancelled(self, c: Consumer) -> None:
        """The broker ended ``c`` (its queue is gone): tell the client if it listens."""

    def close(self, code: int, text: str) -> None:
        """Close the connection from the server side (shutdown, admin action)."""

    def confirms_waiting(self) -> None:
        """Some channel has confirms to write: call ``flush_confirms`` before this
        turn's output is taken."""


class BrokerConnection:
    def __init__(self, broker: Broker, peer: str, client: ClientLink) -> None:
        self.broker = broker
        self.peer = peer
        self.client = client
        self.gid = broker.new_gid()
        self.stats = broker.stats  # the worker's message counters (stats.py)
        self.user = ""
        self.counted = False  # in ``broker.counts`` (limits): from open() to closed()
        self.authz = UNOPENED  # set by open(): what this user may do in its vhost
        self.vhost = NOT_OPEN  # set by open()
        self.channels: dict[int, Channel] = {}
        self.closing = False  # the connection is going: no more deliveries
        self.write_paused = False  # the socket's write buffer is above high water
        self.out_blocked = False  # this turn's output passed OUT_LIMIT
        self.throttled_by: set[ThrottleCause] = set()  # backed-up queues / full rings
        self.alarm_blocked = False  # blocked by a broker alarm (memory or disk)
        self.reading_paused = False
        self.published = False  # has published at least once (alarm target)
        self.exclusive_queues: list[str] = []
        # credit to return to other workers for deliveries our socket has taken
        self.credit_due: dict[Consumer, int] = {}
        self.credit_due_bytes = 0  # their bytes (at least): REMOTE_BYTES_CHUNK returns all
        self.qos = GlobalQos(self)
        self._confirm_channels: list[Channel] = []

    # ------------------------------------------------------------ life cycle
    def login(self, user: str, password: str) -> bool:
        """Check a user name and password (logs a refusal, never the password)."""
        ok = self.broker.check_password(user, password)
        if ok and user in self.broker.config.auth.loopback_users and not is_loopback(self.peer):
            event(
                log,
                logging.WARNING,
                "login_refused",
                f"connection {self.peer}: user '{user}' can only connect via localhost "
                "(loopback_users)",
                peer=self.peer,
                user=user,
            )
            return False
        if ok:
            self.user = user
        else:
            event(
                log,
                logging.WARNING,
                "login_refused",
                f"connection {self.peer}: authentication failed for user '{user}'",
                peer=self.peer,
                user=user,
            )
        return ok

    def login_external(self, user: str) -> bool:
        """EXTERNAL: ``user`` is named by a verified TLS client certificate; it must exist
        and needs no password (``loopback_users`` does not apply: nothing was guessed)."""
        if user in self.broker.metadata.access.users:
            self.user = user
            return True
        log.warning(
            "connection %s: EXTERNAL login refused: user '%s' (from the client "
            "certificate) does not exist",
            self.peer,
            user,
        )
        return False

    def open(self, vhost: str) -> None:
        self.broker.check_connection_limit()  # first, as RabbitMQ's node limit
        vh = self.broker.vhosts.get(vhost)
        if vh is None:
            raise HardError(NOT_ALLOWED, f"vhost {vhost} not found", 10, 40)
        perm = self.broker.metadata.access.permission(self.user, vhost)
        if perm is None:
            event(
                log,
                logging.WARNING,
                "login_refused",
                f"connection {self.peer}: access to vhost '{vhost}' refused for user "
                f"'{self.user}': no permissions",
                peer=self.peer,
                user=self.user,
                vhost=vhost,
            )
            raise HardError(
                NOT_ALLOWED, f"access to vhost '{vhost}' refused for user '{self.user}'", 10, 40
            )
        # vhost then user max-connections, counted on every worker (530 past them)
        self.broker.counts.connection_opened(vhost, self.user)
        self.counted = True
        self.authz = Authorizer(self.broker.metadata.access, self.user, vh)
        self.vhost = vh
        self.broker.connections.add(self)
        self.broker.conns_by_gid[self.gid] = self
        self.stats.connections_opened += 1

    def open_channel(self, number: int, sink: ChannelSink) -> Channel:
        self.broker.counts.channel_opened(self.user)  # the user's max-channels: 530
        ch = Channel(number, self, sink)
        self.stats.channels_opened += 1
        self.channels[number] = ch
        return ch

    def close_channel(self, ch: Channel) -> None:
        if self.channels.get(ch.number) is ch:
            del self.channels[ch.number]
            self.stats.channels_closed += 1
            self.broker.counts.channel_closed(self.user)
        if ch in self._confirm_channels:
            self._confirm_channels.remove(ch)
        ch.release()
        self.qos.after_settle()

    def closed(self) -> None:
        """The connection is gone (its channels were closed before)."""
        self.closing = True
        for ch in list(self.channels.values()):
            self.close_channel(ch)
        self.qos.after_settle()
        if self.counted:
            self.counted = False
            self.broker.counts.connection_closed(self.vhost.name, self.user)
        if self in self.broker.connections:
            self.stats.connections_closed += 1
        self.broker.connections.discard(self)
        self.broker.conns_by_gid.pop(self.gid, None)
        for cause in list(self.throttled_by):
            if isinstance(cause, Queue):
                cause.throttled.discard(self)
        router = self.broker.shards
        if router is not None:
            for waiting in router.throttled.values():
                waiting.discard(self)
        self.throttled_by.clear()
        names, self.exclusive_queues = self.exclusive_queues, []
        for name in names:
            self.broker.sequencer.fire(md.DeleteQueue(self.vhost.name, name, False, False, 0))

    # ------------------------------------------------------------ output and flow
    def confirms_pending(self, ch: Channel) -> None:
        if ch not in self._confirm_channels:
            self._confirm_channels.append(ch)
        self.client.confirms_waiting()

    def flush_confirms(self) -> None:
        """Once per loop turn, before the output is taken: each channel's confirms."""
        if self._confirm_channels:
            for ch in self._confirm_channels:
                ch.flush_confirms()
            self._confirm_channels.clear()

    def set_write_paused(self, paused: bool) -> None:
        """The socket's write buffer passed its high (True) or low (False) water mark."""
        self.write_paused = paused
        self._update_channels()
        if not paused:
            self.qos.after_settle()
            if self.credit_due:
                self._return_credit()

    def out_full(self) -> None:
        """Deliveries stop for this loop turn once the output buffer passes OUT_LIMIT."""
        if not self.out_blocked:
            self.out_blocked = True
            self._update_channels()

    def after_flush(self) -> None:
        """The I/O layer wrote our output: deliveries may resume."""
        if self.out_blocked:
            self.out_blocked = False
            self._update_channels()
        self.qos.after_settle()
        if self.credit_due and not self.write_paused:
            self._return_credit()

    def _return_credit(self) -> None:
        due, self.credit_due = self.credit_due, {}
        router = self.broker.shards
        if router is None:
            return
        # owners stop at REMOTE_INFLIGHT_BYTES: what they wait for is returned, however few
        force = self.credit_due_bytes >= REMOTE_BYTES_CHUNK
        if force:
            self.credit_due_bytes = 0
        for consumer, n in due.items():
            if consumer.tag in consumer.channel.consumers:
                if n < REMOTE_CREDIT_CHUNK and not force:
                    self.credit_due[consumer] = n  # later, with more
                else:
                    router.grant(consumer, n)

    def _update_channels(self) -> None:
        for ch in list(self.channels.values()):
            ch.update_active()

    def throttle(self, cause: ThrottleCause, on: bool) -> None:
        """Flow control: stop reading from this connection while a queue it publishes to
        is backed up, or the ring to another worker is full (``cause``); resume when
        every cause has cleared."""
        if on:
            self.throttled_by.add(cause)
        else:
            self.throttled_by.discard(cause)
        self._update_reading()

    def consumes(self) -> bool:
        return any(ch.consumers for ch in self.channels.values())

    def alarm(self, on: bool, reason: str) -> None:
        """A broker alarm (memory or disk, see ``Broker.alarm``): block this publishing
        connection (the client is told, if it understands it)."""
        if on == self.alarm_blocked:
            return
        self.alarm_blocked = on
        self.client.blocked(on, reason)
        self._update_reading()

    def _update_reading(self) -> None:
        paused = bool(self.throttled_by) or self.alarm_blocked
        if paused != self.reading_paused:
            self.reading_paused = paused
            self.client.set_reading(not paused)

    # ------------------------------------------------------------ publishing
    def publish(
        self, ch: Channel, msg: Message, exlen: int, flags: int, conf: ConfirmWaiter | None = None
    ) -> None:
        """Route one complete publish on ``ch`` (``flags``: 1 = mandatory), or keep it
        for the commit in tx mode. ``conf``: who waits for durable queues to store it
        (the channel itself in confirm mode; a tx commit passes its own waiter)."""
        if not self.authz.fast:  # (cleared by any change of permissions: authorize.py)
            self.authz.check_publish(msg.exrk)
        if not self.published:
            self.published = True
            if self.broker.alarm:
                self.alarm(True, self.broker.alarm_reason)
        if ch.tx:
            self.vhost.lookup(msg, exlen)  # 404 / 403 now, like RabbitMQ (not counted yet)
            ch.tx_publishes.append((msg, exlen, flags))
            return
        route = self.vhost.route(msg, exlen)
        self.stats.published += 1
        local, remote = route
        if not local and not remote:  # (HELD is empty too: one test on the plain path)
            if route is HELD:  # a delayed exchange holds it (shardmq.broker.delayed)
                self.broker.delayed.hold(self, ch, msg, conf, delay_of(msg))
                return
            # a reply to a direct reply-to address?
            local, remote = self.broker.replies.route(msg.exrk, self.vhost.name)
        target: Channel | ConfirmWaiter | None = ch if ch.confirm else conf
        if local:  # (an iterator is an object: none when all queues are remote)
            for q in local:
                q.publish(msg, target)  # a durable queue takes a token (persistent msg)
                # (an empty store is never backed up: no call when the message went
                # straight to a consumer; the rest of a read past the mark, already
                # throttled, skips the channel scan)
                if (
                    q.store
                    and q.consumers
                    and q.backed_up(msg.fmax)
                    and self not in q.throttled
                    and not self.consumes()
                ):
                    # Connections that also consume are never throttled: their acks
                    # must keep flowing (the memory alarm still bounds them).
                    q.throttle(self)
        stored = ch.store_pending
        if stored:  # confirm after those local stores fsynced (and remote shards answered)
            ch.store_pending = 0
            seq = ch.confirm_later(stored + len(remote))
        if remote:
            router = self.broker.shards
            if router is None:  # remote queues exist only with other workers
                raise HardError(INTERNAL_ERROR, "no cross-worker router")
            if stored:
                pass
            elif ch.confirm:
                seq = ch.confirm_later(len(remote))
            elif conf is not None:  # a tx commit: it also waits for the owners' stores
                seq = router.tx_seq(conf, len(remote))
            else:
                seq = 0
            router.enqueue(remote, msg, self, ch.number, seq)
            return
        if stored:
            return
        if not local:  # (routed = published less these: stats.py)
            if flags & 1:
                self.stats.unroutable_returned += 1
                ch.sink.returned(ch, NO_ROUTE, "NO_ROUTE", msg)
            else:
                self.stats.unroutable_dropped += 1
        if ch.confirm:
            ch.confirm_published()

    # ------------------------------------------------------------ consumers
    def cancel_consumer(self, c: Consumer) -> None:
        """The broker ends a consumer (its queue is gone): the client is told."""
        c.channel.consumers.pop(c.tag, None)
        self.client.consumer_cancelled(c)

    def remove_consumer(self, c: Consumer) -> None:
        """Detach a consumer from its queue (auto-deleting the queue if it was the last)."""
        c.channel.consumers.pop(c.tag, None)
        q = c.queue
        if isinstance(q, RemoteQueue):
            if not q.deleted and self.broker.shards is not None:
                self.broker.shards.cancel(q, c)
        elif q.remove_consumer(c) and not q.deleted:
            # auto-delete: if a consumer came back meanwhile, if-unused keeps the queue
            self.broker.sequencer.fire(md.DeleteQueue(q.vhost, q.name, True, False, 0))

    def queue_for(self, ch: Channel, name: str) -> AnyQueue:
        """The queue a read operation (queue.purge, basic.get, basic.consume) names ("":
        the channel's last declared queue), after the ``read`` permission check (403
        comes before 404, as in RabbitMQ)."""
        if not name:
            name = ch.last_queue
            if not name:
                raise SoftError(NOT_FOUND, "no previously declared queue")
        self.authz.check("read", "queue", name)
        return self.vhost.queue(name, self.gid)
