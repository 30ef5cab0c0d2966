"""Doorbell: a pollable fd that wakes one sleeping process.

Owns: the wake-up primitive of the mesh. One doorbell per worker, created by the
supervisor before it spawns anything and inherited by every worker (``pass_fds``), so any
worker can ring any other and the supervisor can ring them all. The owner watches
``fileno()`` with ``loop.add_reader`` and calls ``clear()`` when woken.

Implementation: a non-blocking ``eventfd`` on Linux (one fd, a counter: ringing twice
before the reader wakes costs two 8-byte writes and one wake-up); a non-blocking pipe
elsewhere (two fds; a full pipe already means "rung", so ``ring`` never blocks).

Invariants: ``ring`` never blocks and never raises for a full counter/pipe; ``clear``
never blocks. Rings are cheap but still a syscall: callers ring only when the peer said
it sleeps (see the ring header's sleep generation).
"""

from __future__ import annotations

import os


class Doorbell:
    """A wake-up fd pair. ``rfd`` is watched by the owner, ``wfd`` written by others
    (they are the same fd for an eventfd)."""

    __slots__ = ("rfd", "wfd", "kind")

    def __init__(self, rfd: int, wfd: int, kind: str) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.kind = kind

    @classmethod
    def create(cls, *, prefer_eventfd: bool = True) -> Doorbell:
        if prefer_eventfd and hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            return cls(fd, fd, "eventfd")
        r, w = os.pipe()
        for fd in (r, w):
            os.set_blocking(fd, False)
        return cls(r, w, "pipe")

    # --------------------------------------------------------------- passing on
    @property
    def fds(self) -> tuple[int, ...]:
        """Fds to list in ``pass_fds`` when spawning a process that uses this doorbell."""
        return (self.rfd,) if self.rfd == self.wfd else (self.rfd, self.wfd)

    def spec(self) -> str:
        """A short string naming the inherited fds, for a child's command line."""
        return f"e{self.rfd}" if self.kind == "eventfd" else f"p{self.rfd}:{self.wfd}"

    @classmethod
    def from_spec(cls, spec: str) -> Doorbell:
        if spec.startswith("e"):
            fd = int(spec[1:])
            return cls(fd, fd, "eventfd")
        if spec.startswith("p"):
            r, w = spec[1:].split(":")
            return cls(int(r), int(w), "pipe")
        raise ValueError(f"bad doorbell spec {spec!r}")

    # --------------------------------------------------------------- use
    def fileno(self) -> int:
        return self.rfd

    def ring(self) -> None:
        try:
            if self.kind == "eventfd":
                os.eventfd_write(self.wfd, 1)
            else:
                os.write(self.wfd, b"\x01")
        except (BlockingIOError, InterruptedError):
            pass  # counter/pipe full: the bell is already ringing

    def clear(self) -> bool:
        """Consume pending rings; True when there was at least one."""
        rung = False
        try:
            if self.kind == "eventfd":
                os.eventfd_read(self.rfd)
                return True
            while os.read(self.rfd, 4096):
                rung = True
        except (BlockingIOError, InterruptedError):
            pass
        return rung

    def close(self) -> None:
        for fd in set(self.fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self.rfd = self.wfd = -1
