"""Requests from the admin side to one worker: operations that must run where the
object lives (a queue's purge and get on the worker that owns it, a connection's
listing and forced close on the worker that accepted it).

Owns: the ops sockets (``OpsServer``: each worker, and the one-process broker, listens
on ``data_dir/status/ops-<slot>.sock``, mode 0600, a ``workers.line_server.LineServer``), their frames (one JSON object per
line each way: ``{"op": NAME, "args": {...}}``, answered ``{"ok": true, "result":
...}`` or ``{"ok": false, "error": TEXT, "status": N}``), ``OPS`` (name -> handler,
filled by ``workers.queue_ops``, ``workers.conn_ops``, ``workers.publish_ops``,
``workers.amqp1_links`` and ``workers.node_ops``; ``environment`` here) and the clients
``call_worker`` (one worker) and ``call_all`` (every live worker at once).

Invariants:
- A handler runs on the worker's event loop, synchronously, between two loop turns:
  what it does to a queue or a connection is never interleaved with the message path
  (no lock, nothing recorded per message). It returns JSON-able data (or an
  ``asyncio.Future`` of it, answered when done, within ``TIMEOUT``: a publish waiting
  for its queues' stores) or raises
  ``OpError`` (status and RabbitMQ's text); anything else is one log line and an
  error answer, never a dead worker.
- The socket is created mode 0600 (the ops change state: only the broker's user may
  reach them), replaced when left by a dead process of the same slot, removed at stop.
  Its name does not match the status sockets' ``worker-*.sock``.
- The clients raise only ``OpError``: 503 when the worker cannot be reached (not
  running, respawning, not answering within the timeout).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from workers.line_server import LineServer
from workers.status import _addressable, status_dir

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

log = logging.getLogger("shardmq.ops")

PREFIX = "ops-"
TIMEOUT = 10.0  # seconds a worker has to answer one op
MAX_FRAME = 64 * 1024 * 1024  # a request
MAX_ANSWER = 1024 * 1024 * 1024  # an answer (a get of one message of the largest size)

OpHandler = Callable[["Broker", dict[str, Any]], Any]
OPS: dict[str, OpHandler] = {}


def op(name: str) -> Callable[[OpHandler], OpHandler]:
    def register(fn: OpHandler) -> OpHandler:
        OPS[name] = fn
        return fn

    return register


class OpError(Exception):
    """A refused or failed op: an HTTP status (RabbitMQ's for the case) and the text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _Request(msgspec.Struct):
    op: str
    args: dict[str, Any] = {}


class _Answer(msgspec.Struct):
    ok: bool
    result: Any = None
    error: str = ""
    status: int = 500


def ops_path(data_dir: str | os.PathLike[str], slot: int) -> Path:
    return status_dir(data_dir) / f"{PREFIX}{slot}.sock"


def _slot_of(path: Path) -> int:
    try:
        return int(path.stem[len(PREFIX) :])
    except ValueError:
        return -1


# ---------------------------------------------------------------------- worker side
def _handled() -> None:
    # the op modules register themselves in OPS
    from workers import amqp1_links, conn_ops, node_ops, publish_ops, queue_ops  # noqa: F401


class OpsServer:
    """Answers ops on ``data_dir/status/ops-<slot>.sock`` from ``start`` to ``stop``."""

    def __init__(self, broker: Broker, data_dir: str) -> None:
        _handled()
        self.broker = broker
        self.path = ops_path(data_dir, broker.slot)
        too_large = _frame(_Answer(False, error="request too large", status=413))
        self._server = LineServer(self.path, self._answer, too_large, MAX_FRAME)

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await self._server.start()
        except OSError as exc:
            log.warning("no management ops: cannot listen on %s: %s", self.path, exc)

    async def stop(self) -> None:
        await self._server.stop()

    async def _answer(self, line: bytes) -> bytes:
        answer = self.handle(line)  # in the loop turn that read the request
        if isinstance(answer.result, asyncio.Future):  # an op that finishes later
            answer = await _settled(answer.result)
        return _frame(answer)

    def handle(self, line: bytes) -> _Answer:
        try:
            req = msgspec.json.decode(line, type=_Request)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ops socket: unreadable request: %s", exc)
            return _Answer(False, error=f"unreadable request: {exc}", status=400)
        fn = OPS.get(req.op)
        if fn is None:
            return _Answer(False, error=f"unknown op '{req.op}'", status=400)
        try:
            return _Answer(True, result=fn(self.broker, req.args))
        except OpError as exc:
            return _Answer(False, error=exc.text, status=exc.status)
        except Exception as exc:  # never a dead worker: one line, and an answer
            log.error("op %s failed: %s: %s", req.op, type(exc).__name__, exc)
            return _Answer(False, error=f"internal error: {type(exc).__name__}: {exc}")


async def _settled(result: asyncio.Future[Any]) -> _Answer:
    try:
        return _Answer(True, result=await asyncio.wait_for(asyncio.shield(result), TIMEOUT))
    except OpError as exc:
        return _Answer(False, error=exc.text, status=exc.status)
    except TimeoutError:
        return _Answer(False, error=f"not done within {TIMEOUT:g} s", status=503)
    except Exception as exc:
        log.error("op failed: %s: %s", type(exc).__name__, exc)
        return _Answer(False, error=f"internal error: {type(exc).__name__}: {exc}")


def _frame(answer: _Answer) -> bytes:
    return msgspec.json.encode(answer) + b"\n"


@op("environment")
def environment(broker: Broker, args: dict[str, Any]) -> dict[str, Any]:
    """The settings this worker runs with (``ctl environment``), without the seed
    users' passwords."""
    env: dict[str, Any] = msgspec.to_builtins(broker.config)
    env["users"] = [{k: v for k, v in u.items() if k != "password"} for u in env.get("users", [])]
    return env


# ---------------------------------------------------------------------- admin side
async def _call_path(path: Path, name: str, args: dict[str, Any], timeout: float) -> Any:
    slot = _slot_of(path)
    try:
        with _addressable(path) as addr:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(addr, limit=MAX_ANSWER), timeout
            )
    except (TimeoutError, OSError):
        raise OpError(503, f"worker {slot} is not reachable (not running or restarting)") from None
    try:
        writer.write(msgspec.json.encode(_Request(name, args)) + b"\n")
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (TimeoutError, OSError, ValueError, asyncio.LimitOverrunError):
        raise OpError(503, f"worker {slot} did not answer within {timeout:g} s") from None
    finally:
        writer.close()
    try:
        answer = msgspec.json.decode(line, type=_Answer)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise OpError(503, f"worker {slot} closed without answering") from None
    if not answer.ok:
        raise OpError(answer.status, answer.error)
    return answer.result


async def call_worker(
    data_dir: str, slot: int, name: str, args: dict[str, Any], timeout: float = TIMEOUT
) -> Any:
    """Run op ``name`` on worker ``slot``; its result, or ``OpError``."""
    return await _call_path(ops_path(data_dir, slot), name, args, timeout)


async def call_all(
    data_dir: str, name: str, args: dict[str, Any], timeout: float = TIMEOUT
) -> list[tuple[int, Any]]:
    """Run op ``name`` on every live worker at once: ``(slot, result)`` of those that
    answered (a worker that is down, respawning or refused is left out)."""
    paths = sorted(status_dir(data_dir).glob(f"{PREFIX}*.sock"), key=_slot_of)
    answers = await asyncio.gather(
        *(_call_path(p, name, args, timeout) for p in paths), return_exceptions=True
    )
    out: list[tuple[int, Any]] = []
    for path, answer in zip(paths, answers, strict=True):
        if isinstance(answer, OpError):
            continue
        if isinstance(answer, BaseException):
            raise answer
        out.append((_slot_of(path), answer))
    return out
