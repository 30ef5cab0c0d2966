"""What the admin process's two HTTP endpoints (management API, Prometheus) share.

Owns: ``HttpEndpoint``, the life of one aiohttp listener: ``bind`` (the port claimed
early, so that a port in use is a start-up error, not a late log line), ``port`` (the
bound port, also when configured as 0), ``serve`` (an ``aiohttp`` application on that
socket, plain or TLS, with the shared statistics history started beside it) and
``stop``.

Invariants: ``bind`` raises only ``workers.startup.StartupError``, naming the
endpoint (``what``) and its config key (``setting``); ``stop`` is idempotent and stops
the history only if ``serve`` started it. Subclasses set ``settings`` (``host``,
``effective_port()``) and ``history`` before ``bind``/``serve``.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from aiohttp import web

from workers.mgmt_stats import StatsHistory


class HttpEndpoint:
    setting = ""  # the config key of the port, e.g. "management.port"
    what = ""  # the endpoint in messages, e.g. "management API"
    settings: Any
    history: StatsHistory

    _sock: socket.socket | None = None
    _runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    def bind(self) -> None:
        """Claim host:port now (``StartupError`` when that cannot be done)."""
        from workers.startup import http_listener

        s = self.settings
        self._sock = http_listener(s.host or "", s.effective_port(), self.setting, self.what)

    async def serve(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        if self._sock is None:
            self.bind()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        assert self._sock is not None
        await web.SockSite(self._runner, self._sock, ssl_context=ssl_context).start()
        self.history.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self.history.stop()
            await self._runner.cleanup()
            self._runner = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
