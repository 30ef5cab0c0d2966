"""``free_port()``: a TCP port on 127.0.0.1 that nothing listened on a moment ago.

Invariant: the port is taken below the kernel's ephemeral range
(``net.ipv4.ip_local_port_range``), at random. A port that ``bind(0)`` hands out lies
in that range, where any client's outgoing connection (a pika client of another test,
a helper's broker) may take it between the probe and the broker's bind: the broker then
fails to start with "port in use". Outgoing connections never use ports below the
range, so only another prober choosing the same random port can collide.
"""

from __future__ import annotations

import random
import socket

_FLOOR = 10000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    low = _ephemeral_low()
    if low > _FLOOR + 1000:
        rnd = random.SystemRandom()
        for _ in range(100):
            port = rnd.randrange(_FLOOR, low)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
