"""File descriptors, connection limits and unauthenticated peers (issue 16).

- At start the soft RLIMIT_NOFILE is raised to the hard limit, and the limit is logged.
- Near the limit the broker raises a file-descriptor alarm: publishers get
  connection.blocked, new connections are accepted and closed (no accept error loop,
  one log line), and it clears once connections go.
- ``max_connections`` refuses connection.open past it with 530 and RabbitMQ's text.
- One address holds at most ``max_unauthenticated_per_address`` connections before
  connection.open-ok (per worker process).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pika
import pytest

from tests.process.ownbroker import OwnBroker, start_own
from tests.support import rawamqp as raw


def _refused(port: int) -> bool:
    """Connect and send the header: True if the broker closes without a byte."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(raw.PROTOCOL_HEADER)
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True
    finally:
        s.close()


def _wait(pred: object, timeout: float, what: str, b: OwnBroker) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{b.log()[-3000:]}")
        time.sleep(0.1)


def test_soft_fd_limit_raised_to_hard_and_logged(tmp_path: Path) -> None:
    b = start_own(tmp_path, 1, nofile=(300, 700))
    try:
        assert "file descriptor limit: 700" in b.log(), b.log()
    finally:
        b.stop()


@pytest.mark.parametrize("workers", [1, 3])
def test_fd_alarm_blocks_publishers_and_refuses_cleanly(tmp_path: Path, workers: int) -> None:
    b = start_own(tmp_path, workers, nofile=160)
    flood: list[raw.RawConnection] = []
    pub = b.connect()
    try:
        blocked: list[bool] = []
        pub.add_on_connection_blocked_callback(lambda _c, _f: blocked.append(True))
        pub.add_on_connection_unblocked_callback(lambda _c, _f: blocked.append(False))
        pch = pub.channel()
        q = pch.queue_declare("", exclusive=True).method.queue
        pch.basic_publish("", q, b"before")
        refused = 0
        for _ in range(160 * workers + 100):
            c = raw.RawConnection("127.0.0.1", b.port)
            try:
                c.handshake()
            except AssertionError:  # closed before connection.start: refused
                c.close()
                refused += 1
                if refused >= 5:
                    break
                continue
            flood.append(c)
        assert refused >= 5, f"no connection refused after {len(flood)}\n{b.log()[-3000:]}"
        _wait(lambda: (pub.process_data_events(0.05), blocked[-1:] == [True])[1], 10, "blocked", b)
        for c in flood:
            c.close()
        flood.clear()
        _wait(lambda: (pub.process_data_events(0.05), blocked[-1:] == [False])[1], 15, "unblock", b)
        with b.connect() as again:  # served again
            again.channel().queue_declare("", exclusive=True)
    finally:
        for c in flood:
            c.close()
        try:
            pub.close()
        except Exception:
            pass
        b.stop()
    log = b.log()
    assert "Traceback" not in log, log[-3000:]
    # one line per alarm and worker, never one per refused connection
    assert log.count("file descriptor alarm set") <= workers, log[-3000:]
    assert log.count(" ERROR ") <= 2, log[-3000:]


@pytest.mark.parametrize("workers", [1, 3])
def test_max_connections_refused_with_rabbitmq_text(tmp_path: Path, workers: int) -> None:
    b = start_own(tmp_path, workers, {"server": {"max_connections": 3}})
    conns: list[pika.BlockingConnection] = []
    try:
        conns = [b.connect() for _ in range(3)]
        time.sleep(1.5)  # the other workers' counts reach the control block (heartbeat)
        # pika reports a close during connection.open as a probable access denial
        with pytest.raises(pika.exceptions.AMQPConnectionError) as info:
            conns.append(b.connect())
        assert "(530) 'NOT_ALLOWED - connection refused: node connection limit (3) is reached'" in (
            str(info.value)
        ), str(info.value)
        conns.pop(0).close()
        time.sleep(1.5)
        conns.append(b.connect())  # room again
    finally:
        for c in conns:
            c.close()
        b.stop()
    assert "Traceback" not in b.log()


def test_unauthenticated_connections_per_address_bounded(tmp_path: Path) -> None:
    b = start_own(tmp_path, 1, {"server": {"max_unauthenticated_per_address": 5}})
    silent = [socket.create_connection(("127.0.0.1", b.port), timeout=5) for _ in range(5)]
    try:
        time.sleep(0.3)
        assert _refused(b.port), "a 6th unauthenticated connection was served"
        # one of them authenticates: there is room for one more
        late = raw.RawConnection("127.0.0.1", b.port)
        silent[0].close()
        _wait(lambda: not _refused(b.port), 10, "room after one went", b)
        late.close()
        with b.connect() as c:
            c.channel()
    finally:
        for s in silent:
            s.close()
        b.stop()
    log = b.log()
    assert log.count("max_unauthenticated_per_address") >= 1, log
    assert "Traceback" not in log
