"""systemd's side of the notify protocol, for tests: a unix datagram socket in the
abstract namespace that a broker started with ``NOTIFY_SOCKET=<env_value>`` notifies.

Owns: ``Notifications`` (receive, wait for a field, what was received).

Invariant: every wait is bounded and fails with the broker's log attached.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path


class Notifications:
    """A unix datagram socket in the abstract namespace, where the broker notifies."""

    def __init__(self) -> None:
        self.name = f"shardmq-test-notify-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.received: list[tuple[float, dict[str, str]]] = []

    @property
    def env_value(self) -> str:
        return "@" + self.name

    def next(self, timeout: float) -> dict[str, str] | None:
        """The next message as its KEY=VALUE fields, or None after ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
        self.received.append((time.monotonic(), fields))
        return fields

    def wait(self, key: str, timeout: float, log: Path) -> dict[str, str]:
        """Messages until one has ``key``; fails with the log after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.next(left)
            if msg is not None and key in msg:
                return msg
        raise AssertionError(
            f"no {key} within {timeout} s; got {[m for _, m in self.received]}\n"
            f"{log.read_text(errors='replace')}"
        )

    def close(self) -> None:
        self.sock.close()
