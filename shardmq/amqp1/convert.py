"""AMQP 1.0 message <-> the broker's message (AMQP 0-9-1 properties and body).

Owns: ``to_091`` (the sections of a received transfer -> ``BasicProperties`` and body)
and ``from_091`` (a queued message -> the sections of a transfer), after RabbitMQ 4's
inter-protocol conversions: header.durable <-> delivery_mode 2, priority, ttl <->
expiration, message-id / correlation-id (strings of up to 255 bytes; other types as
``x-message-id`` / ``x-correlation-id`` headers), user-id, reply-to (``/queues/NAME``
<-> NAME), subject <-> type, content-type, content-encoding, creation-time <->
timestamp (ms <-> s), application-properties <-> headers, ``x-`` message annotations
<-> ``x-`` headers; a single data section <-> the body. ``to_091_raw`` and
``from_091_raw`` are the broker's hot path: the body is sliced, never decoded, and the
other sections are converted once per distinct bytes (a bounded cache); ``to_091_cut``
also tells where the body starts, so that a publishing link can recognise the next
message of the same shape by its leading bytes (``shardmq.adapter.amqp10_publish``);
``from_091_prefix`` is the outgoing conversion alone (the sections before the body),
which the broker's sending link keeps for as long as its messages share it.

Invariants:
- A body that is not one data section (amqp-value, amqp-sequence, several data) is
  kept as its encoded sections, with the ``x-amqp-1.0-body`` header naming that, so a
  1.0 consumer gets the same sections back; a 0-9-1 consumer sees the encoded bytes.
- ``to_091_raw`` / ``from_091_raw`` give the same result as ``parse`` + ``to_091`` /
  ``from_091`` (tests compare them), including the errors.
- Conversion never raises on well-formed sections; malformed ones are
  ``DecodeError`` (the publishing link gets amqp:decode-error).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from shardmq.amqp.codec import exrk_names
from shardmq.amqp.methods import BasicProperties
from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.address import queue_address, reply_to_name
from shardmq.amqp1.codec import DecodeError, decode
from shardmq.amqp1.sections import (
    APP_PROPERTIES,
    DATA,
    DELIVERY_ANN,
    FOOTER,
    HEADER,
    MESSAGE_ANN,
    PROPERTIES,
    SEQUENCE,
    VALUE,
    data_body,
    data_header,
    split,
)
from shardmq.amqp1.values import Symbol, Timestamp, UByte, UInt, ULong

BODY_HEADER = "x-amqp-1.0-body"
_BODY_TYPES = (T.Data, T.AmqpValue, T.AmqpSequence)


class Parsed:
    """The sections of one AMQP 1.0 message (bare message and annotations)."""

    __slots__ = ("header", "annotations", "properties", "app", "body", "body_raw", "to")

    def __init__(self) -> None:
        self.header: Any = None
        self.annotations: dict[Any, Any] = {}
        self.properties: Any = None
        self.app: dict[Any, Any] = {}
        self.body: list[Any] = []
        self.body_raw = b""
        self.to: str | None = None


def parse(payload: bytes) -> Parsed:
    p = Parsed()
    pos = 0
    n = len(payload)
    body_start = body_end = -1
    while pos < n:
        start = pos
        section, pos = decode(payload, pos)
        if isinstance(section, T.Header):
            p.header = section
        elif isinstance(section, T.MessageAnnotations):
            if isinstance(section.value, dict):
                p.annotations = section.value
        elif isinstance(section, T.Properties):
            p.properties = section
            if isinstance(section.to, str):
                p.to = section.to
        elif isinstance(section, T.ApplicationProperties):
            if isinstance(section.value, dict):
                p.app = section.value
        elif isinstance(section, _BODY_TYPES):
            if body_start < 0:
                body_start = start
            body_end = pos
            p.body.append(section)
        elif isinstance(section, T.DeliveryAnnotations | T.Footer):
            pass
        else:
            raise DecodeError(f"not a message section: {type(section).__name__}")
    if body_start >= 0:
        p.body_raw = payload[body_start:body_end]
    return p


def _shortstr(v: Any) -> str | None:
    if isinstance(v, str) and len(v.encode("utf-8")) < 256:
        return str(v)
    return None


def _header_value(v: Any) -> Any:
    """An AMQP 1.0 simple value as a 0-9-1 field value (None: not mappable)."""
    if v is None or isinstance(v, bool | float):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, bytes):
        return bytes(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    return None


def to_091(p: Parsed) -> tuple[BasicProperties, bytes]:
    props = BasicProperties()
    headers: dict[str, Any] = {}
    h = p.header
    props.delivery_mode = 2 if h is not None and h.durable else 1
    if h is not None:
        if h.priority is not None:
            props.priority = int(h.priority)
        if h.ttl is not None:
            props.expiration = str(int(h.ttl))
    for k, v in p.annotations.items():
        if isinstance(k, str) and k.startswith("x-") and k not in ("x-exchange", "x-routing-key"):
            hv = _header_value(v)
            if hv is not None or v is None:
                headers[str(k)] = hv
    pr = p.properties
    if pr is not None:
        for name, hname in (("message_id", "x-message-id"), ("correlation_id", "x-correlation-id")):
            v = getattr(pr, name)
            if v is None:
                continue
            s = _shortstr(v)
            if s is not None:
                setattr(props, name, s)
            else:
                headers[hname] = _id_header(v)
        if isinstance(pr.user_id, bytes):
            try:
                props.user_id = pr.user_id.decode("utf-8")
            except UnicodeDecodeError:
                pass
        if isinstance(pr.reply_to, str):
            props.reply_to = _shortstr(reply_to_name(pr.reply_to))
        props.type = _shortstr(pr.subject)
        props.content_type = _shortstr(pr.content_type)
        props.content_encoding = _shortstr(pr.content_encoding)
        if pr.creation_time is not None:
            props.timestamp = int(pr.creation_time) // 1000
    for k, v in p.app.items():
        if isinstance(k, str) and len(k.encode("utf-8")) < 256:
            hv = _header_value(v)
            if hv is not None or v is None:
                headers[str(k)] = hv
    if len(p.body) == 1 and isinstance(p.body[0], T.Data) and isinstance(p.body[0].value, bytes):
        body = bytes(p.body[0].value)
    elif not p.body:
        body = b""
    else:
        body = bytes(p.body_raw)
        kinds = {type(s) for s in p.body}
        headers[BODY_HEADER] = (
            "amqp-value"
            if T.AmqpValue in kinds
            else "amqp-sequence"
            if T.AmqpSequence in kinds
            else "data"
        )
    if headers:
        props.headers = headers
    return props, body


def _id_header(v: Any) -> str:
    """A message-id that is not a short string, as RabbitMQ writes it in a header:
    the type prefix and the value."""
    if isinstance(v, uuid.UUID):
        return f"urn:uuid:{v}"
    if isinstance(v, bytes):
        return "binary:" + v.hex()
    if isinstance(v, int):
        return f"ulong:{int(v)}"
    return str(v)


def _id_value(s: str) -> Any:
    if s.startswith("urn:uuid:"):
        try:
            return uuid.UUID(s[9:])
        except ValueError:
            return s
    if s.startswith("binary:"):
        try:
            return bytes.fromhex(s[7:])
        except ValueError:
            return s
    if s.startswith("ulong:") and s[6:].isdigit():
        return ULong(int(s[6:]))
    return s


def _amqp1_value(v: Any) -> Any:
    """A 0-9-1 field value as an AMQP 1.0 simple value (None: not one)."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    return None


def from_091(
    props: BasicProperties, body: bytes, exchange: str, routing_key: str, redelivered: bool
) -> bytes:
    """The AMQP 1.0 sections of a queued message, as a transfer's payload."""
    prefix, raw_body = _prefix(props, exchange, routing_key, redelivered)
    if raw_body:
        return prefix + body
    return prefix + data_header(len(body)) + body


def _prefix(
    props: BasicProperties, exchange: str, routing_key: str, redelivered: bool
) -> tuple[bytes, bool]:
    """The sections before the body, and whether the body is already encoded sections
    (the ``x-amqp-1.0-body`` header) rather than one data section's bytes."""
    out = bytearray()
    T.Header(
        durable=props.delivery_mode == 2,
        priority=UByte(props.priority) if props.priority is not None else None,
        ttl=UInt(int(props.expiration))
        if props.expiration and props.expiration.isdigit()
        else None,
        first_acquirer=None,
        delivery_count=UInt(1) if redelivered else None,
    ).encode_into(out)
    headers = dict(props.headers or {})
    body_kind = headers.pop(BODY_HEADER, None)
    annotations: dict[Any, Any] = {
        Symbol("x-exchange"): exchange,
        Symbol("x-routing-key"): routing_key,
    }
    message_id: Any = props.message_id
    correlation_id: Any = props.correlation_id
    xid = headers.pop("x-message-id", None)
    if message_id is None and isinstance(xid, str):
        message_id = _id_value(xid)
    xcid = headers.pop("x-correlation-id", None)
    if correlation_id is None and isinstance(xcid, str):
        correlation_id = _id_value(xcid)
    app: dict[Any, Any] = {}
    for k, v in headers.items():
        av = _amqp1_value(v)
        if av is None and v is not None:
            continue
        if k.startswith("x-"):
            annotations[Symbol(k)] = av
        else:
            app[k] = av
    T.MessageAnnotations(annotations).encode_into(out)
    reply_to = props.reply_to
    if reply_to is not None and not reply_to.startswith("/"):
        reply_to = queue_address(reply_to)
    pr = T.Properties(
        message_id=message_id,
        user_id=props.user_id.encode("utf-8") if props.user_id is not None else None,
        reply_to=reply_to,
        subject=props.type,
        correlation_id=correlation_id,
        content_type=Symbol(props.content_type) if props.content_type is not None else None,
        content_encoding=Symbol(props.content_encoding)
        if props.content_encoding is not None
        else None,
        creation_time=Timestamp(props.timestamp * 1000) if props.timestamp is not None else None,
    )
    if any(getattr(pr, f.name) is not None for f in pr.FIELDS):
        pr.encode_into(out)
    if app:
        T.ApplicationProperties(app).encode_into(out)
    return bytes(out), body_kind is not None


# ---------------------------------------------------------------------- the hot path
# Most messages of a flow share everything but the body (a producer's fixed header and
# properties, a queue's exchange and routing key): both directions cache the converted
# non-body part by its bytes. A bounded dict, emptied when full.
CACHE_MAX = 512
_in_cache: dict[bytes, Incoming] = {}
_out_cache: dict[tuple[bytes, bytes, bool], tuple[bytes, bool]] = {}
_NON_BODY = frozenset((HEADER, MESSAGE_ANN, PROPERTIES, APP_PROPERTIES))
_BODY = frozenset((DATA, SEQUENCE, VALUE))


class Incoming(NamedTuple):
    """A received message converted: the 0-9-1 property bytes (flags and fields, as a
    content header carries them) and what the publishing link needs to route it."""

    props: bytes
    user_id: str | None
    to: str | None
    subject: str | None


def _incoming(p: Parsed, props: BasicProperties) -> Incoming:
    subject = p.properties.subject if p.properties is not None else None
    return Incoming(
        props.encode(), props.user_id, p.to, str(subject) if isinstance(subject, str) else None
    )


def to_091_raw(payload: bytes) -> tuple[Incoming, bytes]:
    """``to_091`` of a transfer's payload, with the properties encoded, and the body.

    A message whose body is one data section is sliced, not decoded: its other sections
    are converted once per distinct bytes (cached); anything else goes the generic way.
    Raises ``DecodeError`` on malformed sections, as ``parse`` does."""
    conv, body, _cut = to_091_cut(payload)
    return conv, body


def to_091_cut(payload: bytes) -> tuple[Incoming, bytes, int]:
    """``to_091_raw``, and where the body starts in ``payload`` when the message is
    its sections then one data section that ends it (-1 otherwise): every payload with
    the same bytes before that position and the same length converts the same."""
    if payload[:4] == _DATA8 and len(payload) == 5 + payload[4]:  # a data section only
        hit = _in_cache.get(b"")
        if hit is not None:
            return hit, payload[5:], 5
    secs = split(payload)
    if secs is not None:
        body_at = body_end = -1
        nbody = 0
        key = b""
        for code, start, end in secs:
            if code in _BODY:
                nbody += 1
                body_at = start if code == DATA else -1
                body_end = end
            elif code in _NON_BODY:
                key += payload[start:end]
            elif code not in (DELIVERY_ANN, FOOTER):
                body_at = -1
                nbody = 2  # not a message section: the generic parse says so
                break
        body = data_body(payload, body_at, body_end) if nbody == 1 and body_at >= 0 else None
        if body is not None:
            hit = _in_cache.get(key)
            if hit is None:
                p = parse(key)
                props, _ = to_091(p)
                hit = _incoming(p, props)
                if len(_in_cache) >= CACHE_MAX:
                    _in_cache.clear()
                _in_cache[key] = hit
            cut = body_end - len(body) if body_end == len(payload) else -1
            return hit, body, cut
    p = parse(payload)
    props, body = to_091(p)
    return _incoming(p, props), body, -1


def from_091_prefix(
    props_raw: bytes, props: Callable[[], BasicProperties], exrk: bytes, redelivered: bool
) -> tuple[bytes, bool]:
    """The sections of a queued message before its body: (prefix, raw_body). With
    ``raw_body`` the body is already its encoded sections (``x-amqp-1.0-body``) and
    follows the prefix as is; else it goes in one data section (``data_header``).
    Cached per distinct (``props_raw``, ``exrk``, ``redelivered``); ``props`` decodes
    the properties on a miss."""
    key = (props_raw, exrk, redelivered)
    hit = _out_cache.get(key)
    if hit is None:
        ex, rk = exrk_names(exrk)
        hit = _prefix(props(), ex, rk, redelivered)
        if len(_out_cache) >= CACHE_MAX:
            _out_cache.clear()
        _out_cache[key] = hit
    return hit


def from_091_raw(
    props_raw: bytes,
    props: Callable[[], BasicProperties],
    body: bytes,
    exrk: bytes,
    redelivered: bool,
) -> bytes:
    """``from_091`` for a queued message given as its raw property bytes (the cache
    key; ``props`` decodes them on a miss) and its ``exrk`` wire bytes."""
    prefix, raw_body = from_091_prefix(props_raw, props, exrk, redelivered)
    if raw_body:
        return prefix + body
    n = len(body)
    if n < 256:
        return b"".join((prefix, b"\x00\x53\x75\xa0", _BYTE[n], body))
    return b"".join((prefix, data_header(n), body))


_BYTE = [bytes((i,)) for i in range(256)]
_DATA8 = b"\x00\x53\x75\xa0"
