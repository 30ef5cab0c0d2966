"""Management API endpoints for access control: whoami, vhosts, users, permissions,
topic permissions and policies (RabbitMQ 3.10's paths, JSON and status codes).

Owns: the handlers; the rows are the shapes RabbitMQ's API gives.

Invariants: users, vhosts, permissions and policies are the broker's own objects
(``shardmq.auth.access`` in the metadata replica), changed through the same metadata ops
as ``shardmq ctl`` (``workers.admin.submit``); every body is checked first, so a
refused request changes nothing. Only administrators see or change users and
permissions; policies need the policymaker tag (or administrator).
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from shardmq.auth.access import TAGS
from shardmq.auth.passwords import SHA256, hash_password
from shardmq.broker import metadata as md
from shardmq.broker.policies import PolicyError, make_policy
from workers.admin import submit
from workers.mgmt_http import (
    bad_request,
    body_of,
    changed,
    created,
    field,
    json_response,
    listing,
    need_admin,
    need_policymaker,
    need_vhost,
    no_content,
    not_found,
    ops_of,
    route,
    user_of,
    vhosts_visible,
)

_HASHES = (
    "rabbit_password_hashing_sha256",
    "rabbit_password_hashing_sha512",
    "rabbit_password_hashing_md5",
)


def parse_tags(value: Any) -> list[str]:
    """RabbitMQ takes tags as a comma-separated string or a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return [t.strip() for t in value if t.strip()]
    raise bad_request("tags must be a string or a list of strings")


@route("GET", "/api/whoami")
async def whoami(request: web.Request) -> web.Response:
    user = user_of(request)
    return json_response({"name": user.name, "tags": list(user.tags)})


# ---------------------------------------------------------------------- vhosts
def vhost_row(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": "Default virtual host" if name == "/" else "",
        "tags": [],
        "metadata": {"description": "", "tags": []},
        "tracing": False,
        "default_queue_type": "undefined",
    }


@route("GET", "/api/vhosts")
async def list_vhosts(request: web.Request) -> web.Response:
    return listing(request, [vhost_row(v) for v in vhosts_visible(request)])


@route("GET", "/api/vhosts/{vhost}")
async def get_vhost(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    return json_response(vhost_row(vhost))


@route("PUT", "/api/vhosts/{vhost}")
async def put_vhost(request: web.Request) -> web.Response:
    need_admin(request)
    vhost = request.match_info["vhost"]
    await body_of(request)  # description/tags/tracing are accepted and not kept
    if not vhost:
        raise bad_request("virtual host name must not be empty")
    existed = vhost in ops_of(request).metadata.vhosts
    await changed(submit(ops_of(request), md.AddVHost(vhost)))
    if existed:
        return no_content()
    await grant_creator(request, vhost)
    return created()


async def grant_creator(request: web.Request, vhost: str) -> None:
    """As RabbitMQ: the user who creates a vhost through the API may use it."""
    op = md.SetPermissions(vhost, user_of(request).name, ".*", ".*", ".*")
    await changed(submit(ops_of(request), op))


@route("DELETE", "/api/vhosts/{vhost}")
async def delete_vhost(request: web.Request) -> web.Response:
    need_admin(request)
    vhost = request.match_info["vhost"]
    if vhost not in ops_of(request).metadata.vhosts:
        raise not_found()
    await changed(submit(ops_of(request), md.DeleteVHost(vhost)))
    return no_content()


@route("GET", "/api/vhosts/{vhost}/permissions")
async def vhost_permissions(request: web.Request) -> web.Response:
    need_admin(request)
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    return listing(request, [r for r in _permissions(request) if r["vhost"] == vhost])


# ---------------------------------------------------------------------- users
def user_row(u: Any) -> dict[str, Any]:
    return {
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": list(u.tags),
        "limits": {},
    }


@route("GET", "/api/users")
async def list_users(request: web.Request) -> web.Response:
    need_admin(request)
    users = ops_of(request).metadata.access.users
    return listing(request, [user_row(users[n]) for n in sorted(users)])


@route("GET", "/api/users/{name}")
async def get_user(request: web.Request) -> web.Response:
    need_admin(request)
    u = ops_of(request).metadata.access.users.get(request.match_info["name"])
    if u is None:
        raise not_found()
    return json_response(user_row(u))


def user_op(name: str, body: dict[str, Any], exists: bool) -> md.Op:
    """The op that creates or updates user ``name`` from an API body (RabbitMQ's:
    ``password`` or ``password_hash`` [+ ``hashing_algorithm``], ``tags``; with
    neither, the user has no password, as RabbitMQ does)."""
    tags = parse_tags(body.get("tags"))
    unknown = [t for t in tags if t not in TAGS]
    del unknown  # RabbitMQ keeps unknown tags as they are
    password = field(body, "password", str, None)
    pw_hash = field(body, "password_hash", str, None)
    algo = field(body, "hashing_algorithm", str, None) or SHA256
    if algo not in _HASHES:
        raise bad_request(f"unknown hashing algorithm {algo}")
    if password is not None:
        pw_hash, algo = hash_password(password), SHA256
    if pw_hash is None:  # as RabbitMQ: a user put without either cannot log in
        pw_hash = ""
    if exists:
        return md.UpdateUser("", name, pw_hash, algo, tags)
    return md.AddUser("", name, pw_hash, algo, tags)


@route("PUT", "/api/users/{name}")
async def put_user(request: web.Request) -> web.Response:
    need_admin(request)
    name = request.match_info["name"]
    body = await body_of(request)
    if not name:
        raise bad_request("user name must not be empty")
    exists = name in ops_of(request).metadata.access.users
    await changed(submit(ops_of(request), user_op(name, body, exists)))
    return no_content() if exists else created()


@route("DELETE", "/api/users/{name}")
async def delete_user(request: web.Request) -> web.Response:
    need_admin(request)
    name = request.match_info["name"]
    if name not in ops_of(request).metadata.access.users:
        raise not_found()
    await changed(submit(ops_of(request), md.DeleteUser("", name)))
    return no_content()


@route("GET", "/api/users/{name}/permissions")
async def user_permissions(request: web.Request) -> web.Response:
    need_admin(request)
    name = request.match_info["name"]
    if name not in ops_of(request).metadata.access.users:
        raise not_found()
    return listing(request, [r for r in _permissions(request) if r["user"] == name])


# ---------------------------------------------------------------------- permissions
def _permissions(request: web.Request) -> list[dict[str, Any]]:
    perms = ops_of(request).metadata.access.permissions.values()
    return [
        {
            "user": p.user,
            "vhost": p.vhost,
            "configure": p.configure,
            "write": p.write,
            "read": p.read,
        }
        for p in sorted(perms, key=lambda p: (p.vhost, p.user))
    ]


@route("GET", "/api/permissions")
async def list_permissions(request: web.Request) -> web.Response:
    need_admin(request)
    return listing(request, _permissions(request))


def _vhost_user(request: web.Request) -> tuple[str, str]:
    need_admin(request)
    vhost, user = request.match_info["vhost"], request.match_info["user"]
    if vhost not in ops_of(request).metadata.vhosts:
        raise not_found()
    if user not in ops_of(request).metadata.access.users:
        raise not_found()
    return vhost, user


@route("GET", "/api/permissions/{vhost}/{user}")
async def get_permission(request: web.Request) -> web.Response:
    vhost, user = _vhost_user(request)
    for r in _permissions(request):
        if r["vhost"] == vhost and r["user"] == user:
            return json_response(r)
    raise not_found()


def _regex(body: dict[str, Any], key: str) -> str:
    value = field(body, key, str, None)
    if value is None:
        raise bad_request(f"[{{key_missing,{key}}}]")
    try:
        re.compile(value.replace("{username}", "u").replace("{vhost}", "v"))
    except re.error as exc:
        raise bad_request(f"invalid regular expression '{value}': {exc}") from None
    return str(value)


@route("PUT", "/api/permissions/{vhost}/{user}")
async def put_permission(request: web.Request) -> web.Response:
    vhost, user = _vhost_user(request)
    body = await body_of(request)
    c, w, r = (_regex(body, k) for k in ("configure", "write", "read"))
    existed = ops_of(request).metadata.access.permission(user, vhost) is not None
    await changed(submit(ops_of(request), md.SetPermissions(vhost, user, c, w, r)))
    return no_content() if existed else created()


@route("DELETE", "/api/permissions/{vhost}/{user}")
async def delete_permission(request: web.Request) -> web.Response:
    vhost, user = _vhost_user(request)
    if ops_of(request).metadata.access.permission(user, vhost) is None:
        raise not_found()
    await changed(submit(ops_of(request), md.ClearPermissions(vhost, user)))
    return no_content()


# ---------------------------------------------------------------------- topic permissions
def _topic_permissions(request: web.Request) -> list[dict[str, Any]]:
    rows = [
        {"user": tp.user, "vhost": vh, "exchange": tp.exchange, "write": tp.write, "read": tp.read}
        for (vh, _), topics in ops_of(request).metadata.access.topics.items()
        for tp in topics.values()
    ]
    return sorted(rows, key=lambda r: (r["vhost"], r["user"], r["exchange"]))


@route("GET", "/api/topic-permissions")
async def list_topic_permissions(request: web.Request) -> web.Response:
    need_admin(request)
    return listing(request, _topic_permissions(request))


@route("GET", "/api/topic-permissions/{vhost}/{user}")
async def get_topic_permissions(request: web.Request) -> web.Response:
    vhost, user = _vhost_user(request)
    rows = [r for r in _topic_permissions(request) if r["vhost"] == vhost and r["user"] == user]
    if not rows:
        raise not_found()
    return json_response(rows)


@route("PUT", "/api/topic-permissions/{vhost}/{user}")
async def put_topic_permission(request: web.Request) -> web.Response:
    vhost, user = _vhost_user(request)
    body = await body_of(request)
    exchange = field(body, "exchange", str, None)
    if not exchange:
        raise bad_request("[{key_missing,exchange}]")
    w, r = _regex(body, "write"), _regex(body, "read")
    existed = any(
        x["vhost"] == vhost and x["user"] == user and x["exchange"] == exchange
        for x in _topic_permissions(request)
    )
    op = md.SetTopicPermissions(vhost, user, exchange, w, r)
    await changed(submit(ops_of(request), op))
    return no_content() if existed else created()


@route("DELETE", "/api/topic-permissions/{vhost}/{user}")
async def delete_topic_permissions(request: web.Request) -> web.Response:
    vhost, user = _vhost_user(request)
    if not any(r["vhost"] == vhost and r["user"] == user for r in _topic_permissions(request)):
        raise not_found()
    await changed(submit(ops_of(request), md.ClearTopicPermissions(vhost, user, "")))
    return no_content()


# ---------------------------------------------------------------------- policies
def _policies(request: web.Request, vhosts: list[str]) -> list[dict[str, Any]]:
    md_ = ops_of(request).metadata
    return [p.as_row() for v in vhosts for p in md_.vhosts[v].policies]


@route("GET", "/api/policies")
async def list_policies(request: web.Request) -> web.Response:
    need_policymaker(request)
    return listing(request, _policies(request, vhosts_visible(request)))


@route("GET", "/api/policies/{vhost}")
async def list_vhost_policies(request: web.Request) -> web.Response:
    need_policymaker(request)
    vhost = request.match_info["vhost"]
    need_vhost(request, vhost)
    return listing(request, _policies(request, [vhost]))


@route("GET", "/api/policies/{vhost}/{name}")
async def get_policy(request: web.Request) -> web.Response:
    need_policymaker(request)
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    need_vhost(request, vhost)
    for row in _policies(request, [vhost]):
        if row["name"] == name:
            return json_response(row)
    raise not_found()


def policy_op(vhost: str, name: str, body: dict[str, Any]) -> md.SetPolicy:
    """The op for policy ``name`` from an API body, validated first."""
    pattern = field(body, "pattern", str, None)
    definition = field(body, "definition", dict, None)
    if pattern is None or definition is None:
        raise bad_request(
            "[{key_missing,pattern}]" if pattern is None else "[{key_missing,definition}]"
        )
    priority = field(body, "priority", int, 0) or 0
    apply_to = field(body, "apply-to", str, "all") or "all"
    try:
        make_policy(vhost, name, pattern, definition, priority=priority, apply_to=apply_to)
    except PolicyError as exc:
        raise bad_request(f"Validation failed\n\n{exc}\n") from None
    return md.SetPolicy(vhost, name, pattern, apply_to, priority, json.dumps(definition))


@route("PUT", "/api/policies/{vhost}/{name}")
async def put_policy(request: web.Request) -> web.Response:
    need_policymaker(request)
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    need_vhost(request, vhost, write=True)
    body = await body_of(request)
    existed = name in ops_of(request).metadata.vhosts[vhost].policies.by_name
    await changed(submit(ops_of(request), policy_op(vhost, name, body)))
    return no_content() if existed else created()


@route("DELETE", "/api/policies/{vhost}/{name}")
async def delete_policy(request: web.Request) -> web.Response:
    need_policymaker(request)
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    need_vhost(request, vhost, write=True)
    if name not in ops_of(request).metadata.vhosts[vhost].policies.by_name:
        raise not_found()
    await changed(submit(ops_of(request), md.ClearPolicy(vhost, name)))
    return no_content()
