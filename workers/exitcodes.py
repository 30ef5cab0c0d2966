"""Exit codes of the broker's processes: ``shardmq serve`` (the supervisor, or the one
process with ``--workers 1``) and each worker process; their one definition.

Owns: ``ExitCode`` and ``describe_exit`` (an exit status as the supervisor logs it).

Invariants: a clean stop (SIGTERM, SIGINT) is ``OK`` on every path; ``FAILED`` means
the broker could not start or keep running and the log says why (systemd's
``Restart=on-failure`` restarts it); each start-up error an operator must fix (the port
taken, the data directory unusable or in use) has its own code from 10 up, reported
with one log line (``workers.startup.StartupError``) and never a traceback; the
supervisor treats any non-zero exit of a worker that had not reported ready as a boot
failure, whatever its code.
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    # could not start or keep running: a worker failed to boot, workers died more than
    # max_restarts times within restart_window, shared memory could not be set up, a
    # worker could not respawn or be pinned to its CPU; also ``shardmq`` CLI errors (a
    # bad config file) as click reports them
    FAILED = 1
    # bad command line or configuration (``python -m workers.supervisor``)
    USAGE = 2
    # a worker whose supervisor died before the worker could watch it
    ORPHANED = 3
    # start-up errors (``workers.startup``), one line each, nothing served:
    # the port is taken: another shardmq or another program listens on it
    PORT_IN_USE = 10
    # the listening socket cannot be made: address not on this host, port below 1024
    # without the capability, host name that does not resolve
    LISTEN_FAILED = 11
    # another running shardmq holds the data directory's lock
    DATA_DIR_IN_USE = 12
    # the data directory cannot be created or written (permission, read-only)
    DATA_DIR_NOT_WRITABLE = 13
    # the data directory path, or a parent of it, is a file
    DATA_DIR_NOT_A_DIRECTORY = 14
    # the data directory is on a pseudo filesystem (/proc, /sys, ...) or unusable
    # for another reason (the error says which)
    DATA_DIR_UNUSABLE = 15
    # the [tls] settings cannot make a TLS context: a certificate, key or CA file
    # missing, unreadable or not PEM, a key that does not match the certificate
    TLS_CONFIG_INVALID = 16


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
