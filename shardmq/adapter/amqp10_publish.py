"""Publishing over AMQP 1.0: a transfer on a link the client sends on -> the domain.

Owns: ``LinkState`` (a link the client publishes on: its exchange and routing key, and
the ``Shape`` of its last message) and ``Publishing``, the part of the adapter's
connection (``shardmq.adapter.amqp10.AMQP10Connection``) that takes the engine's
deliveries on those links (``on_message``, ``on_transfer``) and answers them
(``confirm``: the domain's publisher confirms as ``accepted`` / ``rejected``
dispositions, in ranges).

Invariants:
- A message is converted once per shape (``convert.to_091_cut``): the bytes before its
  body and its length. A link remembers the ``Shape`` of its last message: everything
  the publish needs but the body (exchange and routing key bytes, the 0-9-1 content
  header and body frame envelope); a message of the same length that starts with the
  same bytes is published from it with one join, without looking at its sections
  (same bytes before the body, same length: the same sections, one data section
  ending the message). Only messages that were accepted for routing make a shape: a
  refused one (user-id, no 'to', a bad address) goes the general way every time.
- A settled transfer is published outside confirm mode (nothing waits for it: no
  confirm sequence number, no store token); an unsettled one in it, answered by
  ``confirm``; the channel is left in confirm mode either way.
- The link's credit is topped up to ``[amqp1] link_credit`` once half of it is used.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any

from shardmq.amqp.codec import shortstr
from shardmq.amqp.errors import ACCESS_REFUSED, NOT_FOUND, AMQPError, SoftError
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.address import target_of
from shardmq.amqp1.codec import DecodeError
from shardmq.amqp1.convert import to_091_cut
from shardmq.amqp1.engine import Delivery, Engine, Link, Session
from shardmq.amqp1.errors import LinkError
from shardmq.amqp1.values import Symbol
from shardmq.message import Message, new_message, next_seq
from shardmq.oplog import event

if TYPE_CHECKING:
    from shardmq.amqp1.settings import AMQP1Settings
    from shardmq.broker.channel import Channel
    from shardmq.broker.connection import BrokerConnection

log = logging.getLogger("shardmq.amqp1")

_HEADER_CLASS = (60).to_bytes(2, "big") + b"\x00\x00"  # basic, weight 0
FRAME_MAX_091 = 131072
_FRAME_HDR = struct.Struct(">BHI")  # a 0-9-1 frame's type, channel, size
_FRAME_BODY_SEP = struct.Struct(">BBHI")  # frame-end, then the body frame's header
_CE = b"\xce"
_ACCEPTED = T.Accepted()


class Shape:
    """What a publish needs but the body, for the messages of a link that are
    ``size`` bytes long and start with ``lead`` (the body starts at ``len(lead)``)."""

    __slots__ = ("lead", "size", "cut", "head", "exrk", "exlen", "hsize", "fmax")

    def __init__(
        self, lead: bytes, size: int, head: bytes, exrk: bytes, exlen: int, hsize: int, n: int
    ) -> None:
        self.lead = lead
        self.size = size
        self.cut = len(lead)
        self.head = head  # the 0-9-1 content header frame, then the body frame's header
        self.exrk = exrk
        self.exlen = exlen
        self.hsize = hsize
        self.fmax = max(hsize, n)


class LinkState:
    """A link the client publishes on."""

    __slots__ = ("exchange", "key", "anonymous", "exrk", "shape")

    def __init__(self, exchange: str, key: str | None, anonymous: bool) -> None:
        self.exchange = exchange
        self.key = key
        self.anonymous = anonymous
        # the wire bytes of a fixed exchange and key (b"": not fixed, or too long)
        self.exrk = b""
        if key is not None and not anonymous:
            try:
                self.exrk = shortstr(exchange) + shortstr(key)
            except (ValueError, UnicodeEncodeError):
                pass
        self.shape: Shape | None = None  # of the last message converted


class Publishing:
    """The publishing part of the AMQP 1.0 connection (see the module block)."""

    engine: Engine
    domain: BrokerConnection
    settings: AMQP1Settings
    peer: str

    def _session_of(self, ch: Channel) -> Session | None:
        raise NotImplementedError

    def on_transfer(self, session: Session, link: Link, d: Delivery) -> None:
        self.on_message(session, link, d.delivery_id, d.settled, d.payload)

    def on_message(
        self, session: Session, link: Link, did: int, settled: bool, payload: bytes
    ) -> None:
        st = session.user
        ch: Channel = st.ch
        sh = link.user.shape
        if sh is not None and len(payload) == sh.size and payload.startswith(sh.lead):
            raw = b"".join((sh.head, payload[sh.cut :], _CE))
            msg = new_message(sh.exrk, raw, ch.number, sh.hsize, sh.fmax, next_seq())
            exlen = sh.exlen
        else:
            got = self._convert(session, link, ch, did, settled, payload)
            if got is None:
                return  # refused
            msg, exlen = got
        before = ch.confirm_seq
        ch.confirm = not settled  # a settled publish waits for nothing
        try:
            self.domain.publish(ch, msg, exlen, 0)
        except SoftError as exc:
            self._refuse(session, link, did, settled, link_error(exc).condition, exc.text)
            return
        finally:
            ch.confirm = True
        if not settled:
            if ch.confirm_seq != before:
                st.confirms[ch.confirm_seq] = (link, did)
            else:  # nothing to wait for
                self._settle_publish(session, link, did, _ACCEPTED)
        if link.credit <= self.settings.link_credit // 2 and not link.detached:
            self.engine.grant(session, link, self.settings.link_credit)

    def _convert(
        self, session: Session, link: Link, ch: Channel, did: int, settled: bool, payload: bytes
    ) -> tuple[Message, int] | None:
        """The 0-9-1 message of a transfer whose shape the link does not know (it
        learns it when it can), or None when it is refused."""
        ls: LinkState = link.user
        try:
            conv, body, cut = to_091_cut(payload)
        except DecodeError as exc:
            raise LinkError(T.AMQP_ERROR_DECODE_ERROR, f"message: {exc}") from None
        if conv.user_id is not None and conv.user_id != self.domain.user:
            text = (
                f"user_id property set to '{conv.user_id}' but authenticated user was "
                f"'{self.domain.user}'"
            )
            self._refuse(session, link, did, settled, T.AMQP_ERROR_UNAUTHORIZED_ACCESS, text)
            return None
        exchange, key = ls.exchange, ls.key
        if ls.anonymous:
            if conv.to is None:
                cond = T.AMQP_ERROR_PRECONDITION_FAILED
                self._refuse(session, link, did, settled, cond, "no 'to' address")
                return None
            try:
                t = target_of(conv.to)
            except LinkError as exc:
                self._refuse(session, link, did, settled, exc.condition, exc.description)
                return None
            exchange, key = t.exchange, t.key
        if key is None:
            key = conv.subject or ""
        exrk = ls.exrk if key is ls.key and ls.exrk else None
        if exrk is None:
            try:
                exrk = shortstr(exchange) + shortstr(key)
            except (ValueError, UnicodeEncodeError):
                cond = T.AMQP_ERROR_INVALID_FIELD
                self._refuse(session, link, did, settled, cond, "routing key too long")
                return None
        exlen = len(exchange.encode("utf-8")) + 1
        n = len(body)
        hsize = 12 + len(conv.props)
        if 0 < n <= FRAME_MAX_091 - 8:  # one body frame: the raw frames in one join
            head = b"".join(
                (
                    _FRAME_HDR.pack(2, ch.number, hsize),
                    _HEADER_CLASS,
                    n.to_bytes(8, "big"),
                    conv.props,
                    _FRAME_BODY_SEP.pack(0xCE, 3, ch.number, n),
                )
            )
            if cut >= 0:
                sh = Shape(payload[:cut], len(payload), head, exrk, exlen, hsize, n)
                ls.shape = sh
            fmax = hsize if hsize > n else n
            msg = new_message(exrk, head + body + _CE, ch.number, hsize, fmax, next_seq())
        else:
            header = _HEADER_CLASS + n.to_bytes(8, "big") + conv.props
            msg = Message.from_parts(exrk, header, body, next_seq(), ch.number, FRAME_MAX_091)
        return msg, exlen

    def _refuse(
        self, session: Session, link: Link, did: int, settled: bool, cond: str, text: str
    ) -> None:
        # a client can repeat this at will: a bounded operator event, not a line each
        event(
            log,
            logging.WARNING,
            "publish_refused",
            f"connection {self.peer}: publish on link '{link.name}' refused: {text}",
            peer=self.peer,
            link=link.name,
        )
        if not settled:
            err = T.Error(condition=Symbol(cond), description=text)
            self._settle_publish(session, link, did, T.Rejected(error=err))

    def _settle_publish(self, session: Session, link: Link, did: int, state: Any) -> None:
        # receiver-settle-mode second: the engine keeps the record until the client settles
        self.engine.settle_received(session, link, did, state)

    # ------------------------------------------------------------ ChannelSink
    def confirm(self, ch: Channel, seq: int, multiple: bool, ack: bool) -> None:
        session = self._session_of(ch)
        if session is None:
            return
        st = session.user
        confirms: dict[int, tuple[Link, int]] = st.confirms
        if multiple:
            # confirm numbers grow with each publish: the dict is in their order
            seqs = []
            for s in confirms:
                if s > seq:
                    break
                seqs.append(s)
        else:
            seqs = [seq] if seq in confirms else []
        state: Any = (
            _ACCEPTED
            if ack
            else T.Rejected(
                error=T.Error(condition=T.AMQP_ERROR_INTERNAL_ERROR, description="not stored")
            )
        )
        run: list[Any] = []  # [link, first, last]: consecutive ids settle as one range
        received = session.received_ids
        for s in seqs:
            link, did = confirms.pop(s)
            if link.detached:
                continue
            if link.rcv_settle_mode == T.RECEIVER_SETTLE_MODE_SECOND or did in received:
                self._settle_publish(session, link, did, state)  # kept until the peer settles
            elif run and run[0] is link and run[2] + 1 == did:
                run[2] = did
            else:
                if run:
                    self.engine.disposition(session, run[1], run[2], True, state)
                run = [link, did, did]
        if run:
            self.engine.disposition(session, run[1], run[2], True, state)


def link_error(exc: AMQPError) -> LinkError:
    """The AMQP 1.0 error of a domain refusal (its 0-9-1 reply code)."""
    if exc.reply_code == NOT_FOUND:
        return LinkError(T.AMQP_ERROR_NOT_FOUND, exc.text)
    if exc.reply_code == ACCESS_REFUSED:
        return LinkError(T.AMQP_ERROR_UNAUTHORIZED_ACCESS, exc.text)
    return LinkError(T.AMQP_ERROR_PRECONDITION_FAILED, exc.text)
