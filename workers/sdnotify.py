"""systemd notification protocol (sd_notify) without libsystemd.

Owns: READY/STOPPING/STATUS/WATCHDOG messages to ``$NOTIFY_SOCKET`` and the
WATCHDOG=1 timer (``feed_watchdog``). Every call is a no-op when the broker is not
started by systemd with Type=notify (and WatchdogSec for the timer). Only the process
systemd started talks to it: the supervisor, or the one process with ``--workers 1``.
"""

from __future__ import annotations

import asyncio
import os
import socket


def notify(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


def feed_watchdog(loop: asyncio.AbstractEventLoop) -> None:
    """Send WATCHDOG=1 every ``watchdog_interval()`` seconds on ``loop`` (a stuck loop
    stops the pings and systemd restarts the broker); nothing without WatchdogSec."""
    interval = watchdog_interval()
    if not interval:
        return

    def ping() -> None:
        notify("WATCHDOG=1")
        loop.call_later(interval, ping)

    loop.call_later(interval, ping)
