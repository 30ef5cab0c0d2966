"""Durable delayed messages (x-delayed-message) across SIGTERM and kill -9, with 1 and
3 workers: persistent messages on a durable delayed exchange, confirmed before the
stop, are all delivered once due after the restart, in due order per publisher, and a
transient one is not; messages already routed before the stop do not come back."""

from __future__ import annotations

import os
import time
from typing import Any

import pika
import pytest

pytestmark = pytest.mark.timeout(120)


def _declare(ch: Any, queues: list[str]) -> None:
    ch.exchange_declare(
        "dlx-delayed",
        "x-delayed-message",
        durable=True,
        arguments={"x-delayed-type": "fanout"},
    )
    for q in queues:
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "dlx-delayed", "")


def _publish(ch: Any, body: bytes, delay: int, persistent: bool = True) -> None:
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1, headers={"x-delay": delay})
    ch.basic_publish("dlx-delayed", "", body, props)


def _collect(conn: pika.BlockingConnection, queue: str, n: int, timeout: float) -> list[bytes]:
    ch = conn.channel()
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            conn.sleep(0.05)
            continue
        out.append(body)
    return out


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
def test_durable_delayed_messages_survive_restart(
    make_durable: Any, workers: int, kill: bool
) -> None:
    broker = make_durable(workers=workers)
    queues = [f"dq-{i}" for i in range(3)]  # spread over the workers
    conns = [broker.connect() for _ in range(3)]  # publishers land on various workers
    ch = conns[0].channel()
    _declare(ch, queues)
    expected: list[bytes] = []
    for p, conn in enumerate(conns):
        pch = conn.channel()
        pch.confirm_delivery()
        for i in range(5):
            body = b"p%d-%d" % (p, i)
            _publish(pch, body, 3000 + 100 * i)
            expected.append(body)
        _publish(pch, b"transient-%d" % p, 3000, persistent=False)
        _publish(pch, b"now-%d" % p, 0)  # routed at once: must not come back twice
    # still held when the broker goes down: only the immediate ones are in the queues
    for q in queues:
        assert ch.queue_declare(q, passive=True).method.message_count == 3
    for conn in conns:
        conn.close()
    broker.restart(kill=kill)
    conn = broker.connect()
    for q in queues:
        got = _collect(conn, q, len(expected) + 3, timeout=10.0)
        now = sorted(b for b in got if b.startswith(b"now-"))
        held = [b for b in got if not b.startswith(b"now-")]
        assert now == [b"now-0", b"now-1", b"now-2"], got
        assert sorted(held) == sorted(expected), got  # all persistent ones, no transient
        for p in range(3):  # due order per publisher
            mine = [b for b in held if b.startswith(b"p%d-" % p)]
            assert mine == [b"p%d-%d" % (p, i) for i in range(5)]
        conn.sleep(0.3)
        method, _, body = conn.channel().basic_get(q, auto_ack=True)
        assert method is None, body  # nothing twice
    conn.close()
    # routed messages left the store: after another restart nothing comes back
    broker.restart(kill=kill)
    conn = broker.connect()
    conn.sleep(0.5)
    for q in queues:
        assert conn.channel().queue_declare(q, passive=True).method.message_count == 0
    conn.close()


def test_fewer_workers_after_restart_adopt_the_held_messages(make_durable: Any) -> None:
    """Held messages of workers that no longer exist (3 workers -> 1) are taken over by
    worker ``slot % workers`` and still delivered."""
    broker = make_durable(workers=3)
    conns = [broker.connect() for _ in range(9)]  # publishers on several workers
    ch = conns[0].channel()
    _declare(ch, ["adopt-q"])
    expected = []
    for p, conn in enumerate(conns):
        pch = conn.channel()
        pch.confirm_delivery()
        body = b"held-%d" % p
        _publish(pch, body, 2500)
        expected.append(body)
    assert ch.queue_declare("adopt-q", passive=True).method.message_count == 0
    for conn in conns:
        conn.close()
    assert broker.stop() == 0
    root = broker.data_dir / "delayed"
    elsewhere = [
        d
        for d in os.listdir(root)
        if d != "w0" and any(f.stat().st_size for f in (root / d).iterdir())
    ]
    if not elsewhere:  # all 9 connections on worker 0: odds 1 in 3**9
        pytest.skip("every publisher landed on worker 0")
    broker.workers = 1
    broker.start()
    conn = broker.connect()
    got = _collect(conn, "adopt-q", len(expected), timeout=10.0)
    assert sorted(got) == sorted(expected)
    assert sorted(os.listdir(broker.data_dir / "delayed")) == ["w0"]
    conn.close()
