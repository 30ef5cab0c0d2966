"""The ``[auth]`` section of the config file.

Owns: ``AuthSettings``. ``loopback_users`` (RabbitMQ's setting of that name): users who
may only log in over a loopback address; ``guest`` by default, as in RabbitMQ, so the
default account is useless from the network. An empty list lifts the rule.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct


class AuthSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    loopback_users: list[str] = msgspec.field(default_factory=lambda: ["guest"])
