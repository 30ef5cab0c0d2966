"""A receiving link re-attached under the name of a lost one (AMQP 1.0 link recovery,
spec 2.6.13 "Resuming Deliveries"), on the adapter's side.

Owns: ``recover`` (the deliveries parked on this worker: the client's unsettled map
applied, ``amqp10_recovery.plan``), ``reclaim`` (parked on another worker: that worker
applies the map and requeues the rest; the attach is answered when it has),
``send_resumes`` (the resumed transfers, within the link's credit, before anything
else the link sends), ``pending`` (what a link lost again before its resumes went out
still holds), ``set_resumes``, ``reserve_tags``, ``fit_attach`` (the answer within the
peer's max-frame-size) and ``Resume`` (one resumed delivery).

Invariants:
- The broker's attach answer carries its unsettled map: every delivery-tag it had
  parked for the link (null, or the client's outcome it applied, without its error
  text; with the deliveries requeued by another worker: released); cut and marked
  incomplete when it would not fit in one frame of the peer's size.
- A resumed delivery keeps its delivery-tag on the wire (``LinkConsumer.wire_tags``,
  so that a link lost again parks it under the tag the client knows) and takes a new
  channel tag and a link credit; its outcome comes back as any delivery's.
- New deliveries' delivery-tags are above the resumed ones' (``reserve_tags``): a
  tag is unique among the link's unsettled deliveries.
- Resumes go out first: they are queued on the link (``LinkConsumer.resumes``) and
  sent as soon as there is credit (``after_attach``, ``on_flow``), before the
  deliveries waiting for credit and before the queue is asked for more.
- A link that is at-most-once now (sender settle mode settled) resumes nothing with a
  message: its deliveries go back to the queue and the client's undecided ones are
  aborted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from shardmq.adapter.amqp10_recovery import (
    Key,
    Parked,
    outcome_name,
    plain_outcome,
    plan,
    recovery_of,
    requeue,
)
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.convert import from_091_raw
from shardmq.amqp1.framing import write_frame
from shardmq.oplog import event

if TYPE_CHECKING:
    from shardmq.adapter.amqp10 import AMQP10Connection, LinkConsumer
    from shardmq.amqp1.engine import Link, Session
    from shardmq.broker.channel import AnyQueue
    from shardmq.message import Message

log = logging.getLogger("shardmq.amqp1")

ABORT: Any = object()  # a marker state: resume the delivery aborted (discarded)


class Resume:
    """One delivery to resume under its delivery-tag: with its message (``msg``), or
    settled with ``state`` (the client's outcome, applied), or aborted (``ABORT``)."""

    __slots__ = ("tag", "queue", "msg", "state")

    def __init__(self, tag: bytes, queue: AnyQueue | None, msg: Message | None, state: Any) -> None:
        self.tag = tag
        self.queue = queue
        self.msg = msg
        self.state = state


def set_resumes(c: LinkConsumer, resumes: list[Resume]) -> None:
    """The deliveries ``c``'s link resumes first, in this order."""
    c.resumes = resumes[::-1]  # a stack: the next one last
    reserve_tags(c, [r.tag for r in resumes])


def reserve_tags(c: LinkConsumer, tags: list[bytes]) -> None:
    """New deliveries on ``c``'s link get delivery-tags (the channel's tags, 8 bytes
    big-endian) above the resumed ones: a delivery-tag is unique among a link's
    unsettled deliveries."""
    ch = c.channel
    for tag in tags:
        if len(tag) == 8:
            ch.next_tag = max(ch.next_tag, int.from_bytes(tag, "big"))


def recover(conn: AMQP10Connection, c: LinkConsumer, parked: Parked) -> dict[bytes, Any]:
    """The deliveries parked here for ``c``'s link: the broker's unsettled map for the
    attach answer; resumes and resends queued on ``c``."""
    link = c.link
    p = plan(parked, link.peer_unsettled)
    reserve_tags(c, [tag for tag, _q, _m in parked])
    resumes = [Resume(tag, None, None, state) for tag, state in p.settled]
    if c.no_ack:  # at-most-once now: back to the queue; the client's undecided aborted
        requeue(p.resumed + p.resent)
        resumes += [Resume(tag, None, None, ABORT) for tag, _q, _m in p.resumed]
    else:
        resumes += [Resume(tag, q, m, None) for tag, q, m in p.resumed]
        c.resend = p.resent
    set_resumes(c, resumes)
    event(
        log,
        logging.INFO,
        "link_recovered",
        f"connection {conn.peer}: link '{link.name}' recovered: {len(parked)} unsettled, "
        f"{len(p.settled)} settled by the client's map, {len(p.resumed)} resumed, "
        f"{len(p.resent)} sent again",
    )
    return p.unsettled


def reclaim(
    conn: AMQP10Connection,
    session: Session,
    link: Link,
    slot: int,
    key: Key,
    answer: Any,
) -> None:
    """The key is parked on worker ``slot``: it applies the client's outcomes and
    requeues the rest; then ``answer(unsettled, resumes)`` builds the link and answers
    its attach (not if the link or connection went meanwhile)."""
    theirs = link.peer_unsettled or {}
    outcomes = {tag.hex(): name for tag, state in theirs.items() if (name := outcome_name(state))}

    def done(tags: list[bytes] | None) -> None:
        if link.detached or conn._closed or session.user is None:
            return
        unsettled: dict[bytes, Any] | None = None
        resumes: list[Resume] = []
        if tags:
            unsettled = {}
            for tag in tags:
                state = theirs.get(tag)
                if outcome_name(state) is not None:
                    state = plain_outcome(state)
                    resumes.append(Resume(tag, None, None, state))
                    unsettled[tag] = state
                else:
                    unsettled[tag] = T.Released()  # back in its queue
                    if tag in theirs:  # the client holds it: it discards it
                        resumes.append(Resume(tag, None, None, ABORT))
            settled = sum(1 for r in resumes if r.state is not ABORT)
            event(
                log,
                logging.INFO,
                "link_recovered",
                f"connection {conn.peer}: link '{link.name}' recovered from worker {slot}: "
                f"{len(tags)} unsettled, {settled} settled by the client's map, the others "
                "requeued",
            )
        answer(unsettled, resumes)

    hooks = recovery_of(conn.broker).hooks
    assert hooks is not None
    hooks.reclaim(slot, key, outcomes, done)


def fit_attach(reply: Any, max_frame: int) -> Any:
    """The attach answer within the peer's max-frame-size: a map too large for it is
    cut (halved until it fits) and marked ``incomplete-unsettled`` (spec 2.6.13)."""
    while reply.unsettled:
        frame = bytearray()
        write_frame(frame, 0, reply)
        if len(frame) <= max_frame:
            break
        items = list(reply.unsettled.items())
        reply.unsettled = dict(items[: len(items) // 2])
        reply.incomplete_unsettled = True
    return reply


def send_resumes(conn: AMQP10Connection, c: LinkConsumer) -> None:
    """Resumed transfers, while the link has credit."""
    link = c.link
    session = c.session
    engine = conn.engine
    st = session.user
    ch = st.ch
    while c.resumes and link.credit > 0 and not link.detached:
        r = c.resumes.pop()
        if r.msg is None or r.queue is None:
            if r.state is ABORT:
                engine.resume_transfer(session, link, r.tag, aborted=True)
            else:
                engine.resume_transfer(session, link, r.tag, settled=True, state=r.state)
            continue
        msg = r.msg
        ch.next_tag += 1
        tag = ch.next_tag
        ch.unacked[tag] = (c, r.queue, msg)
        c.unacked += 1
        ch.consumer_unacked += 1
        if c.wire_tags is None:
            c.wire_tags = {}
        c.wire_tags[tag] = r.tag
        raw = msg.raw
        payload = from_091_raw(raw[19 : 7 + msg.hsize], msg.properties, msg.body, msg.exrk, True)
        did = engine.resume_transfer(session, link, r.tag, payload)
        st.track(link, did, tag)


def pending(c: LinkConsumer) -> Parked:
    """The resumes of ``c`` not sent yet that hold a message (the link is gone)."""
    held: Parked = [
        (r.tag, r.queue, r.msg)
        for r in reversed(c.resumes)
        if r.msg is not None and r.queue is not None
    ]
    c.resumes = []
    return held
