"""Shared helpers for integration tests: unique names, cleanup, bounded waits.

Owns: ``Env`` (per-test unique names plus cleanup of what the test declared and of the
connections it opened) and small wait/consume helpers over pika's BlockingConnection.

Invariants: every wait has a deadline of a few seconds and fails with an AssertionError
naming what it waited for; nothing sleeps where an event can be awaited; cleanup never
raises (a test's own failure is the interesting one).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.support.rawamqp import RawConnection

if TYPE_CHECKING:
    from .conftest import Broker

WAIT = 5.0  # default upper bound for any single wait


def unique(prefix: str = "t") -> str:
    return f"shardmq-test.{prefix}.{uuid.uuid4().hex[:12]}"


class Env:
    """Per-test resources; ``cleanup()`` deletes declared entities and closes clients."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self._conns: list[pika.BlockingConnection] = []
        self._raws: list[RawConnection] = []
        self._closers: list[Callable[[], Any]] = []

    # names -------------------------------------------------------------------------
    def queue(self, prefix: str = "q") -> str:
        name = unique(prefix)
        self.queues.append(name)
        return name

    def exchange(self, prefix: str = "x") -> str:
        name = unique(prefix)
        self.exchanges.append(name)
        return name

    # clients -----------------------------------------------------------------------
    def conn(self, **kw: Any) -> pika.BlockingConnection:
        c = self.broker.blocking(**kw)
        self._conns.append(c)
        return c

    def channel(self, **kw: Any) -> BlockingChannel:
        return self.conn(**kw).channel()

    def raw(self, timeout: float = WAIT) -> RawConnection:
        r = RawConnection(self.broker.host, self.broker.port, timeout=timeout)
        self._raws.append(r)
        return r

    def on_cleanup(self, fn: Callable[[], Any]) -> None:
        self._closers.append(fn)

    def cleanup(self) -> None:
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception:  # cleanup must not mask the test's outcome
                pass
        for c in self._conns:
            try:
                if c.is_open:
                    c.close()
            except Exception:
                pass
        for r in self._raws:
            r.close()
        if not (self.queues or self.exchanges):
            return
        try:
            conn = self.broker.blocking()
        except Exception:
            return
        try:
            ch = conn.channel()
            for q in self.queues:
                try:
                    ch.queue_delete(q)
                except pika.exceptions.AMQPError:
                    ch = conn.channel()
            for x in self.exchanges:
                try:
                    ch.exchange_delete(x)
                except pika.exceptions.AMQPError:
                    ch = conn.channel()
        finally:
            try:
                conn.close()
            except Exception:
                pass


def wait_until(
    conn: pika.BlockingConnection, predicate: Callable[[], bool], what: str, timeout: float = WAIT
) -> None:
    """Pump ``conn``'s I/O until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        conn.process_data_events(time_limit=0.05)


def publish_confirmed(
    conn: pika.BlockingConnection,
    exchange: str,
    routing_key: str,
    bodies: list[bytes],
    properties: pika.BasicProperties | None = None,
) -> None:
    """Publish on a fresh confirm-mode channel so the messages are enqueued on return."""
    ch = conn.channel()
    ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish(exchange, routing_key, b, properties)
    ch.close()


def get_bodies(ch: BlockingChannel, queue: str, n: int, timeout: float = WAIT) -> list[bytes]:
    """Consume exactly ``n`` messages (auto-ack) via basic.consume, with a deadline."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    for method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.1):
        if method is not None:
            out.append(body)
            if len(out) == n:
                break
        if time.monotonic() > deadline:
            break
    ch.cancel()
    assert len(out) == n, f"expected {n} messages from {queue}, got {len(out)}: {out!r}"
    return out


def queue_counts(ch: BlockingChannel, queue: str) -> tuple[int, int]:
    """(message_count, consumer_count) from a passive declare."""
    ok = ch.queue_declare(queue, passive=True).method
    return ok.message_count, ok.consumer_count


def wait_counts(
    conn: pika.BlockingConnection,
    queue: str,
    expected: tuple[int, int],
    timeout: float = WAIT,
) -> None:
    """Poll (no event exists for this) until the queue's counts are ``expected``.

    For effects the broker applies after a close handshake, e.g. requeueing the unacked
    messages of a channel or connection it closed because of an error.
    """
    deadline = time.monotonic() + timeout
    ch = conn.channel()
    while (got := queue_counts(ch, queue)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{queue}: counts {got}, expected {expected} by now")
        time.sleep(0.02)
    ch.close()


def drain_empty(ch: BlockingChannel, queue: str) -> None:
    """Assert the queue holds no ready message right now."""
    method, _props, _body = ch.basic_get(queue, auto_ack=True)
    assert method is None, f"expected {queue} to be empty"


def channel_error(
    conn: pika.BlockingConnection, fn: Callable[[BlockingChannel], Any]
) -> pika.exceptions.ChannelClosedByBroker:
    """Run ``fn`` on a fresh channel and return the channel error it must cause (the
    channel closed, the connection still open)."""
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        fn(ch)
    assert ch.is_closed
    assert conn.is_open, "a channel error must not close the connection"
    return err.value


def queue_exists(conn: pika.BlockingConnection, queue: str) -> bool:
    """queue.declare passive on a fresh channel: True, or False on 404."""
    try:
        conn.channel().queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404, e
        return False
    return True


def wait_queue_gone(conn: pika.BlockingConnection, queue: str, timeout: float = WAIT) -> None:
    """Poll (no event exists for this) until a passive declare says 404."""
    deadline = time.monotonic() + timeout
    while queue_exists(conn, queue):
        if time.monotonic() > deadline:
            raise AssertionError(f"queue {queue} still exists after {timeout} s")
        time.sleep(0.02)


# Reconnects tried to land a connection on a chosen worker (the kernel spreads them by
# source port): P(never landing on a given worker of 3) = (2/3)**100.
CONNECT_ATTEMPTS = 100


def pika_on_worker(
    connect: Callable[[], pika.BlockingConnection], worker: int
) -> pika.BlockingConnection:
    """A connection from ``connect`` that shardmq's ``worker`` serves (its server
    properties say which worker took it); the others are closed."""
    seen = []
    for _ in range(CONNECT_ATTEMPTS):
        c = connect()
        got = c._impl.server_properties["worker"]
        if got == worker:
            return c
        seen.append(got)
        c.close()
    raise AssertionError(f"never landed on worker {worker} (landed on {seen})")


def raw_on_worker(connect: Callable[[], RawConnection], worker: int) -> RawConnection:
    """A handshaken raw connection from ``connect`` served by ``worker``, channel 1 open."""
    for _ in range(CONNECT_ATTEMPTS):
        r = connect()
        r.handshake()
        if r.start_args["server_properties"]["worker"] == worker:
            r.open_channel(1)
            return r
        r.close()
    raise AssertionError(f"never landed on worker {worker}")
