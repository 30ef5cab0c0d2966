"""Management API endpoints for the broker's objects: overview, exchanges, queues,
bindings and the alarm health checks (RabbitMQ 3.10's paths, JSON and status codes).

Owns: the handlers and their rows (``exchange_row``, ``queue_row``, ``binding_rows``).

Invariants: reads come from this process's metadata replica (every declared object)
and, for queue counts and queue and exchange ``message_stats``, from every worker's
live report (``mgmt_http.worker_reports``);
changes are metadata ops through ``workers.admin.submit``, checked first (404 for an
unknown vhost/object, 400 for a bad body) so a refused request changes nothing. The
implicit default-exchange bindings are listed as RabbitMQ lists them. The node, its
listeners and the aliveness test are ``workers.mgmt_nodes``'s.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from shardmq.broker import metadata as md
from shardmq.broker.exchange import Exchange
from shardmq.broker.routing import args_key
from workers.admin import submit
from workers.mgmt_http import (
    SERVER,
    ApiError,
    bad_request,
    body_of,
    changed,
    created,
    field,
    flag,
    json_response,
    listing,
    need_vhost,
    no_content,
    not_found,
    ops_of,
    queue_of,
    route,
    vhosts_visible,
    worker_reports,
)
from workers.mgmt_nodes import node_totals
from workers.status import QueueStatus

PRODUCT = "shardmq"
VERSION = "0.1.0"
RABBITMQ_VERSION = "3.10.8"  # the API level answered (clients check it)
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers", "x-consistent-hash")


@functools.cache
def node_name() -> str:
    return f"shardmq@{socket.gethostname()}"


# ---------------------------------------------------------------------- overview
async def _queue_stats(request: web.Request) -> dict[tuple[str, str], QueueStatus]:
    stats: dict[tuple[str, str], QueueStatus] = {}
    for rep in await worker_reports(request):
        for q in rep.queues:
            stats[(q.vhost, q.name)] = q
    return stats


def _rate(n: int) -> dict[str, Any]:
    return {"rate": 0.0}


@route("GET", "/api/overview")
async def overview(request: web.Request) -> web.Response:
    md_ = ops_of(request).metadata
    vhosts = vhosts_visible(request)
    reports = await worker_reports(request)
    ready = unacked = consumers = 0
    for rep in reports:
        for q in rep.queues:
            if q.vhost in vhosts:
                ready += q.messages_ready
                unacked += q.messages_unacknowledged
                consumers += q.consumers
    server = request.app[SERVER]
    totals = {
        "messages": ready + unacked,
        "messages_details": _rate(0),
        "messages_ready": ready,
        "messages_ready_details": _rate(0),
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": _rate(0),
    }
    return json_response(
        {
            "management_version": RABBITMQ_VERSION,
            "rabbitmq_version": RABBITMQ_VERSION,
            "product_name": PRODUCT,
            "product_version": VERSION,
            "erlang_version": platform.python_version(),
            "erlang_full_version": f"Python {platform.python_version()}",
            "cluster_name": server.node,
            "node": server.node,
            "rates_mode": "none",
            "disable_stats": False,
            "enable_queue_totals": False,
            "exchange_types": [
                {"name": t, "description": "", "enabled": True} for t in EXCHANGE_TYPES
            ],
            "message_stats": server.history.overview_message_stats(),
            "churn_rates": server.history.churn_rates(),
            "queue_totals": totals,
            "object_totals": {
                "connections": sum(r.connections for r in reports),
                "channels": (await node_totals(request))["channels"],
                "consumers": consumers,
                "exchanges": sum(len(md_.vhosts[v].exchanges) for v in vhosts),
                "queues": sum(len(md_.vhosts[v].queues) for v in vhosts),
            },
            "statistics_db_event_queue": 0,
            "listeners": server.listeners,
            "contexts": [
                {
                    "node": server.node,
                    "description": "RabbitMQ Management",
                    "path": "/",
                    "port": str(server.port),
                }
            ],
        }
    )


@route("GET", "/api/health/checks/alarms")
@route("GET", "/api/health/checks/local-alarms")
async def alarms(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


# ---------------------------------------------------------------------- exchanges
def exchange_row(vhost: str, ex: Exchange) -> dict[str, Any]:
    return {
        "name": ex.name,
        "vhost": vhost,
        "type": ex.type,
        "durable": ex.durable,
        "auto_delete": ex.auto_delete,
        "internal": ex.internal,
        "arguments": dict(ex.arguments),
        "user_who_performed_action": "",
        "policy": ex.policy.name if ex.policy is not None else None,
    }


def _exchanges(request: web.Request, vhosts: list[str]) -> list[dict[str, Any]]:
    md_ = ops_of(request).metadata
    return [
        exchange_row(v, ex)
        for v in vhosts
        for ex in sorted(md_.vhosts[v].exchanges.values(), key=lambda e: e.name)
    ]


async def _exchange_message_stats(request: web.Request) -> Callable[[dict[str, Any]], None]:
    """Adds an answered exchange's ``message_stats`` (publish_in/out, when it has
    counts: RabbitMQ leaves the key out before), from reports at most 5 s old."""
    await worker_reports(request)
    history = request.app[SERVER].history

    def finish(row: dict[str, Any]) -> None:
        stats = history.exchange_message_stats(row["vhost"], row["name"])
        if stats is not None:
            row["message_stats"] = stats

    return finish


@route("GET", "/api/exchanges")
async def list_exchanges(request: web.Request) -> web.Response:
    rows = _exchanges(request, vhosts_visible(request))
    return listing(request, rows, await _exchange_message_stats(request))


@route("GET", "/api/exchanges/{vhost}")
async def list_vhost_exchanges(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    return listing(request, _exchanges(request, [vhost]), await _exchange_message_stats(request))


def _exchange(request: web.Request) -> tuple[str, Exchange]:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    need_vhost(request, vhost)
    ex = ops_of(request).metadata.vhosts[vhost].exchanges.get(name)
    if ex is None:
        raise not_found()
    return vhost, ex


@route("GET", "/api/exchanges/{vhost}/{name}")
async def get_exchange(request: web.Request) -> web.Response:
    vhost, ex = _exchange(request)
    row = exchange_row(vhost, ex)
    (await _exchange_message_stats(request))(row)
    return json_response(row)


@route("PUT", "/api/exchanges/{vhost}/{name}")
async def put_exchange(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    need_vhost(request, vhost, write=True)
    body = await body_of(request)
    type_ = field(body, "type", str, None)
    if not type_:
        raise bad_request("Missing key type")
    arguments = field(body, "arguments", dict, None) or {}
    existed = name in ops_of(request).metadata.vhosts[vhost].exchanges
    op = md.DeclareExchange(
        vhost,
        name,
        type_,
        False,
        bool(field(body, "durable", bool, True)),
        bool(field(body, "auto_delete", bool, False)),
        bool(field(body, "internal", bool, False)),
        md.table_bytes(arguments),
    )
    await changed(submit(ops_of(request), op))
    return no_content() if existed else created()


@route("DELETE", "/api/exchanges/{vhost}/{name}")
async def delete_exchange(request: web.Request) -> web.Response:
    vhost, ex = _exchange(request)
    need_vhost(request, vhost, write=True)
    op = md.DeleteExchange(vhost, ex.name, flag(request, "if-unused"))
    await changed(submit(ops_of(request), op))
    return no_content()


# ---------------------------------------------------------------------- queues
def queue_row(vhost: str, q: Any, st: QueueStatus | None) -> dict[str, Any]:
    policy = getattr(q, "policy", None)
    row: dict[str, Any] = {
        "name": q.name,
        "vhost": vhost,
        "durable": bool(q.durable),
        "auto_delete": bool(q.auto_delete),
        "exclusive": bool(q.exclusive),
        "arguments": dict(q.arguments),
        "type": "classic",
        "state": "running",
        "node": node_name(),
        "policy": policy.name if policy is not None else None,
        "messages": st.messages if st else 0,
        "messages_ready": st.messages_ready if st else 0,
        "messages_unacknowledged": st.messages_unacknowledged if st else 0,
        "consumers": st.consumers if st else 0,
    }
    for k in _COUNT_DETAILS:
        row[k] = _ZERO_RATE  # one shared object (rows are only encoded): fewer allocations
    return row


_COUNT_DETAILS = ("messages_details", "messages_ready_details", "messages_unacknowledged_details")
_ZERO_RATE: dict[str, float] = {"rate": 0.0}


# sort keys a queue listing can order by before its rows are made
_LIGHT_SORT = frozenset({"", "name", "vhost"})


async def _list_queues(request: web.Request, vhosts: list[str]) -> web.Response:
    """The queues of ``vhosts`` as ``listing`` answers them, with their counts (every
    worker's report) and ``message_stats``. For a page, unless ``sort`` names another
    field, a row is only its name and vhost until it is answered: a page of 100 out
    of 10,000 queues makes 100 rows."""
    md_ = ops_of(request).metadata
    stats = await _queue_stats(request)
    history = request.app[SERVER].history
    queues = [(v, q) for v in vhosts for q in sorted(md_.vhosts[v].queues.values(), key=_by_name)]
    if "page" in request.query and request.query.get("sort", "") in _LIGHT_SORT:
        rows = [{"name": q.name, "vhost": v, "_q": q} for v, q in queues]

        def finish(row: dict[str, Any]) -> None:
            v, q = row["vhost"], row.pop("_q")
            row.update(queue_row(v, q, stats.get((v, q.name))))
            row["message_stats"] = history.queue_message_stats(v, q.name)

    else:
        rows = [queue_row(v, q, stats.get((v, q.name))) for v, q in queues]

        def finish(row: dict[str, Any]) -> None:
            row["message_stats"] = history.queue_message_stats(row["vhost"], row["name"])

    return listing(request, rows, finish)


def _by_name(q: Any) -> str:
    return str(q.name)


@route("GET", "/api/queues")
async def list_queues(request: web.Request) -> web.Response:
    return await _list_queues(request, vhosts_visible(request))


@route("GET", "/api/queues/{vhost}")
async def list_vhost_queues(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    return await _list_queues(request, [vhost])


@route("GET", "/api/queues/{vhost}/{name}")
async def get_queue(request: web.Request) -> web.Response:
    vhost, q = queue_of(request)
    stats = await _queue_stats(request)
    row = queue_row(vhost, q, stats.get((vhost, q.name)))
    row["message_stats"] = request.app[SERVER].history.queue_message_stats(vhost, q.name)
    return json_response(row)


@route("PUT", "/api/queues/{vhost}/{name}")
async def put_queue(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    need_vhost(request, vhost, write=True)
    body = await body_of(request)
    if not name or name.startswith("amq."):
        raise _reserved_name(name)
    arguments = field(body, "arguments", dict, None) or {}
    existed = name in ops_of(request).metadata.vhosts[vhost].queues
    op = md.DeclareQueue(
        vhost,
        name,
        False,
        bool(field(body, "durable", bool, True)),
        False,
        bool(field(body, "auto_delete", bool, False)),
        md.table_bytes(arguments),
        0,
    )
    await changed(submit(ops_of(request), op))
    return no_content() if existed else created()


def _reserved_name(name: str) -> ApiError:
    return bad_request(
        f"queue name '{name}' contains reserved prefix 'amq.*'"
        if name
        else "a queue name is required"
    )


@route("DELETE", "/api/queues/{vhost}/{name}")
async def delete_queue(request: web.Request) -> web.Response:
    vhost, q = queue_of(request)
    need_vhost(request, vhost, write=True)
    op = md.DeleteQueue(vhost, q.name, flag(request, "if-unused"), flag(request, "if-empty"), 0)
    await changed(submit(ops_of(request), op))
    return no_content()


# ---------------------------------------------------------------------- bindings
def props_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """RabbitMQ's binding "properties key": the routing key (``~`` when empty), and a
    hash of the arguments after a ``~`` when there are any."""
    key = quote(routing_key, safe="") if routing_key else "~"
    if not arguments:
        return key
    digest = hashlib.sha1(repr(args_key(arguments)).encode()).hexdigest()[:8]
    return f"{quote(routing_key, safe='')}~{digest}"


def _binding(vhost: str, source: str, dest: str, to_queue: bool, rk: str, args: dict) -> dict:
    return {
        "source": source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": "queue" if to_queue else "exchange",
        "routing_key": rk,
        "arguments": dict(args),
        "properties_key": props_key(rk, args),
    }


def binding_rows(request: web.Request, vhost: str) -> list[dict[str, Any]]:
    vh = ops_of(request).metadata.vhosts[vhost]
    rows = [
        _binding(vhost, "", q.name, True, q.name, {})
        for q in sorted(vh.queues.values(), key=lambda q: q.name)
    ]
    for ex in sorted(vh.exchanges.values(), key=lambda e: e.name):
        if not ex.name:
            continue
        for dest, rk, args in ex.router.bindings():
            to_queue = not isinstance(dest, Exchange)
            rows.append(_binding(vhost, ex.name, dest.name, to_queue, rk, args))
    return rows


@route("GET", "/api/bindings")
async def list_bindings(request: web.Request) -> web.Response:
    rows = [r for v in vhosts_visible(request) for r in binding_rows(request, v)]
    return listing(request, rows)


@route("GET", "/api/bindings/{vhost}")
async def list_vhost_bindings(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    return listing(request, binding_rows(request, vhost))


@route("GET", "/api/queues/{vhost}/{name}/bindings")
async def queue_bindings(request: web.Request) -> web.Response:
    vhost, q = queue_of(request)
    rows = binding_rows(request, vhost)
    return listing(
        request,
        [r for r in rows if r["destination_type"] == "queue" and r["destination"] == q.name],
    )


@route("GET", "/api/exchanges/{vhost}/{name}/bindings/{side}")
async def exchange_bindings(request: web.Request) -> web.Response:
    vhost, ex = _exchange(request)
    side = request.match_info["side"]
    if side not in ("source", "destination"):
        raise not_found()
    rows = binding_rows(request, vhost)
    if side == "source":
        rows = [r for r in rows if r["source"] == ex.name]
    else:
        rows = [
            r for r in rows if r["destination_type"] == "exchange" and r["destination"] == ex.name
        ]
    return listing(request, rows)


def _ends(request: web.Request) -> tuple[str, str, str, bool]:
    mi = request.match_info
    vhost, source, kind, dest = mi["vhost"], mi["source"], mi["kind"], mi["dest"]
    if kind not in ("q", "e"):
        raise not_found()
    need_vhost(request, vhost, write=request.method == "POST")
    vh = ops_of(request).metadata.vhosts[vhost]
    if source not in vh.exchanges:
        raise not_found()
    if (kind == "q" and dest not in vh.queues) or (kind == "e" and dest not in vh.exchanges):
        raise not_found()
    return vhost, source, dest, kind == "q"


def _between(request: web.Request) -> list[dict[str, Any]]:
    vhost, source, dest, to_queue = _ends(request)
    return [
        r
        for r in binding_rows(request, vhost)
        if r["source"] == source
        and r["destination"] == dest
        and (r["destination_type"] == "queue") == to_queue
    ]


@route("GET", "/api/bindings/{vhost}/e/{source}/{kind}/{dest}")
async def list_between(request: web.Request) -> web.Response:
    return listing(request, _between(request))


@route("POST", "/api/bindings/{vhost}/e/{source}/{kind}/{dest}")
async def add_binding(request: web.Request) -> web.Response:
    vhost, source, dest, to_queue = _ends(request)
    need_vhost(request, vhost, write=True)
    body = await body_of(request)
    rk = field(body, "routing_key", str, "") or ""
    args = field(body, "arguments", dict, None) or {}
    if not source:
        raise ApiError(403, "access_refused", "operation not permitted on the default exchange")
    op = md.Bind(vhost, to_queue, dest, source, rk, md.table_bytes(args), 0)
    await changed(submit(ops_of(request), op))
    resp = created()
    # RabbitMQ's: the destination and the properties key, URL-quoted (again)
    resp.headers["Location"] = f"{quote(dest, safe='')}/{quote(props_key(rk, args), safe='')}"
    return resp


def _one_binding(request: web.Request) -> dict[str, Any]:
    props = request.match_info["props"]  # aiohttp gives it decoded
    for r in _between(request):
        if unquote(r["properties_key"]) == props:
            return r
    raise not_found()


@route("GET", "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}")
async def get_binding(request: web.Request) -> web.Response:
    return json_response(_one_binding(request))


@route("DELETE", "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}")
async def delete_binding(request: web.Request) -> web.Response:
    r = _one_binding(request)
    vhost = r["vhost"]
    need_vhost(request, vhost, write=True)
    if not r["source"]:
        raise ApiError(403, "access_refused", "operation not permitted on the default exchange")
    op = md.Unbind(
        vhost,
        r["destination_type"] == "queue",
        r["destination"],
        r["source"],
        r["routing_key"],
        md.table_bytes(r["arguments"]),
        0,
    )
    await changed(submit(ops_of(request), op))
    return no_content()
