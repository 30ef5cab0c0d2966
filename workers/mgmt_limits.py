"""Management API: ``/api/vhost-limits`` and ``/api/user-limits`` (RabbitMQ 3.10's paths,
JSON and answers).

Owns: ``GET /api/vhost-limits[/{vhost}]`` (``[{"vhost": v, "value": {...}}]``, the vhosts
the user may see), ``PUT /api/vhost-limits/{vhost}/{name}`` (body ``{"value": N}``,
merged into the vhost's limits; 204) and ``DELETE`` of one (204, also when unset);
``GET /api/user-limits[/{user}]``, ``PUT`` / ``DELETE /api/user-limits/{user}/{name}``
(administrators).

Invariants: a value is validated as ``ctl set_vhost_limits`` validates it (400 with
RabbitMQ's ``Validation failed`` text) before the op is submitted; a change is applied
by every worker before the answer (the ops of ``shardmq.broker.metadata``).
"""

from __future__ import annotations

import json

from aiohttp import web

from shardmq.auth.limits import LimitError, parse_limits
from shardmq.broker import metadata as md
from workers.admin import submit
from workers.mgmt_http import (
    ApiError,
    bad_request,
    body_of,
    changed,
    json_response,
    need_admin,
    need_vhost,
    no_content,
    not_found,
    ops_of,
    route,
    vhosts_visible,
)


def _rows(request: web.Request, vhosts: list[str]) -> list[dict[str, object]]:
    limits = ops_of(request).metadata.access.limits.vhosts
    return [{"vhost": v, "value": dict(limits[v])} for v in vhosts if v in limits]


@route("GET", "/api/vhost-limits")
async def list_vhost_limits(request: web.Request) -> web.Response:
    return json_response(_rows(request, sorted(vhosts_visible(request))))


@route("GET", "/api/vhost-limits/{vhost}")
async def get_vhost_limits(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    return json_response(_rows(request, [vhost]))


async def _value(request: web.Request, name: str, user: bool) -> str:
    body = await body_of(request)
    if "value" not in body:
        raise bad_request("[{key_missing,value}]")
    doc = {name: body["value"]}
    try:
        parse_limits(doc, user)
    except LimitError as exc:
        raise bad_request(str(exc) if user else f"Validation failed\n\n{exc}\n") from None
    return json.dumps(doc)


@route("PUT", "/api/vhost-limits/{vhost}/{name}")
async def put_vhost_limit(request: web.Request) -> web.Response:
    need_admin(request)
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    if vhost not in ops_of(request).metadata.vhosts:
        raise ApiError(404, "not_found", "vhost_not_found")
    limits = await _value(request, name, False)
    await changed(submit(ops_of(request), md.SetVHostLimits(vhost, limits, merge=True)))
    return no_content()


@route("DELETE", "/api/vhost-limits/{vhost}/{name}")
async def delete_vhost_limit(request: web.Request) -> web.Response:
    need_admin(request)
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    if vhost not in ops_of(request).metadata.vhosts:
        raise not_found()
    await changed(submit(ops_of(request), md.ClearVHostLimits(vhost, name)))
    return no_content()


def _user_rows(request: web.Request, users: list[str]) -> list[dict[str, object]]:
    limits = ops_of(request).metadata.access.limits.users
    return [{"user": u, "value": dict(limits[u])} for u in users if u in limits]


@route("GET", "/api/user-limits")
async def list_user_limits(request: web.Request) -> web.Response:
    need_admin(request)
    return json_response(_user_rows(request, sorted(ops_of(request).metadata.access.limits.users)))


@route("GET", "/api/user-limits/{user}")
async def get_user_limits(request: web.Request) -> web.Response:
    need_admin(request)
    user = request.match_info["user"]
    if user not in ops_of(request).metadata.access.users:
        raise not_found()
    return json_response(_user_rows(request, [user]))


@route("PUT", "/api/user-limits/{user}/{name}")
async def put_user_limit(request: web.Request) -> web.Response:
    need_admin(request)
    user, name = request.match_info["user"], request.match_info["name"]
    limits = await _value(request, name, True)
    if user not in ops_of(request).metadata.access.users:
        raise bad_request(f'["no_such_user","{user}"]')
    await changed(submit(ops_of(request), md.SetUserLimits("", user, limits)))
    return no_content()


@route("DELETE", "/api/user-limits/{user}/{name}")
async def delete_user_limit(request: web.Request) -> web.Response:
    need_admin(request)
    user, name = request.match_info["user"], request.match_info["name"]
    if user not in ops_of(request).metadata.access.users:
        raise not_found()
    await changed(submit(ops_of(request), md.ClearUserLimits("", user, name)))
    return no_content()
