"""The environment for a broker a benchmark tool starts itself.

Owns: ``quiet_ports_env``: the caller's environment with the management API and the
Prometheus listener on any free port (``SHARDMQ_MANAGEMENT_PORT`` /
``SHARDMQ_PROMETHEUS_PORT`` = 0), so that a benchmark broker never fails to start
because another broker on this machine holds 15672 or 15692.
"""

from __future__ import annotations

import os


def quiet_ports_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SHARDMQ_MANAGEMENT_PORT", "0")
    env.setdefault("SHARDMQ_PROMETHEUS_PORT", "0")
    return env
