"""Settings of the process layer (supervisor, workers, mesh): the ``[supervisor]`` section.

Owns: ``SupervisorConfig``, one field per setting with its default and validation
(``shardmq.config.Config`` includes it as ``supervisor``); ``supervisor_settings(config)``
(``config.supervisor``, or the defaults for an object without that section);
``parse_settings`` (``python -m workers.supervisor --supervisor-json``) and
``cpu_for_slot`` (the CPU a worker is pinned to).

Invariants: every value here is validated by msgspec on load; ``cpu_for_slot`` never
raises for "none"/"auto" and raises ``ValueError`` for an explicit list that is empty.
It imports nothing from shardmq, so ``shardmq.config`` can include it without a cycle.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct


class SupervisorConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    # "reuseport": one SO_REUSEPORT listening socket per worker, the kernel spreads
    # connections. "handoff": the supervisor accepts and passes each socket to the
    # least-loaded worker (SCM_RIGHTS).
    acceptor: Literal["reuseport", "handoff"] = "reuseport"
    # "none", "auto" (worker i on the i-th CPU this process may use, modulo their
    # number) or a list of CPU ids (worker i on cpus[i % len(cpus)]).
    cpu_affinity: Literal["none", "auto"] | list[Annotated[int, Meta(ge=0)]] = "none"
    # data bytes of each shared-memory ring (one per ordered worker pair)
    ring_capacity: Annotated[int, Meta(ge=4096, le=1 << 30)] = 1 << 20
    # seconds between a worker's heartbeats in shared memory
    heartbeat_interval: Annotated[float, Meta(gt=0, le=60)] = 0.5
    # a ready worker whose heartbeat does not advance for this long is killed and
    # respawned (0 disables)
    stall_timeout: Annotated[float, Meta(ge=0)] = 10.0
    # a worker that is not ready this long after its spawn is a boot failure
    boot_timeout: Annotated[float, Meta(gt=0)] = 30.0
    # more than max_restarts crashes within restart_window seconds stops the broker
    max_restarts: Annotated[int, Meta(ge=0)] = 10
    restart_window: Annotated[float, Meta(gt=0)] = 60.0
    # safety-net poll of idle rings (missed wake-ups on weakly ordered CPUs) in seconds
    idle_poll: Annotated[float, Meta(gt=0, le=10)] = 0.1


def supervisor_settings(config: Any) -> SupervisorConfig:
    """``config.supervisor`` when the Config has that section, else the defaults."""
    value = getattr(config, "supervisor", None)
    return value if isinstance(value, SupervisorConfig) else SupervisorConfig()


def parse_settings(data: dict[str, Any]) -> SupervisorConfig:
    return msgspec.convert(data, SupervisorConfig)


def cpu_for_slot(setting: str | list[int], slot: int) -> int | None:
    """The CPU worker ``slot`` is pinned to, or None when pinning is off."""
    if setting == "none":
        return None
    if setting == "auto":
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = list(range(os.cpu_count() or 1))
        return cpus[slot % len(cpus)]
    if not setting:
        raise ValueError("cpu_affinity: empty list")
    assert isinstance(setting, list)
    return setting[slot % len(setting)]
