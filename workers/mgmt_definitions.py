"""Management API: ``/api/definitions`` (GET = export, POST = import) and its per-vhost
form, in RabbitMQ's definitions JSON, so a RabbitMQ export imports unchanged.

Owns: ``export`` (the JSON RabbitMQ writes: users with their password hashes, vhosts,
permissions, topic permissions, policies, durable exchanges and queues, bindings
between durable ends) and ``import_ops`` (the metadata ops a definitions document
stands for, in dependency order).

Invariants: the whole document is checked and turned into ops before the first op is
submitted (a malformed document changes nothing); objects that already exist are
declared again (equivalent: no change; inequivalent: the op's 400 stops the import
there, as RabbitMQ stops at its first error). Vhost limits travel as RabbitMQ's
``vhost-limits`` runtime parameters, user limits in each user's ``limits``; other
``parameters`` and ``global_parameters`` are accepted and ignored.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from shardmq.auth.limits import LimitError, parse_limits
from shardmq.broker import metadata as md
from shardmq.broker.exchange import Exchange
from workers.admin import submit
from workers.mgmt_access import grant_creator, policy_op, user_op
from workers.mgmt_http import (
    bad_request,
    body_of,
    changed,
    json_response,
    need_admin,
    ops_of,
    route,
)
from workers.mgmt_objects import PRODUCT, RABBITMQ_VERSION, VERSION


def _savable(name: str) -> bool:
    return bool(name) and not name.startswith("amq.")


def export(ops: Any, vhosts: list[str], *, with_access: bool = True) -> dict[str, Any]:
    md_ = ops.metadata
    access = md_.access
    out: dict[str, Any] = {
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": PRODUCT,
        "product_version": VERSION,
    }
    if with_access:
        out["users"] = [
            {
                "name": u.name,
                "password_hash": u.password_hash,
                "hashing_algorithm": u.hashing_algorithm,
                "tags": list(u.tags),
                "limits": dict(access.limits.users.get(u.name, {})),
            }
            for u in sorted(access.users.values(), key=lambda u: u.name)
        ]
        out["vhosts"] = [{"name": v, "limits": [], "metadata": {}} for v in vhosts]
        out["permissions"] = [
            {
                "user": p.user,
                "vhost": p.vhost,
                "configure": p.configure,
                "write": p.write,
                "read": p.read,
            }
            for p in sorted(access.permissions.values(), key=lambda p: (p.vhost, p.user))
            if p.vhost in vhosts
        ]
        out["topic_permissions"] = [
            {
                "user": tp.user,
                "vhost": vh,
                "exchange": tp.exchange,
                "write": tp.write,
                "read": tp.read,
            }
            for (vh, _), topics in sorted(access.topics.items())
            if vh in vhosts
            for tp in topics.values()
        ]
        # vhost limits are runtime parameters in RabbitMQ's export
        out["parameters"] = [
            {"value": dict(vlimits), "vhost": v, "component": "vhost-limits", "name": "limits"}
            for v, vlimits in sorted(access.limits.vhosts.items())
            if v in vhosts
        ]
        out["global_parameters"] = []
    out["policies"] = [p.as_row() for v in vhosts for p in md_.vhosts[v].policies]
    queues: list[dict[str, Any]] = []
    exchanges: list[dict[str, Any]] = []
    bindings: list[dict[str, Any]] = []
    for v in vhosts:
        vh = md_.vhosts[v]
        for q in sorted(vh.queues.values(), key=lambda q: q.name):
            if q.durable and not q.exclusive:
                queues.append(
                    {
                        "name": q.name,
                        "vhost": v,
                        "durable": True,
                        "auto_delete": bool(q.auto_delete),
                        "arguments": dict(q.arguments),
                    }
                )
        for ex in sorted(vh.exchanges.values(), key=lambda e: e.name):
            if not _savable(ex.name):
                continue
            if ex.durable:
                exchanges.append(
                    {
                        "name": ex.name,
                        "vhost": v,
                        "type": ex.type,
                        "durable": True,
                        "auto_delete": ex.auto_delete,
                        "internal": ex.internal,
                        "arguments": dict(ex.arguments),
                    }
                )
        for ex in sorted(vh.exchanges.values(), key=lambda e: e.name):
            if not ex.name or not ex.durable:
                continue
            for dest, rk, args in ex.router.bindings():
                if not dest.durable:
                    continue
                bindings.append(
                    {
                        "source": ex.name,
                        "vhost": v,
                        "destination": dest.name,
                        "destination_type": "exchange" if isinstance(dest, Exchange) else "queue",
                        "routing_key": rk,
                        "arguments": dict(args),
                    }
                )
    out["queues"] = queues
    out["exchanges"] = exchanges
    out["bindings"] = bindings
    return out


def _items(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = doc.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise bad_request(f"{key} must be a list of objects")
    return items


def _str(item: dict[str, Any], key: str, default: str | None = None) -> str:
    v = item.get(key, default)
    if not isinstance(v, str):
        raise bad_request(f"[{{key_missing,{key}}}]" if v is None else f"{key} must be a string")
    return v


def _bool(item: dict[str, Any], key: str, default: bool) -> bool:
    v = item.get(key, default)
    if not isinstance(v, bool):
        raise bad_request(f"{key} must be a boolean")
    return v


def _args(item: dict[str, Any]) -> bytes:
    v = item.get("arguments") or {}
    if not isinstance(v, dict):
        raise bad_request("arguments must be an object")
    return md.table_bytes(v)


def _limits_of(value: Any, user: bool) -> str:
    try:
        return json.dumps(parse_limits(value, user))
    except LimitError as exc:
        raise bad_request(str(exc)) from None


def _limit_ops(doc: dict[str, Any], vh: Any, with_users: bool) -> list[md.Op]:
    """Users' ``limits`` and the ``vhost-limits`` parameters (after the queues, so an
    import never refuses its own queues)."""
    out: list[md.Op] = []
    for p in _items(doc, "parameters"):
        if p.get("component") == "vhost-limits":
            out.append(md.SetVHostLimits(vh(p), _limits_of(p.get("value"), False)))
    if with_users:
        for u in _items(doc, "users"):
            if u.get("limits"):
                out.append(md.SetUserLimits("", _str(u, "name"), _limits_of(u["limits"], True)))
    return out


def import_ops(ops: Any, doc: dict[str, Any], only_vhost: str | None = None) -> list[md.Op]:
    """The ops ``doc`` stands for (``only_vhost``: its objects go into that vhost)."""
    users = dict(ops.metadata.access.users)
    out: list[md.Op] = []

    def vh(item: dict[str, Any]) -> str:
        return only_vhost if only_vhost is not None else _str(item, "vhost")

    if only_vhost is None:
        for v in _items(doc, "vhosts"):
            out.append(md.AddVHost(_str(v, "name")))
        for u in _items(doc, "users"):
            name = _str(u, "name")
            body = dict(u)
            if "password_hash" not in body and "password" not in body:
                body["password_hash"] = ""
            out.append(user_op(name, body, name in users))
            users[name] = None  # type: ignore[assignment]
        for p in _items(doc, "permissions"):
            out.append(
                md.SetPermissions(
                    _str(p, "vhost"),
                    _str(p, "user"),
                    _str(p, "configure"),
                    _str(p, "write"),
                    _str(p, "read"),
                )
            )
        for tp in _items(doc, "topic_permissions"):
            out.append(
                md.SetTopicPermissions(
                    _str(tp, "vhost"),
                    _str(tp, "user"),
                    _str(tp, "exchange"),
                    _str(tp, "write"),
                    _str(tp, "read"),
                )
            )
    for p in _items(doc, "policies"):
        body = dict(p)
        if isinstance(body.get("definition"), str):  # some exports carry it as text
            try:
                body["definition"] = json.loads(body["definition"])
            except ValueError:
                raise bad_request("policy definition is not JSON") from None
        out.append(policy_op(vh(p), _str(p, "name"), body))
    for e in _items(doc, "exchanges"):
        out.append(
            md.DeclareExchange(
                vh(e),
                _str(e, "name"),
                _str(e, "type"),
                False,
                _bool(e, "durable", True),
                _bool(e, "auto_delete", False),
                _bool(e, "internal", False),
                _args(e),
            )
        )
    for q in _items(doc, "queues"):
        out.append(
            md.DeclareQueue(
                vh(q),
                _str(q, "name"),
                False,
                _bool(q, "durable", True),
                False,
                _bool(q, "auto_delete", False),
                _args(q),
                0,
            )
        )
    out += _limit_ops(doc, vh, only_vhost is None)
    for b in _items(doc, "bindings"):
        kind = _str(b, "destination_type", "queue")
        if kind not in ("queue", "exchange"):
            raise bad_request(f"unknown destination_type {kind}")
        out.append(
            md.Bind(
                vh(b),
                kind == "queue",
                _str(b, "destination"),
                _str(b, "source"),
                _str(b, "routing_key", ""),
                _args(b),
                0,
            )
        )
    return out


async def _import(request: web.Request, only_vhost: str | None) -> web.Response:
    need_admin(request)
    ops = ops_of(request)
    if only_vhost is not None and only_vhost not in ops.metadata.vhosts:
        raise bad_request(f"vhost {only_vhost} does not exist")
    doc = await body_of(request)
    plan = import_ops(ops, doc, only_vhost)
    new_vhosts = [
        op.vhost
        for op in plan
        if isinstance(op, md.AddVHost) and op.vhost not in ops.metadata.vhosts
    ]
    for op in plan:
        await changed(submit(ops, op))
        if isinstance(op, md.AddVHost) and op.vhost in new_vhosts:
            await grant_creator(request, op.vhost)
    return web.Response(status=204)


@route("GET", "/api/definitions")
async def get_definitions(request: web.Request) -> web.Response:
    need_admin(request)
    ops = ops_of(request)
    return json_response(export(ops, list(ops.metadata.vhosts)))


@route("POST", "/api/definitions")
async def post_definitions(request: web.Request) -> web.Response:
    return await _import(request, None)


@route("GET", "/api/definitions/{vhost}")
async def get_vhost_definitions(request: web.Request) -> web.Response:
    need_admin(request)
    vhost = request.match_info["vhost"]
    ops = ops_of(request)
    if vhost not in ops.metadata.vhosts:
        from workers.mgmt_http import not_found

        raise not_found()
    return json_response(export(ops, [vhost], with_access=False))


@route("POST", "/api/definitions/{vhost}")
async def post_vhost_definitions(request: web.Request) -> web.Response:
    return await _import(request, request.match_info["vhost"])
