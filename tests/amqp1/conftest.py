"""AMQP 1.0 test fixtures: the integration suite's brokers (1 and 3 workers), and
brokers of a test's own with an ``[amqp1]`` config.

Invariants: AMQP 1.0 tests on the shared ``broker`` fixture skip against an external
broker (``SHARDMQ_TEST_URI``): they encode RabbitMQ 4's AMQP 1.0 (v2 addresses, a
refusal ends only the link), and the reference here is RabbitMQ 3.10's
``rabbitmq_amqp1_0`` plugin, which differs there; the tests that compare with that
plugin (exchange sources, the management API's listing) take the external broker
through their own fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (  # noqa: F401 - fixtures shared with this tier
    EXTERNAL_URI,
    Broker,
    broker,
    env,
    stop_broker,
)
from tests.support.launch import serve_args, spawn, wait_answering
from tests.support.ports import free_port


@pytest.fixture(autouse=True)
def _no_external(request: pytest.FixtureRequest) -> None:
    if EXTERNAL_URI and "broker" in request.fixturenames:
        pytest.skip("encodes RabbitMQ 4's AMQP 1.0; the reference is RabbitMQ 3.10's plugin")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Callable[[str, int], Broker]]:
    """Start a broker of the test's own with extra config text (TOML)."""
    if EXTERNAL_URI:
        pytest.skip("needs control of the broker process; SHARDMQ_TEST_URI is set")
    started: list[Broker] = []

    def make(config: str, workers: int = 1) -> Broker:
        port = free_port()
        data_dir = tmp_path / f"data{len(started)}"
        data_dir.mkdir()
        cfg = tmp_path / f"shardmq{len(started)}.toml"
        cfg.write_text(config)
        log_path = tmp_path / f"broker{len(started)}.log"
        proc = spawn(serve_args(port, workers, data_dir, cfg), log_path)
        b = Broker(
            host="127.0.0.1",
            port=port,
            process=proc,
            workers=workers,
            data_dir=data_dir,
            log_path=log_path,
        )
        started.append(b)
        wait_answering(proc, port, b.log_text, lambda: stop_broker(b))
        return b

    yield make
    for b in started:
        stop_broker(b)
        assert "Traceback" not in b.log_text(), b.log_text()[-3000:]
