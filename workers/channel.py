"""The channel between the supervisor and one worker process: its one definition.

Owns: the message kinds and size limits of the channel, and ``ChannelSender`` (the
sending side of either end). The channel is an AF_UNIX
SOCK_SEQPACKET socket pair made by the supervisor for each process it spawns (the worker
gets its end as ``--chan-fd``); one datagram is one message, its first byte the kind:

  worker -> supervisor  ``READY``: the worker serves clients (listener or hand-off
                        receiver, mesh and definitions are up);
                        ``USER + payload``: a message for the supervisor's
                        ``on_worker_message`` (the metadata sequencer, see wiring.py)
  supervisor -> worker  ``CONN`` with SCM_RIGHTS fds (at most ``MAX_FDS_PER_MSG``):
                        accepted client sockets (hand-off acceptor);
                        ``CONN_TLS``: the same for the AMQPS acceptor;
                        ``USER + payload``: a message for the worker's ``on_message``

Invariants: a datagram is at most ``MAX_MESSAGE`` bytes, kind included; either side
queues its datagrams in order while the socket is full (``ChannelSender``), never drops
one while the channel works. EOF on the
worker's end means the supervisor is gone (the worker drains and exits); on the
supervisor's end, the worker's exit is handled through its pidfd, not the channel.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable

READY = b"R"
CONN = b"C"
CONN_TLS = b"T"  # as CONN, for the AMQPS listener: the worker runs the TLS handshake
USER = b"M"
MAX_MESSAGE = 1 << 18  # largest datagram on the channel, kind byte included
MAX_FDS_PER_MSG = 32  # client sockets one CONN datagram may carry


class ChannelSender:
    """Sends datagrams on one end of a channel in order. While the socket is full they
    wait in a queue and a writer callback on ``loop`` (once it is set) sends them when it
    drains; an error other than a full socket drops the queue and calls ``on_error``."""

    def __init__(self, sock: socket.socket, on_error: Callable[[OSError], None]) -> None:
        self.sock = sock
        self.on_error = on_error
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[bytes] = deque()

    def __len__(self) -> int:
        """Datagrams waiting for room in the socket."""
        return len(self._queue)

    def send(self, datagram: bytes) -> None:
        self._queue.append(datagram)
        if len(self._queue) == 1:
            self._drain()

    def clear(self) -> None:
        self._queue.clear()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            try:
                self.sock.send(queue[0])
            except (BlockingIOError, InterruptedError):
                if self.loop is not None:
                    self.loop.add_writer(self.sock.fileno(), self._writable)
                return
            except OSError as exc:
                queue.clear()
                self.on_error(exc)
                return
            queue.popleft()

    def _writable(self) -> None:
        if self.loop is not None:
            self.loop.remove_writer(self.sock.fileno())
        self._drain()
