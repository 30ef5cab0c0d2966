"""Prometheus metrics over HTTP (aiohttp), as RabbitMQ's ``rabbitmq_prometheus`` plugin.

Owns: ``PrometheusServer`` (an ``http_endpoint.HttpEndpoint``: ``bind`` the port,
``start``, ``stop``; one listener of its own beside the management API's, in the same
process and loop) and ``render`` (the
text exposition format 0.0.4). ``/metrics``: every series aggregated over the broker
(RabbitMQ's names where one exists: ``rabbitmq_queue_messages_ready``,
``rabbitmq_global_messages_received_total``, ``rabbitmq_channel_messages_published_total``
...), plus ``shardmq_worker_*`` per worker (label ``worker``). ``/metrics/per-object``:
the same, with the ``rabbitmq_queue_*`` series per queue (labels ``vhost``, ``queue``).

Invariants: the numbers come from the workers' reports through the shared
``workers.mgmt_stats`` history (counters never go back, even across a worker's
respawn); a scrape reuses reports at most ``mgmt_stats.MAX_AGE`` seconds old so that
frequent scrapes do not make every worker walk its queues each time. No authentication, as the
plugin. An unexpected failure is a 500 with one log line. ``bind`` raises only
``workers.startup.StartupError``.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from shardmq.prometheus import PrometheusSettings
from workers.http_endpoint import HttpEndpoint
from workers.mgmt_stats import QUEUE_INDEX, QUEUE_KEYS, StatsHistory, history_for
from workers.status import WorkerReport

if TYPE_CHECKING:
    from shardmq.config import Config

log = logging.getLogger("shardmq.prometheus")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RABBITMQ_VERSION = "3.10.8"
_ZEROS = (0,) * len(QUEUE_KEYS)

# worker counter -> (RabbitMQ's counter name, help)
CHANNEL_COUNTERS = (
    ("published", "rabbitmq_channel_messages_published_total", "Messages published into a channel"),
    ("confirmed", "rabbitmq_channel_messages_confirmed_total", "Messages confirmed to publishers"),
    (
        "unroutable_dropped",
        "rabbitmq_channel_messages_unroutable_dropped_total",
        "Messages published as non-mandatory and dropped as unroutable",
    ),
    (
        "unroutable_returned",
        "rabbitmq_channel_messages_unroutable_returned_total",
        "Messages published as mandatory and returned as unroutable",
    ),
    ("deliver_auto", "rabbitmq_channel_messages_delivered_total", "Messages delivered, auto ack"),
    (
        "deliver_manual",
        "rabbitmq_channel_messages_delivered_ack_total",
        "Messages delivered to consumers in manual acknowledgement mode",
    ),
    ("redelivered", "rabbitmq_channel_messages_redelivered_total", "Messages redelivered"),
    ("acked", "rabbitmq_channel_messages_acked_total", "Messages acknowledged by consumers"),
    ("get_auto", "rabbitmq_channel_get_total", "Messages fetched with basic.get, auto ack"),
    ("get_manual", "rabbitmq_channel_get_ack_total", "Messages fetched with basic.get, manual ack"),
    ("get_empty", "rabbitmq_channel_get_empty_total", "basic.get operations on empty queues"),
    ("connections_opened", "rabbitmq_connections_opened_total", "Connections opened"),
    ("connections_closed", "rabbitmq_connections_closed_total", "Connections closed"),
    ("channels_opened", "rabbitmq_channels_opened_total", "Channels opened"),
    ("channels_closed", "rabbitmq_channels_closed_total", "Channels closed"),
    ("queues_declared", "rabbitmq_queues_declared_total", "Queues declared"),
    ("queues_created", "rabbitmq_queues_created_total", "Queues created"),
    ("queues_deleted", "rabbitmq_queues_deleted_total", "Queues deleted"),
)
# rabbitmq_global_*: name -> the worker counters summed
GLOBAL_COUNTERS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("received", ("published",), "messages received from publishers"),
    ("routed", ("routed",), "messages routed to queues"),
    (
        "delivered",
        ("deliver_auto", "deliver_manual", "get_auto", "get_manual"),
        "messages delivered to consumers",
    ),
    ("delivered_consume_auto_ack", ("deliver_auto",), "messages delivered, consume, auto ack"),
    ("delivered_consume_manual_ack", ("deliver_manual",), "messages delivered, consume, manual"),
    ("delivered_get_auto_ack", ("get_auto",), "messages delivered, basic.get, auto ack"),
    ("delivered_get_manual_ack", ("get_manual",), "messages delivered, basic.get, manual ack"),
    ("get_empty", ("get_empty",), "basic.get operations on empty queues"),
    ("redelivered", ("redelivered",), "messages redelivered to consumers"),
    ("acknowledged", ("acked",), "messages acknowledged by consumers"),
    ("confirmed", ("confirmed",), "messages confirmed to publishers"),
    ("unroutable_dropped", ("unroutable_dropped",), "unroutable messages dropped"),
    ("unroutable_returned", ("unroutable_returned",), "unroutable messages returned"),
)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


def _num(v: float) -> str:
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class Exposition:
    """Families in the text format, each with its HELP and TYPE lines once."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_: str,
        samples: Iterable[tuple[dict[str, str], float]],
    ) -> None:
        self.parts.append(f"# TYPE {name} {kind}\n# HELP {name} {help_}\n")
        self.parts.extend(f"{name}{_labels(lb)} {_num(v)}\n" for lb, v in samples)

    def labelled(
        self, name: str, kind: str, help_: str, samples: Iterable[tuple[str, int]]
    ) -> None:
        """Like ``family`` with labels already rendered (``_labels``) and int values."""
        self.parts.append(f"# TYPE {name} {kind}\n# HELP {name} {help_}\n")
        self.parts.extend(f"{name}{lb} {v}\n" for lb, v in samples)

    def one(self, name: str, kind: str, help_: str, value: float) -> None:
        self.family(name, kind, help_, [({}, value)])

    def text(self) -> str:
        return "".join(self.parts)


def _self_rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def render(
    reports: list[WorkerReport],
    history: StatsHistory,
    *,
    node: str,
    per_object: bool,
    memory_limit: int,
    disk_free_limit: int,
    data_dir: str,
    supervisor: bool,
) -> str:
    out = Exposition()
    totals = history.totals
    stats = [r.stats for r in reports if r.stats is not None]
    queues = [q for r in reports for q in r.queues]
    out.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
        [({"rabbitmq_node": node, "rabbitmq_cluster": node}, 1)],
    )
    out.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
        [
            (
                {
                    "rabbitmq_version": RABBITMQ_VERSION,
                    "prometheus_plugin_version": RABBITMQ_VERSION,
                    "prometheus_client_version": "shardmq",
                    "erlang_version": platform.python_version(),
                    "product": "shardmq",
                },
                1,
            )
        ],
    )
    # ---------------------------------------------------------------- objects
    consumers = sum(q.consumers for q in queues)
    out.one(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        sum(r.connections for r in reports),
    )
    out.one("rabbitmq_channels", "gauge", "Channels currently open", sum(s.channels for s in stats))
    out.one("rabbitmq_consumers", "gauge", "Consumers currently connected", consumers)
    out.one(
        "rabbitmq_channel_consumers",
        "gauge",
        "Consumers on channels",
        sum(s.consumers for s in stats),
    )
    out.one(
        "rabbitmq_channel_messages_unconfirmed",
        "gauge",
        "Published but not yet confirmed messages",
        sum(s.unconfirmed for s in stats),
    )
    out.one("rabbitmq_queues", "gauge", "Queues available", len(queues))
    # ---------------------------------------------------------------- queues
    if per_object:
        qlabels = [(_labels({"vhost": q.vhost, "queue": q.name}), q) for q in queues]
        counts = [history.queues.get((q.vhost, q.name), _ZEROS) for q in queues]
        out.labelled(
            "rabbitmq_queue_messages_ready",
            "gauge",
            "Messages ready to be delivered to consumers",
            [(lb, q.messages_ready) for lb, q in qlabels],
        )
        out.labelled(
            "rabbitmq_queue_messages_unacked",
            "gauge",
            "Messages delivered to consumers but not yet acknowledged",
            [(lb, q.messages_unacknowledged) for lb, q in qlabels],
        )
        out.labelled(
            "rabbitmq_queue_messages",
            "gauge",
            "Sum of ready and unacknowledged messages - total queue depth",
            [(lb, q.messages) for lb, q in qlabels],
        )
        out.labelled(
            "rabbitmq_queue_consumers",
            "gauge",
            "Consumers on a queue",
            [(lb, q.consumers) for lb, q in qlabels],
        )
        for key, name, help_ in (
            ("publish", "rabbitmq_queue_messages_published_total", "Messages published to queues"),
            ("deliver_get", "shardmq_queue_messages_delivered_total", "Messages delivered or got"),
            ("ack", "shardmq_queue_messages_acked_total", "Messages acknowledged"),
            ("redeliver", "shardmq_queue_messages_redelivered_total", "Messages redelivered"),
        ):
            i = QUEUE_INDEX[key]
            out.labelled(
                name,
                "counter",
                help_,
                [(lb, c[i]) for (lb, _), c in zip(qlabels, counts, strict=True)],
            )
    else:
        for name, help_, value in (
            (
                "rabbitmq_queue_messages_ready",
                "Messages ready to be delivered to consumers",
                sum(q.messages_ready for q in queues),
            ),
            (
                "rabbitmq_queue_messages_unacked",
                "Messages delivered to consumers but not yet acknowledged",
                sum(q.messages_unacknowledged for q in queues),
            ),
            (
                "rabbitmq_queue_messages",
                "Sum of ready and unacknowledged messages - total queue depth",
                sum(q.messages for q in queues),
            ),
            ("rabbitmq_queue_consumers", "Consumers on a queue", consumers),
        ):
            out.one(name, "gauge", help_, value)
        out.one(
            "rabbitmq_queue_messages_published_total",
            "counter",
            "Messages published to queues",
            sum(c[QUEUE_INDEX["publish"]] for c in history.queues.values()),
        )
    # ---------------------------------------------------------------- counters
    for field, name, help_ in CHANNEL_COUNTERS:
        out.one(name, "counter", help_, totals.get(field, 0))
    for name, fields, help_ in GLOBAL_COUNTERS:
        out.one(
            f"rabbitmq_global_messages_{name}_total",
            "counter",
            f"Total number of {help_}",
            sum(totals.get(f, 0) for f in fields),
        )
    out.one("rabbitmq_global_consumers", "gauge", "Current number of consumers", consumers)
    # ---------------------------------------------------------------- resources
    rss = sum(s.rss_bytes for s in stats) + (_self_rss() if supervisor else 0)
    out.one("rabbitmq_process_resident_memory_bytes", "gauge", "Memory used in bytes (RSS)", rss)
    out.one(
        "rabbitmq_resident_memory_limit_bytes",
        "gauge",
        "Memory high watermark in bytes",
        memory_limit,
    )
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError:
        free = 0
    out.one("rabbitmq_disk_space_available_bytes", "gauge", "Disk space available in bytes", free)
    out.one(
        "rabbitmq_disk_space_available_limit_bytes",
        "gauge",
        "Free disk space low watermark in bytes",
        disk_free_limit,
    )
    out.one(
        "rabbitmq_process_open_fds",
        "gauge",
        "Open file descriptors",
        sum(s.open_fds for s in stats),
    )
    out.one(
        "rabbitmq_process_max_fds",
        "gauge",
        "Open file descriptors limit",
        sum(s.max_fds for s in stats),
    )
    out.one(
        "rabbitmq_process_open_tcp_sockets",
        "gauge",
        "Open TCP sockets",
        sum(r.connections for r in reports),
    )
    out.one(
        "rabbitmq_process_max_tcp_sockets",
        "gauge",
        "Open TCP sockets limit",
        sum(s.max_fds for s in stats),
    )
    out.one(
        "rabbitmq_alarms_memory_used_watermark",
        "gauge",
        "is 1 if VM memory watermark alarm is in effect",
        int(any(s.memory_alarm for s in stats)),
    )
    out.one(
        "rabbitmq_alarms_free_disk_space_watermark",
        "gauge",
        "is 1 if free disk space watermark alarm is in effect",
        int(any(s.disk_alarm for s in stats)),
    )
    out.one(
        "rabbitmq_alarms_file_descriptor_limit",
        "gauge",
        "is 1 if file descriptor limit alarm is in effect",
        0,
    )
    # ---------------------------------------------------------------- workers
    per_worker = [(r, r.stats) for r in reports if r.stats is not None]
    for name, kind, help_, get in (
        ("shardmq_worker_loop_lag_seconds", "gauge", "Event loop lateness, last probe", "lag"),
        ("shardmq_worker_loop_lag_max_seconds", "gauge", "Largest loop lateness lately", "lagm"),
        ("shardmq_worker_cpu_seconds_total", "counter", "CPU time (user + system)", "cpu"),
        ("shardmq_worker_connections", "gauge", "Client connections", "conns"),
        ("shardmq_worker_channels", "gauge", "Channels", "chans"),
        ("shardmq_worker_queues_owned", "gauge", "Queues this worker owns", "owned"),
        (
            "shardmq_worker_cross_worker_records_total",
            "counter",
            "Records read from other workers' rings",
            "recs",
        ),
        ("shardmq_worker_ring_fill_ratio", "gauge", "Fullest outgoing ring, used/capacity", "fill"),
        ("shardmq_worker_resident_memory_bytes", "gauge", "Worker memory (RSS)", "rss"),
    ):
        samples: list[tuple[dict[str, str], float]] = []
        for r, s in per_worker:
            v: float = {
                "lag": s.loop_lag,
                "lagm": s.loop_lag_max,
                "cpu": s.cpu_seconds,
                "conns": r.connections,
                "chans": s.channels,
                "owned": s.queues_owned,
                "recs": s.cross_records,
                "fill": s.ring_fill,
                "rss": s.rss_bytes,
            }[get]
            samples.append(({"worker": str(r.slot)}, v))
        out.family(name, kind, help_, samples)
    return out.text()


class PrometheusServer(HttpEndpoint):
    setting = "prometheus.port"
    what = "prometheus metrics"

    def __init__(
        self,
        settings: PrometheusSettings,
        data_dir: str,
        node: str,
        *,
        memory_limit: int = 0,
        disk_free_limit: int = 0,
        supervisor: bool = False,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.node = node
        self.memory_limit = memory_limit
        self.disk_free_limit = disk_free_limit
        self.supervisor = supervisor  # serving from a supervisor: its memory counts too
        self.history: StatsHistory = history_for(data_dir)
        # the last text of each endpoint, and the fetch it was rendered from
        self._rendered: dict[bool, tuple[tuple[float, bool], bytes]] = {}

    async def _metrics(self, request: web.Request, per_object: bool) -> web.Response:
        try:
            reports = await self.history.fresh()
            key = (self.history.fetched_at, per_object)
            cached = self._rendered.get(per_object)
            if cached is not None and cached[0] == key:  # the same reports: the same text
                return web.Response(body=cached[1], headers={"Content-Type": CONTENT_TYPE})
            text = render(
                reports,
                self.history,
                node=self.node,
                per_object=per_object,
                memory_limit=self.memory_limit,
                disk_free_limit=self.disk_free_limit,
                data_dir=self.data_dir,
                supervisor=self.supervisor,
            )
        except Exception as exc:  # one line, never a traceback to the scraper
            log.error("GET %s failed: %s: %s", request.path, type(exc).__name__, exc)
            return web.Response(status=500, text=f"{type(exc).__name__}: {exc}\n")
        body = text.encode()
        self._rendered[per_object] = (key, body)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def metrics(self, request: web.Request) -> web.Response:
        return await self._metrics(request, False)

    async def per_object(self, request: web.Request) -> web.Response:
        return await self._metrics(request, True)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/metrics/per-object", self.per_object)
        await self.serve(app)
        log.info("prometheus metrics on http://%s:%d/metrics", self.settings.host, self.port)


def prometheus_server(config: Config, *, supervisor: bool) -> PrometheusServer | None:
    """The metrics server of ``config`` (a ``shardmq.config.Config``) with its port
    claimed (None when disabled); ``StartupError`` when the port cannot be had."""
    from workers.lifecycle import memory_limit
    from workers.mgmt_objects import node_name

    settings = config.prometheus
    if not settings.enabled:
        return None
    server = config.server
    if settings.host is None:  # follows the AMQP listener's interface
        settings = msgspec.structs.replace(settings, host=server.host)
    prom = PrometheusServer(
        settings,
        server.data_dir,
        node_name(),
        memory_limit=memory_limit(server.memory_high_watermark, server.memory_limit_absolute),
        disk_free_limit=config.store.disk_free_limit,
        supervisor=supervisor,
    )
    prom.bind()
    return prom
