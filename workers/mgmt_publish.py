"""Management API endpoint that publishes: ``POST /api/exchanges/{vhost}/{name}/publish``
(RabbitMQ 3.10's body, ``{"routed": bool}`` answer and errors), and ``publish_on_worker``,
which the aliveness test shares.

Owns: the check of a publish body (RabbitMQ's ``key_missing``, ``unsupported_encoding``,
``not_base64``, ``not_int``/``not_string`` per property, ``null_not_allowed``, the
``delivery_mode``, ``expiration`` and ``user_id`` rules), the content header built from
the properties, the ``write`` permission check on the exchange (and topic permissions),
and the choice of the worker that routes it (``workers.publish_ops``).

Invariants:
- Everything the API user could be refused is checked here, in this order, before any
  worker is asked, as RabbitMQ answers: 404/401 for the vhost, 400 for the body, 400
  with the AMQP error's text (``404 NOT_FOUND - no exchange ...``, ``403
  ACCESS_REFUSED - ...``, ``406 PRECONDITION_FAILED - ...``) for what an AMQP publish
  would be refused; a refused request publishes nothing.
- The message is routed by one worker's broker as an AMQP publish of that worker would
  be (so bindings, alternate exchanges and queue owners on any worker apply); a publish
  to the default exchange goes to the named queue's owner (no cross-worker hop).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, cast

from aiohttp import web

from shardmq.amqp.codec import make_exrk
from shardmq.amqp.errors import AMQPError
from shardmq.amqp.fieldtable import encode_table
from shardmq.amqp.methods import BasicProperties
from shardmq.auth.authorize import Authorizer
from shardmq.broker.qargs import parse_expiration
from workers.mgmt_http import (
    SERVER,
    ApiError,
    bad_request,
    body_of,
    json_response,
    need_vhost,
    ops_of,
    route,
    user_of,
)
from workers.mgmt_messages import queue_owner
from workers.worker_ops import OpError, call_worker

_HEADER_CLASS = (60).to_bytes(2, "big") + b"\x00\x00"  # basic, weight 0
_INT_PROPS = ("delivery_mode", "priority", "timestamp")
_STR_PROPS = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


def _pair(what: str, name: Any) -> ApiError:
    """RabbitMQ's reason as a two-element JSON list (``["not_int", "priority"]``)."""
    return ApiError(400, "bad_request", cast(str, [what, name]))


def _refused(text: str) -> ApiError:
    return ApiError(400, "bad_request", text)


def _no_nulls(v: Any) -> None:
    if v is None:
        raise bad_request("null_not_allowed")
    if isinstance(v, dict):
        for x in v.values():
            _no_nulls(x)
    elif isinstance(v, list):
        for x in v:
            _no_nulls(x)


def properties_from(props: Any, user: str) -> BasicProperties:
    """The ``properties`` object of a publish body as basic properties (unknown names
    are ignored, as RabbitMQ does; an empty list is no properties)."""
    if props == []:
        props = {}
    if not isinstance(props, dict):
        raise bad_request("properties must be an object")
    out = BasicProperties()
    for name in _INT_PROPS:
        v = props.get(name)
        if v is not None:
            if not isinstance(v, int) or isinstance(v, bool):
                raise _pair("not_int", name)
            setattr(out, name, v)
    for name in _STR_PROPS:
        v = props.get(name)
        if v is not None:
            if not isinstance(v, str):
                raise _pair("not_string", name)
            setattr(out, name, v)
    headers = props.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise bad_request("headers must be an object")
        _no_nulls(headers)
        try:
            encode_table(headers)
        except (ValueError, TypeError, OverflowError) as exc:
            raise bad_request(f"headers cannot be encoded: {exc}") from None
        out.headers = headers
    if out.delivery_mode is not None and out.delivery_mode not in (1, 2):
        raise _refused(
            "406 PRECONDITION_FAILED - invalid message: "
            f"{{delivery_mode_unknown,{out.delivery_mode}}}"
        )
    if out.priority is not None and not 0 <= out.priority <= 255:
        raise _pair("not_int", "priority")
    if out.timestamp is not None and not 0 <= out.timestamp < 2**63:
        raise _pair("not_int", "timestamp")
    for name in _STR_PROPS:
        v = getattr(out, name)
        if v is not None and len(v.encode()) > 255:
            raise bad_request(f"{name} is longer than 255 bytes")
    if out.expiration is not None:
        try:
            parse_expiration(out.expiration)
        except AMQPError as exc:
            raise _refused(f"{exc.reply_code} {exc.reply_text}") from None
    if out.user_id is not None and out.user_id != user:
        raise _refused(
            f"406 PRECONDITION_FAILED - user_id property set to '{out.user_id}' but "
            f"authenticated user was '{user}'"
        )
    return out


def payload_of(body: dict[str, Any]) -> bytes:
    payload, encoding = body["payload"], body["payload_encoding"]
    if encoding not in ("string", "base64"):
        raise _pair("unsupported_encoding", encoding)
    if not isinstance(payload, str):
        raise bad_request("payload must be a string")
    if encoding == "string":
        return payload.encode("utf-8")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _pair("not_base64", payload) from None


async def publish_on_worker(
    request: web.Request,
    vhost: str,
    exchange: str,
    routing_key: str,
    props: BasicProperties,
    payload: bytes,
) -> bool:
    """Route the message on a worker (the default exchange's queue's owner, else the
    first that answers); whether any queue took it."""
    vh = ops_of(request).metadata.vhosts[vhost]
    slot = 0
    if exchange == "":
        q = vh.queues.get(routing_key)
        if q is not None:
            slot = queue_owner(q)
    header = _HEADER_CLASS + len(payload).to_bytes(8, "big") + props.encode()
    args = {
        "vhost": vhost,
        "exchange": exchange,
        "routing_key": routing_key,
        "header": base64.b64encode(header).decode("ascii"),
        "body": base64.b64encode(payload).decode("ascii"),
    }
    try:
        routed = await call_worker(request.app[SERVER].data_dir, slot, "publish", args)
    except OpError as exc:
        if exc.status == 400:
            raise _refused(exc.text) from None
        if exc.status == 404:
            raise ApiError(404, "not_found", exc.text) from None
        raise ApiError(exc.status, "internal_error", exc.text) from None
    return bool(routed)


@route("POST", "/api/exchanges/{vhost}/{name}/publish")
async def publish(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    need_vhost(request, vhost)
    user = user_of(request)
    body = await body_of(request)
    for key in ("properties", "routing_key", "payload", "payload_encoding"):
        if key not in body:
            raise bad_request(f"[{{key_missing,{key}}}]")
    routing_key = body["routing_key"]
    if not isinstance(routing_key, str):
        raise bad_request("routing_key must be a string")
    props = properties_from(body["properties"], user.name)
    payload = payload_of(body)
    exchange = "" if name == "amq.default" else name
    md_ = ops_of(request).metadata
    vh = md_.vhosts[vhost]
    if exchange and exchange not in vh.exchanges:
        raise _refused(f"404 NOT_FOUND - no exchange '{exchange}' in vhost '{vhost}'")
    if len(routing_key.encode()) > 255:
        raise bad_request("routing_key is longer than 255 bytes")
    exrk = make_exrk(exchange, routing_key)
    try:
        Authorizer(md_.access, user.name, vh).check_publish(exrk)
    except AMQPError as exc:
        raise _refused(f"{exc.reply_code} {exc.reply_text}") from None
    routed = await publish_on_worker(request, vhost, exchange, routing_key, props, payload)
    return json_response({"routed": routed})
