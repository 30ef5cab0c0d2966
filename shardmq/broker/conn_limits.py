"""Connection and channel counts per vhost and per user, across workers: the
``max-connections`` (vhost, user) and ``max-channels`` (user) limits.

Owns: ``ConnCounts`` — this worker's counts by key (``v:<vhost>`` connections,
``u:<user>`` connections, ``c:<user>`` channels) and the admission checks that
refuse with RabbitMQ's 530 texts (``shardmq.auth.limits``).

How the count spans workers: each worker publishes its own count of every key in its
slot of a shared-memory table (``shardmq.ipc.counts.SharedCounts``; one writer per
slot, one word store per change) and reads the other workers' slots when it must
decide. Admission claims first, then checks: the connection (or channel) is counted,
a full fence, then the sum over the ready workers is compared with the limit; over
it, the claim is withdrawn and the open refused. So the limit is never exceeded: two
opens racing on two workers for the last place may both be refused (one retry
succeeds), never both admitted. Sequential opens see each other exactly, whichever
workers they land on. No lock, no round trip to the supervisor.

Cost: a connection.open, a channel.open and their closes update one or two dict
entries and shared words (a key's hash is cached); the other workers' slots are read
only when the vhost or user has a limit. Nothing per message.

Invariants:
- A count is withdrawn exactly once: when its connection (or channel) closes, or at
  once when the open is refused.
- A dead worker's counts stop counting when the supervisor bumps its slot's
  incarnation (not ready), and its successor zeroes the slot (``attach``).
- With one worker there is no shared table: the local counts are the broker's.
"""

from __future__ import annotations

from collections.abc import Callable

from shardmq.auth.limits import (
    Limits,
    user_channels_refused,
    user_connections_refused,
    vhost_connections_refused,
)
from shardmq.ipc.counts import SharedCounts, key_hash
from shardmq.ipc.ring import fence


class ConnCounts:
    def __init__(self, slot: int, limits: Limits) -> None:
        self.slot = slot
        self.limits = limits
        self.local: dict[str, int] = {}
        self.shared: SharedCounts | None = None
        self._ready: Callable[[int], bool] = lambda s: False
        self._hashes: dict[str, int] = {}

    def attach(self, shared: SharedCounts, ready: Callable[[int], bool]) -> None:
        """Several workers: publish in ``shared`` (our slot zeroed first); ``ready(s)``
        says whether worker ``s``'s slot counts."""
        shared.reset(self.slot)
        self.shared = shared
        self._ready = ready
        for key, n in self.local.items():
            shared.set(self.slot, self._hash(key), n)

    def _hash(self, key: str) -> int:
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) > 100_000:
                self._hashes.clear()
            h = self._hashes[key] = key_hash(key)
        return h

    def _add(self, key: str, delta: int) -> None:
        n = self.local.get(key, 0) + delta
        if n > 0:
            self.local[key] = n
        else:
            self.local.pop(key, None)
            n = 0
        if self.shared is not None:
            self.shared.set(self.slot, self._hash(key), n)

    def total(self, key: str) -> int:
        """``key``'s count on every ready worker (ours included)."""
        n = self.local.get(key, 0)
        shared = self.shared
        if shared is not None:
            h = self._hash(key)
            for s in range(shared.n):
                if s != self.slot and self._ready(s):
                    n += shared.get(s, h)
        return n

    def _over(self, key: str, limit: int) -> bool:
        if limit < 0:
            return False
        if self.shared is not None:
            fence()  # our claim is visible before we read the others'
        return self.total(key) > limit

    # ------------------------------------------------------------ connections
    def connection_opened(self, vhost: str, user: str) -> None:
        """Count a connection.open; raises the 530 ``HardError`` (and counts nothing)
        when the vhost's, then the user's, ``max-connections`` is reached."""
        vkey, ukey = "v:" + vhost, "u:" + user
        self._add(vkey, 1)
        self._add(ukey, 1)
        limits = self.limits
        vlimit = limits.vhost(vhost, "max-connections")
        ulimit = limits.user(user, "max-connections")
        if self._over(vkey, vlimit):
            self.connection_closed(vhost, user)
            raise vhost_connections_refused(vhost, user, vlimit)
        if self._over(ukey, ulimit):
            self.connection_closed(vhost, user)
            raise user_connections_refused(user, ulimit)

    def connection_closed(self, vhost: str, user: str) -> None:
        self._add("v:" + vhost, -1)
        self._add("u:" + user, -1)

    # ------------------------------------------------------------ channels
    def channel_opened(self, user: str) -> None:
        """Count a channel.open; raises the 530 ``HardError`` past ``max-channels``."""
        key = "c:" + user
        self._add(key, 1)
        limit = self.limits.user(user, "max-channels")
        if self._over(key, limit):
            self._add(key, -1)
            raise user_channels_refused(user, limit)

    def channel_closed(self, user: str) -> None:
        self._add("c:" + user, -1)

    # ------------------------------------------------------------ reports
    def connections(self, vhost: str) -> int:
        return self.total("v:" + vhost)
