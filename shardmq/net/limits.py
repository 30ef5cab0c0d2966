"""Admission of new connections in one broker process: file descriptors and peers.

Owns: ``raise_fd_limit`` (at start, the soft RLIMIT_NOFILE raised to the hard limit and
the limit in use logged), ``fds_in_use`` and ``Admission``: the file-descriptor alarm
(``Broker.set_fd_alarm``: publishers blocked, new connections refused) and the bound on
the connections one address holds before connection.open-ok
(``server.max_unauthenticated_per_address``, per worker process).

Invariants:
- The fd alarm is the broker's: on while any worker's is (each publishes its own in
  the control block); a worker refuses new connections only while its own is on.
- A worker's fd alarm is on while the descriptors in use reach ``limit - reserve`` (counted
  exactly from /proc every ``FD_CHECK_INTERVAL`` seconds, and by one per connection
  accepted or closed in between) and off once they fall under ``limit - 2 * reserve``;
  the reserve keeps descriptors for the stores, the rings and accept itself, so the
  listener never fails accept in a loop. Setting and clearing it is one log line each.
- A refused connection is accepted and closed at once (no AMQP bytes: the process may
  have no descriptor to spare for more), and counted; one log line per alarm or per
  address that passes its bound, never one per refusal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from typing import TYPE_CHECKING, Protocol

from shardmq.ipc.control import F_FD_ALARM, ControlBlock

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker

log = logging.getLogger("shardmq.net")

FD_CHECK_INTERVAL = 1.0
FD_RESERVE_MIN = 16  # descriptors kept free for the stores, the rings and accept
FD_LIMIT_CAP = 1 << 20  # an unlimited hard limit is raised to this


class Peer(Protocol):
    """What admission needs of a connection: its engine state (OPEN once open-ok)."""

    @property
    def opened(self) -> bool: ...


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; log and return the limit in use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        target = soft
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file descriptor limit from %d: %s", soft, exc)
            target = soft
    if target == resource.RLIM_INFINITY:
        target = FD_LIMIT_CAP
    log.info("file descriptor limit: %d", target)
    return target


def fds_in_use() -> int:
    """Open descriptors of this process (Linux /proc; 0 where unavailable)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except OSError:
        return 0


class Admission:
    """Decides whether a new connection is served (see the module block)."""

    def __init__(
        self,
        broker: Broker,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        per_address: int,
        control: ControlBlock | None = None,
    ) -> None:
        self.broker = broker
        self.control = control
        self.alarm = False  # this process's descriptors run short
        self.loop = loop
        self.limit = limit
        self.reserve = max(FD_RESERVE_MIN, limit // 20)
        self.per_address = per_address
        self.used = fds_in_use()
        self.refused = 0
        self._preauth: dict[str, set[Peer]] = {}
        self._over: set[str] = set()  # addresses told about in the log
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        counted = fds_in_use()
        if counted:
            self.used = counted
        self._update()
        self._handle = self.loop.call_later(FD_CHECK_INTERVAL, self._tick)

    def _update(self) -> None:
        if not self.alarm and self.used >= self.limit - self.reserve:
            log.warning(
                "file descriptor alarm set: %d of %d in use; publishers blocked, new "
                "connections refused until under %d",
                self.used,
                self.limit,
                self.limit - 2 * self.reserve,
            )
            self.alarm = True
        elif self.alarm and self.used < self.limit - 2 * self.reserve:
            log.warning(
                "file descriptor alarm cleared: %d of %d in use (%d connection(s) refused)",
                self.used,
                self.limit,
                self.refused,
            )
            self.refused = 0
            self.alarm = False
        on = self.alarm
        ctl = self.control
        if ctl is not None:
            slot = self.broker.slot
            ctl.put(slot, F_FD_ALARM, int(on))
            on = on or any(
                ctl.get(s, F_FD_ALARM) for s in range(ctl.n) if s != slot and ctl.is_ready(s)
            )
        if on != self.broker.fd_alarm:
            self.broker.set_fd_alarm(on)

    # ------------------------------------------------------------ connections
    def admit(self, peer: Peer, address: str) -> bool:
        """A connection was accepted (its socket counted): serve it (True) or refuse."""
        self.used += 1
        self._update()
        if self.alarm:
            self.refused += 1
            return False
        if self.per_address:
            held = self._preauth.get(address)
            if held is None:
                held = self._preauth[address] = set()
            elif len(held) >= self.per_address:
                for p in [p for p in held if p.opened]:
                    held.discard(p)
                if len(held) >= self.per_address:
                    if address not in self._over:
                        self._over.add(address)
                        log.warning(
                            "address %s holds %d unauthenticated connections "
                            "(max_unauthenticated_per_address): refusing more",
                            address,
                            len(held),
                        )
                    return False
                self._over.discard(address)
            held.add(peer)
        return True

    def closed(self, peer: Peer, address: str) -> None:
        """An admitted or refused connection's socket is closed."""
        self.used -= 1
        held = self._preauth.get(address)
        if held is not None:
            held.discard(peer)
            if not held:
                del self._preauth[address]
                self._over.discard(address)
