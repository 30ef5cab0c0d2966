"""Exit codes and how the supervisor describes an exit (``workers.exitcodes``)."""

from __future__ import annotations

import signal

from workers.exitcodes import ExitCode, describe_exit


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0 (ok)"
    assert describe_exit(ExitCode.FAILED) == "exit code 1 (failed)"
    assert describe_exit(ExitCode.ORPHANED) == "exit code 3 (orphaned)"
    assert describe_exit(42) == "exit code 42"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-200) == "signal 200"
