"""The ``[management]`` section of the config file.

Owns: ``ManagementSettings``: whether the management HTTP API (``workers.mgmt_http``)
is served, and where. One port whatever the worker count: it is served by the process
that orders metadata changes (the supervisor, or the broker process with one worker).

``host`` unset: the AMQP listener's host (``server.host``), as RabbitMQ's management
listener follows the broker's interface unless told otherwise: a broker bound to
127.0.0.1 does not expose its API on every interface.

``port`` unset: ``$SHARDMQ_MANAGEMENT_PORT`` when that is set (0: any free port; the
test suite sets it so that its many brokers do not contend for 15672), else 15672.
"""

from __future__ import annotations

import os
from typing import Annotated

from msgspec import Meta, Struct


class ManagementSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    host: str | None = None
    port: Annotated[int, Meta(ge=0, le=65535)] | None = None

    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        env = os.environ.get(PORT_ENV, "")
        return int(env) if env.isdigit() and int(env) <= 65535 else DEFAULT_PORT


DEFAULT_PORT = 15672
PORT_ENV = "SHARDMQ_MANAGEMENT_PORT"
