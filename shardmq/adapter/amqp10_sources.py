"""AMQP 1.0 receiving links whose queue the broker makes for them: dynamic sources and
RabbitMQ 3's exchange sources (``/exchange/NAME/KEY``, ``/exchange/NAME``, ``/topic/KEY``).

Owns: ``attach_dynamic`` (a server-named exclusive queue, its address returned in the
attach answer, for request/reply) and ``attach_exchange`` (a server-named exclusive
auto-delete queue bound to the exchange with the key; the attach answer echoes the
address). Both answer the attach once the metadata ops are done (``complete_attach``),
on any worker: the sequencer places the queue, which may live on another worker than
the connection and the exchange.

Invariants:
- The queue is the link's: made for it, consumed only by it (exclusive to the
  connection), deleted with it (closed, lost, its session or connection ended:
  ``LinkConsumer.dynamic``, and the connection's exclusive queues). A link lost
  without a close is not kept for recovery then: its deliveries go with the queue.
- An exchange source checks, before anything is made, that the exchange exists
  (``amqp:not-found`` "no exchange 'X' in vhost 'V'") and the permissions RabbitMQ's
  queue.declare and queue.bind need (configure and write on the queue, read on the
  exchange, topic read on the key). A failed declare or bind refuses the link and
  leaves nothing behind.
- RabbitMQ 3.10's plugin (checked against it) names the queue ``amq.gen-...`` too
  but leaves it behind, neither exclusive nor auto-delete, after the link, the
  session and the connection are gone; it ends the whole session for a missing
  exchange. shardmq deletes the queue with the link and refuses only the link.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardmq.amqp.errors import AMQPError, SoftError
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.address import queue_address
from shardmq.amqp1.errors import LinkError
from shardmq.broker import metadata as md

if TYPE_CHECKING:
    from shardmq.adapter.amqp10 import AMQP10Connection
    from shardmq.amqp1.engine import Link, Session


def attach_dynamic(conn: AMQP10Connection, session: Session, link: Link, a: Any) -> None:
    """A dynamic receiver: a server-named exclusive queue, deleted with the link (or
    the connection), for request/reply; its address goes back in the answer."""
    domain = conn.domain
    name = md.server_named_queue()
    declare = md.DeclareQueue(
        domain.vhost.name, name, False, False, True, False, b"", domain.gid, True
    )
    _authorize(conn, [declare])

    def source() -> Any:
        src = T.Source(**{f.name: getattr(a.source, f.name) for f in T.Source.FIELDS})
        src.address = queue_address(name)
        return src

    _make(conn, session, link, a, name, [declare], source)


def attach_exchange(
    conn: AMQP10Connection, session: Session, link: Link, a: Any, exchange: str, key: str
) -> None:
    """A receiver from an exchange (RabbitMQ 3's address forms): a server-named
    exclusive auto-delete queue bound to ``exchange`` with ``key``, consumed by the
    link and deleted with it."""
    domain = conn.domain
    vh = domain.vhost
    if exchange not in vh.exchanges:
        raise LinkError(T.AMQP_ERROR_NOT_FOUND, f"no exchange '{exchange}' in vhost '{vh.name}'")
    name = md.server_named_queue()
    ops: list[md.Op] = [
        md.DeclareQueue(vh.name, name, False, False, True, True, b"", domain.gid, True),
        md.Bind(vh.name, True, name, exchange, key, b"", domain.gid),
    ]
    _authorize(conn, ops)
    _make(conn, session, link, a, name, ops, lambda: a.source)


def _authorize(conn: AMQP10Connection, ops: list[md.Op]) -> None:
    try:
        for op in ops:
            conn.domain.authz.check_op(op)
    except SoftError as exc:
        raise _link_error(exc) from None


def _make(
    conn: AMQP10Connection,
    session: Session,
    link: Link,
    a: Any,
    name: str,
    ops: list[md.Op],
    source: Callable[[], Any],
) -> None:
    """Run ``ops`` (the first declares queue ``name``) one after the other through the
    sequencer, then consume from the queue and answer the attach; a failure refuses
    the link and deletes the queue if it was made."""
    engine = conn.engine
    domain = conn.domain
    done = 0  # ops answered
    declared = False

    def answered(err: AMQPError | None, _result: Any) -> None:
        nonlocal done, declared
        if err is None and done == 0:
            declared = True
            domain.exclusive_queues.append(name)
        done += 1
        gone = link.detached or conn._closed
        if err is not None or gone:
            if declared:
                conn._delete_queue(name)
            if err is not None and not gone:
                engine.refuse_pending(session, link, a, _link_error(err))
            return
        if done < len(ops):
            conn.broker.sequencer.request(ops[done], answered)
            return
        try:
            reply = conn._consume(session, link, a, name, source())
        except LinkError as exc:
            conn._delete_queue(name)
            engine.refuse_pending(session, link, a, exc)
            return
        link.user.dynamic = name
        engine.complete_attach(session, link, reply)

    conn.broker.sequencer.request(ops[0], answered)


def _link_error(exc: AMQPError) -> LinkError:
    from shardmq.adapter.amqp10 import _link_error as convert

    return convert(exc)
