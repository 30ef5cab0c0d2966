"""Management API endpoints that act on a queue's messages: ``DELETE
/api/queues/{vhost}/{name}/contents`` (purge) and ``POST /api/queues/{vhost}/{name}/get``
(RabbitMQ 3.10's paths, bodies, answers and errors).

Owns: the two handlers, the check of a get's body (RabbitMQ's ``key_missing`` list,
``not_integer``, encodings), and ``owner_call``: running a queue op on the worker that
owns the queue (``workers.worker_ops``).

Invariants: the queue is looked up in this process's metadata replica first (404 for
an unknown vhost or queue, 401 for a vhost the user may not use), the body is checked
before anything is asked of the owner, so a refused request changes nothing; the owner
does the whole operation in one loop turn (``workers.queue_ops``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from workers.mgmt_http import (
    SERVER,
    ApiError,
    bad_request,
    body_of,
    json_response,
    need_vhost,
    no_content,
    queue_of,
    route,
)
from workers.queue_ops import ACK_MODES
from workers.worker_ops import OpError, call_worker


def queue_owner(queue: Any) -> int:
    """The worker slot that owns ``queue`` (a replica's ``RemoteQueue`` names it; the
    one-process broker's own queues are slot 0's)."""
    return int(getattr(queue, "shard", 0))


async def owner_call(request: web.Request, queue: Any, name: str, args: dict[str, Any]) -> Any:
    data_dir = request.app[SERVER].data_dir
    try:
        return await call_worker(data_dir, queue_owner(queue), name, args)
    except OpError as exc:
        if exc.status == 404:
            raise ApiError(404, "not_found", exc.text) from None
        if exc.status == 400:
            raise bad_request(exc.text) from None
        raise ApiError(exc.status, "internal_error", exc.text) from None


@route("DELETE", "/api/queues/{vhost}/{name}/contents")
async def purge(request: web.Request) -> web.Response:
    vhost, q = queue_of(request)
    need_vhost(request, vhost, write=True)
    args = {"vhost": vhost, "name": q.name, "not_exclusive": True}
    await owner_call(request, q, "purge", args)
    return no_content()


def _get_args(body: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("ackmode", "count", "encoding") if k not in body]
    if missing:
        raise bad_request("[" + ",".join(f"{{key_missing,{k}}}" for k in missing) + "]")
    count = _integer(body["count"])
    ackmode = body["ackmode"]
    if ackmode not in ACK_MODES:
        raise bad_request(f"Unsupported ackmode. Please use one of {', '.join(ACK_MODES)}.")
    encoding = body["encoding"]
    if encoding not in ("auto", "base64"):
        raise bad_request("Unsupported encoding. Please use auto or base64.")
    truncate = body.get("truncate")
    return {
        "count": count,
        "ackmode": ackmode,
        "encoding": encoding,
        "truncate": None if truncate in (None, "") else _integer(truncate),
    }


def _integer(v: Any) -> int:
    """An integer, or a string of one (RabbitMQ takes both; else ``not_integer``)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
    raise ApiError(400, "bad_request", "not_integer") from None


@route("POST", "/api/queues/{vhost}/{name}/get")
async def get(request: web.Request) -> web.Response:
    vhost, q = queue_of(request)
    need_vhost(request, vhost, write=True)
    args = _get_args(await body_of(request))
    rows = await owner_call(request, q, "get", {"vhost": vhost, "name": q.name, **args})
    return json_response(rows)
