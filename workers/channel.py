"""The channel between the supervisor and one worker process: its one definition.

Owns: the message kinds and size limits of the channel. The channel is an AF_UNIX
SOCK_SEQPACKET socket pair made by the supervisor for each process it spawns (the worker
gets its end as ``--chan-fd``); one datagram is one message, its first byte the kind:

  worker -> supervisor  ``READY``: the worker serves clients (listener or hand-off
                        receiver, mesh and definitions are up);
                        ``USER + payload``: a message for the supervisor's
                        ``on_worker_message`` (the metadata sequencer, see wiring.py)
  supervisor -> worker  ``CONN`` with SCM_RIGHTS fds (at most ``MAX_FDS_PER_MSG``):
                        accepted client sockets (hand-off acceptor);
                        ``USER + payload``: a message for the worker's ``on_message``

Invariants: a datagram is at most ``MAX_MESSAGE`` bytes, kind included; either side
queues its datagrams in order while the socket is full, never drops one. EOF on the
worker's end means the supervisor is gone (the worker drains and exits); on the
supervisor's end, the worker's exit is handled through its pidfd, not the channel.
"""

from __future__ import annotations

READY = b"R"
CONN = b"C"
USER = b"M"
MAX_MESSAGE = 1 << 18  # largest datagram on the channel, kind byte included
MAX_FDS_PER_MSG = 32  # client sockets one CONN datagram may carry
