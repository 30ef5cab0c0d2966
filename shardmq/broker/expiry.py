"""Time for queues: message deadlines, the per-queue timers, expiry in slices.

Owns: ``now_ms`` (the wall clock deadlines use), ``turn_ms`` (the same clock read once
per event-loop turn, for the per-message stamps and checks of a TTL queue), ``message_ttl`` (a message's own
``expiration`` in ms), ``Timer`` (one re-armable ``call_at`` handle on the running
loop) and ``EXPIRE_SLICE`` (how many messages one loop turn expires at most).

Invariants:
- Deadlines are absolute wall-clock milliseconds (``Message.ts`` + TTL), so they keep
  their meaning across a restart; timers convert them to the loop's clock when armed.
- A ``Timer`` holds at most one pending callback; arming it for a later time than the
  pending one keeps the earlier one (the callback re-arms for what is due next).
- ``turn_ms`` is at most one loop turn old (a ``call_soon`` forgets it); without a
  running loop it reads the clock every time. A stamp taken from it is never later than
  the true arrival, so a deadline is never later than ``ts`` + TTL.
- Without a running event loop (sans-IO tests) timers are inert: expiry then happens
  only when a message reaches the head (dispatch, basic.get).
"""

from __future__ import annotations

import asyncio
import time
from asyncio.events import _get_running_loop
from collections.abc import Callable

from shardmq.message import Message

# Messages expired per loop turn at most, and seconds spent on it at most (dead-lettering
# costs more per message than dropping; the clock is read every EXPIRE_CLOCK_EVERY
# messages); the rest continue on the next turn (call_soon), so 100,000 messages due at
# once never stall the loop, and another queue's message waits at most about one slice
# (BENCHMARKS.md section 15: 1.3-2.5 ms of CPU per slice for 100,000 due at once).
EXPIRE_SLICE = 1000
EXPIRE_BUDGET_S = 0.002
EXPIRE_CLOCK_MASK = 15  # read the clock when (count & mask) == 0: every 16 messages


def now_ms() -> int:
    return int(time.time() * 1000)


# ``turn_ms``'s reading for this loop turn (0: none yet), and the loop it was read on
_turn = 0
_turn_loop: asyncio.AbstractEventLoop | None = None


def _forget_turn() -> None:
    global _turn
    _turn = 0


def turn_ms() -> int:
    """``now_ms`` read once per loop turn: a TTL queue stamps and checks thousands of
    messages in one turn (BENCHMARKS.md section 15). Keyed by the running loop, so a
    loop dropped before its next turn leaves no stale reading to another one."""
    global _turn, _turn_loop
    loop = _get_running_loop()
    if loop is _turn_loop and loop is not None:
        ms = _turn
        if ms:
            return ms
    ms = int(time.time() * 1000)
    if loop is not None:
        _turn = ms
        _turn_loop = loop
        loop.call_soon(_forget_turn)
    return ms


def message_ttl(msg: Message) -> int | None:
    """The message's ``expiration`` property in ms (None when absent). Validated at
    publish, so a value that fails to parse here (a message from before) counts as
    absent."""
    if not msg.raw[19] & 0x01:  # property flag 0x0100: expiration
        return None
    exp = msg.properties().expiration
    if exp is None:
        return None
    try:
        return max(int(exp), 0)
    except ValueError:
        return None


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Timer:
    """One pending callback at a wall-clock ms time (``arm``), or none."""

    __slots__ = ("callback", "handle", "at")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self.at = 0

    def arm(self, at_ms: int) -> None:
        """Run the callback at ``at_ms`` (or sooner if already armed sooner)."""
        if self.handle is not None:
            if self.at <= at_ms:
                return
            self.handle.cancel()
            self.handle = None
        loop = running_loop()
        if loop is None:
            return
        self.at = at_ms
        delay = (at_ms - now_ms()) / 1000.0
        if delay <= 0:
            self.handle = loop.call_soon(self._fire)
        else:
            self.handle = loop.call_at(loop.time() + delay, self._fire)

    def soon(self) -> None:
        """Run the callback on the next loop turn (continue a slice)."""
        self.cancel()
        loop = running_loop()
        if loop is not None:
            self.at = 0
            self.handle = loop.call_soon(self._fire)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    @property
    def armed(self) -> bool:
        return self.handle is not None

    def _fire(self) -> None:
        self.handle = None
        self.callback()
