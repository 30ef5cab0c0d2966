"""Issue 2, point 2: the `shardmq serve` process itself: it comes up and accepts AMQP
connections, says so in its output, and on SIGTERM closes every client connection with
320 CONNECTION_FORCED and exits 0.

These tests own their broker process (``broker_factory``) and are skipped only when
SHARDMQ_TEST_URI points at an external broker. Start-up time is recorded and printed,
never asserted.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import pika
import pika.exceptions
import pytest

from tests.support import rawamqp as raw

from .conftest import STOP_TIMEOUT, Broker

pytestmark = pytest.mark.timeout(60)


def test_serve_accepts_amqp_and_reports_ready(
    broker_factory: Callable[[], Broker], record_property: Callable[[str, object], None]
) -> None:
    b = broker_factory()
    assert b.startup_seconds is not None
    record_property("startup_seconds", round(b.startup_seconds, 3))
    print(f"shardmq serve (workers={b.workers}) accepted TCP after {b.startup_seconds:.3f} s")
    with raw.RawConnection(b.host, b.port) as c:
        c.handshake()
        c.open_channel(1)
        name, _, _ = c.declare_queue(1, "", exclusive=True)
        assert name.startswith("amq.gen-")
    deadline = time.monotonic() + 5
    while not b.log_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.log_text().strip(), "serve should log a line once it is ready"


def test_sigterm_closes_clients_with_320_and_exits_0(broker_factory: Callable[[], Broker]) -> None:
    b = broker_factory()
    assert b.process is not None
    raws = []
    for _ in range(2):
        c = raw.RawConnection(b.host, b.port, timeout=STOP_TIMEOUT)
        c.handshake()
        c.open_channel(1)
        c.declare_queue(1, "", exclusive=True)
        raws.append(c)
    conn = pika.BlockingConnection(b.pika_params())
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_consume(q, lambda *a: None)

    b.process.send_signal(signal.SIGTERM)

    for c in raws:
        close = c.expect_connection_close(timeout=STOP_TIMEOUT)
        assert close.reply_code == 320
        assert close.reply_text.startswith("CONNECTION_FORCED")
        c.close()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
    assert err.value.reply_code == 320
    try:
        rc = b.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"broker did not exit after SIGTERM:\n{b.log_text()}")
    assert rc == 0, b.log_text()


def test_sigterm_closes_a_connection_still_in_its_handshake(
    broker_factory: Callable[[], Broker],
) -> None:
    """A client that sent only the protocol header is closed at once on SIGTERM (no
    connection.close: it never got that far), and the broker still exits 0."""
    import socket

    b = broker_factory()
    assert b.process is not None
    s = socket.create_connection((b.host, b.port), timeout=STOP_TIMEOUT)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    got = b""
    while b"\xce" not in got:  # connection.start
        got += s.recv(4096)
    b.process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    while s.recv(4096):
        pass
    closed_after = time.monotonic() - start
    s.close()
    assert closed_after < STOP_TIMEOUT
    assert b.process.wait(STOP_TIMEOUT) == 0, b.log_text()
