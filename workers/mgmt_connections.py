"""Management API endpoints for clients: connections, channels and consumers
(RabbitMQ 3.10's paths, rows and status codes).

Owns: ``GET /api/connections``, ``/api/vhosts/{vhost}/connections``,
``GET|DELETE /api/connections/{name}`` (``X-Reason``), ``/api/connections/{name}/channels``,
``/api/channels``, ``/api/vhosts/{vhost}/channels``, ``/api/channels/{name}``,
``/api/consumers``, ``/api/consumers/{vhost}``; and ``clients``, which gathers them.

Invariants:
- A connection lives on the worker that accepted it: every request asks every live
  worker (``workers.worker_ops.call_all``, op ``clients`` of ``workers.conn_ops``) and
  lists the union, made at that moment (no stored statistics, nothing per message).
- Visibility as RabbitMQ's: administrator and monitoring users see every client; a
  management user sees only its own connections and their channels, and the consumers
  of the vhosts it may use; naming another user's connection is 401 ("User not
  authorised to access object"), as RabbitMQ answers.
- ``DELETE`` closes the connection with 320 ``CONNECTION_FORCED - <X-Reason>`` (RabbitMQ's
  "Closed via management plugin" without the header), 204; a management user may close
  only its own.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from workers.conn_ops import gather_clients
from workers.mgmt_http import (
    SERVER,
    json_response,
    listing,
    need_vhost,
    no_content,
    not_authorised,
    not_found,
    route,
    sees_all,
    user_of,
    vhosts_visible,
)
from workers.worker_ops import call_all

OCTET_INTERVAL = 5.0  # seconds between the samples octet rates are taken from


async def _all_clients(request: web.Request) -> list[dict[str, Any]]:
    """Every worker's open connections (with ``_channels``, each with ``_consumers``),
    sorted by name, ``node`` filled in."""
    server = request.app[SERVER]
    rows = await gather_clients(server.data_dir)
    now = time.monotonic()
    for row in rows:
        row["node"] = server.node
        _octet_rates(server.octets, row, now)
        for ch in row["_channels"]:
            ch["node"] = server.node
            for c in ch["_consumers"]:
                c["channel_details"]["node"] = server.node
    names = {r["name"] for r in rows}
    for gone in [n for n in server.octets if n not in names]:
        del server.octets[gone]
    return rows


def _octet_rates(
    seen: dict[str, tuple[float, int, int, float, float]], row: Any, now: float
) -> None:
    """``recv_oct_details``/``send_oct_details`` rates: the change since a sample of
    this connection kept at least ``OCTET_INTERVAL`` before (kept by listings, at most
    one per connection per interval; nothing is sampled between listings)."""
    recv, send = row["recv_oct"], row["send_oct"]
    prev = seen.get(row["name"])
    if prev is None:
        prev = seen[row["name"]] = (now, recv, send, 0.0, 0.0)
    elif now - prev[0] >= OCTET_INTERVAL:
        span = now - prev[0]
        rates = (max(0.0, (recv - prev[1]) / span), max(0.0, (send - prev[2]) / span))
        prev = seen[row["name"]] = (now, recv, send, *rates)
    row["recv_oct_details"] = {"rate": round(prev[3], 1)}
    row["send_oct_details"] = {"rate": round(prev[4], 1)}


async def clients(request: web.Request) -> list[dict[str, Any]]:
    """The connections the user may see: all, or a management user's own."""
    user = user_of(request)
    rows = await _all_clients(request)
    if sees_all(user):
        return rows
    return [r for r in rows if r["user"] == user.name]


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _channels(conns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_public(ch) for row in conns for ch in row["_channels"]]


async def _connection(request: web.Request) -> dict[str, Any]:
    """The connection named in the path: 404 when there is none, 401 (RabbitMQ's text)
    when it is another user's and the user sees only its own."""
    name = request.match_info["name"]
    user = user_of(request)
    for row in await _all_clients(request):
        if row["name"] == name:
            if not sees_all(user) and row["user"] != user.name:
                raise not_authorised("User not authorised to access object")
            return row
    raise not_found()


# ---------------------------------------------------------------------- connections
@route("GET", "/api/connections")
async def list_connections(request: web.Request) -> web.Response:
    return listing(request, [_public(r) for r in await clients(request)])


@route("GET", "/api/vhosts/{vhost}/connections")
async def list_vhost_connections(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    rows = [_public(r) for r in await clients(request) if r["vhost"] == vhost]
    return listing(request, rows)


@route("GET", "/api/connections/{name}")
async def get_connection(request: web.Request) -> web.Response:
    return json_response(_public(await _connection(request)))


@route("DELETE", "/api/connections/{name}")
async def close_connection(request: web.Request) -> web.Response:
    row = await _connection(request)  # 404 when missing or not the user's
    reason = request.headers.get("X-Reason", "")
    server = request.app[SERVER]
    answers = await call_all(
        server.data_dir, "close_connection", {"name": row["name"], "reason": reason}
    )
    if not any(n for _slot, n in answers):
        raise not_found()  # it closed meanwhile
    return no_content()


@route("GET", "/api/connections/{name}/channels")
async def connection_channels(request: web.Request) -> web.Response:
    return listing(request, _channels([await _connection(request)]))


# ---------------------------------------------------------------------- channels
@route("GET", "/api/channels")
async def list_channels(request: web.Request) -> web.Response:
    return listing(request, _channels(await clients(request)))


@route("GET", "/api/vhosts/{vhost}/channels")
async def list_vhost_channels(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    conns = [r for r in await clients(request) if r["vhost"] == vhost]
    return listing(request, _channels(conns))


@route("GET", "/api/channels/{name}")
async def get_channel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for ch in _channels(await clients(request)):
        if ch["name"] == name:
            return json_response(ch)
    raise not_found()


# ---------------------------------------------------------------------- consumers
async def _consumers(request: web.Request, vhosts: list[str]) -> list[dict[str, Any]]:
    """The consumers on ``vhosts`` (whoever's connection they are on)."""
    wanted = set(vhosts)
    return [
        c
        for row in await _all_clients(request)
        if row["vhost"] in wanted
        for ch in row["_channels"]
        for c in ch["_consumers"]
    ]


@route("GET", "/api/consumers")
async def list_consumers(request: web.Request) -> web.Response:
    return listing(request, await _consumers(request, vhosts_visible(request)))


@route("GET", "/api/consumers/{vhost}")
async def list_vhost_consumers(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    return listing(request, await _consumers(request, [vhost]))
