"""Queue-feature parts of a bench run: TTL, the dead-letter pipeline, the expiry burst.

Owns: what ``shardmq bench`` adds to a plain run for issue 12's Speed scenarios:

- ``queue_arguments``: the arguments of a benchmark queue (``--message-ttl``; with
  ``--dead-letter`` the dead-letter exchange and routing key pointing at its dead queue);
- ``dead_queue``: the name of a queue's dead-letter target (``<queue>-dead``). With
  ``--dead-letter`` every benchmark queue gets one; "rejecter" connections (one per
  consumer) take the queue's messages with manual acks and ``basic.nack(multiple,
  requeue=False)`` them, the broker dead-letters them, and the measured consumers consume
  the dead queues: rates, latency (publish -> dead queue delivery) and the drain are the
  pipeline's end;
- ``fill_expiring``: ``--expire-burst N`` puts N messages in a queue nobody consumes,
  each with a per-message ``expiration`` computed so that all share one absolute
  deadline (in the middle of the measured window), so the broker expires N messages at
  the same instant while the run's ordinary traffic (usually at a fixed ``--rate``) flows
  through other queues; its latency against the same run without the burst shows what
  the mass expiry costs other queues, and its maximum the longest stall.

Invariants: the names carry the run's prefix and are deleted by the bench's clean-up;
the fill waits for the broker to have read every publish (a synchronous no-op behind
them) before it returns, and fails with ``TimeoutError`` rather than hang.
"""

from __future__ import annotations

import time
from typing import Any

from loadtest.client import PublishTemplate, connect
from shardmq.amqp import methods as M

DEAD_SUFFIX = "-dead"
BURST_SUFFIX = "-burst"
FILL_BATCH = 500  # messages per write while filling the burst queue
FILL_FENCE_EVERY = 10  # batches between two round trips (bounds the deadlines' spread)


def dead_queue(queue: str) -> str:
    return queue + DEAD_SUFFIX


def queue_arguments(message_ttl: int, dead_letter: bool, queue: str) -> dict[str, Any] | None:
    args: dict[str, Any] = {}
    if message_ttl >= 0:
        args["x-message-ttl"] = message_ttl
    if dead_letter:
        args["x-dead-letter-exchange"] = ""
        args["x-dead-letter-routing-key"] = dead_queue(queue)
    return args or None


def fill_allowance_s(n: int) -> float:
    """Seconds allowed for filling ``n`` messages before their common deadline."""
    return 3.0 + n / 10_000


async def fill_expiring(
    uri: str, queue: str, n: int, size: int, deadline_ns: int, timeout: float
) -> tuple[float, int]:
    """Publish ``n`` messages to ``queue`` (default exchange), all due at the host's
    ``time.monotonic_ns()`` ``deadline_ns``; returns the seconds the fill took and how
    many the queue held right after (fewer when some crossed workers not yet)."""
    t0 = time.monotonic()
    c = await connect(uri, product="shardmq-bench-burst")
    try:
        await c.queue_declare(queue)
        sent = batches = 0
        while sent < n:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"filling {n} expiring messages took over {timeout:g} s")
            k = min(FILL_BATCH, n - sent)
            left_ms = (deadline_ns - time.monotonic_ns()) // 1_000_000
            if left_ms < 1:
                raise TimeoutError("the burst's deadline passed while filling")
            props = M.BasicProperties(expiration=str(left_ms)).encode()
            tmpl = PublishTemplate(1, "", [queue], size, props, c.frame_max, k)
            assert c.transport is not None
            c.transport.write(tmpl.batch(0, k, time.monotonic_ns().to_bytes(8, "big")))
            sent += k
            batches += 1
            if batches % FILL_FENCE_EVERY == 0:
                await c.basic_qos(0)  # the broker has read all so far
        await c.basic_qos(0)
        held = (await c.queue_declare(queue, passive=True)).message_count
    finally:
        await c.close()
    return time.monotonic() - t0, held
