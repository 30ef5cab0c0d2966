"""Start-up probe shared by the fixtures that launch a broker process.

Owns: ``amqp_answers(port)``: true once something on 127.0.0.1:port answers an AMQP
0-9-1 protocol header with a method frame (connection.start).

Invariant: a bare TCP connect is not proof that the broker is up: when nothing listens
on a port inside the ephemeral range, a connect to it can occasionally succeed by
connecting to itself (TCP simultaneous open, local port == remote port), and a restarted
broker then looked "up" before it had even started. Requiring connection.start rules
that out.
"""

from __future__ import annotations

import socket

HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD = 1


def amqp_answers(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2) as s:
            if s.getsockname() == s.getpeername():
                return False  # connected to itself: nobody listens
            s.settimeout(timeout)
            s.sendall(HEADER)
            first = s.recv(1)
            return first == bytes((FRAME_METHOD,))
    except OSError:
        return False
