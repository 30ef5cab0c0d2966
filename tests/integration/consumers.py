"""Helpers of the consumer-selection tests (single active consumer, priorities, timeout).

Owns: ``Taker`` (a pika consumer on its own connection that records what it receives
and acks on demand) and ``pump_all`` (drive several BlockingConnections until a
condition holds).

Invariants: every wait is bounded (``WAIT``) and fails naming what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from .helpers import WAIT

QUIET = 0.3  # how long "nothing more arrives" is watched for (can only pass wrongly)


class Taker:
    """A consumer of ``queue`` on connection ``conn`` (manual ack unless ``no_ack``)."""

    def __init__(
        self,
        conn: pika.BlockingConnection,
        queue: str,
        prefetch: int = 0,
        arguments: dict[str, Any] | None = None,
        no_ack: bool = False,
    ) -> None:
        self.conn = conn
        self.ch: BlockingChannel = conn.channel()
        if prefetch:
            self.ch.basic_qos(prefetch_count=prefetch)
        self.got: list[tuple[bytes, bool, int]] = []  # (body, redelivered, tag)
        self.tag = self.ch.basic_consume(
            queue, self._on, auto_ack=no_ack, arguments=arguments or {}
        )

    def _on(self, _ch: BlockingChannel, method: Any, _props: Any, body: bytes) -> None:
        self.got.append((body, bool(method.redelivered), int(method.delivery_tag)))

    @property
    def bodies(self) -> list[bytes]:
        return [b for b, _r, _t in self.got]

    def ack_all(self) -> None:
        if self.got:
            self.ch.basic_ack(self.got[-1][2], multiple=True)

    def cancel(self) -> None:
        self.ch.basic_cancel(self.tag)


def pump_all(
    conns: list[pika.BlockingConnection],
    predicate: Callable[[], bool],
    what: str,
    timeout: float = WAIT,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        for c in conns:
            c.process_data_events(time_limit=0.01)


def quiet(conns: list[pika.BlockingConnection], seconds: float = QUIET) -> None:
    """Pump for a while (for checks that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.01)


def publish(conn: pika.BlockingConnection, queue: str, bodies: list[bytes]) -> None:
    """Publish with confirms (the messages are enqueued on return)."""
    ch = conn.channel()
    ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish("", queue, b)
    ch.close()
