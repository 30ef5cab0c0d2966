"""The broker's side of an AMQP connection: every method a client can send, handled.

Owns: ``BrokerConnection`` — authentication, vhost, exclusive queues of this
connection, and the method handlers of the exchange, queue, basic, tx and confirm
classes (a table keyed by method index, no if-chains).

Invariants:
- Handlers raise ``SoftError`` / ``HardError``; the protocol layer turns them into
  channel.close / connection.close. Nothing here touches a socket.
- Replies to synchronous methods are written before any delivery they enable
  (consume-ok before the first basic.deliver).
- Exclusive queues die with the connection; consumers die with their channel.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from shardmq.amqp import methods as M
from shardmq.amqp.codec import shortstr, write_get_ok, write_return
from shardmq.amqp.connection import OPEN, AMQPConnection, ChannelBase
from shardmq.amqp.errors import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    INTERNAL_ERROR,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    AMQPError,
    HardError,
    SoftError,
)
from shardmq.amqp.fieldtable import decode_table
from shardmq.broker import metadata as md
from shardmq.broker.channel import Channel
from shardmq.broker.queue import Consumer, Queue
from shardmq.broker.remote import REMOTE_CREDIT_CHUNK, REQUEUE, RemoteQueue
from shardmq.broker.remote import REMOTE_WINDOW as WINDOW
from shardmq.broker.store import ConfirmWaiter
from shardmq.broker.vhost import AnyQueue, VHost
from shardmq.message import Message

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

log = logging.getLogger("shardmq.connection")
_seq = itertools.count(1)


class IOHooks(Protocol):
    def set_reading(self, active: bool) -> None: ...


Reply = M.Method | Callable[[Any], "M.Method | None"] | None
Handler = Callable[["BrokerConnection", Channel, M.Method], None]
_HANDLERS: dict[int, Handler] = {}


def handles(method_cls: type[M.Method]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[method_cls.INDEX] = fn
        return fn

    return register


class BrokerConnection(AMQPConnection):
    channel_class = Channel

    def __init__(self, broker: Broker, wake: Callable[[AMQPConnection], None], peer: str):
        cfg = broker.config.amqp
        super().__init__(
            wake,
            frame_max=cfg.frame_max,
            channel_max=cfg.channel_max,
            heartbeat=cfg.heartbeat,
            max_message_size=cfg.max_message_size,
            server_properties=broker.server_properties,
            peer=peer,
        )
        self.broker = broker
        self.gid = broker.new_gid()
        self.user = ""
        self.vhost: VHost = None  # type: ignore[assignment]  # set by connection.open
        self.write_paused = False  # the socket's write buffer is above high water
        self.out_blocked = False  # this turn's output passed OUT_LIMIT
        self.throttled_by: set[Any] = set()  # backed-up queues / full rings we publish to
        self.alarm_blocked = False  # blocked by the broker's memory alarm
        self.reading_paused = False
        self.published = False  # has published at least once (memory alarm target)
        self.io: IOHooks | None = None
        self.exclusive_queues: list[str] = []
        # credit to return to other workers for deliveries our socket has taken
        self.credit_due: dict[Consumer, int] = {}
        # deliveries from other workers held back by a channel's global prefetch limit
        # (in arrival order; their credit is returned only once they are delivered)
        self.parked: deque[tuple[Consumer, Message, bool]] = deque()
        # remote consumers under a global prefetch limit -> credit granted, not yet used
        self.gq: dict[Consumer, int] = {}
        self.gq_idle: set[Consumer] = set()  # their queue was empty: no credit for now
        self._confirm_channels: list[Channel] = []

    # ------------------------------------------------------------ handshake hooks
    def authenticate(self, mechanism: str, response: bytes) -> bool:
        if mechanism == "PLAIN":
            parts = response.split(b"\x00")
            if len(parts) != 3:
                return False
            user, password = parts[1], parts[2]
        else:  # AMQPLAIN: a field table without its length prefix
            try:
                table, _ = decode_table(len(response).to_bytes(4, "big") + response, 0)
            except Exception:
                return False
            user = _as_bytes(table.get("LOGIN"))
            password = _as_bytes(table.get("PASSWORD"))
        name = user.decode("utf-8", "replace")
        ok = self.broker.check_password(name, password.decode("utf-8", "replace"))
        if ok:
            self.user = name
        else:
            log.warning("connection %s: authentication failed for user '%s'", self.peer, name)
        return ok

    def open_vhost(self, vhost: str) -> None:
        vh = self.broker.vhosts.get(vhost)
        if vh is None:
            raise HardError(NOT_ALLOWED, f"vhost {vhost} not found", 10, 40)
        self.vhost = vh
        self.broker.connections.add(self)
        self.broker.conns_by_gid[self.gid] = self

    def on_channel_open(self, ch: ChannelBase) -> None:
        ch.conn = self  # type: ignore[attr-defined]
        ch.active = not self.write_paused  # type: ignore[attr-defined]

    def on_channel_closed(self, ch: ChannelBase) -> None:
        assert isinstance(ch, Channel)
        if ch in self._confirm_channels:
            self._confirm_channels.remove(ch)
        ch.release()
        if self.parked or self.gq:
            self.unpark()

    def unpark(self) -> None:
        """Room may have grown on a channel with a global prefetch limit: deliver held
        remote deliveries it now admits (those whose consumer or channel is gone go back
        to their queue), then grant its remote consumers credit for the rest."""
        parked = self.parked
        router = self.broker.shards
        while parked:
            consumer, msg, redelivered = parked[0]
            ch = consumer.channel
            if ch.closing or ch.consumers.get(consumer.tag) is not consumer or self.state > OPEN:
                parked.popleft()
                router.settle(consumer.queue.shard, msg.seq, REQUEUE)
                continue
            limit = ch.global_prefetch
            if not ch.active or (limit and ch.consumer_unacked >= limit):
                return
            parked.popleft()
            ch.deliver(consumer, consumer.queue, msg, redelivered)
        if self.gq:
            self.rebalance()

    def remote_held(self, ch: Channel) -> int:
        """Deliveries the channel's global prefetch limit already owes to consumers of
        queues on other workers: credit granted to them and deliveries parked here. A
        local queue counts them too, or both sides fill the same room."""
        held = sum([n for c, n in self.gq.items() if c.channel is ch])
        if self.parked:
            held += sum([1 for p in self.parked if p[0].channel is ch])
        return held

    def credit_idle(self, c: Consumer, returned: int) -> None:
        """The owner of ``c``'s queue gave ``returned`` credits back (its queue is
        empty), or (0) says a message waits for ``c`` again."""
        if returned:
            self.gq[c] = max(0, self.gq[c] - returned)
            self.gq_idle.add(c)
        else:
            self.gq_idle.discard(c)
        self.rebalance()

    def rebalance(self) -> None:
        """Grant credit to remote consumers under a global limit, one delivery at a time
        round the channel's consumers, so that unacked + credit never exceeds the limit.
        (A consumer of an empty queue keeps the credit it holds: the others share the
        rest of the window.)"""
        gq = self.gq
        by_channel: dict[Channel, list[Consumer]] = {}
        for c in list(gq):
            ch = c.channel
            if ch.closing or ch.consumers.get(c.tag) is not c or self.state > OPEN:
                del gq[c]
                self.gq_idle.discard(c)
            elif c in self.gq_idle:
                continue
            else:
                by_channel.setdefault(ch, []).append(c)
        router = self.broker.shards
        for ch, consumers in by_channel.items():
            limit = ch.global_prefetch
            grants: dict[Consumer, int] = {}
            if not limit:  # the limit was lifted: top everyone up to a window
                for c in consumers:
                    if gq[c] < WINDOW // 2:
                        grants[c] = WINDOW - gq[c]
            else:
                room = limit - ch.consumer_unacked - sum(gq[c] for c in consumers)
                room -= sum(1 for p in self.parked if p[0].channel is ch)
                while room > 0:
                    granted = False
                    for c in consumers:
                        if room <= 0:
                            break
                        if c.prefetch and c.unacked + gq[c] + grants.get(c, 0) >= c.prefetch:
                            continue
                        grants[c] = grants.get(c, 0) + 1
                        room -= 1
                        granted = True
                    if not granted:
                        break
            for c, n in grants.items():
                gq[c] += n
                router.grant(c, n)

    def on_connection_closed(self) -> None:
        if self.parked or self.gq:
            self.unpark()
        self.broker.connections.discard(self)
        self.broker.conns_by_gid.pop(self.gid, None)
        for cause in list(self.throttled_by):
            if isinstance(cause, Queue):
                cause.throttled.discard(self)
        for waiting in getattr(self.broker.shards, "throttled", {}).values():
            waiting.discard(self)
        self.throttled_by.clear()
        names, self.exclusive_queues = self.exclusive_queues, []
        for name in names:
            self.broker.sequencer.fire(md.DeleteQueue(self.vhost.name, name, False, False, 0))

    # ------------------------------------------------------------ output
    def confirms_pending(self, ch: Channel) -> None:
        if ch not in self._confirm_channels:
            self._confirm_channels.append(ch)
        self._wake()

    def take_output(self) -> bytearray | None:
        if self._confirm_channels:
            for ch in self._confirm_channels:
                ch.flush_confirms()
            self._confirm_channels.clear()
        return super().take_output()

    def set_write_paused(self, paused: bool) -> None:
        self.write_paused = paused
        self._update_channels()
        if not paused and (self.parked or self.gq):
            self.unpark()
        if not paused and self.credit_due:
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
        if self.parked or self.gq:
            self.unpark()
        if self.credit_due and not self.write_paused:
            self._return_credit()

    def _return_credit(self) -> None:
        due, self.credit_due = self.credit_due, {}
        router = self.broker.shards
        for consumer, n in due.items():
            if consumer.tag in consumer.channel.consumers:
                if n < REMOTE_CREDIT_CHUNK:
                    self.credit_due[consumer] = n  # later, with more
                else:
                    router.grant(consumer, n)

    def _update_channels(self) -> None:
        for ch in list(self.channels.values()):
            ch.update_active()  # type: ignore[attr-defined]

    def throttle(self, cause: Any, on: bool) -> None:
        """Flow control: stop reading from this connection while a queue it publishes to
        is backed up, or the ring to another worker is full (``cause``); resume when
        every cause has cleared."""
        if on:
            self.throttled_by.add(cause)
        else:
            self.throttled_by.discard(cause)
        self._update_reading()

    def consumes(self) -> bool:
        return any(ch.consumers for ch in self.channels.values())  # type: ignore[attr-defined]

    def memory_alarm(self, on: bool, reason: str = "low on memory") -> None:
        """Broker alarm (memory or disk, see ``Broker.alarm``): block this (publishing)
        connection, telling the client with connection.blocked / unblocked when it
        understands them."""
        if on == self.alarm_blocked:
            return
        self.alarm_blocked = on
        if self.state == OPEN and self.client_capabilities.get("connection.blocked"):
            if on:
                self.send_method(0, M.ConnectionBlocked(reason=reason))
            else:
                self.send_method(0, M.ConnectionUnblocked())
        self._update_reading()

    def _update_reading(self) -> None:
        paused = bool(self.throttled_by) or self.alarm_blocked
        if paused != self.reading_paused:
            self.reading_paused = paused
            if self.io is not None:
                self.io.set_reading(not paused)

    # ------------------------------------------------------------ dispatch
    def on_method(self, ch: ChannelBase, method: M.Method) -> None:
        handler = _HANDLERS.get(method.INDEX)
        if handler is None:
            raise HardError(
                COMMAND_INVALID,
                f"method {method.NAME} is not valid from a client here",
                method.CLASS_ID,
                method.METHOD_ID,
            )
        handler(self, ch, method)  # type: ignore[arg-type]

    def on_ack(self, ch: ChannelBase, delivery_tag: int, multiple: int) -> None:
        ch.ack(delivery_tag, multiple)  # type: ignore[attr-defined]
        if self.parked or self.gq:
            self.unpark()

    def on_publish(
        self,
        ch: ChannelBase,
        exrk: bytes,
        exlen: int,
        flags: int,
        raw: bytes,
        hsize: int,
        fmax: int,
    ) -> None:
        if flags & 2:
            raise HardError(NOT_IMPLEMENTED, "immediate=true", 60, 40)
        msg = Message(exrk, raw, ch.number, hsize, fmax, next(_seq))
        if raw[20] & 0x10:  # user_id property present: RabbitMQ validates it
            user_id = msg.properties().user_id
            if user_id != self.user:
                raise SoftError(
                    PRECONDITION_FAILED,
                    f"user_id property set to '{user_id}' but authenticated user was '{self.user}'",
                    60,
                    40,
                )
        if not self.published:
            self.published = True
            if self.broker.alarm:
                self.memory_alarm(True, self.broker.alarm_reason)
        if ch.tx:  # type: ignore[attr-defined]
            self.vhost.route(msg, exlen)  # 404 / 403 now, like RabbitMQ
            ch.tx_publishes.append((msg, exlen, flags))  # type: ignore[attr-defined]
            return
        self._route_publish(ch, msg, exlen, flags)  # type: ignore[arg-type]

    def _route_publish(
        self, ch: Channel, msg: Message, exlen: int, flags: int, conf: Any = None
    ) -> None:
        """Route one publish. ``conf``: who waits for durable queues to store it (the
        channel itself in confirm mode; a tx commit passes its own waiter)."""
        local, remote = self.vhost.route(msg, exlen)
        if ch.confirm:
            conf = ch
        for q in local:
            q.publish(msg, conf)  # a durable queue takes a token from conf (persistent msg)
            if q.consumers and q.backed_up(msg.fmax) and not self.consumes():
                # Connections that also consume are never throttled: their acks
                # must keep flowing (the memory alarm still bounds them).
                q.throttle(self)
        stored = ch.store_pending
        if stored:  # confirm after those local stores fsynced (and remote shards answered)
            ch.store_pending = 0
            ch.confirm_later(stored + len(remote))
            if remote:
                seq = ch.confirm_seq
                self.broker.shards.enqueue(remote, msg, self, ch.number, seq)
            return
        if remote:
            if ch.confirm:
                seq = ch.confirm_later(len(remote))
            elif conf is not None:  # a tx commit: it also waits for the owners' stores
                seq = self.broker.shards.tx_seq(conf, len(remote))
            else:
                seq = 0
            self.broker.shards.enqueue(remote, msg, self, ch.number, seq)
            return
        if not local and flags & 1:
            write_return(
                self.out,
                ch.number,
                NO_ROUTE,
                "NO_ROUTE",
                msg.exrk,
                msg,
                self.frame_max,
            )
            self._wake()
        if ch.confirm:
            ch.confirm_published()

    def cancel_consumer(self, c: Consumer) -> None:
        """The broker ends a consumer (its queue is gone): basic.cancel to the client."""
        ch = c.channel
        ch.consumers.pop(c.tag, None)
        if (
            self.client_capabilities.get("consumer_cancel_notify")
            and self.channels.get(ch.number) is ch
            and self.state == OPEN
        ):
            self.send_method(ch.number, M.BasicCancel(consumer_tag=c.tag, no_wait=True))

    def remove_consumer(self, c: Consumer, *, notify: bool) -> None:
        """Detach a consumer from its queue (auto-deleting the queue if it was the last)."""
        c.channel.consumers.pop(c.tag, None)
        q = c.queue
        if isinstance(q, RemoteQueue):
            if not q.deleted:
                self.broker.shards.cancel(q, c)
        elif q.remove_consumer(c) and not q.deleted:
            # auto-delete: if a consumer came back meanwhile, if-unused keeps the queue
            self.broker.sequencer.fire(md.DeleteQueue(q.vhost, q.name, True, False, 0))
        if notify and self.client_capabilities.get("consumer_cancel_notify"):
            self.send_method(c.channel.number, M.BasicCancel(consumer_tag=c.tag, no_wait=True))

    def queue_for(self, ch: Channel, name: str) -> AnyQueue:
        if not name:
            name = ch.last_queue
            if not name:
                raise SoftError(NOT_FOUND, "no previously declared queue")
        return self.vhost.queue(name, self.gid)

    # ------------------------------------------------------------ async completion
    def submit(self, ch: Channel, m: M.Method, op: md.Op, reply: Reply) -> None:
        """Apply a metadata op, then answer with ``reply`` (a method, a function of the
        op's result returning a method or None, or None for no-wait)."""
        sequencer = self.broker.sequencer
        if sequencer.synchronous:
            self._answer(ch, reply, sequencer.execute(op))
            return
        self.suspend(ch)
        sequencer.request(op, lambda err, res: self.complete(ch, m, reply, err, res))

    def complete(
        self, ch: Channel, m: M.Method, reply: Reply, err: AMQPError | None, result: Any
    ) -> None:
        """A suspended channel's method got its answer from another process."""
        if self.state != OPEN or self.channels.get(ch.number) is not ch:
            return
        try:
            if err is not None:
                raise err
            self._answer(ch, reply, result)
        except SoftError as exc:
            self._soft_error(ch, exc, m.INDEX)
            return
        except HardError as exc:
            if not exc.class_id:
                exc.class_id, exc.method_id = m.CLASS_ID, m.METHOD_ID
            self._hard_error(exc)
            return
        except Exception:
            log.exception("connection %s: internal error completing %s", self.peer, m.NAME)
            self._hard_error(HardError(INTERNAL_ERROR, "internal error"))
            return
        self.resume(ch)

    def _answer(self, ch: Channel, reply: Reply, result: Any) -> None:
        if reply is None:
            return
        if not isinstance(reply, M.Method):
            reply = reply(result)
            if reply is None:
                return
        self.send_method(ch.number, reply)

    def remote_call(
        self,
        ch: Channel,
        m: M.Method,
        start: Callable[[Callable[[AMQPError | None, Any], None]], None],
        reply: Reply,
    ) -> None:
        """Ask the worker that owns a queue (purge, get, consume), suspending the channel
        until it answers."""
        self.suspend(ch)
        start(lambda err, res: self.complete(ch, m, reply, err, res))


def _as_bytes(v: object) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    return b""


# ---------------------------------------------------------------- exchange class
# Metadata changes go through ``conn.submit``: applied at once with one worker, ordered
# by the sequencer (and the channel suspended meanwhile) with several.


@handles(M.ExchangeDeclare)
def _exchange_declare(conn: BrokerConnection, ch: Channel, m: M.ExchangeDeclare) -> None:
    op = md.DeclareExchange(
        conn.vhost.name,
        m.exchange,
        m.type,
        m.passive,
        m.durable,
        m.auto_delete,
        m.internal,
        md.table_bytes(m.arguments),
    )
    conn.submit(ch, m, op, None if m.no_wait else M.ExchangeDeclareOk())


@handles(M.ExchangeDelete)
def _exchange_delete(conn: BrokerConnection, ch: Channel, m: M.ExchangeDelete) -> None:
    op = md.DeleteExchange(conn.vhost.name, m.exchange, m.if_unused)
    conn.submit(ch, m, op, None if m.no_wait else M.ExchangeDeleteOk())


@handles(M.ExchangeBind)
def _exchange_bind(conn: BrokerConnection, ch: Channel, m: M.ExchangeBind) -> None:
    op = md.Bind(
        conn.vhost.name,
        False,
        m.destination,
        m.source,
        m.routing_key,
        md.table_bytes(m.arguments),
        conn.gid,
    )
    conn.submit(ch, m, op, None if m.no_wait else M.ExchangeBindOk())


@handles(M.ExchangeUnbind)
def _exchange_unbind(conn: BrokerConnection, ch: Channel, m: M.ExchangeUnbind) -> None:
    op = md.Unbind(
        conn.vhost.name,
        False,
        m.destination,
        m.source,
        m.routing_key,
        md.table_bytes(m.arguments),
        conn.gid,
    )
    conn.submit(ch, m, op, None if m.no_wait else M.ExchangeUnbindOk())


# ---------------------------------------------------------------- queue class
@handles(M.QueueDeclare)
def _queue_declare(conn: BrokerConnection, ch: Channel, m: M.QueueDeclare) -> None:
    name = m.queue or md.server_named_queue()
    op = md.DeclareQueue(
        conn.vhost.name,
        name,
        m.passive,
        m.durable,
        m.exclusive,
        m.auto_delete,
        md.table_bytes(m.arguments),
        conn.gid,
        not m.queue,
    )
    existed = name in conn.vhost.queues

    def declared(info: md.QueueInfo) -> None:
        if m.exclusive and not existed and not m.passive:
            conn.exclusive_queues.append(info.name)
        ch.last_queue = info.name
        if not m.no_wait:
            conn.send_method(
                ch.number,
                M.QueueDeclareOk(
                    queue=info.name,
                    message_count=info.message_count,
                    consumer_count=info.consumer_count,
                ),
            )

    conn.submit(ch, m, op, declared)


def _queue_name(conn: BrokerConnection, ch: Channel, name: str) -> str:
    if name:
        return name
    if not ch.last_queue:
        raise SoftError(NOT_FOUND, "no previously declared queue")
    return ch.last_queue


@handles(M.QueueBind)
def _queue_bind(conn: BrokerConnection, ch: Channel, m: M.QueueBind) -> None:
    op = md.Bind(
        conn.vhost.name,
        True,
        _queue_name(conn, ch, m.queue),
        m.exchange,
        m.routing_key,
        md.table_bytes(m.arguments),
        conn.gid,
    )
    conn.submit(ch, m, op, None if m.no_wait else M.QueueBindOk())


@handles(M.QueueUnbind)
def _queue_unbind(conn: BrokerConnection, ch: Channel, m: M.QueueUnbind) -> None:
    op = md.Unbind(
        conn.vhost.name,
        True,
        _queue_name(conn, ch, m.queue),
        m.exchange,
        m.routing_key,
        md.table_bytes(m.arguments),
        conn.gid,
    )
    conn.submit(ch, m, op, M.QueueUnbindOk())


@handles(M.QueuePurge)
def _queue_purge(conn: BrokerConnection, ch: Channel, m: M.QueuePurge) -> None:
    q = conn.queue_for(ch, m.queue)
    if isinstance(q, Queue):
        n = q.purge()
        if not m.no_wait:
            conn.send_method(ch.number, M.QueuePurgeOk(message_count=n))
        return
    conn.remote_call(
        ch,
        m,
        lambda cb: conn.broker.shards.purge(q, cb),
        None if m.no_wait else (lambda n: M.QueuePurgeOk(message_count=n)),
    )


@handles(M.QueueDelete)
def _queue_delete(conn: BrokerConnection, ch: Channel, m: M.QueueDelete) -> None:
    name = m.queue or ch.last_queue
    op = md.DeleteQueue(conn.vhost.name, name, m.if_unused, m.if_empty, conn.gid)
    conn.submit(ch, m, op, None if m.no_wait else (lambda n: M.QueueDeleteOk(message_count=n)))


# ---------------------------------------------------------------- basic class
@handles(M.BasicQos)
def _basic_qos(conn: BrokerConnection, ch: Channel, m: M.BasicQos) -> None:
    if m.prefetch_size:
        raise HardError(NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})", 60, 10)
    if m.global_:
        ch.global_prefetch = m.prefetch_count
    else:
        ch.prefetch = m.prefetch_count
    conn.send_method(ch.number, M.BasicQosOk())
    ch.kick()
    if conn.parked or conn.gq:
        conn.unpark()


@handles(M.BasicConsume)
def _basic_consume(conn: BrokerConnection, ch: Channel, m: M.BasicConsume) -> None:
    q = conn.queue_for(ch, m.queue)
    local = isinstance(q, Queue)
    if local and q.consumers and (m.exclusive or q.exclusive_consumer()):
        raise SoftError(
            ACCESS_REFUSED, f"queue '{q.name}' in vhost '{q.vhost}' in exclusive use", 60, 20
        )
    tag = m.consumer_tag
    if not tag:
        tag = "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    elif tag in ch.consumers:
        raise HardError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", 60, 20)
    c = Consumer(tag, shortstr(tag), ch, q, m.no_ack, m.exclusive, ch.prefetch, m.arguments or {})
    ch.consumers[tag] = c
    ok = None if m.no_wait else M.BasicConsumeOk(consumer_tag=tag)
    if not local:
        # The owner checks exclusivity and registers the consumer; deliveries follow
        # its answer on the same ring, so they come after consume-ok.
        def registered(_result: Any) -> M.Method | None:
            return ok

        def start(cb: Callable[[AMQPError | None, Any], None]) -> None:
            def answered(err: AMQPError | None, res: Any) -> None:
                if err is not None:
                    ch.consumers.pop(tag, None)
                    q.local_consumers.pop((conn.gid, ch.number, tag), None)
                cb(err, res)
                if conn.gq:
                    conn.rebalance()

            conn.broker.shards.consume(q, c, answered)

        conn.remote_call(ch, m, start, registered)
        return
    if ok is not None:
        conn.send_method(ch.number, ok)
    q.add_consumer(c)


@handles(M.BasicCancel)
def _basic_cancel(conn: BrokerConnection, ch: Channel, m: M.BasicCancel) -> None:
    c = ch.consumers.get(m.consumer_tag)
    if not m.no_wait:
        conn.send_method(ch.number, M.BasicCancelOk(consumer_tag=m.consumer_tag))
    if c is not None:
        conn.remove_consumer(c, notify=False)
    if conn.parked or conn.gq:
        conn.unpark()


@handles(M.BasicGet)
def _basic_get(conn: BrokerConnection, ch: Channel, m: M.BasicGet) -> None:
    q = conn.queue_for(ch, m.queue)
    if not isinstance(q, Queue):

        def got_remote(res: Any) -> None:
            if not isinstance(res, list):
                conn.send_method(ch.number, M.BasicGetEmpty())
                return
            ref, redelivered, count, exrk, rawch, hsize, fmax, raw = res
            msg = Message(exrk, raw, rawch, hsize, fmax, ref)
            _write_get_ok(conn, ch, q, msg, redelivered, count, m.no_ack)

        conn.remote_call(ch, m, lambda cb: conn.broker.shards.get(q, m.no_ack, cb), got_remote)
        return
    got = q.get()
    if got is None:
        conn.send_method(ch.number, M.BasicGetEmpty())
        return
    msg, redelivered = got
    _write_get_ok(conn, ch, q, msg, redelivered, q.message_count, m.no_ack)


def _write_get_ok(
    conn: BrokerConnection,
    ch: Channel,
    q: AnyQueue,
    msg: Message,
    redelivered: bool,
    count: int,
    no_ack: bool,
) -> None:
    tag = ch.take_get(q, msg, no_ack)  # type: ignore[arg-type]
    write_get_ok(conn.out, ch.number, tag, redelivered, msg.exrk, count, msg, conn.frame_max)
    conn.wake_once()


@handles(M.BasicReject)
def _basic_reject(conn: BrokerConnection, ch: Channel, m: M.BasicReject) -> None:
    ch.reject(m.delivery_tag, 0, m.requeue)
    if conn.parked or conn.gq:
        conn.unpark()


@handles(M.BasicNack)
def _basic_nack(conn: BrokerConnection, ch: Channel, m: M.BasicNack) -> None:
    ch.reject(m.delivery_tag, m.multiple, m.requeue)
    if conn.parked or conn.gq:
        conn.unpark()


@handles(M.BasicAck)
def _basic_ack(conn: BrokerConnection, ch: Channel, m: M.BasicAck) -> None:
    ch.ack(m.delivery_tag, m.multiple)
    if conn.parked or conn.gq:
        conn.unpark()


def _recover(ch: Channel, requeue: bool, method: type[M.Method]) -> None:
    if not requeue:
        raise HardError(NOT_IMPLEMENTED, "requeue=false", method.CLASS_ID, method.METHOD_ID)
    ch.recover()
    if ch.conn.parked or ch.conn.gq:
        ch.conn.unpark()


@handles(M.BasicRecover)
def _basic_recover(conn: BrokerConnection, ch: Channel, m: M.BasicRecover) -> None:
    _recover(ch, m.requeue, M.BasicRecover)
    conn.send_method(ch.number, M.BasicRecoverOk())


@handles(M.BasicRecoverAsync)
def _basic_recover_async(conn: BrokerConnection, ch: Channel, m: M.BasicRecoverAsync) -> None:
    _recover(ch, m.requeue, M.BasicRecoverAsync)


# ---------------------------------------------------------------- channel class
@handles(M.ChannelFlow)
def _channel_flow(conn: BrokerConnection, ch: Channel, m: M.ChannelFlow) -> None:
    if not m.active:  # as RabbitMQ: consumers use prefetch instead
        raise HardError(NOT_IMPLEMENTED, "active=false", 20, 20)
    ch.flow = m.active
    conn.send_method(ch.number, M.ChannelFlowOk(active=m.active))
    ch.update_active()


@handles(M.ChannelFlowOk)
def _channel_flow_ok(conn: BrokerConnection, ch: Channel, m: M.ChannelFlowOk) -> None:
    return None


@handles(M.AccessRequest)
def _access_request(conn: BrokerConnection, ch: Channel, m: M.AccessRequest) -> None:
    conn.send_method(ch.number, M.AccessRequestOk(reserved_1=1))


# ---------------------------------------------------------------- tx / confirm
@handles(M.TxSelect)
def _tx_select(conn: BrokerConnection, ch: Channel, m: M.TxSelect) -> None:
    if ch.confirm:
        raise SoftError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode", 90, 10)
    ch.tx = True
    conn.send_method(ch.number, M.TxSelectOk())


@handles(M.TxCommit)
def _tx_commit(conn: BrokerConnection, ch: Channel, m: M.TxCommit) -> None:
    if not ch.tx:
        raise SoftError(PRECONDITION_FAILED, "channel is not transactional", 90, 20)
    publishes, ch.tx_publishes = ch.tx_publishes, []
    acks, ch.tx_acks = ch.tx_acks, []
    # commit-ok only once the durable queues stored the persistent publishes: this
    # worker's, and those of the workers that own the other queues (their confirms)
    waiter = ConfirmWaiter() if publishes else None
    for msg, exlen, flags in publishes:
        conn._route_publish(ch, msg, exlen, flags, waiter)
    ch.tx = False
    try:
        for kind, tag, multiple, requeue in acks:
            if kind == 0:
                ch.ack(tag, multiple)
            else:
                ch.reject(tag, multiple, requeue)
    finally:
        ch.tx = True
    if waiter is None or not waiter.pending:
        conn.send_method(ch.number, M.TxCommitOk())
        return
    conn.suspend(ch)

    def stored(ok: bool) -> None:
        if conn.state != OPEN or conn.channels.get(ch.number) is not ch:
            return
        if not ok:
            conn._hard_error(
                HardError(INTERNAL_ERROR, "tx.commit: a queue could not store the messages")
            )
            return
        conn.send_method(ch.number, M.TxCommitOk())
        conn.resume(ch)

    waiter.done = stored


@handles(M.TxRollback)
def _tx_rollback(conn: BrokerConnection, ch: Channel, m: M.TxRollback) -> None:
    if not ch.tx:
        raise SoftError(PRECONDITION_FAILED, "channel is not transactional", 90, 30)
    ch.tx_publishes.clear()
    ch.tx_acks.clear()
    conn.send_method(ch.number, M.TxRollbackOk())


@handles(M.ConfirmSelect)
def _confirm_select(conn: BrokerConnection, ch: Channel, m: M.ConfirmSelect) -> None:
    if ch.tx:
        raise SoftError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode", 85, 10)
    ch.confirm = True
    if not m.nowait:
        conn.send_method(ch.number, M.ConfirmSelectOk())
