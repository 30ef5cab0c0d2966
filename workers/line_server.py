"""A unix-socket server that answers each line with one line: the control socket
(``workers.admin``) and the workers' ops sockets (``workers.worker_ops``), whose frames
are one JSON object per line each way.

Owns: ``LineServer``: ``start`` binds ``path`` mode 0600 (replacing a socket left by a
dead process: the caller knows no live one owns the name) and serves; each connection
reads one line per request (at most ``limit`` bytes: a longer one gets ``too_large``
and the connection is closed) and writes back what ``answer(line)`` returns, until the
client closes; ``stop`` closes the server and removes the socket.

Invariants: ``answer`` is awaited straight from the connection's task, so whatever it
does before its first suspension runs in the loop turn that read the line (the ops
socket's handlers rely on that). A client that goes away is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from shardmq.ctlclient import reachable

Answerer = Callable[[bytes], Awaitable[bytes]]


class LineServer:
    def __init__(self, path: Path, answer: Answerer, too_large: bytes, limit: int) -> None:
        self.path = path
        self._answer = answer
        self._too_large = too_large
        self._limit = limit
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Raises ``OSError`` when the socket cannot be made."""
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
            self._server = await asyncio.start_unix_server(
                self._client, sock=sock, limit=self._limit
            )
        except BaseException:
            sock.close()
            raise

    async def stop(self) -> None:
        if self._server is None:
            return
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
                    writer.write(self._too_large)
                    break
                if not line:
                    break
                writer.write(await self._answer(line))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
