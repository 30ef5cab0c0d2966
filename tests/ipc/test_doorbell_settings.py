"""Doorbell semantics in one process and the ``[supervisor]`` settings."""

from __future__ import annotations

import os
import select
from types import SimpleNamespace

import msgspec
import pytest

from shardmq.ipc.doorbell import Doorbell
from shardmq.ipc.settings import (
    SupervisorConfig,
    cpu_for_slot,
    parse_settings,
    supervisor_settings,
)


def readable(bell: Doorbell) -> bool:
    return bool(select.select([bell.fileno()], [], [], 0)[0])


@pytest.mark.parametrize("eventfd", [True, False], ids=["eventfd", "pipe"])
def test_ring_clear_and_spec(eventfd: bool) -> None:
    bell = Doorbell.create(prefer_eventfd=eventfd)
    try:
        assert not readable(bell)
        assert not bell.clear()
        bell.ring()
        bell.ring()
        assert readable(bell)
        assert bell.clear()
        assert not readable(bell)
        assert not bell.clear()
        same = Doorbell.from_spec(bell.spec())
        assert (same.rfd, same.wfd, same.kind) == (bell.rfd, bell.wfd, bell.kind)
        assert set(bell.fds) == {bell.rfd, bell.wfd}
        assert not os.get_inheritable(bell.rfd)  # only pass_fds hands it on
    finally:
        bell.close()


def test_pipe_bell_never_blocks_when_full() -> None:
    bell = Doorbell.create(prefer_eventfd=False)
    try:
        for _ in range(200_000):  # far more than a pipe buffer holds
            bell.ring()
        assert bell.clear()
        assert not readable(bell)
    finally:
        bell.close()


def test_bad_spec() -> None:
    with pytest.raises(ValueError):
        Doorbell.from_spec("x12")


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
