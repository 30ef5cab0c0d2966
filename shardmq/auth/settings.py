"""The ``[auth]`` section of the config file.

Owns: ``AuthSettings``. ``loopback_users`` (RabbitMQ's setting of that name): users who
may only log in over a loopback address; ``guest`` by default, as in RabbitMQ, so the
default account is useless from the network. An empty list lifts the rule (it does not
apply to EXTERNAL, which has no password). ``mechanisms`` (RabbitMQ's
``auth_mechanisms``): the SASL mechanisms offered in connection.start, in order; EXTERNAL
(the user named by a verified TLS client certificate) is offered only on TLS
connections that presented one.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

Mechanism = Literal["PLAIN", "AMQPLAIN", "EXTERNAL"]


class AuthSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    loopback_users: list[str] = msgspec.field(default_factory=lambda: ["guest"])
    mechanisms: list[Mechanism] = msgspec.field(default_factory=lambda: ["PLAIN", "AMQPLAIN"])

    def __post_init__(self) -> None:
        if not self.mechanisms:
            raise ValueError("auth.mechanisms must name at least one mechanism")
