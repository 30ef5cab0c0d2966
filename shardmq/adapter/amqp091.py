"""The AMQP 0-9-1 adapter: one client connection, from the wire engine to the domain.

Owns: ``AMQP091Connection`` — it composes the sans-IO engine (``AMQPConnection``, which
owns frames and the handshake) with the domain's ``BrokerConnection`` (which owns
channels, consumers, flow control and routing), and implements the seams between them:
the engine's ``ConnectionHandler`` (SASL PLAIN/AMQPLAIN, vhost, channel open/close,
methods, publishes, acks), the domain's ``ClientLink`` (reading on/off,
connection.blocked, server-side basic.cancel, server close) and ``ChannelSink``
(basic.deliver, confirms, basic.return written as 0-9-1 frames), and the I/O layer's
``ClientConnection`` (``shardmq.net.server``; its forwarding part is
``shardmq.adapter.iohooks.EngineIO``, shared with the AMQP 1.0 adapter). Method handlers live in
``amqp091_methods``; channels suspended on another process's answer are completed here
(``submit`` / ``remote_call`` / ``complete``).

Invariants:
- The hot path stays raw: a publish reaches the domain as the received frame bytes
  (``Message.raw``), and a delivery is written from them (``codec.write_deliver``), one
  call each way beyond the engine.
- Replies to synchronous methods are written before any delivery they enable
  (consume-ok before the first basic.deliver), and before any server-side basic.cancel
  their method caused on the same channel (queue.delete-ok first, as RabbitMQ): a
  cancel for a channel whose method is running or suspended is held until its reply.
- A channel waiting for another process is suspended in the engine; its answer is
  dropped if the channel or the connection is gone by then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic, time
from typing import TYPE_CHECKING, Any

from shardmq.adapter.amqp091_methods import HANDLERS
from shardmq.adapter.iohooks import EngineIO, IOHooks
from shardmq.amqp import methods as M
from shardmq.amqp.codec import (
    FRAME_METHOD,
    deliver_start,
    write_confirm,
    write_deliver,
    write_return,
)
from shardmq.amqp.connection import EXPECT_SUSPENDED, OPEN, AMQPConnection, log_internal_error
from shardmq.amqp.errors import (
    INTERNAL_ERROR,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    AMQPError,
    HardError,
    SoftError,
)
from shardmq.amqp.fieldtable import decode_table
from shardmq.broker import metadata as md
from shardmq.broker.channel import OUT_LIMIT, Channel
from shardmq.broker.connection import BrokerConnection, peer_host
from shardmq.broker.qargs import parse_expiration
from shardmq.broker.queue import Consumer
from shardmq.broker.replyto import NEEDLE as REPLY_NEEDLE
from shardmq.broker.xshard.records import DELIVER_ITEM
from shardmq.message import Message, new_message, next_seq
from shardmq.oplog import event

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.net.tls import TLSPeer

log = logging.getLogger("shardmq.connection")

# A method's reply: a method, a function of the answer returning a method or None,
# or None (no-wait).
Reply = M.Method | Callable[[Any], "M.Method | None"] | None
Answer = Callable[[AMQPError | None, Any], None]


class AMQP091Connection(EngineIO["AMQPConnection[Channel]"]):
    """One AMQP 0-9-1 client connection (see the module block)."""

    def __init__(
        self,
        broker: Broker,
        peer: str,
        io: IOHooks,
        wake: Callable[[], None],
        tls: TLSPeer | None = None,
    ) -> None:
        cfg = broker.config.amqp
        self.io = io
        self.tls = tls  # None: plain TCP
        # EXTERNAL is offered only with a verified client certificate
        external = tls is not None and tls.user is not None
        self._mechanisms = tuple(
            m for m in broker.config.auth.mechanisms if m != "EXTERNAL" or external
        )
        self.engine: AMQPConnection[Channel] = AMQPConnection(
            self,
            wake,
            frame_max=cfg.frame_max,
            channel_max=cfg.channel_max,
            heartbeat=cfg.heartbeat,
            max_message_size=cfg.max_message_size,
            server_properties=broker.server_properties,
            peer=peer,
        )
        self.domain = BrokerConnection(broker, peer, self)
        self.broker = broker
        self.peer = peer
        self.confirms_due = False  # the domain has confirms to write before output
        self.connected_at = time()  # for the management API's listing
        self.auth_mechanism = ""  # the mechanism of the accepted login
        self._busy: Channel | None = None  # the channel whose method is being handled
        # server-side cancels held until the reply of their channel's current method
        self._held_cancels: list[Consumer] = []

    # ------------------------------------------------------------ I/O layer side
    # (the rest of it: ``EngineIO``)
    def connection_lost(self) -> None:
        self.engine.connection_lost()

    @property
    def heartbeat(self) -> int:
        return self.engine.heartbeat

    # ------------------------------------------------------------ engine side
    def mechanisms(self) -> tuple[str, ...]:
        return self._mechanisms

    def authenticate(self, mechanism: str, response: bytes) -> bool:
        self.auth_mechanism = mechanism
        if mechanism == "EXTERNAL":
            # the response is empty or an authorization identity: the certificate decides
            user_name = self.tls.user if self.tls is not None else None
            return user_name is not None and self.domain.login_external(user_name)
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
        ok = self.domain.login(user.decode("utf-8", "replace"), password.decode("utf-8", "replace"))
        if not ok:
            # repeated failures from one address: the refusal is held (brute force)
            delay = self.broker.auth_throttle.failed(peer_host(self.domain.peer), monotonic())
            self.io.hold(delay)
        return ok

    def on_tuned(self) -> None:
        self.io.tuned()

    def open_vhost(self, vhost: str) -> None:
        self.domain.open(vhost)
        engine = self.engine
        name = engine.client_properties.get("connection_name")
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        user = self.domain.user
        named = f" - {name}" if isinstance(name, str) and name else ""
        engine.label = f"{self.peer}{named} (vhost: '{vhost}', user: '{user}')"
        engine.log_fields = {
            "peer": self.peer,
            "user": user,
            "vhost": vhost,
            "connection_name": name if isinstance(name, str) else None,
        }
        event(
            log,
            logging.INFO,
            "connection_accepted",
            f"accepting AMQP connection {self.peer}{named}: user '{user}' authenticated and "
            f"granted access to vhost '{vhost}'",
            **engine.log_fields,
        )

    def on_channel_open(self, number: int) -> Channel:
        return self.domain.open_channel(number, self)

    def on_channel_closed(self, ch: Channel) -> None:
        if self._held_cancels:
            self._drop_cancels(ch)
        self.domain.close_channel(ch)

    def on_connection_closed(self) -> None:
        self._held_cancels = []
        if self.domain.counted:  # it was open: one line, as RabbitMQ's "closing ..."
            engine = self.engine
            event(
                log,
                logging.INFO,
                "connection_closed",
                f"closing AMQP connection {engine.label}: {engine.close_reason}",
                **engine.log_fields,
                reason=engine.close_reason,
            )
        self.domain.closed()

    def on_method(self, ch: Channel, method: M.Method) -> None:
        handler = HANDLERS.get(method.INDEX)
        if handler is None:
            raise HardError(
                M.COMMAND_INVALID,
                f"method {method.NAME} is not valid from a client here",
                method.CLASS_ID,
                method.METHOD_ID,
            )
        self._busy = ch
        try:
            handler(self, ch, method)
        except BaseException:
            self._busy = None
            self._drop_cancels(ch)
            raise
        self._busy = None
        if self._held_cancels and not self._suspended(ch):
            self._release_cancels(ch)

    def on_publish(
        self, ch: Channel, exrk: bytes, exlen: int, flags: int, raw: bytes, hsize: int, fmax: int
    ) -> None:
        if flags & 2:
            raise HardError(NOT_IMPLEMENTED, "immediate=true", 60, 40)
        domain = self.domain
        msg = new_message(exrk, raw, ch.number, hsize, fmax, next_seq())
        if raw[20] & 0x10:  # user_id property present: RabbitMQ validates it
            user_id = msg.properties().user_id
            if user_id != domain.user:
                raise SoftError(
                    PRECONDITION_FAILED,
                    f"user_id property set to '{user_id}' but authenticated user was "
                    f"'{domain.user}'",
                    60,
                    40,
                )
        if raw[19] & 0x03:  # expiration or reply-to: one test for a plain publish
            if raw[19] & 0x01:  # expiration property present: RabbitMQ validates it
                exp = msg.properties().expiration
                if exp is not None:
                    try:
                        parse_expiration(exp)
                    except SoftError as exc:
                        exc.class_id, exc.method_id = 60, 40
                        raise
            if raw[19] & 0x02 and raw.find(REPLY_NEEDLE, 19, 7 + hsize) >= 0:
                msg = domain.broker.replies.rewrite(ch, msg)  # reply_to: direct reply-to
        domain.publish(ch, msg, exlen, flags)

    def on_ack(self, ch: Channel, delivery_tag: int, multiple: int) -> None:
        ch.ack(delivery_tag, multiple)
        self.domain.qos.after_settle()

    # ------------------------------------------------------------ ChannelSink
    def deliver(
        self, ch: Channel, consumer: Consumer, tag: int, redelivered: bool, msg: Message
    ) -> None:
        engine = self.engine
        out = engine.out
        write_deliver(
            out, ch.number, consumer.ctag, tag, redelivered, msg.exrk, msg, engine.frame_max
        )
        if len(out) > OUT_LIMIT:
            self.domain.out_full()
        engine.wake_once()

    def deliver_remote(self, ch: Channel, consumer: Consumer, record: bytes, pos: int) -> int:
        # The bytes are codec.write_deliver's: method frame header, ids, consumer tag,
        # delivery tag + redelivered, then exrk, frame end and the raw content frames
        # copied from the item in one piece when they fit the channel as is.
        engine = self.engine
        out = engine.out
        number = ch.number
        ctag = consumer.ctag
        pack_start, ids_ctag, size0 = deliver_start(ctag)
        frame_max = engine.frame_max
        fits = frame_max - 8
        unpack_item = DELIVER_ITEM.unpack_from
        isize = DELIVER_ITEM.size
        end = len(record)
        view = memoryview(record)
        tag = first = ch.next_tag
        while pos < end:
            _r, flags, exlen, rawch, hsize, fmax, rlen = unpack_item(record, pos)
            tag += 1
            # item sizes summed small first: one new int object per position
            at = pos + isize
            pos = at + (exlen + 1 + rlen)
            if rawch == number and fmax <= fits:
                out += pack_start(FRAME_METHOD, number, size0 + exlen, ids_ctag, tag, flags & 1)
                out += view[at:pos]
            else:  # another channel number or a smaller frame_max: re-framed
                exrk = record[at : at + exlen]
                msg = Message(exrk, record[at + exlen + 1 : pos], rawch, hsize, fmax)
                write_deliver(out, number, ctag, tag, bool(flags & 1), exrk, msg, frame_max)
        ch.next_tag = tag
        view.release()
        if len(out) > OUT_LIMIT:
            self.domain.out_full()
        engine.wake_once()
        return tag - first

    def confirm(self, ch: Channel, seq: int, multiple: bool, ack: bool) -> None:
        write_confirm(self.engine.out, ch.number, seq, multiple, ack)

    def returned(self, ch: Channel, code: int, text: str, msg: Message) -> None:
        engine = self.engine
        write_return(engine.out, ch.number, code, text, msg.exrk, msg, engine.frame_max)
        engine.wake_once()

    def close_channel(self, ch: Channel, code: int, text: str) -> None:
        if not self.is_current(ch):
            return
        frames = self.engine.channels[ch.number]
        if frames.closing:
            return
        self.engine.channel_error(frames, SoftError(code, text), 0)
        self.engine.wake_once()

    # ------------------------------------------------------------ ClientLink
    def set_reading(self, active: bool) -> None:
        self.io.set_reading(active)

    def blocked(self, on: bool, reason: str) -> None:
        engine = self.engine
        if engine.state == OPEN and engine.client_capabilities.get("connection.blocked"):
            if on:
                engine.send_method(0, M.ConnectionBlocked(reason=reason))
            else:
                engine.send_method(0, M.ConnectionUnblocked())

    def consumer_cancelled(self, c: Consumer) -> None:
        ch = c.channel
        if ch is self._busy or self._suspended(ch):
            # as RabbitMQ: the reply to the channel's method (queue.delete-ok) first
            self._held_cancels.append(c)
            return
        self._send_cancel(c)

    def _suspended(self, ch: Channel) -> bool:
        frames = self.engine.channels.get(ch.number)
        return frames is not None and frames.user is ch and frames.expect == EXPECT_SUSPENDED

    def _release_cancels(self, ch: Channel) -> None:
        """``ch``'s method was answered: send the cancels held meanwhile."""
        held = self._held_cancels
        self._held_cancels = [c for c in held if c.channel is not ch]
        for c in held:
            if c.channel is ch:
                self._send_cancel(c)

    def _drop_cancels(self, ch: Channel) -> None:
        """``ch`` fails (channel.close follows): its consumers are gone with it."""
        self._held_cancels = [c for c in self._held_cancels if c.channel is not ch]

    def _send_cancel(self, c: Consumer) -> None:
        engine = self.engine
        frames = engine.channels.get(c.channel.number)
        if (
            engine.client_capabilities.get("consumer_cancel_notify")
            and frames is not None
            and frames.user is c.channel
            and not frames.closing
            and engine.state == OPEN
        ):
            engine.send_method(c.channel.number, M.BasicCancel(consumer_tag=c.tag, no_wait=True))

    def close(self, code: int, text: str) -> None:
        self.engine.server_close(code, text)

    def confirms_waiting(self) -> None:
        self.confirms_due = True
        self.engine.wake_once()

    # ------------------------------------------------------------ replies
    def send_method(self, ch: Channel, method: M.Method) -> None:
        self.engine.send_method(ch.number, method)

    def is_current(self, ch: Channel) -> bool:
        """``ch`` is still open on a connection that is still open."""
        frames = self.engine.channels.get(ch.number)
        return self.engine.state == OPEN and frames is not None and frames.user is ch

    def submit(self, ch: Channel, m: M.Method, op: md.Op, reply: Reply) -> None:
        """Apply a metadata op, then answer with ``reply`` (a method, a function of the
        op's result returning a method or None, or None for no-wait). Refused with 403
        when the user lacks the permission the op needs (``shardmq.auth.authorize``)."""
        self.domain.authz.check_op(op)
        sequencer = self.broker.sequencer
        if sequencer.synchronous:
            self._answer(ch, reply, sequencer.execute(op))
            return
        self.engine.suspend(ch.number)
        sequencer.request(op, lambda err, res: self.complete(ch, m, reply, err, res))

    def remote_call(
        self, ch: Channel, m: M.Method, start: Callable[[Answer], None], reply: Reply
    ) -> None:
        """Ask the worker that owns a queue (purge, get, consume), suspending the channel
        until it answers."""
        self.engine.suspend(ch.number)
        start(lambda err, res: self.complete(ch, m, reply, err, res))

    def suspend_until(self, ch: Channel) -> Callable[[Callable[[], None]], None]:
        """Suspend ``ch``; the returned function runs its argument (if the channel is
        still there) and resumes the channel."""
        self.engine.suspend(ch.number)

        def done(then: Callable[[], None]) -> None:
            if not self.is_current(ch):
                return
            then()
            self._resume(ch)

        return done

    def complete(
        self, ch: Channel, m: M.Method, reply: Reply, err: AMQPError | None, result: Any
    ) -> None:
        """A suspended channel's method got its answer from another process."""
        if not self.is_current(ch):
            return
        engine = self.engine
        frames = engine.channels[ch.number]
        try:
            if err is not None:
                raise err
            self._answer(ch, reply, result)
        except SoftError as exc:
            self._drop_cancels(ch)
            engine.channel_error(frames, exc, m.INDEX)
            return
        except HardError as exc:
            if not exc.class_id:
                exc.class_id, exc.method_id = m.CLASS_ID, m.METHOD_ID
            engine.connection_error(exc)
            return
        except Exception as exc:
            log_internal_error(
                log, f"connection {self.peer}: internal error completing {m.NAME}", exc
            )
            engine.connection_error(HardError(INTERNAL_ERROR, "internal error"))
            return
        self._resume(ch)

    def _resume(self, ch: Channel) -> None:
        """``ch``'s suspended method was answered: the cancels it held, then the frames
        that arrived meanwhile."""
        if self._held_cancels:
            self._release_cancels(ch)
        self.engine.resume(ch.number, ch)

    def _answer(self, ch: Channel, reply: Reply, result: Any) -> None:
        if reply is None:
            return
        if not isinstance(reply, M.Method):
            reply = reply(result)
            if reply is None:
                return
        self.engine.send_method(ch.number, reply)

    def hard_error(self, exc: HardError) -> None:
        self.engine.connection_error(exc)


def _as_bytes(v: object) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    return b""
