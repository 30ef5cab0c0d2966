"""The AMQP 1.0 adapter: one client connection, from the 1.0 engine to the domain.

Owns: ``AMQP10Connection`` — it composes the sans-IO engine (``shardmq.amqp1.engine``:
frames, SASL, sessions, links, credit) with a ``BrokerConnection`` (login, vhost,
routing, consumers), and implements the engine's ``Handler`` (SASL PLAIN / ANONYMOUS /
EXTERNAL against the broker's users, PLAIN and EXTERNAL as ``[auth] mechanisms`` allow,
EXTERNAL only with a verified client certificate, the vhost from ``open.hostname`` ``vhost:NAME``,
a domain ``Channel`` per session, links to queues and exchanges, settlements; publishes
are its ``Publishing`` part, ``shardmq.adapter.amqp10_publish``), the domain's
``ClientLink`` and ``ChannelSink`` (deliveries as transfers; confirms as dispositions:
``Publishing.confirm``), and the I/O layer's connection interface (as
``AMQP091Connection``, its forwarding part in ``shardmq.adapter.iohooks.EngineIO``).
``LinkConsumer`` is the domain consumer of a link the broker sends on.

Invariants:
- Each session is one domain channel in confirm mode: an unsettled transfer from the
  client is answered with ``accepted`` once the broker has it (for a persistent message
  on a durable queue: once stored), ``rejected`` if it was refused; a settled one gets
  nothing; accepted publishes are settled in ranges. Messages are converted at this
  edge (``shardmq.amqp1.convert``'s ``to_091_cut`` / ``from_091_prefix``: bodies sliced,
  the rest converted once per distinct bytes, a publishing link's last message shape
  kept: ``amqp10_publish``): queues hold the 0-9-1 form. A sending
  link keeps its last conversion (``LinkConsumer.conv``) and reuses it while the next
  message has the same properties, exchange, routing key, redelivered flag and body
  size in one frame (one ``startswith``); a delivery is then the link's frame head, one
  pack, the kept sections and the body slice (``Engine.send_transfer_q``).
- Unsettled deliveries to the client: ``SessionState`` (a run of consecutive
  delivery-ids under consecutive channel tags, the rest in a dict). A disposition over
  the run's head settles the channel's oldest deliveries in one ``Channel.ack`` /
  ``reject`` with ``multiple`` when nothing older is unsettled on the channel (channel
  tags are handed out in order), else tag by tag.
- A link the broker sends on is a consumer whose readiness is its link credit: a local
  queue delivers only while credit remains; deliveries that arrive beyond it (from
  another worker's queue, bounded by the consumer's prefetch ``LINK_WINDOW``) wait in
  the link, in order, until credit comes. On a local queue the prefetch (unsettled
  deliveries) grows with the credit the client grants, up to ``MAX_LINK_WINDOW``.
- Outcomes: accepted = ack; rejected = reject (dead-lettered where configured);
  released and modified = requeue, modified with undeliverable-here = reject. A closed
  link's or ended session's unsettled deliveries go back to their queue; a link lost
  without being closed parks them (``amqp10_recovery``) for a re-attach under its name
  by the same container-id, on any worker (``amqp10_relink``: the client's unsettled
  map applied, deliveries resumed under their delivery-tags or sent again first).
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from time import monotonic, time
from typing import TYPE_CHECKING, Any

from shardmq.adapter import amqp10_relink as relink
from shardmq.adapter.amqp10_publish import LinkState, Publishing
from shardmq.adapter.amqp10_publish import link_error as _link_error
from shardmq.adapter.amqp10_recovery import Parked, recovery_of, requeue
from shardmq.adapter.amqp10_relink import Resume
from shardmq.adapter.amqp10_sources import attach_dynamic, attach_exchange
from shardmq.adapter.iohooks import EngineIO, IOHooks
from shardmq.amqp.codec import shortstr
from shardmq.amqp.errors import AMQPError, HardError, SoftError
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.address import source_of, target_of
from shardmq.amqp1.convert import from_091_prefix
from shardmq.amqp1.engine import Engine, Link, Session
from shardmq.amqp1.errors import AmqpError, LinkError, SessionError
from shardmq.amqp1.sections import data_header
from shardmq.broker import metadata as md
from shardmq.broker.channel import OUT_LIMIT, Channel
from shardmq.broker.connection import BrokerConnection, peer_host
from shardmq.broker.queue import Consumer, Queue
from shardmq.broker.remote import RemoteQueue
from shardmq.broker.xshard.records import DELIVER_ITEM
from shardmq.message import Message, new_message

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.net.tls import TLSPeer

log = logging.getLogger("shardmq.amqp1")

LINK_WINDOW = 256  # unsettled + waiting deliveries per sending link (its prefetch)
MAX_LINK_WINDOW = 4096  # ... raised up to this by the credit a local queue's link gets
_U64 = struct.Struct(">Q")  # a content header's body size


class LinkConsumer(Consumer):
    """The consumer of a link the broker sends on: ready while the link has credit."""

    __slots__ = ("link", "session", "waiting", "dynamic", "resend", "resumes", "wire_tags", "conv")

    def __init__(self, link: Link, session: Session, ch: Channel, q: Any, settled: bool) -> None:
        tag = f"amqp1:{session.channel}:{link.name}"
        super().__init__(tag, shortstr(tag[:255]), ch, q, settled, False, LINK_WINDOW, {}, 0)
        self.link = link
        self.session = session
        # deliveries that arrived beyond the link's credit: (tag, redelivered, message)
        self.waiting: deque[tuple[int, bool, Message]] = deque()
        self.dynamic = ""  # the queue made for the link (dynamic, exchange source)
        # link recovery (``amqp10_relink``): a lost link's deliveries to send again as
        # new ones once attached, those to resume under their delivery-tags first (a
        # stack: the next one last), and the delivery-tags of the resumed ones by
        # channel tag (made when the first is resumed)
        self.resend: Parked = []
        self.resumes: list[Resume] = []
        self.wire_tags: dict[int, bytes] | None = None
        # the last delivery's conversion, kept while the next ones share it
        # (``_conversion``)
        self.conv: tuple[bytes, bytes, bool, int, bytes] | None = None

    def ready(self) -> bool:
        return (
            self.channel.active
            and self.link.credit > len(self.waiting)
            and (self.no_ack or self.unacked < self.prefetch)
        )


class SessionState:
    """A session's domain channel and its unsettled deliveries both ways. Unsettled
    deliveries to the client are a run (consecutive delivery-ids on one link under
    consecutive channel tags: ``run_did``, ``run_tag``, ``run_n``, ``run_link``, no
    object per delivery) and ``outgoing`` for the others (a delivery that does not
    continue the run spills it there)."""

    __slots__ = ("ch", "confirms", "outgoing", "run_did", "run_tag", "run_n", "run_link")

    def __init__(self, ch: Channel) -> None:
        self.ch = ch
        # confirm seq of an unsettled publish -> (link, delivery-id)
        self.confirms: dict[int, tuple[Link, int]] = {}
        # delivery-id of an unsettled delivery to the client -> (channel tag, link)
        self.outgoing: dict[int, tuple[int, Link]] = {}
        self.run_did = 0  # delivery-id of the run's first delivery
        self.run_tag = 0  # its channel tag
        self.run_n = 0  # deliveries in the run (0: none)
        self.run_link: Link | None = None

    def track(self, link: Link, did: int, tag: int) -> None:
        """An unsettled delivery to the client."""
        n = self.run_n
        if n:
            if (
                self.run_link is link
                and self.run_tag + n == tag
                and self.run_did + n == did  # (a run never wraps: one at 2**32 - 1 ends it)
            ):
                self.run_n = n + 1
                return
            self.spill()
        self.run_did = did
        self.run_tag = tag
        self.run_n = 1
        self.run_link = link

    def spill(self) -> None:
        """The run's deliveries into ``outgoing``."""
        did, tag, link = self.run_did, self.run_tag, self.run_link
        assert link is not None
        out = self.outgoing
        for i in range(self.run_n):
            out[did + i] = (tag + i, link)
        self.run_n = 0
        self.run_link = None

    def take(self, first: int, last: int) -> tuple[int, int, list[int]]:
        """The unsettled deliveries ``first..last`` leave: (first and last tag of the
        run's part, the tags of the others); (0, -1, ...) when the run has none."""
        ta, tb = 0, -1
        n = self.run_n
        if n:
            rd = self.run_did
            re = rd + n - 1
            if first <= rd <= last:  # the run's head: consecutive tags, no lookups
                k = min(last, re) - rd + 1
                ta = self.run_tag
                tb = ta + k - 1
                if k == n:
                    self.run_n = 0
                    self.run_link = None
                else:
                    self.run_did = rd + k
                    self.run_tag = tb + 1
                    self.run_n = n - k
            elif rd < first <= re:
                self.spill()
        tags: list[int] = []
        out = self.outgoing
        if out:
            span = last - first + 1
            if span <= len(out):
                dids: Any = range(first, last + 1)
            else:
                dids = sorted(d for d in out if first <= d <= last)
            for did in dids:
                entry = out.pop(did, None)
                if entry is not None:
                    tags.append(entry[0])
        return ta, tb, tags

    def drop_link(self, link: Link) -> list[int]:
        """The tags of ``link``'s unsettled deliveries, which leave, in the order they
        were sent (``outgoing`` holds the ones before the run, in order)."""
        out = self.outgoing
        mine = [did for did, (_t, lk) in out.items() if lk is link]
        tags = [out.pop(did)[0] for did in mine]
        if self.run_link is link:
            tags += range(self.run_tag, self.run_tag + self.run_n)
            self.run_n = 0
            self.run_link = None
        return tags


class AMQP10Connection(Publishing, EngineIO[Engine]):
    """One AMQP 1.0 client connection (see the module block)."""

    def __init__(
        self,
        broker: Broker,
        peer: str,
        io: IOHooks,
        wake: Callable[[], None],
        tls: TLSPeer | None = None,
    ) -> None:
        s = broker.config.amqp1
        self.broker = broker
        self.settings = s
        self.peer = peer
        self.io = io
        self.tls = tls
        self.engine = Engine(
            self,
            wake,
            peer=peer,
            container_id=f"shardmq-{broker.slot}",
            max_frame_size=s.max_frame_size,
            channel_max=s.channel_max,
            idle_time_out=s.idle_time_out,
            session_window=s.session_window,
            max_message_size=broker.config.amqp.max_message_size,
        )
        self.domain = BrokerConnection(broker, peer, self)
        self.confirms_due = False
        self._closed = False
        self._opened = False
        self.connected_at = time()  # for the management API's listing
        self.auth_mechanism = ""  # the mechanism of the accepted login

    # ------------------------------------------------------------ I/O layer side
    # (the rest of it: ``EngineIO``)
    def connection_lost(self) -> None:
        self.engine.connection_lost()
        self.on_close()

    @property
    def heartbeat(self) -> float:
        """Seconds between two ``heartbeat_tick`` calls, doubled (the I/O layer ticks
        every half of it)."""
        return self.engine.tick_seconds() * 2

    def management_fields(self) -> dict[str, Any]:
        """The protocol's part of this connection's management row
        (``workers.conn_ops``): RabbitMQ's "AMQP 1-0", and its sessions and links."""
        engine = self.engine
        sessions = [s for s in engine.sessions.values() if not s.ending]
        return {
            "protocol": "AMQP 1-0",
            "timeout": engine.idle_time_out // 1000,
            "frame_max": engine.send_max_frame,
            "channel_max": engine.channel_max,
            "client_properties": {"container_id": engine.remote_container_id},
            "sessions": len(sessions),
            "links": sum(1 for s in sessions for lk in s.links.values() if not lk.detached),
        }

    # ------------------------------------------------------------ SASL, open
    def mechanisms(self) -> list[str]:
        # [auth] mechanisms as for 0-9-1: EXTERNAL only with a verified client certificate
        allowed = self.broker.config.auth.mechanisms
        external = self.tls is not None and self.tls.user is not None
        mechs: list[str] = [
            m for m in ("EXTERNAL", "PLAIN") if m in allowed and (m != "EXTERNAL" or external)
        ]
        if self.settings.anonymous:
            mechs.append("ANONYMOUS")
        return mechs

    def authenticate(self, mechanism: str, response: bytes) -> bool:
        self.auth_mechanism = mechanism
        domain = self.domain
        if mechanism == "EXTERNAL":
            user = self.tls.user if self.tls is not None else None
            return user is not None and domain.login_external(user)
        if mechanism == "ANONYMOUS":
            return self._anonymous()
        parts = response.split(b"\x00")
        if len(parts) != 3:
            return False
        ok = domain.login(parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace"))
        if not ok:
            delay = self.broker.auth_throttle.failed(peer_host(domain.peer), monotonic())
            self.io.hold(delay)
        return ok

    def _anonymous(self) -> bool:
        user = self.settings.anonymous_user
        if user not in self.broker.metadata.access.users:
            log.warning("connection %s: ANONYMOUS user '%s' does not exist", self.peer, user)
            return False
        self.domain.user = user
        return True

    def allow_no_sasl(self) -> bool:
        return self.settings.anonymous and self._anonymous()

    def on_open(self, hostname: str | None) -> None:
        vhost = "/"
        if hostname and hostname.startswith("vhost:"):
            vhost = hostname[6:]
        try:
            self.domain.open(vhost)
        except HardError as exc:
            cond = (
                T.AMQP_ERROR_NOT_FOUND
                if "not found" in exc.text
                else T.AMQP_ERROR_UNAUTHORIZED_ACCESS
                if "refused" in exc.text
                else T.AMQP_ERROR_RESOURCE_LIMIT_EXCEEDED
            )
            raise AmqpError(cond, exc.text) from None
        self._opened = True
        self.io.tuned()  # idle time-out ticks may start

    # ------------------------------------------------------------ sessions
    def on_begin(self, session: Session) -> None:
        ch = self.domain.open_channel(session.channel, self)
        ch.confirm = True
        session.user = SessionState(ch)

    def on_end(self, session: Session) -> None:
        st: SessionState | None = session.user
        if st is None:
            return
        session.user = None
        st.confirms.clear()
        if not self._closed:
            self.domain.close_channel(st.ch)

    # ------------------------------------------------------------ links
    def on_attach(self, session: Session, link: Link, a: Any) -> Any:
        if link.role:  # the client publishes
            target = a.target
            if target is not None and not isinstance(target, T.Target):
                raise LinkError(T.AMQP_ERROR_NOT_IMPLEMENTED, "transactions are not supported")
            if target is not None and target.dynamic:
                raise LinkError(T.AMQP_ERROR_NOT_IMPLEMENTED, "dynamic targets are not supported")
            address = target.address if target is not None else None
            if address is None:
                link.user = LinkState("", None, True)
            else:
                t = target_of(str(address))
                vh = self.domain.vhost
                if t.queue is not None and t.queue not in vh.queues:
                    raise LinkError(
                        T.AMQP_ERROR_NOT_FOUND, f"no queue '{t.queue}' in vhost '{vh.name}'"
                    )
                if t.queue is None and t.exchange not in vh.exchanges:
                    raise LinkError(
                        T.AMQP_ERROR_NOT_FOUND, f"no exchange '{t.exchange}' in vhost '{vh.name}'"
                    )
                link.user = LinkState(t.exchange, t.key, False)
            return T.Attach(
                name=a.name,
                handle=link.handle,
                role=True,
                snd_settle_mode=a.snd_settle_mode,
                rcv_settle_mode=a.rcv_settle_mode,
                source=a.source,
                target=a.target,
                max_message_size=self.broker.config.amqp.max_message_size,
            )
        source = a.source
        if not isinstance(source, T.Source):
            raise LinkError(T.AMQP_ERROR_INVALID_FIELD, "a receiving link needs a source")
        if source.dynamic:
            attach_dynamic(self, session, link, a)
            return None  # answered once the queue is declared
        if source.address is None:
            raise LinkError(T.AMQP_ERROR_INVALID_FIELD, "the source has no address")
        src = source_of(str(source.address))
        if src.queue is None:  # an exchange: a queue of the link's own, bound to it
            attach_exchange(self, session, link, a, src.exchange, src.key)
            return None  # answered once the queue is declared and bound
        return self._consume(session, link, a, src.queue, a.source, recover=True)

    def _consume(
        self, session: Session, link: Link, a: Any, name: str, source: Any, recover: bool = False
    ) -> Any:
        """The reply to the attach of a link consuming from queue ``name`` (with
        ``recover``: what a lost link of its name left unsettled comes back to it)."""
        st: SessionState = session.user
        try:
            q = self.domain.queue_for(st.ch, name)
        except SoftError as exc:
            raise _link_error(exc) from None
        if isinstance(q, Queue) and q.consumers and q.exclusive_consumer():
            raise LinkError(
                T.AMQP_ERROR_RESOURCE_LOCKED,
                f"queue '{q.name}' in vhost '{q.vhost}' in exclusive use",
            )
        settled = link.snd_settle_mode == T.SENDER_SETTLE_MODE_SETTLED
        parked: Parked | None = None
        if recover:
            key = self._recovery_key(link)
            registry = recovery_of(self.broker)
            parked = registry.take(key)
            slot = registry.elsewhere(key) if parked is None else None
            if slot is not None:  # parked on another worker: answered once it let go

                def answer(unsettled: dict[bytes, Any] | None, resumes: list[Resume]) -> None:
                    st2: SessionState = session.user
                    c = link.user = LinkConsumer(link, session, st2.ch, q, settled)
                    relink.set_resumes(c, resumes)
                    reply = self._consumer_attach(link, a, source, unsettled)
                    self.engine.complete_attach(session, link, reply)

                relink.reclaim(self, session, link, slot, key, answer)
                return None
        c = link.user = LinkConsumer(link, session, st.ch, q, settled)
        unsettled = relink.recover(self, c, parked) if parked else None
        return self._consumer_attach(link, a, source, unsettled)

    def _consumer_attach(
        self, link: Link, a: Any, source: Any, unsettled: dict[bytes, Any] | None
    ) -> Any:
        reply = T.Attach(
            name=a.name,
            handle=link.handle,
            role=False,
            snd_settle_mode=a.snd_settle_mode,
            rcv_settle_mode=a.rcv_settle_mode,
            source=source,
            target=a.target,
            unsettled=unsettled,
            initial_delivery_count=0,
        )
        return relink.fit_attach(reply, self.engine.send_max_frame) if unsettled else reply

    def _recovery_key(self, link: Link) -> tuple[str, str, str]:
        return (self.domain.vhost.name, self.engine.remote_container_id, link.name)

    def _delete_queue(self, name: str) -> None:
        domain = self.domain
        if name in domain.exclusive_queues:
            domain.exclusive_queues.remove(name)
        self.broker.sequencer.fire(md.DeleteQueue(domain.vhost.name, name, False, False, 0))

    def after_attach(self, session: Session, link: Link) -> None:
        if link.role:
            self.engine.grant(session, link, self.settings.link_credit)
            return
        c: LinkConsumer = link.user
        st: SessionState = session.user
        st.ch.consumers[c.tag] = c
        if c.resumes:  # link recovery: resumed deliveries first, then the resent ones
            relink.send_resumes(self, c)
        if c.resend and not c.no_ack:
            # recovered deliveries go first, as redelivered, on this link's channel
            ch = st.ch
            for _tag, queue, msg in c.resend:
                ch.next_tag += 1
                ch.unacked[ch.next_tag] = (c, queue, msg)
                c.unacked += 1
                ch.consumer_unacked += 1
                self.deliver(ch, c, ch.next_tag, True, msg)
        elif c.resend:  # an at-most-once link now: they go back to the queue
            requeue(c.resend)
        c.resend = []
        q = c.queue
        if isinstance(q, RemoteQueue):

            def answered(err: AMQPError | None, _res: Any) -> None:
                if err is None:
                    return
                st.ch.consumers.pop(c.tag, None)
                q.local_consumers.pop((self.domain.gid, st.ch.number, c.tag), None)
                if link.user is c and not link.detached:
                    exc = _link_error(err) if isinstance(err, SoftError) else None
                    self.engine.detach_link(session, link, exc)

            self.broker.router().consume(q, c, answered)
        else:
            q.add_consumer(c)

    def on_detach(self, session: Session, link: Link, error: Any) -> None:
        st: SessionState | None = session.user
        if st is None:
            return
        if link.role:
            for seq in [s for s, (lk, _d) in st.confirms.items() if lk is link]:
                del st.confirms[seq]
            return
        c = link.user
        if not isinstance(c, LinkConsumer):
            return
        if not self._closed:
            self.domain.remove_consumer(c)
            if c.dynamic:
                self._delete_queue(c.dynamic)
        tags = st.drop_link(link)
        held = relink.pending(c) if c.resumes else []  # resumes not sent yet
        if link.lost and not c.dynamic and self.settings.link_recovery_timeout > 0:
            self._park(st.ch, c, tags, held)
            tags = []
        elif held:
            requeue(held)
        tags += [tag for tag, _r, _m in c.waiting if not c.no_ack]
        c.waiting.clear()
        for tag in tags:
            if tag in st.ch.unacked:
                st.ch.reject(tag, 0, True)
        self.domain.qos.after_settle()

    def _park(self, ch: Channel, c: LinkConsumer, tags: list[int], held: Parked) -> None:
        """Link recovery: the deliveries a lost link's client has not settled leave
        the channel (closing it will not requeue them) and wait for a re-attach, under
        the delivery-tags the client knows (``held``: resumes not sent yet)."""
        parked: Parked = []
        wire = c.wire_tags or {}
        for tag in tags:
            entry = ch.unacked.pop(tag, None)
            if entry is None:
                continue
            consumer, queue, msg = entry
            if consumer is not None:
                consumer.unacked -= 1
                ch.consumer_unacked -= 1
            parked.append((wire.get(tag) or tag.to_bytes(8, "big"), queue, msg))
        parked += held  # after the sent ones: resumes go first
        if parked:
            recovery_of(self.broker).park(self._recovery_key(c.link), parked)

    # ------------------------------------------------------------ credit
    def on_flow(self, session: Session, link: Link, drain: bool) -> None:
        c = link.user
        if not isinstance(c, LinkConsumer):
            return
        if c.resumes:  # link recovery: resumed deliveries go first
            relink.send_resumes(self, c)
        self._send_waiting(c)
        q = c.queue
        if isinstance(q, Queue) and link.credit > 0:
            if link.credit > c.prefetch:  # unsettled deliveries may reach the credit given
                c.prefetch = min(link.credit, MAX_LINK_WINDOW)
            q.dispatch()
        if drain and link.credit > 0 and not link.detached:
            self.engine.drained(session, link)

    def _send_waiting(self, c: LinkConsumer) -> None:
        link = c.link
        sent = 0
        while c.waiting and link.credit > 0 and not link.detached:
            tag, redelivered, msg = c.waiting.popleft()
            self._transfer(c, tag, redelivered, msg)
            sent += 1
        if sent and c.no_ack and isinstance(c.queue, RemoteQueue):
            # settled deliveries from another worker: its credit for them returns now
            # that they reached the socket (``deliver_remote`` did not count them)
            due = self.domain.credit_due
            due[c] = due.get(c, 0) + sent

    def _session_of(self, ch: Channel) -> Session | None:
        for s in self.engine.sessions.values():
            st = s.user
            if st is not None and st.ch is ch:
                return s
        return None

    def deliver(
        self, ch: Channel, consumer: Consumer, tag: int, redelivered: bool, msg: Message
    ) -> None:
        if not isinstance(consumer, LinkConsumer):
            return
        link = consumer.link
        if link.credit <= 0 or consumer.waiting or link.detached:
            consumer.waiting.append((tag, redelivered, msg))
            return
        self._transfer(consumer, tag, redelivered, msg)

    def _transfer(self, c: LinkConsumer, tag: int, redelivered: bool, msg: Message) -> None:
        raw = msg.raw
        hsize = msg.hsize
        n = len(raw) - 16 - hsize  # the body's size if it is in one frame
        cc = c.conv
        if (
            cc is not None
            and cc[3] == n
            and cc[2] is redelivered
            and len(cc[0]) == hsize - 4
            and raw.startswith(cc[0], 11)  # body size n (so one body frame), properties
            and msg.exrk == cc[1]
        ):
            body = raw[15 + hsize : -1]
        else:
            if n >= 0 and _U64.unpack_from(raw, 11)[0] == n:
                body = raw[15 + hsize : -1]
            else:
                body = msg.body
                n = len(body)
            cc = c.conv = _conversion(msg, redelivered, n)
        engine = self.engine
        link = c.link
        did = engine.send_transfer_q(c.session, link, tag, c.no_ack, cc[4], body)
        if not c.no_ack:
            st = c.session.user
            k = st.run_n
            if k and st.run_link is link and st.run_tag + k == tag and st.run_did + k == did:
                st.run_n = k + 1  # ``SessionState.track``'s common case
            else:
                st.track(link, did, tag)
        if len(engine.out) > OUT_LIMIT:
            self.domain.out_full()

    def deliver_remote(self, ch: Channel, consumer: Consumer, record: bytes, pos: int) -> int:
        unpack = DELIVER_ITEM.unpack_from
        isize = DELIVER_ITEM.size
        end = len(record)
        n = 0
        waiting = consumer.waiting if isinstance(consumer, LinkConsumer) else None
        while pos < end:
            _r, flags, exlen, rawch, hsize, fmax, rlen = unpack(record, pos)
            pos += isize
            exrk = record[pos : pos + exlen]
            raw = record[pos + exlen + 1 : pos + exlen + 1 + rlen]
            pos += exlen + 1 + rlen
            ch.next_tag += 1
            before = len(waiting) if waiting is not None else 0
            msg = new_message(exrk, raw, rawch, hsize, fmax, 0)
            self.deliver(ch, consumer, ch.next_tag, bool(flags & 1), msg)
            if waiting is None or len(waiting) == before:
                n += 1  # sent: its credit returns to the owner (held ones: when sent)
        return n

    def returned(self, ch: Channel, code: int, text: str, msg: Message) -> None:
        pass  # never mandatory

    def close_channel(self, ch: Channel, code: int, text: str) -> None:
        session = self._session_of(ch)
        if session is not None:
            self.engine.end_session(session, SessionError(T.AMQP_ERROR_PRECONDITION_FAILED, text))

    # ------------------------------------------------------------ settlements
    def on_disposition(self, session: Session, d: Any) -> None:
        st: SessionState = session.user
        first = int(d.first)
        last = int(d.last) if d.last is not None else first
        if last < first or last - first > 1_000_000:
            raise SessionError(T.AMQP_ERROR_INVALID_FIELD, f"disposition range {first}..{last}")
        if not d.role:  # the client settles its own publishes (the engine's records)
            return
        state = d.state
        if not d.settled and state is None:
            return  # no outcome yet
        ch = st.ch
        ta, tb, tags = st.take(first, last)
        # None: accepted (or settled without an outcome) = ack; else reject, requeue or not
        requeue: bool | None = None
        if isinstance(state, T.Rejected):
            requeue = False
        elif isinstance(state, T.Released):
            requeue = True
        elif isinstance(state, T.Modified):
            requeue = not state.undeliverable_here
        unacked = ch.unacked
        for tag in tags:
            if tag in unacked:
                if requeue is None:
                    ch.ack(tag, 0)
                else:
                    ch.reject(tag, 0, requeue)
        if ta <= tb:
            if unacked and next(iter(unacked)) >= ta and tb in unacked:
                # the channel's oldest unsettled deliveries, up to tb: one settle
                if requeue is None:
                    ch.ack(tb, 1)
                else:
                    ch.reject(tb, 1, requeue)
            else:
                for tag in range(ta, tb + 1):
                    if tag in unacked:
                        if requeue is None:
                            ch.ack(tag, 0)
                        else:
                            ch.reject(tag, 0, requeue)
        if not d.settled:
            # receiver-settle-mode second: the broker settles after the outcome
            self.engine.disposition(session, first, last, True, state, role=False)
        self.domain.qos.after_settle()

    def on_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.domain.closed()

    # ------------------------------------------------------------ ClientLink
    def set_reading(self, active: bool) -> None:
        self.io.set_reading(active)

    def blocked(self, on: bool, reason: str) -> None:
        pass  # AMQP 1.0 has no connection.blocked: reading stops, credit is not renewed

    def consumer_cancelled(self, c: Consumer) -> None:
        if isinstance(c, LinkConsumer) and not c.link.detached:
            self.engine.detach_link(
                c.session,
                c.link,
                LinkError(T.AMQP_ERROR_RESOURCE_DELETED, f"queue '{c.queue.name}' was deleted"),
            )

    def close(self, code: int, text: str) -> None:
        self.engine.server_close(T.CONNECTION_ERROR_CONNECTION_FORCED, text)

    def confirms_waiting(self) -> None:
        self.confirms_due = True
        self.engine.wake_once()


def _conversion(msg: Message, redelivered: bool, n: int) -> tuple[bytes, bytes, bool, int, bytes]:
    """A ``LinkConsumer.conv`` for ``msg`` with an ``n``-byte body: (its content
    header's body size and property bytes, exrk, redelivered, n, the sections before
    the body); the first is ``n`` only when the body is one frame (the message's raw
    frames are then its header, the size, those properties and the body frame)."""
    raw = msg.raw
    props_raw = raw[19 : 7 + msg.hsize]
    prefix, raw_body = from_091_prefix(props_raw, msg.properties, msg.exrk, redelivered)
    head = prefix if raw_body else prefix + data_header(n)
    one_frame = len(raw) - 16 - msg.hsize == n
    return (raw[11:19] + props_raw, msg.exrk, redelivered, n if one_frame else -1, head)
