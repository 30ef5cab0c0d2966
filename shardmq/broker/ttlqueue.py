"""The lean path of a queue whose only per-message feature is one queue-level TTL.

Owns: ``uniform_ttl`` (which settings qualify) and ``publish`` / ``dispatch`` for a
``Queue`` in mode ``TTL`` (``Queue.features``): ``x-message-ttl`` (argument or policy),
optionally with ``x-expires`` and a dead-letter exchange, no length limit, not a quorum
queue, and no message with its own ``expiration`` has entered it. Everything else
(basic.get, requeue, the TTL timer, expiring in slices, dead-lettering) is
``qfeatures``'s, which handles such a queue as well.

Invariants:
- With one TTL for every message, deadlines follow arrival order: the queue keeps one
  timer, armed for the head's deadline (``qfeatures.arm_head``), never one per message;
  when it fires, ``qfeatures`` expires the due heads and re-arms it for the next head.
- The clock is read once per loop turn (``expiry.turn_ms``): a message is stamped
  (``Message.ts``) when it enters the store (or, for a durable queue, also when it goes
  straight to a consumer: the store writes the stamp); a message taken from the store
  is due when ``ts <= now - ttl``. A message never stamped (``ts`` 0: handed straight
  to a consumer, then requeued) is stamped when first checked, as ``qfeatures`` does.
- The first due message a dispatch meets hands the rest of that dispatch to
  ``qfeatures.dispatch`` (slices, timer), so expiry behaves exactly as on the general
  path; a queue leaves mode ``TTL`` for good (``FULL``) when a message with its own
  ``expiration`` arrives or its settings stop qualifying (``Queue.apply_settings``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardmq.broker import qfeatures
from shardmq.broker.expiry import turn_ms
from shardmq.broker.qargs import QueueSettings
from shardmq.broker.qfeatures import FULL, PLAIN, TTL
from shardmq.broker.storage import ConfirmTarget
from shardmq.message import Message

if TYPE_CHECKING:
    from shardmq.broker.queue import Queue


def uniform_ttl(s: QueueSettings) -> bool:
    """The settings ask for nothing per message but one queue-level TTL."""
    return (
        s.message_ttl is not None
        and s.max_length is None
        and s.max_length_bytes is None
        and not s.quorum
    )


def mode(current: int, s: QueueSettings) -> int:
    """The queue's mode once its settings become ``s``: ``FULL`` is sticky (a message
    with its own expiration may be in the store), ``TTL`` only goes to ``FULL``."""
    if current == FULL:
        return FULL
    if uniform_ttl(s):
        return TTL
    if current == PLAIN and not s.any:
        return PLAIN
    return FULL


def publish(q: Queue, msg: Message, conf: ConfirmTarget | None) -> None:
    """``msg`` (without an ``expiration`` of its own) enters the TTL queue ``q``."""
    store = q.store
    if q.consumers:
        if not store:
            c = q._next_consumer()
            if c is not None:
                if q.durable and not msg.ts:
                    msg.ts = turn_ms()  # written with it: back after a crash, still absolute
                q._push_taken(msg, conf)
                c.channel.deliver(c, q, msg, False)
                return
        if not msg.ts:
            msg.ts = turn_ms()
        q._push(msg, conf)
        dispatch(q)
    else:
        if not msg.ts:
            msg.ts = turn_ms()
        q._push(msg, conf)
    timer = q.ttl_timer
    if (timer is None or timer.handle is None) and store:
        qfeatures.arm_head(q)


def dispatch(q: Queue) -> None:
    """Deliver ready messages while some consumer has credit; a due one goes to
    ``qfeatures`` (expired, dead-lettered) with the rest of the dispatch."""
    if q._dispatching or q.deleted:
        return
    store = q.store
    c = q._next_consumer() if store else None
    if c is None:  # nothing moves: only the publishers' release, as the plain path
        if q.throttled and len(store) <= q.release_at:
            q.release_publishers()
        return
    q._dispatching = True
    due = False
    try:
        redelivered = q.redelivered
        now = turn_ms()
        limit = now - (q.settings.message_ttl or 0)
        while True:
            msg = store.take()
            ts = msg.ts
            if ts <= limit:
                if ts:  # due: expired here, the rest as qfeatures dispatches
                    qfeatures.expire_taken(q, msg)
                    due = True
                    break
                msg.ts = now
            if redelivered and msg in redelivered:
                redelivered.discard(msg)
                q.st_redeliver += 1
                c.channel.deliver(c, q, msg, True)
            else:
                c.channel.deliver(c, q, msg, False)
            if not store:
                break
            c = q._next_consumer()
            if c is None:
                break
    finally:
        q._dispatching = False
    if due:
        qfeatures.dispatch(q, 1)
        return
    if q.throttled and len(store) <= q.release_at:
        q.release_publishers()
    timer = q.ttl_timer
    if (timer is None or timer.handle is None) and store:
        qfeatures.arm_head(q)
