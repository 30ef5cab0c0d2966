"""Management API endpoints about the node itself: ``/api/nodes``, ``/api/nodes/{name}``,
``/api/health/checks/port-listener/{port}`` and ``/api/aliveness-test/{vhost}``
(RabbitMQ 3.10's paths, fields and answers), and ``node_totals`` (the overview's
channel count).

Owns: the node row (RabbitMQ's main fields: ``name``, ``type`` "disc", ``running``,
``mem_used``/``mem_limit``/``mem_alarm``, ``disk_free``/``disk_free_limit``/
``disk_free_alarm``, ``fd_used``/``fd_total``, ``sockets_used``/``sockets_total``,
``proc_used``/``proc_total``, ``uptime`` (ms), ``run_queue``, ``processors``,
``partitions`` [], ...), summed over every live worker's ``node`` op
(``workers.node_ops``) plus this process when it is not one of them.

Invariants:
- shardmq is one node whatever the worker count: ``/api/nodes`` lists one row; the
  memory and descriptors are those of all its processes, an alarm is on when any
  worker has it.
- The aliveness test really passes a message through its vhost: it declares the
  ``aliveness-test`` queue, publishes ``test_message`` to it on the queue's owner
  (``workers.mgmt_publish``) and gets it back (``ack_requeue_false``); anything else
  is RabbitMQ's ``{"status": "failed", "reason": ...}``.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from typing import Any

from aiohttp import web

from shardmq.amqp.methods import BasicProperties
from shardmq.broker import metadata as md
from workers.admin import submit
from workers.lifecycle import rss_bytes
from workers.mgmt_http import (
    SERVER,
    ApiError,
    bad_request,
    changed,
    json_response,
    need_vhost,
    not_found,
    ops_of,
    route,
)
from workers.mgmt_messages import owner_call
from workers.mgmt_publish import publish_on_worker
from workers.worker_ops import call_all

ALIVENESS_QUEUE = "aliveness-test"
ALIVENESS_BODY = b"test_message"


async def _workers(request: web.Request) -> list[dict[str, Any]]:
    answers = await call_all(request.app[SERVER].data_dir, "node", {})
    return [a for _slot, a in answers if isinstance(a, dict)]


async def node_totals(request: web.Request) -> dict[str, int]:
    """Connections and channels summed over the live workers."""
    rows = await _workers(request)
    return {
        "connections": sum(int(r.get("connections", 0)) for r in rows),
        "channels": sum(int(r.get("channels", 0)) for r in rows),
    }


def _rate() -> dict[str, float]:
    return {"rate": 0.0}


async def node_row(request: web.Request) -> dict[str, Any]:
    server = request.app[SERVER]
    rows = await _workers(request)
    pids = {r.get("pid") for r in rows}
    mem = sum(int(r.get("mem_used", 0)) for r in rows)
    fds = sum(int(r.get("fd_used", 0)) for r in rows)
    fd_total = sum(int(r.get("fd_total", 0)) for r in rows)
    procs = sum(int(r.get("tasks", 0)) for r in rows)
    if os.getpid() not in pids:  # the supervisor serving this API is the node's too
        mem += rss_bytes()
        from shardmq.net.limits import fds_in_use

        fds += fds_in_use()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fd_total += soft if soft != resource.RLIM_INFINITY else 0
        procs += 1
    try:
        disk_free = shutil.disk_usage(server.data_dir).free
    except OSError:
        disk_free = 0
    sockets = sum(int(r.get("connections", 0)) for r in rows)
    try:
        run_queue = int(os.getloadavg()[0])
    except OSError:
        run_queue = 0
    return {
        "name": server.node,
        "type": "disc",
        "running": bool(rows),
        "os_pid": str(os.getpid()),
        "mem_used": mem,
        "mem_used_details": _rate(),
        "mem_limit": max((int(r.get("mem_limit", 0)) for r in rows), default=0),
        "mem_alarm": any(r.get("mem_alarm") for r in rows),
        "mem_calculation_strategy": "rss",
        "disk_free": disk_free,
        "disk_free_details": _rate(),
        "disk_free_limit": max((int(r.get("disk_free_limit", 0)) for r in rows), default=0),
        "disk_free_alarm": any(r.get("disk_free_alarm") for r in rows),
        "fd_used": fds,
        "fd_used_details": _rate(),
        "fd_total": fd_total,
        "sockets_used": sockets,
        "sockets_used_details": _rate(),
        "sockets_total": fd_total,
        "proc_used": procs,
        "proc_used_details": _rate(),
        "proc_total": 1048576,
        "uptime": int((time.time() - server.started_at) * 1000),
        "run_queue": run_queue,
        "processors": os.cpu_count() or 1,
        "partitions": [],
        "cluster_links": [],
        "applications": [],
        "contexts": [],
        "auth_mechanisms": [],
        "exchange_types": [],
        "enabled_plugins": ["rabbitmq_management"],
        "log_files": [],
        "config_files": [],
        "db_dir": str(server.data_dir),
        "net_ticktime": 60,
        "rates_mode": "none",
        "workers": len(rows),
    }


@route("GET", "/api/nodes")
async def nodes(request: web.Request) -> web.Response:
    return json_response([await node_row(request)])


@route("GET", "/api/nodes/{name}")
async def one_node(request: web.Request) -> web.Response:
    if request.match_info["name"] != request.app[SERVER].node:
        raise not_found()
    return json_response(await node_row(request))


@route("GET", "/api/health/checks/port-listener/{port}")
async def port_listener(request: web.Request) -> web.Response:
    try:
        port = int(request.match_info["port"])
    except ValueError:
        raise bad_request("Invalid port") from None
    ports = sorted({int(lst["port"]) for lst in request.app[SERVER].listeners})
    if port in ports:
        return json_response({"status": "ok", "port": port})
    return json_response(
        {"status": "failed", "reason": "No active listener", "missing": port, "ports": ports},
        status=503,
    )


@route("GET", "/api/aliveness-test/{vhost}")
async def aliveness(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost, write=True)
    op = md.DeclareQueue(vhost, ALIVENESS_QUEUE, False, False, False, False, b"", 0)
    await changed(submit(ops_of(request), op))
    try:
        routed = await publish_on_worker(
            request, vhost, "", ALIVENESS_QUEUE, BasicProperties(), ALIVENESS_BODY
        )
        q = ops_of(request).metadata.vhosts[vhost].queues.get(ALIVENESS_QUEUE)
        if not routed or q is None:
            raise ApiError(503, "failed", "aliveness-test queue is empty")
        args = {"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64", "truncate": None}
        rows = await owner_call(request, q, "get", {"vhost": vhost, "name": q.name, **args})
    except ApiError as exc:
        return json_response({"status": "failed", "reason": exc.reason}, status=503)
    if not rows:
        return json_response(
            {"status": "failed", "reason": "aliveness-test queue is empty"}, status=503
        )
    return json_response({"status": "ok"})
