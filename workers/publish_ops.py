"""A publish the admin side runs on a worker (through ``workers.worker_ops``): the
management API's ``POST /api/exchanges/{vhost}/{name}/publish`` and its aliveness test.

Owns: the ``publish`` op: builds the ``Message`` (content header from the given
properties, the body) and routes it through this worker's broker exactly as a publish
of one of its connections would (``VHost.route``: exchange-to-exchange bindings,
alternate exchanges, a delayed exchange's hold; direct reply-to addresses; local queues
directly, other workers' queues through the rings); answers whether any queue took it.

Invariants:
- The message is routed in one loop turn (in every local queue it routes to, handed to
  the rings for the others); the answer leaves once it is confirmed as a publisher
  confirm would be: durable queues have stored a persistent message, and the owners of
  the other workers' queues have taken it (so a get that follows finds it), as
  RabbitMQ's management publishes on a channel in confirm mode.
- The caller (``workers.mgmt_publish``) has checked the user's rights and the
  properties; a missing or internal exchange is refused here with RabbitMQ's text
  (``404 NOT_FOUND - no exchange ...``), as status 400 (what RabbitMQ's management
  answers), and nothing is routed.
- A message held by a delayed exchange counts as not routed (the plugin's answer to a
  mandatory delayed publish).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from shardmq.amqp.codec import make_exrk
from shardmq.amqp.errors import AMQPError
from shardmq.broker.storage import ConfirmWaiter
from shardmq.broker.vhost import HELD, delay_of
from shardmq.message import Message, next_seq
from workers.worker_ops import OpError, op

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.broker.channel import Channel
    from shardmq.broker.connection import BrokerConnection


class _ApiPublisher:
    """The publisher of management publishes sent to other workers: nobody to throttle
    (gid 0: the owner never throttles it)."""

    gid = 0

    def throttle(self, cause: object, on: bool) -> None:
        return None


_API = _ApiPublisher()


def _bytes(args: dict[str, Any], key: str) -> bytes:
    v = args.get(key)
    if not isinstance(v, str):
        raise OpError(400, f"{key} is required")
    try:
        return base64.b64decode(v, validate=True)
    except binascii.Error:
        raise OpError(400, f"{key} is not base64") from None


@op("publish")
def publish(broker: Broker, args: dict[str, Any]) -> bool | asyncio.Future[bool]:
    """Route one message; True when at least one queue took it (a future of that while
    queues are storing it or other workers have not confirmed it). ``args``: ``vhost``,
    ``exchange``, ``routing_key``, ``header`` (the content header payload, base64) and
    ``body`` (base64)."""
    vhost, exchange, rk = args.get("vhost"), args.get("exchange"), args.get("routing_key")
    if not isinstance(vhost, str) or not isinstance(exchange, str) or not isinstance(rk, str):
        raise OpError(400, "vhost, exchange and routing_key are required")
    vh = broker.vhosts.get(vhost)
    if vh is None:
        raise OpError(404, f"NOT_FOUND - no vhost '{vhost}'")
    header, body = _bytes(args, "header"), _bytes(args, "body")
    msg = Message.from_parts(make_exrk(exchange, rk), header, body, next_seq())
    try:
        route = vh.route(msg, len(exchange.encode()))
    except AMQPError as exc:
        raise OpError(400, f"{exc.reply_code} {exc.reply_text}") from None
    if route is HELD:  # a delayed exchange holds it: as a publish without confirms
        conn = SimpleNamespace(vhost=vh)
        ch = SimpleNamespace(confirm=False, store_pending=0)
        broker.delayed.hold(
            cast("BrokerConnection", conn), cast("Channel", ch), msg, None, delay_of(msg)
        )
        return False
    local, remote = route
    if not local and not remote:  # a reply to a direct reply-to address?
        local, remote = broker.replies.route(msg.exrk, vh.name)
    routed = bool(local or remote)
    router = broker.shards
    if remote and router is None:
        raise OpError(500, "no cross-worker router")
    waiter = ConfirmWaiter()
    for q in local:
        q.publish(msg, waiter)  # a durable queue takes a token for a persistent message
    if remote:
        assert router is not None
        router.enqueue(remote, msg, _API, 0, router.tx_seq(waiter, len(remote)))
    if not waiter.pending:
        return routed
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def done(ok: bool) -> None:
        if answer.done():
            return
        if ok:
            answer.set_result(routed)
        else:
            answer.set_exception(OpError(500, "a queue failed to store the message"))

    waiter.done = done
    return answer
