"""Exit codes of the broker's processes: ``shardmq serve`` (the supervisor, or the one
process with ``--workers 1``) and each worker process; their one definition.

Owns: ``ExitCode`` and ``describe_exit`` (an exit status as the supervisor logs it).

Invariants: a clean stop (SIGTERM, SIGINT) is ``OK`` on every path; ``FAILED`` means
the broker could not start or keep running and the log says why (systemd's
``Restart=on-failure`` restarts it); the supervisor treats any non-zero exit of a worker
that had not reported ready as a boot failure, whatever its code.
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    # could not start or keep running: a worker failed to boot, workers died more than
    # max_restarts times within restart_window, sockets or shared memory could not be set
    # up, a worker could not respawn or be pinned to its CPU; also ``shardmq`` CLI errors
    # (a bad config file) as click reports them
    FAILED = 1
    # bad command line or configuration (``python -m workers.supervisor``)
    USAGE = 2
    # a worker whose supervisor died before the worker could watch it
    ORPHANED = 3


def describe_exit(code: int) -> str:
    """``code`` as ``Popen.returncode`` gives it (negative: killed by that signal)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    try:
        return f"exit code {code} ({ExitCode(code).name.lower()})"
    except ValueError:
        return f"exit code {code}"
