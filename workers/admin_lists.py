"""ctl listings and client commands: ``list_queues``, ``list_exchanges``,
``list_bindings``, ``list_connections``, ``list_channels``, ``list_consumers``,
``close_connection``, ``export_definitions``, ``import_definitions``, ``environment``.

Owns: their handlers (in ``workers.admin.WORKER_COMMANDS``) and the rows they answer:
every column rabbitmqctl knows that shardmq has, by rabbitmqctl's names; ``shardmq ctl``
picks the columns asked for (``shardmq.ctlobjects``).

Invariants:
- Declared objects come from this process's metadata replica; queue counts from every
  worker's live report (``workers.status.gather_reports``), connections, channels and
  consumers from every worker (op ``clients`` of ``workers.conn_ops``), all made at the
  moment of the command; nothing is recorded per message.
- A definitions import is checked whole (``workers.mgmt_definitions.import_ops``) before
  the first change, and applied as metadata ops, as ``POST /api/definitions``.
- ``environment`` shows the running broker's settings with the seed users' passwords
  left out.
"""

from __future__ import annotations

from typing import Any

import msgspec

from workers.admin import AdminOps, CommandError, VHostArgs, need_vhost, parse_args, worker_command
from workers.admin_objects import ERROR
from workers.status import gather_reports
from workers.worker_ops import OpError, call_all


class CloseArgs(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    reason: str = ""


class ImportArgs(msgspec.Struct, forbid_unknown_fields=True):
    definitions: dict[str, Any]


# ---------------------------------------------------------------------- objects
@worker_command("list_queues")
async def list_queues(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    a: VHostArgs = parse_args(raw, VHostArgs)
    need_vhost(ops, a.vhost)
    stats: dict[str, tuple[int, Any]] = {}
    for rep in await gather_reports(data_dir):
        for st in rep.queues:
            if st.vhost == a.vhost:
                stats[st.name] = (rep.pid, st)
    rows = []
    for q in sorted(ops.metadata.vhosts[a.vhost].queues.values(), key=lambda q: q.name):
        pid, st = stats.get(q.name, (0, None))
        policy = getattr(q, "policy", None)
        qtype = str(dict(q.arguments).get("x-queue-type", "classic"))
        rows.append(
            {
                "name": q.name,
                "vhost": a.vhost,
                "durable": bool(q.durable),
                "auto_delete": bool(q.auto_delete),
                "exclusive": bool(q.exclusive),
                "arguments": _jsonable(dict(q.arguments)),
                "policy": policy.name if policy is not None else "",
                "pid": pid,
                "worker": int(getattr(q, "shard", 0)),
                "messages": st.messages if st else 0,
                "messages_ready": st.messages_ready if st else 0,
                "messages_unacknowledged": st.messages_unacknowledged if st else 0,
                "messages_persistent": st.store.get("ready_persistent", 0) if st else 0,
                "consumers": st.consumers if st else 0,
                "memory": st.store.get("memory_bytes", 0) if st else 0,
                "state": "running" if st else "down",
                "type": qtype,
            }
        )
    return rows


@worker_command("list_exchanges")
async def list_exchanges(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    a: VHostArgs = parse_args(raw, VHostArgs)
    need_vhost(ops, a.vhost)
    return [
        {
            "name": ex.name,
            "vhost": a.vhost,
            "type": ex.type,
            "durable": ex.durable,
            "auto_delete": ex.auto_delete,
            "internal": ex.internal,
            "arguments": _jsonable(dict(ex.arguments)),
            "policy": ex.policy.name if ex.policy is not None else "",
        }
        for ex in sorted(ops.metadata.vhosts[a.vhost].exchanges.values(), key=lambda e: e.name)
    ]


@worker_command("list_bindings")
async def list_bindings(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    from shardmq.broker.exchange import Exchange

    a: VHostArgs = parse_args(raw, VHostArgs)
    need_vhost(ops, a.vhost)
    vh = ops.metadata.vhosts[a.vhost]
    rows = [
        _binding(a.vhost, "", q.name, "queue", q.name, {})
        for q in sorted(vh.queues.values(), key=lambda q: q.name)
    ]
    for ex in sorted(vh.exchanges.values(), key=lambda e: e.name):
        if not ex.name:
            continue
        for dest, rk, args in ex.router.bindings():
            kind = "exchange" if isinstance(dest, Exchange) else "queue"
            rows.append(_binding(a.vhost, ex.name, dest.name, kind, rk, args))
    return rows


def _binding(
    vhost: str, source: str, dest: str, kind: str, rk: str, args: dict[str, Any]
) -> dict[str, Any]:
    return {
        "vhost": vhost,
        "source_name": source,
        "source_kind": "exchange",
        "destination_name": dest,
        "destination_kind": kind,
        "routing_key": rk,
        "arguments": _jsonable(dict(args)),
    }


def _jsonable(v: Any) -> Any:
    from workers.queue_ops import json_value

    return json_value(v)


# ---------------------------------------------------------------------- clients
async def _clients(data_dir: str) -> list[dict[str, Any]]:
    from workers.conn_ops import gather_clients

    return await gather_clients(data_dir)


@worker_command("list_connections")
async def list_connections(
    ops: AdminOps, data_dir: str, raw: dict[str, Any]
) -> list[dict[str, Any]]:
    return [
        {"pid": r["name"], **{k: v for k, v in r.items() if not k.startswith("_")}}
        for r in await _clients(data_dir)
    ]


@worker_command("list_channels")
async def list_channels(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for conn in await _clients(data_dir):
        for ch in conn["_channels"]:
            row = {k: v for k, v in ch.items() if not k.startswith("_")}
            row["pid"] = ch["name"]
            row["connection"] = conn["name"]
            rows.append(row)
    return rows


@worker_command("list_consumers")
async def list_consumers(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    a: VHostArgs = parse_args(raw, VHostArgs)
    need_vhost(ops, a.vhost)
    rows = []
    for conn in await _clients(data_dir):
        if conn["vhost"] != a.vhost:
            continue
        for ch in conn["_channels"]:
            for c in ch["_consumers"]:
                rows.append(
                    {
                        "queue_name": c["queue"]["name"],
                        "channel_pid": ch["name"],
                        "consumer_tag": c["consumer_tag"],
                        "ack_required": c["ack_required"],
                        "prefetch_count": c["prefetch_count"],
                        "active": c["active"],
                        "activity_status": c["activity_status"],
                        "exclusive": c["exclusive"],
                        "arguments": c["arguments"],
                    }
                )
    return rows


@worker_command("close_connection")
async def close_connection(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> int:
    a: CloseArgs = parse_args(raw, CloseArgs)
    answers = await call_all(data_dir, "close_connection", {"name": a.name, "reason": a.reason})
    closed = sum(int(n) for _slot, n in answers)
    if not closed:
        raise CommandError(f"Connection '{a.name}' not found", ERROR)
    return closed


# ---------------------------------------------------------------------- definitions
@worker_command("export_definitions")
async def export_definitions(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> dict[str, Any]:
    from workers.mgmt_definitions import export

    parse_args(raw, _NoArgs)
    return export(ops, list(ops.metadata.vhosts))


class _NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    pass


@worker_command("import_definitions")
async def import_definitions(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> None:
    from workers.admin import submit
    from workers.mgmt_definitions import import_ops
    from workers.mgmt_http import ApiError

    a: ImportArgs = parse_args(raw, ImportArgs)
    try:
        plan = import_ops(ops, a.definitions)
    except ApiError as exc:
        raise CommandError(f"invalid definitions: {exc.reason}", ERROR) from None
    for op in plan:
        try:
            await submit(ops, op)
        except CommandError as exc:
            raise CommandError(str(exc), ERROR) from None


# ---------------------------------------------------------------------- environment
@worker_command("environment")
async def environment(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> dict[str, Any]:
    parse_args(raw, _NoArgs)
    try:
        answers = await call_all(data_dir, "environment", {})
    except OpError as exc:
        raise CommandError(exc.text) from None
    if not answers:
        raise CommandError("no worker answered")
    env: dict[str, Any] = answers[0][1]
    return env
