"""Run ``shardmq ctl`` against a test broker, or ``rabbitmqctl`` against RabbitMQ.

Owns: ``ctl(broker, *args)``. For a broker the tests started, it runs
``python -m shardmq ctl --data-dir D ...``; for an external one (``SHARDMQ_TEST_URI``)
it runs the command in ``SHARDMQ_TEST_RABBITMQCTL`` (e.g. ``rabbitmqctl -n
rmqtest@localhost``) with the same arguments, so one test checks that both tools take
the same syntax and give the same outcome; without it such tests are skipped.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Protocol

import pytest

from tests.support.launch import REPO_ROOT


class HasDataDir(Protocol):
    @property
    def data_dir(self) -> object: ...


def ctl(broker: HasDataDir, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if broker.data_dir is None:
        external = os.environ.get("SHARDMQ_TEST_RABBITMQCTL")
        if not external:
            pytest.skip("set SHARDMQ_TEST_RABBITMQCTL to run ctl tests against RabbitMQ")
        cmd = [*shlex.split(external), *args]
    else:
        cmd = [sys.executable, "-m", "shardmq", "ctl", "--data-dir", str(broker.data_dir), *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
