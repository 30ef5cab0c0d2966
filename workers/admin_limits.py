"""ctl commands for limits (rabbitmqctl's names): ``set_vhost_limits``,
``clear_vhost_limits``, ``list_vhost_limits``, ``set_user_limits``,
``clear_user_limits``, ``list_user_limits`` (registered in ``workers.admin.COMMANDS``).

Invariants: the limits document is validated (``shardmq.auth.limits.parse_limits``)
before the op is submitted, so a refused one changes nothing and gets rabbitmqctl's
text and exit code (65 no such vhost, 69 refused); the op is applied by every worker
before the answer, so the next connection.open, channel.open or queue.declare on any
worker sees it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shardmq.auth.limits import LimitError, as_json, parse_limits
from shardmq.broker import metadata as md
from shardmq.ctlclient import EX_DATAERR
from workers.admin import AdminOps, CommandError, command, parse_args, submit


class VHostLimitsArgs(msgspec.Struct, forbid_unknown_fields=True):
    limits: str
    vhost: str = "/"


class VHostOnlyArgs(msgspec.Struct, forbid_unknown_fields=True):
    vhost: str = "/"
    all: bool = False  # list: every vhost (``--global``)


class UserLimitsArgs(msgspec.Struct, forbid_unknown_fields=True):
    user: str
    limits: str


class ClearUserLimitsArgs(msgspec.Struct, forbid_unknown_fields=True):
    user: str
    name: str


class ListUserLimitsArgs(msgspec.Struct, forbid_unknown_fields=True):
    user: str = "guest"
    all: bool = False


def _vhost_exists(ops: AdminOps, vhost: str) -> None:
    if vhost not in ops.metadata.vhosts:
        raise CommandError(f"Virtual host '{vhost}' does not exist", EX_DATAERR)


def _user_exists(ops: AdminOps, user: str) -> None:
    if user not in ops.metadata.access.users:
        raise CommandError(f'{{:no_such_user, "{user}"}}')


def _parse(text: str, user: bool) -> None:
    try:
        parse_limits(text, user)
    except LimitError as exc:
        text = str(exc)
        if not user and not text.startswith("JSON"):
            text = f"Validation failed\n\n{text}\n"
        raise CommandError(text) from None


@command("set_vhost_limits")
async def set_vhost_limits(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: VHostLimitsArgs = parse_args(raw, VHostLimitsArgs)
    _vhost_exists(ops, a.vhost)
    _parse(a.limits, False)
    await submit(ops, md.SetVHostLimits(a.vhost, a.limits))


@command("clear_vhost_limits")
async def clear_vhost_limits(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: VHostOnlyArgs = parse_args(raw, VHostOnlyArgs)
    await submit(ops, md.ClearVHostLimits(a.vhost))


@command("list_vhost_limits")
async def list_vhost_limits(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``vhost`` and ``limits`` (JSON text); one vhost unless ``all``."""
    a: VHostOnlyArgs = parse_args(raw, VHostOnlyArgs)
    limits = ops.metadata.access.limits.vhosts
    if a.all:
        return [{"vhost": v, "limits": as_json(limits[v])} for v in sorted(limits)]
    _vhost_exists(ops, a.vhost)
    got = limits.get(a.vhost)
    return [{"vhost": a.vhost, "limits": as_json(got)}] if got else []


@command("set_user_limits")
async def set_user_limits(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: UserLimitsArgs = parse_args(raw, UserLimitsArgs)
    _parse(a.limits, True)
    _user_exists(ops, a.user)
    await submit(ops, md.SetUserLimits("", a.user, a.limits))


@command("clear_user_limits")
async def clear_user_limits(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: ClearUserLimitsArgs = parse_args(raw, ClearUserLimitsArgs)
    _user_exists(ops, a.user)
    await submit(ops, md.ClearUserLimits("", a.user, a.name))


@command("list_user_limits")
async def list_user_limits(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``user`` and ``limits`` (JSON text); one user unless ``all``."""
    a: ListUserLimitsArgs = parse_args(raw, ListUserLimitsArgs)
    limits = ops.metadata.access.limits.users
    if a.all:
        return [{"user": u, "limits": as_json(limits[u])} for u in sorted(limits)]
    _user_exists(ops, a.user)
    return [{"user": a.user, "limits": as_json(limits.get(a.user, {}))}]
