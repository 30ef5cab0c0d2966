"""The ``[prometheus]`` section of the config file.

Owns: ``PrometheusSettings``: whether the Prometheus metrics endpoint
(``workers.prometheus_http``: ``/metrics`` and ``/metrics/per-object``) is served, and
where. One port whatever the worker count, served by the process that serves the
management API (the supervisor, or the broker process with one worker), on a listener
of its own, as RabbitMQ's ``rabbitmq_prometheus`` plugin.

``host`` unset: the AMQP listener's host (``server.host``), as for the management
API: a broker bound to 127.0.0.1 does not expose its metrics on every interface.

``port`` unset: ``$SHARDMQ_PROMETHEUS_PORT`` when that is set (0: any free port; the
test suite sets it so that its many brokers do not contend for 15692), else 15692.
"""

from __future__ import annotations

import os
from typing import Annotated

from msgspec import Meta, Struct


class PrometheusSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    host: str | None = None
    port: Annotated[int, Meta(ge=0, le=65535)] | None = None

    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        env = os.environ.get(PORT_ENV, "")
        return int(env) if env.isdigit() and int(env) <= 65535 else DEFAULT_PORT


DEFAULT_PORT = 15692
PORT_ENV = "SHARDMQ_PROMETHEUS_PORT"
