"""ctl commands for users, virtual hosts and permissions (rabbitmqctl's names).

Owns: ``add_user``, ``delete_user``, ``change_password``, ``clear_password``,
``set_user_tags``, ``list_users``, ``authenticate_user``, ``add_vhost``,
``delete_vhost``, ``list_vhosts``, ``set_permissions``, ``clear_permissions``,
``list_permissions``, ``list_user_permissions``, ``set_topic_permissions``,
``clear_topic_permissions``, ``list_topic_permissions``,
``list_user_topic_permissions`` (registered in
``workers.admin.COMMANDS``).

Invariants:
- A password crosses the control socket once and is hashed here (salted,
  ``shardmq.auth.passwords``) before the op is sequenced: no op, log line or stored
  definition ever holds it.
- Refusals carry rabbitmqctl's text and exit code (65 bad input, 67 no such user,
  69 refused, 70 already exists), checked against this process's replica before the op
  is submitted; the op itself checks again, so a race still cannot corrupt state.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from shardmq.auth.passwords import SHA256, hash_password
from shardmq.broker import metadata as md
from shardmq.ctlclient import EX_DATAERR, EX_NOUSER, EX_SOFTWARE
from workers.admin import (
    AdminOps,
    CommandError,
    NoArgs,
    VHostArgs,
    command,
    need_vhost,
    parse_args,
    submit,
)


class UserArgs(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class PasswordArgs(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    password: str | None = None


class TagsArgs(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    tags: list[str] = []


class NameArgs(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class PermissionArgs(msgspec.Struct, forbid_unknown_fields=True):
    user: str
    configure: str = ""
    write: str = ""
    read: str = ""
    vhost: str = "/"


def need_user(ops: AdminOps, name: str) -> None:
    if name not in ops.metadata.access.users:
        raise CommandError(f'User "{name}" does not exist', EX_NOUSER)


# ---------------------------------------------------------------------- users
@command("add_user")
async def add_user(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: PasswordArgs = parse_args(raw, PasswordArgs)
    if not a.name:
        raise CommandError("user name must not be empty", EX_DATAERR)
    if a.password is None:
        raise CommandError("Password is not provided via argument or stdin", EX_DATAERR)
    if a.name in ops.metadata.access.users:
        raise CommandError(f'User "{a.name}" already exists', EX_SOFTWARE)
    await submit(ops, md.AddUser("", a.name, hash_password(a.password), SHA256, []))


@command("delete_user")
async def delete_user(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: UserArgs = parse_args(raw, UserArgs)
    need_user(ops, a.name)
    await submit(ops, md.DeleteUser("", a.name))


@command("change_password")
async def change_password(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: PasswordArgs = parse_args(raw, PasswordArgs)
    need_user(ops, a.name)
    if a.password is None:
        raise CommandError("Password is not provided via argument or stdin", EX_DATAERR)
    await submit(ops, md.UpdateUser("", a.name, hash_password(a.password), SHA256, None))


@command("clear_password")
async def clear_password(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: UserArgs = parse_args(raw, UserArgs)
    need_user(ops, a.name)
    await submit(ops, md.UpdateUser("", a.name, "", SHA256, None))


@command("set_user_tags")
async def set_user_tags(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: TagsArgs = parse_args(raw, TagsArgs)
    need_user(ops, a.name)
    await submit(ops, md.UpdateUser("", a.name, None, None, list(a.tags)))


@command("list_users")
async def list_users(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    parse_args(raw, NoArgs)
    users = ops.metadata.access.users.values()
    return [{"user": u.name, "tags": list(u.tags)} for u in sorted(users, key=lambda u: u.name)]


@command("authenticate_user")
async def authenticate_user(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: PasswordArgs = parse_args(raw, PasswordArgs)
    if ops.metadata.access.authenticate(a.name, a.password or "") is None:
        raise CommandError(
            f'Error: failed to authenticate user "{a.name}"\n'
            f"user '{a.name}' - invalid credentials",
            EX_DATAERR,
        )


# ---------------------------------------------------------------------- vhosts
@command("add_vhost")
async def add_vhost(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: NameArgs = parse_args(raw, NameArgs)
    if not a.name:
        raise CommandError("virtual host name must not be empty", EX_DATAERR)
    await submit(ops, md.AddVHost(a.name))


@command("delete_vhost")
async def delete_vhost(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: NameArgs = parse_args(raw, NameArgs)
    if a.name not in ops.metadata.vhosts:
        raise CommandError(f"Virtual host '{a.name}' does not exist", EX_DATAERR)
    await submit(ops, md.DeleteVHost(a.name))


@command("list_vhosts")
async def list_vhosts(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    parse_args(raw, NoArgs)
    return [{"name": name} for name in ops.metadata.vhosts]


# ---------------------------------------------------------------------- permissions
@command("set_permissions")
async def set_permissions(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: PermissionArgs = parse_args(raw, PermissionArgs)
    need_vhost(ops, a.vhost)
    need_user(ops, a.user)
    for pattern in (a.configure, a.write, a.read):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CommandError(f"invalid regular expression '{pattern}': {exc}") from None
    await submit(ops, md.SetPermissions(a.vhost, a.user, a.configure, a.write, a.read))


@command("clear_permissions")
async def clear_permissions(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: PermissionArgs = parse_args(raw, PermissionArgs)
    need_vhost(ops, a.vhost)
    need_user(ops, a.user)
    await submit(ops, md.ClearPermissions(a.vhost, a.user))


class TopicArgs(msgspec.Struct, forbid_unknown_fields=True):
    user: str
    exchange: str = ""
    write: str = ""
    read: str = ""
    vhost: str = "/"


@command("set_topic_permissions")
async def set_topic_permissions(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: TopicArgs = parse_args(raw, TopicArgs)
    need_vhost(ops, a.vhost)
    need_user(ops, a.user)
    if not a.exchange:
        raise CommandError("an exchange name is required", EX_DATAERR)
    for pattern in (a.write, a.read):
        try:
            re.compile(pattern.replace("{username}", "u").replace("{vhost}", "v"))
        except re.error as exc:
            raise CommandError(f"invalid regular expression '{pattern}': {exc}") from None
    op = md.SetTopicPermissions(a.vhost, a.user, a.exchange, a.write, a.read)
    await submit(ops, op)


@command("clear_topic_permissions")
async def clear_topic_permissions(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: TopicArgs = parse_args(raw, TopicArgs)
    need_vhost(ops, a.vhost)
    need_user(ops, a.user)
    await submit(ops, md.ClearTopicPermissions(a.vhost, a.user, a.exchange))


def _topic_rows(ops: AdminOps, side: int, name: str) -> list[dict[str, Any]]:
    """Topic permissions whose key's SIDE (0: vhost, 1: user) is NAME, one row each,
    led by the other side's column, sorted by it and the exchange."""
    first = "user" if side == 0 else "vhost"
    rows = [
        {first: getattr(tp, first), "exchange": tp.exchange, "write": tp.write, "read": tp.read}
        for key, topics in ops.metadata.access.topics.items()
        if key[side] == name
        for tp in topics.values()
    ]
    return sorted(rows, key=lambda r: (r[first], r["exchange"]))


@command("list_topic_permissions")
async def list_topic_permissions(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    a: VHostArgs = parse_args(raw, VHostArgs)
    need_vhost(ops, a.vhost)
    return _topic_rows(ops, 0, a.vhost)


@command("list_user_topic_permissions")
async def list_user_topic_permissions(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    a: UserArgs = parse_args(raw, UserArgs)
    need_user(ops, a.name)
    return _topic_rows(ops, 1, a.name)


def _row(perm: Any, first: str) -> dict[str, Any]:
    return {
        first: getattr(perm, first),
        "configure": perm.configure,
        "write": perm.write,
        "read": perm.read,
    }


@command("list_permissions")
async def list_permissions(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    a: VHostArgs = parse_args(raw, VHostArgs)
    need_vhost(ops, a.vhost)
    perms = [p for (vh, _), p in ops.metadata.access.permissions.items() if vh == a.vhost]
    return [_row(p, "user") for p in sorted(perms, key=lambda p: p.user)]


@command("list_user_permissions")
async def list_user_permissions(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    a: UserArgs = parse_args(raw, UserArgs)
    need_user(ops, a.name)
    perms = [p for (_, user), p in ops.metadata.access.permissions.items() if user == a.name]
    return [_row(p, "vhost") for p in sorted(perms, key=lambda p: p.vhost)]
