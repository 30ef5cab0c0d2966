"""A raw AMQP 1.0 client for wire-level tests: frames written and read with the
broker's own codec (``shardmq.amqp1``), nothing hidden.

Owns: ``RawClient`` (a socket to 127.0.0.1, send a header or a performative, read the
next header or frame with a timeout, SASL PLAIN and open in one call, a session's
begin).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from shardmq.amqp1 import types_gen as T
from shardmq.amqp1.framing import HEADER_AMQP, HEADER_SASL, TYPE_SASL, parse_frame, write_frame
from shardmq.amqp1.values import Symbol, UInt


class RawClient:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(
        self, performative: Any, channel: int = 0, payload: bytes = b"", ftype: int = 0
    ) -> None:
        out = bytearray()
        write_frame(out, channel, performative, payload, ftype)
        self.sock.sendall(out)

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        if not data:
            raise EOFError("the broker closed the connection")
        self.buf += data
        return True

    def read_header(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        while len(self.buf) < 8:
            if time.monotonic() > deadline:
                raise TimeoutError("no protocol header")
            self._fill(deadline)
        header = bytes(self.buf[:8])
        del self.buf[:8]
        return header

    def read_frame(self, skip_empty: bool = True) -> tuple[int, Any, bytes]:
        """(channel, performative, payload) of the next frame."""
        deadline = time.monotonic() + self.timeout
        while True:
            got = parse_frame(self.buf, 0, 2**32 - 1)
            if got is not None:
                _t, channel, perf, payload, end = got
                del self.buf[:end]
                if perf is None and skip_empty:
                    continue
                return channel, perf, payload
            if time.monotonic() > deadline:
                raise TimeoutError("no frame")
            self._fill(deadline)

    def read_until(self, cls: type) -> Any:
        while True:
            _c, perf, _p = self.read_frame()
            if isinstance(perf, cls):
                return perf

    def drop(self) -> None:
        """Lose the connection without a close (a half-close the broker answers by
        closing its side): once this returns, the broker saw the connection go."""
        self.sock.shutdown(socket.SHUT_WR)
        self.closed_by_peer(self.timeout)
        self.sock.close()

    def closed_by_peer(self, within: float) -> bool:
        """The broker closes the socket within ``within`` seconds (frames are skipped)."""
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                self._fill(deadline)
                self.buf.clear()
        except (EOFError, ConnectionResetError):
            return True
        return False

    def login(
        self,
        user: str = "guest",
        password: str = "guest",
        hostname: str | None = None,
        container_id: str = "raw",
        **open_fields: Any,
    ) -> T.Open:
        self.send_raw(HEADER_SASL)
        assert self.read_header() == HEADER_SASL
        _c, mechs, _p = self.read_frame()
        assert isinstance(mechs, T.SaslMechanisms)
        resp = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.send(T.SaslInit(mechanism=Symbol("PLAIN"), initial_response=resp), ftype=TYPE_SASL)
        _c, outcome, _p = self.read_frame()
        assert isinstance(outcome, T.SaslOutcome) and outcome.code == 0, outcome
        self.send_raw(HEADER_AMQP)
        assert self.read_header() == HEADER_AMQP
        self.send(T.Open(container_id=container_id, hostname=hostname, **open_fields))
        _c, opened, _p = self.read_frame()
        assert isinstance(opened, T.Open), opened
        return opened

    def begin(self, channel: int = 0, window: int = 100) -> T.Begin:
        """Begin a session on ``channel`` (incoming window ``window``); the peer's begin."""
        self.send(
            T.Begin(
                next_outgoing_id=UInt(0), incoming_window=UInt(window), outgoing_window=UInt(100)
            ),
            channel=channel,
        )
        begun: T.Begin = self.read_until(T.Begin)
        return begun
