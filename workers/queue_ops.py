"""Queue operations the admin side runs on the worker that owns the queue (through
``workers.worker_ops``): ``purge`` and ``get`` (the management API's
``DELETE /api/queues/{vhost}/{name}/contents`` and ``POST .../get``, ``ctl purge_queue``).

Owns: the two ops and the message rows ``get`` answers, in RabbitMQ's shape
(``payload_bytes``, ``redelivered``, ``exchange``, ``routing_key``, ``message_count``,
``properties``, ``payload``, ``payload_encoding``), and ``json_value`` (a field-table
value as JSON, as RabbitMQ's management writes it).

Invariants:
- ``get`` takes up to ``count`` messages in queue order, as that many basic.gets would
  (fewer once the answer holds ``GET_BUDGET`` payload bytes), and settles them all
  before it returns (one loop turn): ``ack_requeue_false`` acks
  them, ``reject_requeue_false`` rejects them (dead-lettered when the queue has a
  dead-letter exchange), the ``*_requeue_true`` modes put them back at the head in
  their order, marked redelivered, as RabbitMQ's management does. No message is ever
  left held by the admin side.
- A queue this worker does not own (or that does not exist) is 404 with RabbitMQ's
  ``NOT_FOUND - no queue 'q' in vhost 'v'``; an exclusive queue is refused to the
  management API (400, RabbitMQ's RESOURCE_LOCKED text), whose requests come from no
  connection of its own.
"""

from __future__ import annotations

import base64
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from shardmq.broker.queue import Queue
from shardmq.message import Message
from workers.worker_ops import OpError, op

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

# A get stops taking messages once its answer holds this many payload bytes (at least
# one message is always taken): the answer stays well within what a socket line and an
# HTTP body carry, and nothing is ever taken that could not be answered.
GET_BUDGET = 8 * 1024 * 1024

ACK_MODES = ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false")


def local_queue(broker: Broker, vhost: str, name: str) -> Queue:
    vh = broker.vhosts.get(vhost)
    q = vh.queues.get(name) if vh is not None else None
    if not isinstance(q, Queue) or q.deleted:
        raise OpError(404, f"NOT_FOUND - no queue '{name}' in vhost '{vhost}'")
    return q


def _names(args: dict[str, Any]) -> tuple[str, str]:
    vhost, name = args.get("vhost"), args.get("name")
    if not isinstance(vhost, str) or not isinstance(name, str):
        raise OpError(400, "vhost and name are required")
    return vhost, name


def _locked(q: Queue) -> str:
    return (
        f"cannot obtain exclusive access to locked queue '{q.name}' in vhost '{q.vhost}'. "
        "It could be originally declared on another connection or the exclusive property "
        "value does not match that of the original declaration."
    )


@op("purge")
def purge(broker: Broker, args: dict[str, Any]) -> int:
    """Empty the queue's ready messages; the number purged. With ``not_exclusive`` (the
    management API, a client of its own as in RabbitMQ) an exclusive queue is refused."""
    q = local_queue(broker, *_names(args))
    if q.exclusive and args.get("not_exclusive"):
        raise OpError(400, _locked(q))
    return q.purge()


@op("get")
def get(broker: Broker, args: dict[str, Any]) -> list[dict[str, Any]]:
    q = local_queue(broker, *_names(args))
    if q.exclusive:  # RabbitMQ's management gets through a connection of its own
        raise OpError(400, f"405 RESOURCE_LOCKED - {_locked(q)}")
    count, ackmode = args.get("count", 1), args.get("ackmode", "ack_requeue_true")
    encoding, truncate = args.get("encoding", "auto"), args.get("truncate")
    if not isinstance(count, int) or ackmode not in ACK_MODES or encoding not in ("auto", "base64"):
        raise OpError(400, "bad get arguments")
    if truncate is not None and not isinstance(truncate, int):
        raise OpError(400, "bad get arguments")
    rows: list[dict[str, Any]] = []
    taken: list[Message] = []
    size = 0
    for _ in range(max(0, count)):
        if size >= GET_BUDGET:
            break
        got = q.get()
        if got is None:
            break
        msg, redelivered = got
        row = message_row(msg, redelivered, q.message_count, encoding, truncate)
        size += len(row["payload"])
        rows.append(row)
        if ackmode == "ack_requeue_false":
            q.settle(msg)
        elif ackmode == "reject_requeue_false":
            q.reject(msg)
        else:
            taken.append(msg)
    if taken:
        q.requeue(taken)
    return rows


def message_row(
    msg: Message, redelivered: bool, count: int, encoding: str, truncate: int | None
) -> dict[str, Any]:
    body = msg.body
    size = len(body)
    if truncate is not None and truncate >= 0:
        body = body[:truncate]
    payload_encoding = "base64"
    payload = ""
    if encoding == "auto":
        try:
            payload = body.decode("utf-8")
            payload_encoding = "string"
        except UnicodeDecodeError:
            pass
    if payload_encoding == "base64":
        payload = base64.b64encode(body).decode("ascii")
    return {
        "payload_bytes": size,
        "redelivered": redelivered,
        "exchange": msg.exchange,
        "routing_key": msg.routing_key,
        "message_count": count,
        "properties": properties_of(msg),
        "payload": payload,
        "payload_encoding": payload_encoding,
    }


def properties_of(msg: Message) -> dict[str, Any] | list[Any]:
    """The message's properties as RabbitMQ's management shows them (an empty list,
    not an object, when there are none: what RabbitMQ 3.10 answers)."""
    props = msg.properties()
    out: dict[str, Any] = {}
    for name in props.FIELDS:
        v = getattr(props, name)
        if v is not None:
            out[name] = json_value(v)
    return out if out else []


def json_value(v: Any) -> Any:
    """A field-table value as JSON (timestamps as seconds, byte strings as text)."""
    if isinstance(v, bool | int | float | str) or v is None:
        return int(v) if type(v) is not bool and isinstance(v, int) else v
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, datetime):
        return int(v.timestamp())
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).decode("utf-8", errors="replace")
    if isinstance(v, dict):
        return {str(k): json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_value(x) for x in v]
    return str(v)
