"""A queue's feature path: TTL, length limits, dead-lettering, queue expiry.

Owns: the per-message work of a ``Queue`` whose ``settings`` ask for something
(``Queue.features`` ``FULL``; a queue whose only such setting is its TTL publishes and
dispatches through ``ttlqueue`` instead, ``TTL``, and comes here for the rest), or that
holds a message with its own ``expiration``:
``publish``, ``dispatch``, ``get``, ``requeue``, expiring heads in slices
(``expire_due``, driven by the queue's TTL ``Timer``), dropping or rejecting over the
length limit, and the x-expires timer. A plain queue never comes here: its hot path
pays one flag test per publish and per dispatch.

Invariants (RabbitMQ's):
- An expired message is never delivered: every take checks the message's deadline
  (``ts`` + the smaller of the queue's and the message's TTL). Only the head expires
  by timer (a per-message TTL behind a longer one waits, as in RabbitMQ); the timer is
  armed for the head's deadline whenever the head can have changed.
- No loop turn expires more than one slice (``EXPIRE_SLICE`` messages or
  ``EXPIRE_BUDGET_S``): the timer continues on the next turn, and a dispatch that meets
  more due heads than that hands the rest to the timer, which dispatches again when
  they are gone (without an event loop, sans-IO, the dispatch expires them all).
- ``ready_bytes`` = body bytes of the ready messages (what ``x-max-length-bytes``
  limits), kept while the queue has that limit (``apply_settings`` recounts it).
- ``reject-publish``/``reject-publish-dlx``: a publish that would exceed a limit never
  enters (nacked under confirms); ``drop-head``: it enters, and heads are dropped
  (dead-lettered ``maxlen``) until the queue is within its limits again.
- A message leaving by expiry, maxlen or rejection is settled on the store by the
  dead-letterer once its copy is stored wherever it went (``QueueServices``), or at
  once when there is no dead-letter exchange.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from shardmq.broker.expiry import (
    EXPIRE_BUDGET_S,
    EXPIRE_CLOCK_MASK,
    EXPIRE_SLICE,
    Timer,
    message_ttl,
    now_ms,
    running_loop,
)
from shardmq.broker.storage import ConfirmTarget
from shardmq.message import Message

if TYPE_CHECKING:
    from shardmq.broker.queue import Queue

EXPIRED, MAXLEN, REJECTED = "expired", "maxlen", "rejected"

# ``Queue.features``: the plain path, ``ttlqueue``'s lean one (one queue-level TTL is the
# only per-message feature), or this module's
PLAIN, TTL, FULL = 0, 1, 2


def deadline(q: Queue, msg: Message) -> int | None:
    """When ``msg`` expires in ``q`` (wall-clock ms), or None."""
    ttl = q.settings.message_ttl
    if msg.raw[19] & 0x01:
        own = message_ttl(msg)
        if own is not None:
            ttl = own if ttl is None else min(ttl, own)
    if ttl is None:
        return None
    ts = msg.ts
    if not ts:
        ts = msg.ts = now_ms()
    return ts + ttl


def publish(q: Queue, msg: Message, conf: ConfirmTarget | None) -> None:
    q.features = FULL  # sticky: a message with its own TTL makes dispatch check
    s = q.settings
    store = q.store
    size = msg.body_size if s.max_length_bytes is not None else 0
    timed = msg.raw[19] & 0x01 or s.message_ttl is not None
    if s.limited and s.overflow != "drop-head" and _would_exceed(q, size):
        q.dropped += 1
        if conf is not None:
            _nack(conf)
        if s.overflow == "reject-publish-dlx":
            dead_letter(q, msg, MAXLEN, settle=False)
        return
    if q.consumers and not store:
        c = q._next_consumer()
        if c is not None:
            if timed and q.durable and not msg.ts:
                msg.ts = now_ms()  # written with it: back after a crash, still absolute
            q._push_taken(msg, conf)
            c.channel.deliver(c, q, msg, False)
            return
    if timed and not msg.ts:
        msg.ts = now_ms()  # before the store writes it: the deadline is absolute
    q._push(msg, conf)
    q.ready_bytes += size
    if s.limited:
        _drop_over_limit(q)
    if q.consumers:
        q.dispatch()
    if q.store and (q.ttl_timer is None or not q.ttl_timer.armed):
        arm_head(q)


def _would_exceed(q: Queue, size: int) -> bool:
    s = q.settings
    if s.max_length is not None and len(q.store) + 1 > s.max_length:
        return True
    return s.max_length_bytes is not None and q.ready_bytes + size > s.max_length_bytes


def _over_limit(q: Queue) -> bool:
    s = q.settings
    if s.max_length is not None and len(q.store) > s.max_length:
        return True
    return s.max_length_bytes is not None and q.ready_bytes > s.max_length_bytes


def enforce_limits(q: Queue) -> None:
    """The limits changed (a policy): drop heads over them now, as RabbitMQ does."""
    _drop_over_limit(q)


def _drop_over_limit(q: Queue) -> None:
    if q.settings.overflow != "drop-head":
        return
    store = q.store
    while store and _over_limit(q):
        msg = store.take()
        q.ready_bytes -= msg.body_size
        q.redelivered.discard(msg)
        q.dropped += 1
        dead_letter(q, msg, MAXLEN)


def _nack(conf: ConfirmTarget) -> None:
    """The publish is refused: its confirm becomes a nack (after the publish returns:
    a confirm target never hears back during one)."""
    target, key = conf.durable_token()
    loop = running_loop()
    if loop is not None:
        loop.call_soon(target.stored, key, False)


def dead_letter(q: Queue, msg: Message, reason: str, settle: bool = True) -> None:
    """``msg`` leaves ``q`` for ``reason``: dead-lettered if the queue has a DLX (the
    services settle it once the copy is stored), else settled now (``settle``: the
    message was in the queue; False for a publish that never entered)."""
    services = q.services
    if q.settings.dead_letter_exchange is not None and services is not None:
        q.dead_lettered += 1
        services.dead_letter(q, msg, reason, settle)
    elif settle:
        q.store.ack(msg)


def expire_taken(q: Queue, msg: Message) -> None:
    q.redelivered.discard(msg)
    q.expired += 1
    dead_letter(q, msg, EXPIRED)


def dispatch(q: Queue, expired: int = 0) -> None:
    """Deliver ready messages while some consumer has credit, expiring due ones (at
    most a slice; ``expired``: how many the caller expired already in this dispatch)."""
    if q._dispatching or q.deleted:
        return
    q._dispatching = True
    try:
        store = q.store
        redelivered = q.redelivered
        bytes_limited = q.settings.max_length_bytes is not None
        now = 0
        stop = time.perf_counter() + EXPIRE_BUDGET_S if expired else 0.0
        while store:
            c = q._next_consumer()
            if c is None:
                break
            msg = store.take()
            if bytes_limited:
                q.ready_bytes -= msg.body_size
            d = deadline(q, msg)
            if d is not None:
                if not now:
                    now = now_ms()
                if d <= now:
                    expire_taken(q, msg)
                    expired += 1
                    if expired == 1:
                        stop = time.perf_counter() + EXPIRE_BUDGET_S
                    elif (
                        expired >= EXPIRE_SLICE
                        or (not expired & EXPIRE_CLOCK_MASK and time.perf_counter() > stop)
                    ) and _continue_by_timer(q):
                        break
                    continue
            if redelivered and msg in redelivered:
                redelivered.discard(msg)
                q.st_redeliver += 1
                c.channel.deliver(c, q, msg, True)
            else:
                c.channel.deliver(c, q, msg, False)
    finally:
        q._dispatching = False
    if q.throttled and len(q.store) <= q.release_at:
        q.release_publishers()
    if q.store and (q.ttl_timer is None or not q.ttl_timer.armed):
        arm_head(q)


def get(q: Queue) -> tuple[Message, bool] | None:
    q.touch()
    store = q.store
    bytes_limited = q.settings.max_length_bytes is not None
    now = 0
    while store:
        msg = store.take()
        if bytes_limited:
            q.ready_bytes -= msg.body_size
        d = deadline(q, msg)
        if d is not None:
            if not now:
                now = now_ms()
            if d <= now:
                expire_taken(q, msg)
                continue
        redelivered = q.redelivered
        if redelivered and msg in redelivered:
            redelivered.discard(msg)
            return msg, True
        return msg, False
    return None


def requeued(q: Queue, msgs: list[Message]) -> None:
    """``msgs`` went back to the store (before the queue dispatches)."""
    if q.settings.max_length_bytes is not None:
        q.ready_bytes += sum(m.body_size for m in msgs)


def arm_head(q: Queue) -> None:
    """Arm the TTL timer for the head's deadline (if it has one)."""
    if q.deleted or not q.store:
        return
    d = deadline(q, q.store.peek())
    if d is None:
        return
    timer = q.ttl_timer
    if timer is None:
        timer = q.ttl_timer = Timer(lambda: _on_ttl_timer(q))
    timer.arm(d)


def expire_due(q: Queue, limit: int = EXPIRE_SLICE, budget: float = EXPIRE_BUDGET_S) -> bool:
    """Expire the heads whose deadline passed, at most ``limit`` and for about
    ``budget`` seconds; True when more are due (the caller continues on the next loop
    turn)."""
    store = q.store
    now = now_ms()
    n = 0
    stop = time.perf_counter() + budget
    while store:
        msg = store.peek()
        d = deadline(q, msg)
        if d is None or d > now:
            break
        if n >= limit or (not n & EXPIRE_CLOCK_MASK and n and time.perf_counter() > stop):
            return True
        store.take()
        if q.settings.max_length_bytes is not None:
            q.ready_bytes -= msg.body_size
        expire_taken(q, msg)
        n += 1
    if n and q.throttled and len(store) <= q.release_at:
        q.release_publishers()
    return False


def _continue_by_timer(q: Queue) -> bool:
    """A dispatch met a slice's worth of due heads: leave the rest to the TTL timer's
    slices (which dispatch again once done), so a consumer with room in front of
    100,000 due messages does not expire them all in one loop turn. False without an
    event loop (sans-IO: the dispatch then goes on)."""
    if running_loop() is None:
        return False
    timer = q.ttl_timer
    if timer is None:
        timer = q.ttl_timer = Timer(lambda: _on_ttl_timer(q))
    timer.soon()
    return True


def _on_ttl_timer(q: Queue) -> None:
    if q.deleted:
        return
    if expire_due(q):
        if q.ttl_timer is not None:
            q.ttl_timer.soon()
        return
    if q.consumers and q.store:
        q.dispatch()  # heads gone: a consumer with room takes what is live now
    arm_head(q)


# ---------------------------------------------------------------- x-expires
def arm_expires(q: Queue) -> None:
    """The queue is deleted once unused for ``settings.expires`` ms."""
    expires = q.settings.expires
    if expires is None or q.deleted:
        return
    timer = q.expires_timer
    if timer is None:
        timer = q.expires_timer = Timer(lambda: _on_expires_timer(q))
    timer.cancel()
    timer.arm(q.last_used + expires)


def _on_expires_timer(q: Queue) -> None:
    expires = q.settings.expires
    if q.deleted or expires is None:
        return
    now = now_ms()
    if q.consumers:
        q.last_used = now
    due = q.last_used + expires
    if due > now:
        assert q.expires_timer is not None
        q.expires_timer.arm(due)
        return
    if q.services is not None:
        q.services.delete_expired(q)


def stop_timers(q: Queue) -> None:
    for t in (q.ttl_timer, q.expires_timer):
        if t is not None:
            t.cancel()
