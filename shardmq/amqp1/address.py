"""AMQP 1.0 addresses of the broker's nodes (RabbitMQ 4's scheme, and RabbitMQ 3's).

Owns: ``target_of`` (where a sending link's messages go: an exchange and a routing key,
either fixed by the address or taken from each message's subject or ``to``) and
``source_of`` (what a receiving link consumes from: a queue, or an exchange and a
binding key for RabbitMQ 3's exchange sources), plus ``queue_address`` (the 0-9-1
reply-to name as a 1.0 address) and its inverse.

Invariants:
- v2 addresses (RabbitMQ 4): ``/queues/NAME``, ``/exchanges/NAME``,
  ``/exchanges/NAME/KEY``, names percent-encoded; a null target means each message
  names its own in ``properties.to``.
- Legacy addresses (RabbitMQ 3): ``/queue/NAME``, ``/queue`` (key from the subject),
  ``/exchange/NAME/KEY``, ``/exchange/NAME`` (key from the subject), ``/topic/KEY``
  (amq.topic), ``/amq/queue/NAME``.
- Sources: ``/queues/NAME``, ``/queue/NAME``, ``/amq/queue/NAME`` name a queue;
  ``/exchange/NAME/KEY``, ``/exchange/NAME`` (key "") and ``/topic/KEY`` (amq.topic)
  name an exchange and a binding key (RabbitMQ 3: the broker binds a queue of the
  link's own; ``%2F`` in them is ``/``, as RabbitMQ unescapes). RabbitMQ 4 has no
  exchange source: ``/exchanges/...`` as a source is refused as RabbitMQ 4 (and 3)
  refuse it, ``amqp:invalid-field`` "Attach rejected: {unknown_destination,...}".
- Anything else is ``amqp:invalid-field`` with the address in the text.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import quote, unquote

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.errors import LinkError

SUBJECT = None  # routing key: each message's subject


class Source(NamedTuple):
    queue: str | None  # the queue consumed from, or None: a queue bound to ...
    exchange: str  # ... this exchange
    key: str  # ... with this binding key


class Target(NamedTuple):
    exchange: str
    key: str | None  # None: the message's subject
    queue: str | None  # the queue it names (checked at attach), if any


def target_of(address: str) -> Target:
    parts = address.split("/")
    if not address.startswith("/"):
        raise _invalid(address)
    kind = parts[1] if len(parts) > 1 else ""
    if kind == "queues" and len(parts) == 3 and parts[2]:
        name = unquote(parts[2])
        return Target("", name, name)
    if kind == "exchanges" and len(parts) in (3, 4) and parts[2]:
        ex = unquote(parts[2])
        if ex == "amq.default":
            ex = ""
        key = unquote(parts[3]) if len(parts) == 4 else SUBJECT
        return Target(ex, key, None)
    if kind == "queue" and len(parts) == 2:
        return Target("", SUBJECT, None)
    if kind == "queue" and len(parts) == 3 and parts[2]:
        return Target("", parts[2], parts[2])
    if kind == "exchange" and len(parts) in (3, 4) and parts[2]:
        return Target(parts[2], parts[3] if len(parts) == 4 else SUBJECT, None)
    if kind == "topic" and len(parts) == 3 and parts[2]:
        return Target("amq.topic", parts[2], None)
    if kind == "amq" and len(parts) == 4 and parts[2] == "queue" and parts[3]:
        return Target("", parts[3], parts[3])
    raise _invalid(address)


def source_of(address: str) -> Source:
    parts = address.split("/")
    if address.startswith("/queues/") and len(parts) == 3 and parts[2]:
        return Source(unquote(parts[2]), "", "")
    if address.startswith("/queue/") and len(parts) == 3 and parts[2]:
        return Source(parts[2], "", "")
    if address.startswith("/amq/queue/") and len(parts) == 4 and parts[3]:
        return Source(parts[3], "", "")
    if address.startswith("/exchange/") and len(parts) in (3, 4) and parts[2]:
        key = _unescape(parts[3]) if len(parts) == 4 else ""
        return Source(None, _unescape(parts[2]), key)
    if address.startswith("/topic/") and len(parts) == 3 and parts[2]:
        return Source(None, "amq.topic", _unescape(parts[2]))
    if address.split("/", 2)[1:2] == ["exchanges"]:
        # RabbitMQ 4 (and 3) have no such source; their text, from the address parser
        raise LinkError(
            T.AMQP_ERROR_INVALID_FIELD, f'Attach rejected: {{unknown_destination,"{address}"}}'
        )
    raise _invalid(address)


def _unescape(part: str) -> str:
    """RabbitMQ 3's unescaping of a legacy address part: only ``%2F`` is ``/``."""
    return part.replace("%2F", "/")


def queue_address(name: str) -> str:
    return "/queues/" + quote(name, safe="")


def reply_to_name(address: str) -> str:
    """A 1.0 reply-to address as a 0-9-1 reply_to: ``/queues/NAME`` -> NAME."""
    if address.startswith("/queues/") and address.count("/") == 2:
        return unquote(address[8:])
    return address


def _invalid(address: str) -> LinkError:
    return LinkError(
        T.AMQP_ERROR_INVALID_FIELD,
        f"address '{address}' is not /queues/NAME, /exchanges/NAME[/KEY] "
        "or a RabbitMQ 3 address (/queue/NAME, /exchange/NAME/KEY, /topic/KEY, "
        "/amq/queue/NAME)",
    )
