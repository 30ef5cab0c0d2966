"""The ``[supervisor]`` settings (``workers.settings``)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import msgspec
import pytest

from workers.settings import (
    SupervisorConfig,
    cpu_for_slot,
    parse_settings,
    supervisor_settings,
)


def test_settings_defaults_and_validation() -> None:
    s = SupervisorConfig()
    assert s.acceptor == "reuseport" and s.cpu_affinity == "none"
    assert parse_settings({"acceptor": "handoff", "cpu_affinity": [1, 0]}).cpu_affinity == [1, 0]
    for bad in (
        {"acceptor": "magic"},
        {"cpu_affinity": "all"},
        {"ring_capacity": 100},
        {"stall_timeout": -1},
        {"unknown": 1},
    ):
        with pytest.raises(msgspec.ValidationError):
            parse_settings(bad)


def test_supervisor_settings_from_config() -> None:
    assert supervisor_settings(SimpleNamespace()) == SupervisorConfig()
    mine = SupervisorConfig(stall_timeout=2.0)
    assert supervisor_settings(SimpleNamespace(supervisor=mine)) is mine


def test_cpu_for_slot() -> None:
    assert cpu_for_slot("none", 3) is None
    cpus = sorted(os.sched_getaffinity(0))
    assert [cpu_for_slot("auto", i) for i in range(len(cpus) + 1)] == [*cpus, cpus[0]]
    assert [cpu_for_slot([5, 7], i) for i in range(3)] == [5, 7, 5]
    with pytest.raises(ValueError):
        cpu_for_slot([], 0)
