"""The control socket: how ``shardmq ctl`` changes and reads a running broker.

Owns: ``AdminServer`` (a ``workers.line_server.LineServer`` on ``<data_dir>/ctl.sock``,
frames as ``shardmq.ctlclient`` defines them) and ``COMMANDS``, the table from command name to
handler, filled by ``workers.admin_policies``, ``workers.admin_access`` and
``workers.admin_objects`` (whose commands also reach the workers: ``WORKER_COMMANDS``,
given the data dir). It runs where metadata changes are ordered: in the supervisor with N workers
(over the ``Sequencer``), in the broker's own process with one (``LocalSequencer``).

Invariants:
- A command that changes state goes through ``ops.request`` like a client's declare:
  it is applied by every worker (and saved with the durable definitions) before the
  answer, so a client of any worker sees it once ``ctl`` returned.
- Arguments are checked (types, then the rule the change must follow, e.g. a policy's
  validation) before anything is submitted: a refused command changes nothing.
- A bad request gets ``{"ok": false, "error": ...}`` and one log line; the server never
  raises out of a client handler, and a client may not send a frame over ``MAX_FRAME``.
- The socket file is created mode 0600 and removed at stop; a stale one from a killed
  broker is replaced (the data directory's lock guarantees it is not another broker's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec

from shardmq.amqp.errors import AMQPError
from shardmq.broker import metadata as md
from shardmq.ctlclient import (
    EX_UNAVAILABLE,
    MAX_FRAME,
    Answer,
    Request,
    socket_path,
)
from workers.line_server import LineServer

log = logging.getLogger("shardmq.admin")


class AdminOps(Protocol):
    """What the control socket acts on: the process's metadata replica and where its
    changes are ordered (``LocalSequencer`` or the supervisor's ``Sequencer``)."""

    @property
    def metadata(self) -> md.Metadata: ...

    def request(self, op: md.Op, callback: Callable[[AMQPError | None, Any], None]) -> None: ...


class CommandError(Exception):
    """A refused command; the text goes back to ctl, which exits with ``code``."""

    def __init__(self, text: str, code: int = EX_UNAVAILABLE) -> None:
        super().__init__(text)
        self.code = code


Handler = Callable[[AdminOps, dict[str, Any]], Awaitable[Any]]
COMMANDS: dict[str, Handler] = {}
# commands that also reach the workers (``workers.worker_ops``): given the data dir
WorkerHandler = Callable[[AdminOps, str, dict[str, Any]], Awaitable[Any]]
WORKER_COMMANDS: dict[str, WorkerHandler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


def worker_command(name: str) -> Callable[[WorkerHandler], WorkerHandler]:
    def register(fn: WorkerHandler) -> WorkerHandler:
        WORKER_COMMANDS[name] = fn
        return fn

    return register


def submit(ops: AdminOps, op: md.Op) -> asyncio.Future[Any]:
    """``op`` ordered and applied everywhere; the future's result is the op's result,
    or ``CommandError`` with the text a client would get."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(err: AMQPError | None, result: Any) -> None:
        if fut.done():
            return
        if err is not None:
            fut.set_exception(CommandError(err.text))
        else:
            fut.set_result(result)

    ops.request(op, done)
    return fut


def parse_args(args: dict[str, Any], spec: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.convert(args, type=spec)
    except msgspec.ValidationError as exc:
        raise CommandError(f"bad arguments: {exc}") from None


class NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    pass


class VHostArgs(msgspec.Struct, forbid_unknown_fields=True):
    vhost: str = "/"


def need_vhost(ops: AdminOps, name: str, text: str = "Virtual host {} does not exist") -> None:
    if name not in ops.metadata.vhosts:
        raise CommandError(text.format(name))


# ---------------------------------------------------------------------- the server
class AdminServer:
    def __init__(self, data_dir: str | Path, ops: AdminOps) -> None:
        # the command modules register themselves in COMMANDS
        from workers import (  # noqa: F401
            admin_access,
            admin_limits,
            admin_lists,
            admin_objects,
            admin_policies,
        )

        self.data_dir = str(data_dir)
        self.path = socket_path(data_dir)
        self.ops = ops
        too_large = _answer(Answer(False, error="request too large"))
        self._server = LineServer(self.path, self._answer, too_large, MAX_FRAME)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    async def _answer(self, line: bytes) -> bytes:
        return _answer(await self.handle(line))

    async def handle(self, line: bytes) -> Answer:
        try:
            req = msgspec.json.decode(line, type=Request)
        except msgspec.DecodeError as exc:
            log.warning("control socket: unreadable request: %s", exc)
            return Answer(False, error=f"unreadable request: {exc}")
        fn = COMMANDS.get(req.command)
        wfn = WORKER_COMMANDS.get(req.command)
        if fn is None and wfn is None:
            return Answer(False, error=f"unknown command '{req.command}'")
        try:
            if wfn is not None:
                result = await wfn(self.ops, self.data_dir, req.args)
            else:
                assert fn is not None
                result = await fn(self.ops, req.args)
        except CommandError as exc:
            log.info("ctl %s refused: %s", req.command, str(exc).replace("\n\n", ": "))
            return Answer(False, error=str(exc), code=exc.code)
        except Exception as exc:  # never a traceback per request: one line, and an answer
            log.error("ctl %s failed: %s: %s", req.command, type(exc).__name__, exc)
            return Answer(False, error=f"internal error: {type(exc).__name__}: {exc}")
        if req.command.startswith(("set_", "clear_", "add_", "delete_")):
            log.info("ctl %s %s", req.command, _describe(req.args))
        return Answer(True, result=result)


def _answer(answer: Answer) -> bytes:
    return msgspec.json.encode(answer) + b"\n"


def _describe(args: dict[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in args.items() if k != "password")
