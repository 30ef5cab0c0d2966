"""Slowing down repeated failed logins from one address (brute force).

Owns: ``AuthThrottle`` — per client address, when its next login refusal may be sent.
Each failure's refusal is due ``step`` after the previous one's (or now, if that is
past), and ``step`` doubles with the recent failures of the address, from ``BASE`` up
to ``CAP``; so an attacker gets at most ``1 / CAP`` refusals per second per address
however many connections it opens in parallel, while a user who mistypes a password
once waits ``BASE``.

Invariants:
- Nothing blocks: the caller holds the refusal (the I/O layer stops reading and writes
  the close when it is due); other connections are not slowed.
- Memory is bounded: at most ``MAX_ADDRESSES`` addresses are tracked (the oldest
  forgotten first), and an address quiet for ``FORGET`` seconds is forgotten.
- The state is per worker process: with N workers an address's refusals run at up to
  N times the rate (documented; still tens per second, not thousands).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

BASE = 0.05  # seconds: the first failure's delay
CAP = 2.0  # seconds between two refusals to one address, at most
FORGET = 60.0  # seconds without a failure before an address starts afresh
MAX_ADDRESSES = 10_000


@dataclass
class _Record:
    failures: int
    due: float  # when the last refusal was (or will be) sent
    last: float  # when the last failure happened


class AuthThrottle:
    def __init__(self) -> None:
        self._by_address: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_address)

    def failed(self, address: str, now: float) -> float:
        """A login from ``address`` failed at ``now``: seconds to hold its refusal."""
        table = self._by_address
        rec = table.get(address)
        if rec is None or now - rec.last > FORGET:
            rec = _Record(0, now, now)
        table[address] = rec
        table.move_to_end(address)
        while len(table) > MAX_ADDRESSES:
            table.popitem(last=False)
        rec.failures += 1
        rec.last = now
        step = min(CAP, BASE * 2 ** min(rec.failures - 1, 16))
        rec.due = max(now, rec.due) + step
        return rec.due - now
