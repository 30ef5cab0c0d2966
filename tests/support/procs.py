"""Processes seen from a test: alive or not, their descendants, bounded waits.

Owns: ``running(pid)`` (alive and not a zombie), ``descendants(pid)`` (Linux /proc) and
``wait_for(pred, timeout, what, log)``.

Invariant: every wait is bounded; a timeout raises ``AssertionError`` naming what was
awaited, with the log attached when one is given.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie is dead for our purposes)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            out[int(name)] = int(stat.rsplit(b")", 1)[1].split()[1])
    return out


def descendants(pid: int) -> list[int]:
    """Children of ``pid``, their children, and so on."""
    parents = _parents()
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        todo += kids
    return found


def wait_for(
    pred: Callable[[], Any],
    timeout: float,
    what: str,
    log: Callable[[], str] | None = None,
) -> Any:
    """Poll ``pred`` every 20 ms until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\n--- log ---\n{log()}" if log is not None else ""
            raise AssertionError(f"timed out ({timeout:g} s) waiting for {what}{tail}")
        time.sleep(0.02)
