"""Repeated failed logins from one address are slowed (brute force), others are not."""

from __future__ import annotations

import threading
import time

import pika
import pika.exceptions
import pytest

from shardmq.auth.throttle import BASE, CAP, AuthThrottle

from .conftest import Broker

WINDOW = 4.0
ATTACKERS = 8


def refusals_allowed(window: float) -> int:
    """How many refusals one worker may send one address within ``window`` seconds by
    the throttle's schedule (the k-th is due after the sum of the first k steps)."""
    t, k, step = 0.0, 0, BASE
    while True:
        if t > window:
            return k
        k += 1
        t += step
        step = min(CAP, step * 2)


def test_throttle_schedule_serialises_parallel_failures() -> None:
    th = AuthThrottle()
    delays = [th.failed("10.0.0.1", 100.0) for _ in range(8)]  # 8 at the same instant
    assert delays == sorted(delays) and delays[0] == pytest.approx(BASE)
    assert delays[-1] - delays[-2] == pytest.approx(CAP)  # spaced by the capped step
    assert th.failed("10.0.0.2", 100.0) == pytest.approx(BASE)  # another address is not affected
    assert th.failed("10.0.0.1", 100.0 + 61) == pytest.approx(
        BASE
    )  # forgotten after a quiet minute


def test_brute_force_runs_at_tens_not_thousands_of_guesses(broker: Broker) -> None:
    if broker.external:
        pytest.skip("RabbitMQ does not slow failed logins")
    refused = 0
    lock = threading.Lock()
    stop = time.monotonic() + WINDOW

    def attack() -> None:
        nonlocal refused
        while time.monotonic() < stop:
            try:
                pika.BlockingConnection(
                    pika.ConnectionParameters(
                        host=broker.host,
                        port=broker.port,
                        credentials=pika.PlainCredentials("guest", "wrong"),
                        connection_attempts=1,
                        socket_timeout=10,
                    )
                ).close()
            except pika.exceptions.ProbableAuthenticationError:
                with lock:
                    refused += 1
            except Exception:  # a reset or timeout under load: not a refusal
                pass

    threads = [threading.Thread(target=attack) for _ in range(ATTACKERS)]
    for t in threads:
        t.start()
    # meanwhile a good login is served
    conn = broker.blocking()
    conn.channel().queue_declare("", exclusive=True)
    conn.close()
    for t in threads:
        t.join(60)
    # refusals due within the window, plus each attacker's last attempt (started before
    # the window closed, refused after it); every worker keeps its own schedule
    bound = (refusals_allowed(WINDOW) + ATTACKERS) * (broker.workers or 1)
    assert 0 < refused <= bound, (refused, bound)
