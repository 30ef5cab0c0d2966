"""A publish the admin side runs on a worker (through ``workers.worker_ops``): the
management API's ``POST /api/exchanges/{vhost}/{name}/publish`` and its aliveness test.

Owns: the ``publish`` op: builds the ``Message`` (content header from the given
properties, the body) and routes it through this worker's broker exactly as a publish
of one of its connections would (``VHost.route``: exchange-to-exchange bindings,
alternate exchanges, a delayed exchange's hold; direct reply-to addresses; local queues
directly, other workers' queues through the rings); answers whether any queue took it.

Invariants:
- The op runs in one loop turn: the message is in every local queue it routes to (and
  handed to the rings for the others) when the answer leaves. Durable queues store a
  persistent message as they do for any publish (the answer does not wait for the
  fsync: the management API publishes without confirms).
- The caller (``workers.mgmt_publish``) has checked the user's rights and the
  properties; a missing or internal exchange is refused here with RabbitMQ's text
  (``404 NOT_FOUND - no exchange ...``), as status 400 (what RabbitMQ's management
  answers), and nothing is routed.
- A message held by a delayed exchange counts as not routed (the plugin's answer to a
  mandatory delayed publish).
"""

from __future__ import annotations

import base64
import binascii
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from shardmq.amqp.codec import make_exrk
from shardmq.amqp.errors import AMQPError
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
def publish(broker: Broker, args: dict[str, Any]) -> bool:
    """Route one message; True when at least one queue took it. ``args``: ``vhost``,
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
    for q in local:
        q.publish(msg, None)
    if remote:
        router = broker.shards
        if router is None:
            raise OpError(500, "no cross-worker router")
        router.enqueue(remote, msg, _API, 0, 0)
    return bool(local or remote)
