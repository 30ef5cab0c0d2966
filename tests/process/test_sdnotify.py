"""The broker's side of systemd's Type=notify protocol, without systemd (none runs
here: PID 1 is not systemd, so ``systemd-run --user`` cannot start a unit): the test
is the notify socket, as systemd would be (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``).

READY=1 (with STATUS= and MAINPID=) must come only once the broker answers: every
worker ready, a client connects at the first try; WATCHDOG=1 must keep coming at half
the watchdog period; SIGTERM gives STOPPING=1 and exit 0."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from tests.support.launch import serve_args, spawn, terminate
from tests.support.notifysock import Notifications
from tests.support.ports import free_port
from workers.status import read_broker_status, read_workers

WATCHDOG_USEC = 300_000  # systemd's WatchdogSec=0.3: a ping every 0.15 s


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    n = Notifications()
    try:
        yield n
    finally:
        n.close()


@pytest.mark.parametrize("workers", [1, 3])
def test_ready_once_serving_watchdog_keeps_coming_stopping_on_sigterm(
    tmp_path: Path, notifications: Notifications, workers: int
) -> None:
    port = free_port()
    log = tmp_path / "broker.log"
    env = dict(os.environ)
    env["NOTIFY_SOCKET"] = notifications.env_value
    env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    env.pop("WATCHDOG_PID", None)
    proc = spawn(serve_args(port, workers, tmp_path / "data"), log, env=env)
    try:
        ready = notifications.wait("READY", 30, log)
        # at READY=1 the broker serves: every worker is ready and answers ctl, and a
        # client connects at its first attempt
        if workers > 1:
            assert all(w.ready for w in read_workers(str(tmp_path / "data")) or [])
        assert len(read_broker_status(str(tmp_path / "data")).reports) == workers
        conn = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1)
        )
        conn.channel().queue_declare("", exclusive=True)
        conn.close()
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(proc.pid)
        assert f"accepting AMQP on 127.0.0.1:{port}" in ready["STATUS"]
        assert sum("READY" in m for _, m in notifications.received) == 1

        # the watchdog keeps being fed after READY=1
        pings = 0
        while pings < 5:
            msg = notifications.wait("WATCHDOG", 10, log)
            assert msg["WATCHDOG"] == "1"
            pings += 1
        assert proc.poll() is None

        proc.terminate()
        notifications.wait("STOPPING", 30, log)
        assert proc.wait(30) == 0
    finally:
        terminate(proc, 15)
