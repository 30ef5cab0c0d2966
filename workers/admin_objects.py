"""ctl commands on the broker's objects and clients: ``purge_queue``, ``delete_queue``
(and the listings and connection commands of ``workers.admin_lists``).

Owns: their argument structs and handlers (in ``workers.admin.WORKER_COMMANDS``: they
reach the workers through ``workers.worker_ops``).

Invariants: a purge runs on the worker that owns the queue (``workers.queue_ops``); a
delete is a metadata op through ``workers.admin.submit``, applied everywhere before the
answer, as a client's queue.delete. An unknown vhost or queue changes nothing and gets
rabbitmqctl's text.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shardmq.broker import metadata as md
from shardmq.ctlclient import EX_UNAVAILABLE
from workers.admin import AdminOps, CommandError, need_vhost, parse_args, submit, worker_command
from workers.worker_ops import OpError, call_worker

ERROR = 1  # a refused command's exit code (rabbitmqctl's; 69 is kept for unreachable)


class QueueArgs(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    vhost: str = "/"
    if_empty: bool = False
    if_unused: bool = False


def _queue(ops: AdminOps, vhost: str, name: str) -> Any:
    need_vhost(ops, vhost)
    q = ops.metadata.vhosts[vhost].queues.get(name)
    if q is None:
        raise CommandError(f"Queue '{name}' in vhost '{vhost}' not found", ERROR)
    return q


async def on_owner(data_dir: str, queue: Any, op: str, args: dict[str, Any]) -> Any:
    """Run ``op`` on the worker that owns ``queue``; a refusal is a ``CommandError``."""
    try:
        return await call_worker(data_dir, int(getattr(queue, "shard", 0)), op, args)
    except OpError as exc:
        raise CommandError(exc.text, EX_UNAVAILABLE if exc.status == 503 else ERROR) from None


@worker_command("purge_queue")
async def purge_queue(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> int:
    a: QueueArgs = parse_args(raw, QueueArgs)
    q = _queue(ops, a.vhost, a.name)
    return int(await on_owner(data_dir, q, "purge", {"vhost": a.vhost, "name": a.name}))


@worker_command("delete_queue")
async def delete_queue(ops: AdminOps, data_dir: str, raw: dict[str, Any]) -> int:
    a: QueueArgs = parse_args(raw, QueueArgs)
    _queue(ops, a.vhost, a.name)
    op = md.DeleteQueue(a.vhost, a.name, a.if_unused, a.if_empty, 0)
    try:
        result = await submit(ops, op)
    except CommandError as exc:
        raise CommandError(str(exc), ERROR) from None
    return int(result) if isinstance(result, int) else 0
