"""The ops sockets (``workers.worker_ops``) without a broker: their mode, the answers to
bad requests, a failing op, unreachable and stale workers; and ``queue_ops.json_value``.

Invariants: each test uses its own temporary data dir and event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shardmq.amqp.fieldtable import ByteArray, Timestamp
from workers.queue_ops import json_value
from workers.worker_ops import OPS, OpError, OpsServer, call_all, call_worker, ops_path


def _broker(slot: int) -> Any:
    return SimpleNamespace(slot=slot, vhosts={}, connections=set())


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_socket_mode_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(broker: Any, args: dict[str, Any]) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setitem(OPS, "boom", boom)
    monkeypatch.setitem(OPS, "echo", lambda broker, args: {"slot": broker.slot, **args})

    async def scenario() -> None:
        server = OpsServer(_broker(0), str(tmp_path))
        await server.start()
        try:
            path = ops_path(tmp_path, 0)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert await call_worker(str(tmp_path), 0, "echo", {"a": 1}) == {"slot": 0, "a": 1}
            with pytest.raises(OpError) as err:
                await call_worker(str(tmp_path), 0, "purge", {"vhost": "/", "name": "q"})
            assert (err.value.status, err.value.text) == (
                404,
                "NOT_FOUND - no queue 'q' in vhost '/'",
            )
            with pytest.raises(OpError) as err:
                await call_worker(str(tmp_path), 0, "boom", {})
            assert err.value.status == 500 and "kaput" in err.value.text
            with pytest.raises(OpError) as err:
                await call_worker(str(tmp_path), 0, "no-such-op", {})
            assert err.value.status == 400
            # a line that is not a request: an answer, and the worker still serves
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"{not json\n")
            line = await reader.readline()
            writer.close()
            assert b'"ok":false' in line and b'"status":400' in line
            assert await call_worker(str(tmp_path), 0, "echo", {}) == {"slot": 0}
        finally:
            await server.stop()
        assert not ops_path(tmp_path, 0).exists()

    _run(scenario())


def test_unreachable_and_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(OPS, "echo", lambda broker, args: broker.slot)

    async def scenario() -> None:
        with pytest.raises(OpError) as err:
            await call_worker(str(tmp_path), 5, "echo", {})
        assert err.value.status == 503
        # a socket left by a dead worker (bound, nobody listening) is skipped
        ops_path(tmp_path, 1).parent.mkdir(parents=True, exist_ok=True)
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(ops_path(tmp_path, 1)))
        dead.close()
        servers = [OpsServer(_broker(s), str(tmp_path)) for s in (0, 2)]
        for s in servers:
            await s.start()
        try:
            assert await call_all(str(tmp_path), "echo", {}) == [(0, 0), (2, 2)]
        finally:
            for s in servers:
                await s.stop()

    _run(scenario())


def test_json_value() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    value = {
        "t": Timestamp(1700000000),
        "d": Decimal("1.5"),
        "b": b"raw",
        "x": ByteArray(b"arr"),
        "dt": when,
        "n": [1, True, None, {"k": 2.5}],
    }
    assert json_value(value) == {
        "t": 1700000000,
        "d": 1.5,
        "b": "raw",
        "x": "arr",
        "dt": int(when.timestamp()),
        "n": [1, True, None, {"k": 2.5}],
    }
    assert type(json_value(Timestamp(5))) is int
