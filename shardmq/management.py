"""The ``[management]`` section of the config file.

Owns: ``ManagementSettings``: whether the management HTTP API (``workers.mgmt_http``)
is served, and where. One port whatever the worker count: it is served by the process
that orders metadata changes (the supervisor, or the broker process with one worker).

``host`` unset: the AMQP listener's host (``server.host``), as RabbitMQ's management
listener follows the broker's interface unless told otherwise: a broker bound to
127.0.0.1 does not expose its API on every interface.

HTTPS (RabbitMQ's ``management.ssl.*``): ``[management.ssl]`` with a ``certfile`` (and
``keyfile``, ``cacertfile``, ``port``), or ``tls = true`` to use the ``[tls]`` section's
files. The one listener then speaks HTTPS only, on ``ssl.port`` when set, else ``port``.

``port`` unset: ``$SHARDMQ_MANAGEMENT_PORT`` when that is set (0: any free port; the
test suite sets it so that its many brokers do not contend for 15672), else 15672.
"""

from __future__ import annotations

import os
from typing import Annotated

import msgspec
from msgspec import Meta, Struct


class ManagementSSL(Struct, forbid_unknown_fields=True, kw_only=True):
    """``[management.ssl]``: RabbitMQ's ``management.ssl.*`` (port, certfile, keyfile,
    cacertfile). ``certfile`` set: the API is served over HTTPS with these files."""

    port: Annotated[int, Meta(ge=0, le=65535)] | None = None  # unset: management.port
    certfile: str = ""
    keyfile: str = ""  # empty: the key is in certfile
    cacertfile: str = ""


class ManagementSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    host: str | None = None
    port: Annotated[int, Meta(ge=0, le=65535)] | None = None
    # HTTPS with the ``[tls]`` section's certificate, key and CA file
    tls: bool = False
    ssl: ManagementSSL = msgspec.field(default_factory=ManagementSSL)

    @property
    def https(self) -> bool:
        return self.tls or bool(self.ssl.certfile)

    def effective_port(self) -> int:
        if self.https and self.ssl.port is not None:
            return self.ssl.port
        if self.port is not None:
            return self.port
        env = os.environ.get(PORT_ENV, "")
        return int(env) if env.isdigit() and int(env) <= 65535 else DEFAULT_PORT


DEFAULT_PORT = 15672
PORT_ENV = "SHARDMQ_MANAGEMENT_PORT"
