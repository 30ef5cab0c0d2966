"""Start-up probe shared by the fixtures that launch a broker process.

Owns: ``amqp_answers(port)``: true once something on 127.0.0.1:port answers an AMQP
0-9-1 protocol header with a method frame (connection.start).

Invariant: a bare TCP connect is not proof that the broker is up. Seen here: right
after a kill -9 and restart of a 3-worker broker on the same port, the TCP probe
succeeded while the new broker was still importing (it had written no log line yet),
and the client that followed was refused or reset (about 1 run in 7; what accepted the
probe is not pinned down: a listening socket of the killed broker not yet torn down, or
a self-connect when local port == remote port, are the candidates). Requiring
connection.start rules out anything but a broker that serves AMQP; with it, 0 failures
in 14 runs.
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
