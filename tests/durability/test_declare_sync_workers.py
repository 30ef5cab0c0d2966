"""Several workers: a durable declare is answered once the supervisor *wrote* its record
(no fdatasync), and nothing that depends on it is confirmed before the log is synced.

How it is caught, with real processes: right after the declare-ok the supervisor is
stopped (SIGSTOP), so it cannot sync the log itself (its batched sync waits 20 ms);
the control block then says the declaration is written but not synced (when the
supervisor already synced it, the round is retried with the next declaration). A
persistent publish into the queue, through a connection on any worker, to a queue on
any worker (publisher confirm, ``tx.commit``, a delayed exchange's held message), must
not be confirmed before the control block says the log is synced up to the
declaration: the confirming worker synced it first. Without that, the confirm comes
while the supervisor is stopped and the count is still behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pika
import pika.adapters.blocking_connection
import pytest

from shardmq.broker.metadata import shard_for
from shardmq.ipc.control import ControlBlock, control_name

from .conftest import DurableBroker

PERSISTENT = pika.BasicProperties(delivery_mode=2)
ATTEMPTS = 50
Channel = pika.adapters.blocking_connection.BlockingChannel


def _control(broker: DurableBroker) -> ControlBlock:
    instance = (broker.data_dir / "shm.instance").read_text().split()[0]
    return ControlBlock.attach(control_name(instance))


def _names(workers: int, prefix: str) -> list[str]:
    """One queue name owned by each worker."""
    out: list[str] = []
    for slot in range(workers):
        i = 0
        while shard_for("/", f"{prefix}-{slot}-{i}", workers) != slot:
            i += 1
        out.append(f"{prefix}-{slot}-{i}")
    return out


def _caught_unsynced(
    broker: DurableBroker,
    ctl: ControlBlock,
    declare: Callable[[int], None],
    confirm: Callable[[int], None],
) -> None:
    """``declare(k)``; stop the supervisor; when the control block shows that
    declaration written and not synced, ``confirm(k)`` (returns once the broker
    confirmed) and check the log was synced by then. Retried with k+1 when the
    supervisor synced before it stopped."""
    assert broker.process is not None
    sup = broker.process.pid
    for k in range(ATTEMPTS):
        declare(k)
        os.kill(sup, signal.SIGSTOP)
        try:
            due = ctl.definitions_due()
            if due is None:
                continue  # synced already: no proof either way, try the next one
            written = due[0]
            confirm(k)
            synced = ctl.definitions_synced_upto
            assert synced >= written, (
                f"confirmed while the declaration was not synced ({synced} < {written})"
            )
            return
        finally:
            os.kill(sup, signal.SIGCONT)
    pytest.fail(f"the supervisor synced each of {ATTEMPTS} declarations before SIGSTOP")


@pytest.mark.parametrize("workers", [2, 3])
def test_confirm_waits_for_the_supervisors_log_sync(make_durable: Any, workers: int) -> None:
    broker: DurableBroker = make_durable(workers=workers)
    ctl = _control(broker)
    conns = [broker.connect() for _ in range(workers)]  # likely on different workers
    try:
        for slot, queue_prefix in enumerate(_names(workers, "dq")):
            ch = conns[slot % len(conns)].channel()
            ch.confirm_delivery()

            def declare(k: int, ch: Channel = ch, prefix: str = queue_prefix) -> None:
                ch.queue_declare(f"{prefix}.{k}", durable=True)

            def confirm(k: int, ch: Channel = ch, prefix: str = queue_prefix) -> None:
                ch.basic_publish("", f"{prefix}.{k}", b"m", PERSISTENT, mandatory=True)

            _caught_unsynced(broker, ctl, declare, confirm)
    finally:
        for c in conns:
            c.close()
        ctl.close()


@pytest.mark.parametrize("workers", [3])
def test_tx_commit_and_binding_wait_for_the_log_sync(make_durable: Any, workers: int) -> None:
    """``tx.commit-ok`` of a publish routed by a fresh durable binding (the binding is
    the declaration it depends on)."""
    broker: DurableBroker = make_durable(workers=workers)
    ctl = _control(broker)
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.exchange_declare("tx.x", "direct", durable=True)
        queues = _names(workers, "txq")
        for q in queues:
            ch.queue_declare(q, durable=True)
        ch.tx_select()
        for q in queues:

            def declare(k: int, q: str = q) -> None:
                ch.queue_bind(q, "tx.x", f"{q}.{k}")

            def confirm(k: int, q: str = q) -> None:
                ch.basic_publish("tx.x", f"{q}.{k}", b"m", PERSISTENT)
                ch.tx_commit()

            _caught_unsynced(broker, ctl, declare, confirm)
    finally:
        conn.close()
        ctl.close()


@pytest.mark.parametrize("workers", [2])
def test_delayed_message_confirm_waits_for_the_log_sync(make_durable: Any, workers: int) -> None:
    """A durable x-delayed-message exchange declared, the supervisor stopped: a held
    persistent message's confirm (the worker's delayed store) comes after the sync."""
    broker: DurableBroker = make_durable(workers=workers)
    ctl = _control(broker)
    conns = [broker.connect() for _ in range(workers)]
    try:
        for n, conn in enumerate(conns):
            ch = conn.channel()
            ch.confirm_delivery()

            def declare(k: int, ch: Channel = ch, n: int = n) -> None:
                ch.exchange_declare(
                    f"delayed.{n}.{k}",
                    "x-delayed-message",
                    durable=True,
                    arguments={"x-delayed-type": "direct"},
                )

            def confirm(k: int, ch: Channel = ch, n: int = n) -> None:
                props = pika.BasicProperties(delivery_mode=2, headers={"x-delay": 60_000})
                ch.basic_publish(f"delayed.{n}.{k}", "rk", b"later", props)

            _caught_unsynced(broker, ctl, declare, confirm)
    finally:
        for c in conns:
            c.close()
        ctl.close()
