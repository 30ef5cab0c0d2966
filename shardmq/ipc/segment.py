"""A named POSIX shared-memory segment seen as native unsigned 64-bit words.

Owns: ``WordSegment``, the base of the small tables the supervisor and the workers
share (``control.ControlBlock``, ``counts.SharedCounts``): creating the segment
(mode 0600, exclusive), attaching to it, checking its magic and version, closing and
unlinking. Subclasses own their layout after the header words.

Invariants: a segment is created with its header written magic last, so an attacher
that sees the magic also sees the rest of the header; an attacher that finds another
magic or version gets ``ValueError`` and holds nothing open. ``unlink`` of a segment
already gone is a no-op.
"""

from __future__ import annotations

import mmap
from typing import ClassVar, TypeVar

import posix_ipc  # type: ignore[import-not-found]  # (no type stubs)

_S = TypeVar("_S", bound="WordSegment")


class WordSegment:
    __slots__ = ("name", "_mm", "_w")
    MAGIC: ClassVar[int]
    VERSION: ClassVar[int]
    WHAT: ClassVar[str]  # "control block", for the error of a wrong segment

    def __init__(self, name: str, mm: mmap.mmap) -> None:
        self.name = name
        self._mm = mm
        w = memoryview(mm).cast("Q")
        self._w = w
        if w[0] != self.MAGIC or w[1] != self.VERSION:
            w.release()
            mm.close()
            raise ValueError(f"{name}: not a shardmq {self.WHAT}")

    @classmethod
    def _create(cls: type[_S], name: str, size: int, header: tuple[int, ...]) -> _S:
        """Create the segment with words 1.. of ``header`` after version, magic last."""
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        w = memoryview(mm).cast("Q")
        w[1] = cls.VERSION
        for i, value in enumerate(header, start=2):
            w[i] = value
        w[0] = cls.MAGIC
        w.release()
        return cls(name, mm)

    @classmethod
    def attach(cls: type[_S], name: str) -> _S:
        shm = posix_ipc.SharedMemory(name)
        try:
            mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        return cls(name, mm)

    @property
    def closed(self) -> bool:
        """``close`` was called: the words can no longer be read or written."""
        return bool(self._mm.closed)

    def close(self) -> None:
        if not self._mm.closed:
            self._w.release()
            self._mm.close()

    def unlink(self) -> None:
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass
