"""What the I/O layer and a protocol adapter's connection do for each other, shared by
the AMQP 0-9-1 and 1.0 adapters.

Owns: ``IOHooks`` (what the I/O layer, ``shardmq.net.server``, does for a connection:
reading on/off, the tuning done, a held refusal) and ``EngineIO`` (the adapter's side of
the I/O layer's connection interface that only forwards to its sans-IO engine and its
``BrokerConnection``: bytes in, output out with the coalesced publisher confirms written
first, write pause, heartbeat ticks, state). Each adapter keeps what differs:
``connection_lost`` and ``heartbeat``.

Invariants: ``take_output`` writes the domain's pending confirms before handing out the
engine's output, so a confirm never waits a loop turn behind its own connection's bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from shardmq.broker.connection import BrokerConnection


class IOHooks(Protocol):
    """What the I/O layer does for a connection (``shardmq.net.server``)."""

    def set_reading(self, active: bool) -> None:
        """Stop or resume reading the socket."""

    def tuned(self) -> None:
        """The client accepted the tuning: heartbeats may start."""

    def hold(self, seconds: float) -> None:
        """Send nothing and read nothing for ``seconds`` (a delayed login refusal)."""


class _Engine(Protocol):
    @property
    def state(self) -> int: ...
    @property
    def want_close(self) -> bool: ...
    @property
    def out(self) -> bytearray: ...
    def feed(self, data: bytes) -> None: ...
    def take_output(self) -> bytearray | None: ...
    def heartbeat_tick(self) -> bool: ...


E = TypeVar("E", bound=_Engine)


class EngineIO(Generic[E]):
    """The I/O layer's connection interface, forwarded (see the module block); ``E``
    is the adapter's engine type."""

    engine: E
    domain: BrokerConnection
    confirms_due: bool

    def feed(self, data: bytes) -> None:
        self.engine.feed(data)

    def take_output(self) -> bytearray | None:
        if self.confirms_due:
            self.confirms_due = False
            self.domain.flush_confirms()
        return self.engine.take_output()

    def after_flush(self) -> None:
        self.domain.after_flush()

    def set_write_paused(self, paused: bool) -> None:
        self.domain.set_write_paused(paused)

    def heartbeat_tick(self) -> bool:
        return self.engine.heartbeat_tick()

    @property
    def state(self) -> int:
        return self.engine.state

    @property
    def want_close(self) -> bool:
        return self.engine.want_close

    @property
    def out(self) -> bytearray:
        return self.engine.out
