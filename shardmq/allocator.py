"""The memory allocator the broker's processes run with, and the one re-exec that sets it.

Owns: ``ALLOCATORS`` (the choices of ``[server] allocator``), ``current()`` (the
allocator this interpreter runs with), ``ensure(choice)`` (re-execute ``shardmq serve``
with ``PYTHONMALLOC`` set when the running allocator is not the chosen one) and
``describe(choice)`` (the start-up log line).

Why: CPython's small-object allocator (pymalloc) returns a 1 MiB arena to the system only
when every block in it is free. After a connection flood, a few hundred long-lived
objects made during the flood (timer handles, contexts, counters, lazily made classes,
from many owners) pin a quarter to a half of the flood's arenas for good, whatever is
collected or trimmed (BENCHMARKS 9.2). With glibc's malloc every object comes from the C
heap, where ``malloc_trim`` (``net/memtrim``) gives back every free page: 96-98 % of a
flood's growth comes back, against 56-75 % with pymalloc and about 89 % for RabbitMQ.
The price is a few percent more CPU per message (each small allocation costs more),
measured in BENCHMARKS 9.3; ``allocator = "pymalloc"`` trades the memory back for it.

Invariants:
- The allocator is fixed when an interpreter starts (``PYTHONMALLOC``), so ``serve``
  re-executes itself once, before it opens any socket or file: same pid (systemd's main
  pid and ``NOTIFY_SOCKET`` stay valid), same interpreter and arguments
  (``sys.orig_argv``), the environment plus ``PYTHONMALLOC``. Workers inherit it.
- ``PYTHONMALLOC`` already in the environment wins (an operator's explicit choice, e.g.
  ``pymalloc_debug``) and is what stops a second re-exec; so does an interpreter that
  ignores the environment (``-E``/``-I``): never a loop.
- No re-exec where the choice is already in effect, or where it cannot be done
  (no ``sys.orig_argv`` or executable): the broker then runs as it was started, and the
  start-up log line says which allocator it has.
"""

from __future__ import annotations

import ctypes
import os
import sys

ALLOCATORS = ("malloc", "pymalloc")
ENV = "PYTHONMALLOC"


def current() -> str | None:
    """The allocator name CPython reports (``malloc``, ``pymalloc``, ``*_debug``), None if
    this interpreter does not say."""
    try:
        fn = ctypes.pythonapi._PyMem_GetCurrentAllocatorName
    except AttributeError:
        return None
    fn.restype = ctypes.c_char_p
    name = fn()
    return name.decode() if name else None


def reexec_needed(choice: str, environ: dict[str, str] | None = None) -> bool:
    """True when ``serve`` should start again under ``choice``."""
    env = os.environ if environ is None else environ
    if env.get(ENV) or sys.flags.ignore_environment:  # empty: Python ignores it too
        return False
    now = current()
    if now is None or now == choice:
        return False
    return bool(sys.executable) and bool(getattr(sys, "orig_argv", None))


def ensure(choice: str) -> None:
    """Re-execute this process under ``choice`` when needed (does not return then)."""
    if not reexec_needed(choice):
        return
    env = dict(os.environ)
    env[ENV] = choice
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(sys.executable, list(sys.orig_argv), env)
    except OSError as exc:  # e.g. a sandbox without execve: run on as started
        sys.stderr.write(f"shardmq: cannot start again with {ENV}={choice}: {exc}\n")


def describe(choice: str) -> str:
    """The start-up log line's text: what runs, and why when it is not ``choice``."""
    now = current() or "unknown"
    if now == choice:
        return f"memory allocator: {now}"
    if os.environ.get(ENV):
        return f"memory allocator: {now} ({ENV}={os.environ[ENV]} in the environment wins)"
    return f"memory allocator: {now} (allocator = {choice!r} could not be applied)"
