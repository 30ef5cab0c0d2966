"""ctl commands for policies: ``set_policy``, ``clear_policy``, ``list_policies``.

Owns: their argument structs and handlers (registered in ``workers.admin.COMMANDS``).
Invariant: a policy is validated (``shardmq.broker.policies.make_policy``) before it
is submitted, so a refused one changes nothing and gets rabbitmqctl's text.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from shardmq.broker import metadata as md
from shardmq.broker.policies import PolicyError, make_policy
from workers.admin import (
    AdminOps,
    CommandError,
    VHostArgs,
    command,
    need_vhost,
    parse_args,
    submit,
)


class SetPolicyArgs(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    pattern: str
    definition: str  # JSON text, as rabbitmqctl takes it
    vhost: str = "/"
    priority: int = 0
    apply_to: str = "all"


class PolicyNameArgs(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    vhost: str = "/"


@command("set_policy")
async def set_policy(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: SetPolicyArgs = parse_args(raw, SetPolicyArgs)
    need_vhost(ops, a.vhost)
    try:
        definition = json.loads(a.definition)
    except ValueError:
        raise CommandError("JSON decoding error: the definition is not valid JSON") from None
    try:
        make_policy(
            a.vhost, a.name, a.pattern, definition, priority=a.priority, apply_to=a.apply_to
        )
    except PolicyError as exc:
        raise CommandError(f"Validation failed\n\n{exc}") from None
    op = md.SetPolicy(a.vhost, a.name, a.pattern, a.apply_to, a.priority, json.dumps(definition))
    await submit(ops, op)


@command("clear_policy")
async def clear_policy(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: PolicyNameArgs = parse_args(raw, PolicyNameArgs)
    need_vhost(ops, a.vhost)
    await submit(ops, md.ClearPolicy(a.vhost, a.name))


@command("list_policies")
async def list_policies(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    a: VHostArgs = parse_args(raw, VHostArgs)
    need_vhost(ops, a.vhost)
    return [p.as_row() for p in ops.metadata.vhost(a.vhost).policies]
