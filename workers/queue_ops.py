"""Queue operations the admin side runs on the worker that owns the queue (through
``workers.worker_ops``): ``purge`` and ``get`` (the management API's
``DELETE /api/queues/{vhost}/{name}/contents`` and ``POST .../get``, ``ctl purge_queue``).

Owns: the two ops and the message rows ``get`` answers, in RabbitMQ's shape
(``payload_bytes``, ``redelivered``, ``exchange``, ``routing_key``, ``message_count``,
``properties``, ``payload``, ``payload_encoding``), and ``json_value`` (a field-table
value as JSON, as RabbitMQ's management writes it).

Invariants:
- ``get`` takes up to ``count`` messages in queue order, as that many basic.gets would,
  and settles them all before it returns (one loop turn): ``ack_requeue_false`` acks
  them, ``reject_requeue_false`` rejects them (dead-lettered when the queue has a
  dead-letter exchange), the ``*_requeue_true`` modes put them back at the head in
  their order, marked redelivered, as RabbitMQ's management does. No message is ever
  left held by the admin side.
- A queue this worker does not own (or that does not exist) is 404 with RabbitMQ's
  ``NOT_FOUND - no queue 'q' in vhost 'v'``.
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


@op("purge")
def purge(broker: Broker, args: dict[str, Any]) -> int:
    """Empty the queue's ready messages; the number purged."""
    return local_queue(broker, *_names(args)).purge()


@op("get")
def get(broker: Broker, args: dict[str, Any]) -> list[dict[str, Any]]:
    q = local_queue(broker, *_names(args))
    count, ackmode = args.get("count", 1), args.get("ackmode", "ack_requeue_true")
    encoding, truncate = args.get("encoding", "auto"), args.get("truncate")
    if not isinstance(count, int) or ackmode not in ACK_MODES or encoding not in ("auto", "base64"):
        raise OpError(400, "bad get arguments")
    if truncate is not None and not isinstance(truncate, int):
        raise OpError(400, "bad get arguments")
    rows: list[dict[str, Any]] = []
    taken: list[Message] = []
    for _ in range(max(0, count)):
        got = q.get()
        if got is None:
            break
        msg, redelivered = got
        rows.append(message_row(msg, redelivered, q.message_count, encoding, truncate))
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
