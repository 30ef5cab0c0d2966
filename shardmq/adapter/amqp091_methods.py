"""AMQP 0-9-1 method handlers: what each method a client can send does to the broker.

Owns: ``HANDLERS`` — method index -> handler, for every method of the exchange, queue,
basic, tx, confirm and channel classes that the engine does not handle itself. Each
handler takes the adapter (``AMQP091Connection``), the domain channel and the decoded
method; it calls the domain's operations and answers with the 0-9-1 reply.

Invariants:
- Handlers raise ``SoftError`` / ``HardError``; the engine turns them into
  channel.close / connection.close. Nothing here touches a socket.
- A method that waits for another process (the sequencer, a queue's owner) suspends
  its channel through the adapter (``submit``, ``remote_call``, ``suspend_until``);
  later frames on that channel wait until the reply is written.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardmq.amqp import methods as M
from shardmq.amqp.codec import shortstr, write_get_ok
from shardmq.amqp.errors import (
    ACCESS_REFUSED,
    INTERNAL_ERROR,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    AMQPError,
    HardError,
    SoftError,
)
from shardmq.broker import metadata as md
from shardmq.broker import replyto
from shardmq.broker.channel import Channel
from shardmq.broker.consumer_order import check_queue_arguments, consumer_priority
from shardmq.broker.queue import Consumer, Queue
from shardmq.broker.remote import RemoteQueue
from shardmq.broker.storage import ConfirmWaiter
from shardmq.broker.vhost import AnyQueue
from shardmq.message import Message

if TYPE_CHECKING:
    from shardmq.adapter.amqp091 import AMQP091Connection

Handler = Callable[["AMQP091Connection", Channel, Any], None]
HANDLERS: dict[int, Handler] = {}


def handles(method_cls: type[M.Method]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[method_cls.INDEX] = fn
        return fn

    return register


# ---------------------------------------------------------------- exchange class
# Metadata changes go through ``a.submit``: applied at once with one worker, ordered
# by the sequencer (and the channel suspended meanwhile) with several.


@handles(M.ExchangeDeclare)
def _exchange_declare(a: AMQP091Connection, ch: Channel, m: M.ExchangeDeclare) -> None:
    op = md.DeclareExchange(
        a.domain.vhost.name,
        m.exchange,
        m.type,
        m.passive,
        m.durable,
        m.auto_delete,
        m.internal,
        md.table_bytes(m.arguments),
    )
    a.submit(ch, m, op, None if m.no_wait else M.ExchangeDeclareOk())


@handles(M.ExchangeDelete)
def _exchange_delete(a: AMQP091Connection, ch: Channel, m: M.ExchangeDelete) -> None:
    op = md.DeleteExchange(a.domain.vhost.name, m.exchange, m.if_unused)
    a.submit(ch, m, op, None if m.no_wait else M.ExchangeDeleteOk())


def _binding(
    a: AMQP091Connection,
    ch: Channel,
    m: M.Method,
    op_cls: type[md.Bind] | type[md.Unbind],
    to_queue: bool,
    destination: str,
    source: str,
    routing_key: str,
    arguments: dict[str, Any] | None,
    reply: M.Method | None,
) -> None:
    """queue.bind/unbind and exchange.bind/unbind: one metadata op each."""
    op = op_cls(
        a.domain.vhost.name,
        to_queue,
        destination,
        source,
        routing_key,
        md.table_bytes(arguments),
        a.domain.gid,
    )
    a.submit(ch, m, op, reply)


@handles(M.ExchangeBind)
def _exchange_bind(a: AMQP091Connection, ch: Channel, m: M.ExchangeBind) -> None:
    ok = None if m.no_wait else M.ExchangeBindOk()
    _binding(a, ch, m, md.Bind, False, m.destination, m.source, m.routing_key, m.arguments, ok)


@handles(M.ExchangeUnbind)
def _exchange_unbind(a: AMQP091Connection, ch: Channel, m: M.ExchangeUnbind) -> None:
    ok = None if m.no_wait else M.ExchangeUnbindOk()
    _binding(a, ch, m, md.Unbind, False, m.destination, m.source, m.routing_key, m.arguments, ok)


# ---------------------------------------------------------------- queue class
@handles(M.QueueDeclare)
def _queue_declare(a: AMQP091Connection, ch: Channel, m: M.QueueDeclare) -> None:
    if m.queue.startswith(replyto.REPLY_TO):
        _declare_reply_to(a, ch, m)
        return
    name = m.queue or md.server_named_queue()
    a.domain.stats.queues_declared += 1
    if not m.passive:
        check_queue_arguments(name, a.domain.vhost.name, m.arguments)
    op = md.DeclareQueue(
        a.domain.vhost.name,
        name,
        m.passive,
        m.durable,
        m.exclusive,
        m.auto_delete,
        md.table_bytes(m.arguments),
        a.domain.gid,
        not m.queue,
    )
    existed = name in a.domain.vhost.queues

    def declared(info: md.QueueInfo) -> None:
        if m.exclusive and not existed and not m.passive:
            a.domain.exclusive_queues.append(info.name)
        ch.last_queue = info.name
        if not m.no_wait:
            a.send_method(
                ch,
                M.QueueDeclareOk(
                    queue=info.name,
                    message_count=info.message_count,
                    consumer_count=info.consumer_count,
                ),
            )

    a.submit(ch, m, op, declared)


def _declare_reply_to(a: AMQP091Connection, ch: Channel, m: M.QueueDeclare) -> None:
    """queue.declare of ``amq.rabbitmq.reply-to`` (or of a reply address) answers as
    RabbitMQ: declare-ok with 0 messages and 1 consumer while it exists, else 404."""
    registry = a.broker.replies
    counts = replyto.declare_ok_counts(registry, m.queue)
    shard = registry.shard_of(m.queue) if counts is None else None

    def ok(counts: tuple[int, int] | list[int] | int | None) -> M.Method | None:
        if not counts:
            raise SoftError(NOT_FOUND, f"no queue '{m.queue}' in vhost '{a.domain.vhost.name}'")
        ch.last_queue = m.queue
        if m.no_wait:
            return None
        return M.QueueDeclareOk(queue=m.queue, message_count=0, consumer_count=1)

    if shard is None:
        reply = ok(counts)
        if reply is not None:
            a.send_method(ch, reply)
        return
    a.remote_call(ch, m, lambda cb: a.broker.router().reply_exists(shard, m.queue, cb), ok)


def _queue_name(a: AMQP091Connection, ch: Channel, name: str) -> str:
    if name:
        return name
    if not ch.last_queue:
        raise SoftError(NOT_FOUND, "no previously declared queue")
    return ch.last_queue


@handles(M.QueueBind)
def _queue_bind(a: AMQP091Connection, ch: Channel, m: M.QueueBind) -> None:
    ok = None if m.no_wait else M.QueueBindOk()
    name = _queue_name(a, ch, m.queue)
    _binding(a, ch, m, md.Bind, True, name, m.exchange, m.routing_key, m.arguments, ok)


@handles(M.QueueUnbind)
def _queue_unbind(a: AMQP091Connection, ch: Channel, m: M.QueueUnbind) -> None:
    name = _queue_name(a, ch, m.queue)  # queue.unbind has no no-wait
    _binding(
        a, ch, m, md.Unbind, True, name, m.exchange, m.routing_key, m.arguments, M.QueueUnbindOk()
    )


@handles(M.QueuePurge)
def _queue_purge(a: AMQP091Connection, ch: Channel, m: M.QueuePurge) -> None:
    q = a.domain.queue_for(ch, m.queue)
    if isinstance(q, Queue):
        n = q.purge()
        if not m.no_wait:
            a.send_method(ch, M.QueuePurgeOk(message_count=n))
        return
    a.remote_call(
        ch,
        m,
        lambda cb: a.broker.router().purge(q, cb),
        None if m.no_wait else (lambda n: M.QueuePurgeOk(message_count=n)),
    )


@handles(M.QueueDelete)
def _queue_delete(a: AMQP091Connection, ch: Channel, m: M.QueueDelete) -> None:
    name = m.queue or ch.last_queue
    op = md.DeleteQueue(a.domain.vhost.name, name, m.if_unused, m.if_empty, a.domain.gid)
    a.submit(ch, m, op, None if m.no_wait else (lambda n: M.QueueDeleteOk(message_count=n)))


# ---------------------------------------------------------------- basic class
@handles(M.BasicQos)
def _basic_qos(a: AMQP091Connection, ch: Channel, m: M.BasicQos) -> None:
    if m.prefetch_size:
        raise HardError(NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})", 60, 10)
    if m.global_:
        ch.global_prefetch = m.prefetch_count
    else:
        ch.prefetch = m.prefetch_count
    a.send_method(ch, M.BasicQosOk())
    ch.kick()
    a.domain.qos.after_settle()


@handles(M.BasicConsume)
def _basic_consume(a: AMQP091Connection, ch: Channel, m: M.BasicConsume) -> None:
    if m.queue == replyto.REPLY_TO:
        _consume_reply_to(a, ch, m)
        return
    q = a.domain.queue_for(ch, m.queue)
    if isinstance(q, Queue) and q.consumers and (m.exclusive or q.exclusive_consumer()):
        raise SoftError(
            ACCESS_REFUSED, f"queue '{q.name}' in vhost '{q.vhost}' in exclusive use", 60, 20
        )
    priority = consumer_priority(q.name, q.vhost, m.arguments)
    tag = _consumer_tag(ch, m)
    args = m.arguments or {}
    c = Consumer(tag, shortstr(tag), ch, q, m.no_ack, m.exclusive, ch.prefetch, args, priority)
    ch.consumers[tag] = c
    ok = None if m.no_wait else M.BasicConsumeOk(consumer_tag=tag)
    if isinstance(q, RemoteQueue):
        # The owner checks exclusivity and registers the consumer; deliveries follow
        # its answer on the same ring, so they come after consume-ok.
        rq = q

        def registered(_result: Any) -> M.Method | None:
            return ok

        def start(cb: Callable[[AMQPError | None, Any], None]) -> None:
            def answered(err: AMQPError | None, res: Any) -> None:
                if err is not None:
                    ch.consumers.pop(tag, None)
                    rq.local_consumers.pop((a.domain.gid, ch.number, tag), None)
                cb(err, res)
                if a.domain.qos.granted:
                    a.domain.qos.rebalance()

            a.broker.router().consume(rq, c, answered)

        a.remote_call(ch, m, start, registered)
        return
    if ok is not None:
        a.send_method(ch, ok)
    q.add_consumer(c)


def _consumer_tag(ch: Channel, m: M.BasicConsume) -> str:
    tag = m.consumer_tag
    if not tag:
        tag = "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    elif tag in ch.consumers:
        raise HardError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", 60, 20)
    return tag


def _consume_reply_to(a: AMQP091Connection, ch: Channel, m: M.BasicConsume) -> None:
    """basic.consume from ``amq.rabbitmq.reply-to``: the channel's reply consumer."""
    replyto.consume_args_ok(m.no_ack)
    tag = _consumer_tag(ch, m)
    q = a.broker.replies.open(ch)
    c = Consumer(tag, shortstr(tag), ch, q, True, m.exclusive, 0, m.arguments or {})
    ch.consumers[tag] = c
    if not m.no_wait:
        a.send_method(ch, M.BasicConsumeOk(consumer_tag=tag))
    q.add_consumer(c)


@handles(M.BasicCancel)
def _basic_cancel(a: AMQP091Connection, ch: Channel, m: M.BasicCancel) -> None:
    c = ch.consumers.get(m.consumer_tag)
    if not m.no_wait:
        a.send_method(ch, M.BasicCancelOk(consumer_tag=m.consumer_tag))
    if c is not None:
        a.domain.remove_consumer(c)
    a.domain.qos.after_settle()


@handles(M.BasicGet)
def _basic_get(a: AMQP091Connection, ch: Channel, m: M.BasicGet) -> None:
    q = a.domain.queue_for(ch, m.queue)
    if not isinstance(q, Queue):

        def got_remote(res: Any) -> None:
            if not isinstance(res, list):
                a.domain.stats.get_empty += 1
                a.send_method(ch, M.BasicGetEmpty())
                return
            ref, redelivered, count, exrk, rawch, hsize, fmax, raw = res
            msg = Message(exrk, raw, rawch, hsize, fmax, ref)
            _write_get_ok(a, ch, q, msg, redelivered, count, m.no_ack)

        a.remote_call(ch, m, lambda cb: a.broker.router().get(q, m.no_ack, cb), got_remote)
        return
    got = q.get()
    if got is None:
        a.domain.stats.get_empty += 1
        a.send_method(ch, M.BasicGetEmpty())
        return
    msg, redelivered = got
    _write_get_ok(a, ch, q, msg, redelivered, q.message_count, m.no_ack)


def _write_get_ok(
    a: AMQP091Connection,
    ch: Channel,
    q: AnyQueue,
    msg: Message,
    redelivered: bool,
    count: int,
    no_ack: bool,
) -> None:
    tag = ch.take_get(q, msg, no_ack)  # type: ignore[arg-type]
    write_get_ok(
        a.engine.out, ch.number, tag, redelivered, msg.exrk, count, msg, a.engine.frame_max
    )
    a.engine.wake_once()


@handles(M.BasicReject)
def _basic_reject(a: AMQP091Connection, ch: Channel, m: M.BasicReject) -> None:
    ch.reject(m.delivery_tag, 0, m.requeue)
    a.domain.qos.after_settle()


@handles(M.BasicNack)
def _basic_nack(a: AMQP091Connection, ch: Channel, m: M.BasicNack) -> None:
    ch.reject(m.delivery_tag, m.multiple, m.requeue)
    a.domain.qos.after_settle()


@handles(M.BasicAck)
def _basic_ack(a: AMQP091Connection, ch: Channel, m: M.BasicAck) -> None:
    ch.ack(m.delivery_tag, m.multiple)
    a.domain.qos.after_settle()


def _recover(ch: Channel, requeue: bool, method: type[M.Method]) -> None:
    if not requeue:
        raise HardError(NOT_IMPLEMENTED, "requeue=false", method.CLASS_ID, method.METHOD_ID)
    ch.recover()
    ch.conn.qos.after_settle()


@handles(M.BasicRecover)
def _basic_recover(a: AMQP091Connection, ch: Channel, m: M.BasicRecover) -> None:
    _recover(ch, m.requeue, M.BasicRecover)
    a.send_method(ch, M.BasicRecoverOk())


@handles(M.BasicRecoverAsync)
def _basic_recover_async(a: AMQP091Connection, ch: Channel, m: M.BasicRecoverAsync) -> None:
    _recover(ch, m.requeue, M.BasicRecoverAsync)


# ---------------------------------------------------------------- channel class
@handles(M.ChannelFlow)
def _channel_flow(a: AMQP091Connection, ch: Channel, m: M.ChannelFlow) -> None:
    if not m.active:  # as RabbitMQ: consumers use prefetch instead
        raise HardError(NOT_IMPLEMENTED, "active=false", 20, 20)
    ch.flow = m.active
    a.send_method(ch, M.ChannelFlowOk(active=m.active))
    ch.update_active()


@handles(M.ChannelFlowOk)
def _channel_flow_ok(a: AMQP091Connection, ch: Channel, m: M.ChannelFlowOk) -> None:
    return None


@handles(M.AccessRequest)
def _access_request(a: AMQP091Connection, ch: Channel, m: M.AccessRequest) -> None:
    a.send_method(ch, M.AccessRequestOk(ticket=1))


# ---------------------------------------------------------------- tx / confirm
@handles(M.TxSelect)
def _tx_select(a: AMQP091Connection, ch: Channel, m: M.TxSelect) -> None:
    if ch.confirm:
        raise SoftError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode", 90, 10)
    ch.tx = True
    a.send_method(ch, M.TxSelectOk())


@handles(M.TxCommit)
def _tx_commit(a: AMQP091Connection, ch: Channel, m: M.TxCommit) -> None:
    if not ch.tx:
        raise SoftError(PRECONDITION_FAILED, "channel is not transactional", 90, 20)
    publishes, ch.tx_publishes = ch.tx_publishes, []
    acks, ch.tx_acks = ch.tx_acks, []
    # commit-ok only once the durable queues stored the persistent publishes: this
    # worker's, and those of the workers that own the other queues (their confirms)
    waiter = ConfirmWaiter() if publishes else None
    ch.tx = False
    try:
        for msg, exlen, flags in publishes:
            a.domain.publish(ch, msg, exlen, flags, waiter)
        for kind, tag, multiple, requeue in acks:
            if kind == 0:
                ch.ack(tag, multiple)
            else:
                ch.reject(tag, multiple, requeue)
    finally:
        ch.tx = True
    if waiter is None or not waiter.pending:
        a.send_method(ch, M.TxCommitOk())
        return
    done = a.suspend_until(ch)

    def stored(ok: bool) -> None:
        if ok:
            done(lambda: a.send_method(ch, M.TxCommitOk()))
        elif a.is_current(ch):
            a.hard_error(
                HardError(INTERNAL_ERROR, "tx.commit: a queue could not store the messages")
            )

    waiter.done = stored


@handles(M.TxRollback)
def _tx_rollback(a: AMQP091Connection, ch: Channel, m: M.TxRollback) -> None:
    if not ch.tx:
        raise SoftError(PRECONDITION_FAILED, "channel is not transactional", 90, 30)
    ch.tx_publishes.clear()
    ch.tx_acks.clear()
    a.send_method(ch, M.TxRollbackOk())


@handles(M.ConfirmSelect)
def _confirm_select(a: AMQP091Connection, ch: Channel, m: M.ConfirmSelect) -> None:
    if ch.tx:
        raise SoftError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode", 85, 10)
    ch.confirm = True
    if not m.nowait:
        a.send_method(ch, M.ConfirmSelectOk())
