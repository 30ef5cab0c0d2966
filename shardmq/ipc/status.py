"""Read-only view of a running multi-worker broker, from its data dir (for ``ctl status``).

Owns: ``read_status(data_dir)``: finds the instance in ``data_dir/shm.instance``, attaches
its control block and returns one ``WorkerStatus`` per slot. It writes nothing.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import posix_ipc

from shardmq.ipc.control import (
    F_ACCEPTED,
    F_CONNS,
    F_GEN,
    F_HEARTBEAT,
    F_PID,
    ControlBlock,
    control_name,
)
from shardmq.ipc.mesh import INSTANCE_FILE, _read_instance_file


class WorkerStatus(NamedTuple):
    slot: int
    pid: int
    incarnation: int  # 1 for the first process of the slot, +1 per respawn
    ready: bool
    heartbeat: int
    connections: int  # as of the worker's last heartbeat
    handed_off: int  # sockets received from the hand-off acceptor


def read_status(data_dir: str) -> list[WorkerStatus] | None:
    """Workers of the broker running on ``data_dir``, or None when there is none (none
    started, its supervisor died, or it runs a single process, which uses no shared
    memory)."""
    found = _read_instance_file(os.path.join(data_dir, INSTANCE_FILE))
    if found is None:
        return None
    try:
        os.kill(found[1], 0)
    except ProcessLookupError:
        return None  # left by a supervisor that died: stale
    except PermissionError:
        pass
    try:
        ctl = ControlBlock.attach(control_name(found[0]))
    except (posix_ipc.ExistentialError, ValueError, OSError):
        return None
    try:
        return [
            WorkerStatus(
                slot=s,
                pid=ctl.get(s, F_PID),
                incarnation=ctl.get(s, F_GEN),
                ready=ctl.is_ready(s),
                heartbeat=ctl.get(s, F_HEARTBEAT),
                connections=ctl.get(s, F_CONNS),
                handed_off=ctl.get(s, F_ACCEPTED),
            )
            for s in range(ctl.n)
        ]
    finally:
        ctl.close()
