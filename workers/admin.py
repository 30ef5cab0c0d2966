"""The control socket: how ``shardmq ctl`` changes and reads a running broker.

Owns: ``AdminServer`` (an asyncio unix-socket server on ``<data_dir>/ctl.sock``, frames
as ``shardmq.ctlclient`` defines them) and ``COMMANDS``, the table from command name to
handler. It runs where metadata changes are ordered: in the supervisor with N workers
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
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec

from shardmq.amqp.errors import AMQPError
from shardmq.broker import metadata as md
from shardmq.broker.policies import PolicyError, make_policy
from shardmq.ctlclient import MAX_FRAME, Answer, Request, reachable, socket_path

log = logging.getLogger("shardmq.admin")


class AdminOps(Protocol):
    """What the control socket acts on: the process's metadata replica and where its
    changes are ordered (``LocalSequencer`` or the supervisor's ``Sequencer``)."""

    @property
    def metadata(self) -> md.Metadata: ...

    def request(self, op: md.Op, callback: Callable[[AMQPError | None, Any], None]) -> None: ...


class CommandError(Exception):
    """A refused command; the text goes back to ctl."""


Handler = Callable[[AdminOps, dict[str, Any]], Awaitable[Any]]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
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


def _args(args: dict[str, Any], spec: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.convert(args, type=spec)
    except msgspec.ValidationError as exc:
        raise CommandError(f"bad arguments: {exc}") from None


def _vhost(ops: AdminOps, name: str) -> None:
    if name not in ops.metadata.vhosts:
        raise CommandError(f"virtual host '{name}' does not exist")


# ---------------------------------------------------------------------- policies
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


class VHostArgs(msgspec.Struct, forbid_unknown_fields=True):
    vhost: str = "/"


@command("set_policy")
async def set_policy(ops: AdminOps, raw: dict[str, Any]) -> None:
    a: SetPolicyArgs = _args(raw, SetPolicyArgs)
    _vhost(ops, a.vhost)
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
    a: PolicyNameArgs = _args(raw, PolicyNameArgs)
    _vhost(ops, a.vhost)
    await submit(ops, md.ClearPolicy(a.vhost, a.name))


@command("list_policies")
async def list_policies(ops: AdminOps, raw: dict[str, Any]) -> list[dict[str, Any]]:
    a: VHostArgs = _args(raw, VHostArgs)
    _vhost(ops, a.vhost)
    return [p.as_row() for p in ops.metadata.vhost(a.vhost).policies]


# ---------------------------------------------------------------------- the server
class AdminServer:
    def __init__(self, data_dir: str | Path, ops: AdminOps) -> None:
        self.path = socket_path(data_dir)
        self.ops = ops
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                with reachable(self.path) as where:
                    sock.bind(where)
            finally:
                os.umask(old)
            self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_FRAME)
        except BaseException:
            sock.close()
            raise

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(_answer(Answer(False, error="request too large")))
                    break
                if not line:
                    break
                writer.write(_answer(await self.handle(line)))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(self, line: bytes) -> Answer:
        try:
            req = msgspec.json.decode(line, type=Request)
        except msgspec.DecodeError as exc:
            log.warning("control socket: unreadable request: %s", exc)
            return Answer(False, error=f"unreadable request: {exc}")
        fn = COMMANDS.get(req.command)
        if fn is None:
            return Answer(False, error=f"unknown command '{req.command}'")
        try:
            result = await fn(self.ops, req.args)
        except CommandError as exc:
            log.info("ctl %s refused: %s", req.command, str(exc).replace("\n\n", ": "))
            return Answer(False, error=str(exc))
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
