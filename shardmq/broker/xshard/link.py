"""What the cross-worker sides need from the transport, and from each other's peers.

Owns: ``Link`` (ordered, reliable record delivery to other workers: the ring mesh,
``shardmq.ipc.mesh.Mesh``, or the test suite's ``FakeLink``) and ``Publisher`` (a
publishing connection as the user side sees it).
"""

from __future__ import annotations

from typing import Protocol


class Link(Protocol):
    """Ordered, reliable record delivery to other workers (the ring mesh)."""

    # this worker's incarnation (the control block's generation of its slot, bumped at
    # every spawn): refs handed to other workers embed it
    incarnation: int
    # an open batch record takes items until it is this large
    batch_limit: int
    # the targets ``is_blocked`` last said were blocked (kept current by the link; the
    # same set object for the link's whole life)
    blocked_set: set[int]

    def send(self, target: int, record: bytes) -> None: ...

    def send_control(self, target: int, record: bytes) -> None:
        """Like ``send``, on a lane that overtakes bulk data (credit, settles,
        confirms, idle notices)."""
        ...

    def batch(self, target: int, key: object, match: object = None) -> bytearray | None: ...

    def open_batch(
        self, target: int, key: object, head: bytes, match: object = None
    ) -> bytearray: ...

    def is_blocked(self, target: int) -> bool: ...


class Publisher(Protocol):
    """A publishing connection: paused (``throttle(cause, True)``) while a ring or a
    queue it publishes to is backed up."""

    @property
    def gid(self) -> int: ...

    def throttle(self, cause: object, on: bool) -> None: ...
