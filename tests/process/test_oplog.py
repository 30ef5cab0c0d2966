"""Logs an operator can use (issue 14 item 6): one line per accepted and closed
connection (peer, user, vhost, client-provided name), per channel error, JSON lines
with ``log_format = "json"``, a bounded log under a flood of failed connections, and
systemd's STATUS= line with workers, connections and queued messages."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from shardmq.oplog import BURST, Budget
from tests.support.launch import serve_args, spawn, terminate, wait_answering
from tests.support.notifysock import Notifications
from tests.support.ports import free_port

from .ownbroker import start_own


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def connect(port: int, **kw: Any) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1, **kw)
    )


@pytest.mark.parametrize("workers", [1, 3])
def test_json_lines_for_connections_and_channel_errors(tmp_path: Path, workers: int) -> None:
    b = start_own(tmp_path, workers, {"server": {"log_format": "json"}})
    try:
        conn = connect(b.port, client_properties={"connection_name": "billing-7"})
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.queue_declare("no-such-queue", passive=True)
        conn.close()
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            connect(b.port, virtual_host="no-such-vhost")
        deadline = time.monotonic() + 10
        while "connection_closed" not in b.log() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert b.stop() == 0
    lines = json_lines(b.log())  # every line is one JSON object
    for line in lines:
        assert {"time", "level", "worker", "logger", "msg"} <= set(line), line
    assert {line["worker"] for line in lines} >= ({None} if workers == 1 else {None, 0})
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_event.setdefault(line.get("event", ""), []).append(line)
    accepted = by_event["connection_accepted"]
    mine = [a for a in accepted if a["connection_name"] == "billing-7"]
    assert len(mine) == 1, accepted
    assert mine[0]["user"] == "guest" and mine[0]["vhost"] == "/" and mine[0]["level"] == "info"
    assert mine[0]["peer"].startswith("127.0.0.1:")
    assert "accepting AMQP connection" in mine[0]["msg"] and "billing-7" in mine[0]["msg"]
    closed = [c for c in by_event["connection_closed"] if c["peer"] == mine[0]["peer"]]
    assert len(closed) == 1 and closed[0]["reason"] == "closed by the client", closed
    errors = by_event["channel_error"]
    assert len(errors) == 1 and errors[0]["code"] == 404 and errors[0]["channel"] == 1
    assert errors[0]["connection_name"] == "billing-7"
    assert "no queue 'no-such-queue'" in errors[0]["reason"]
    refused = [e for e in by_event["connection_error"] if e["code"] == 530]
    assert len(refused) == 1 and "no-such-vhost" in refused[0]["msg"]
    # no line per message, and no connection line for the refused one
    assert len(accepted) == 1


def test_text_lines_and_abrupt_close(tmp_path: Path) -> None:
    b = start_own(tmp_path, 1)
    try:
        conn = connect(b.port, client_properties={"connection_name": "abrupt"})
        conn._impl._transport._sock.close()  # no connection.close: the TCP goes away
        deadline = time.monotonic() + 10
        while "closing AMQP connection" not in b.log() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert b.stop() == 0
    log = b.log()
    assert "accepting AMQP connection 127.0.0.1:" in log and " - abrupt: user 'guest'" in log
    closing = [line for line in log.splitlines() if "closing AMQP connection" in line]
    assert len(closing) == 1
    assert (
        "abrupt (vhost: '/', user: 'guest'): client unexpectedly closed TCP connection"
        in (closing[0])
    )


def test_flood_of_failed_connections_is_bounded(tmp_path: Path) -> None:
    b = start_own(tmp_path, 1)
    attempts = 4 * BURST
    try:
        for _ in range(attempts):
            with pytest.raises(pika.exceptions.AMQPConnectionError):
                connect(b.port, virtual_host="nowhere")
    finally:
        assert b.stop() == 0
    lines = [line for line in b.log().splitlines() if "nowhere" in line]
    assert len(lines) <= attempts // 2, len(lines)
    assert any("similar lines suppressed" in line for line in lines), lines[-3:]


def test_budget_counts_what_it_leaves_out() -> None:
    budget = Budget(burst=3, rate=1.0)
    assert [budget.take("k", 0.0) for _ in range(5)] == [0, 0, 0, -1, -1]
    assert budget.take("other", 0.0) == 0  # per kind
    assert budget.take("k", 1.0) == 2  # a token came back: the two left out are counted
    assert budget.take("k", 1.0) == -1


@pytest.mark.parametrize("workers", [1, 3])
def test_status_line_says_workers_connections_and_messages(tmp_path: Path, workers: int) -> None:
    notifications = Notifications()
    port = free_port()
    log = tmp_path / "broker.log"
    env = dict(os.environ, NOTIFY_SOCKET=notifications.env_value)
    proc = spawn(serve_args(port, workers, tmp_path / "data"), log, env=env)
    try:
        wait_answering(proc, port, lambda: log.read_text(errors="replace"), lambda: None)
        notifications.wait("READY", 30, log)
        conn = connect(port)
        ch = conn.channel()
        ch.queue_declare("status-q")
        for i in range(3):
            ch.basic_publish("", "status-q", b"m%d" % i)
        want = f"{workers} worker{'s' if workers > 1 else ''}, 1 connection, 3 queued messages"
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while time.monotonic() < deadline:
            msg = notifications.next(max(0.1, deadline - time.monotonic()))
            if msg and "STATUS" in msg:
                seen.append(msg["STATUS"])
                if msg["STATUS"] == want:
                    break
        assert want in seen, seen
        conn.close()
    finally:
        terminate(proc, 15)
        notifications.close()
