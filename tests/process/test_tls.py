"""The AMQPS listener end to end: pika, aio-pika and kombu over TLS, peer verification,
EXTERNAL login, bad input on both ports, the plain listener switched off, SIGHUP
certificate reload and the start-up errors of a bad ``[tls]`` section; 1 and 3
workers (both acceptor modes where it matters).

The certificates are made by each test (``tests.support.tlscerts``). Every broker here
is started by the test (it needs the certificate files), so nothing runs against an
external broker.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import kombu
import pika
import pika.exceptions
import pytest

from tests.support.ctl import ctl
from tests.support.ports import free_port
from tests.support.probe import HEADER
from tests.support.procs import wait_for
from tests.support.tlscerts import CA, Issued
from workers.exitcodes import ExitCode

from .served import Served, ServeFactory, serve, startup_lines

__all__ = ["serve"]

pytestmark = pytest.mark.timeout(180)

MODES = [
    pytest.param((1, "reuseport"), id="1w"),
    pytest.param((3, "reuseport"), id="3w"),
    pytest.param((3, "handoff"), id="3w-handoff"),
]


@dataclass
class PKI:
    ca: CA
    server: Issued
    client: Issued  # CN tlsuser, signed by ca
    stranger: Issued  # signed by another CA
    expired: Issued  # signed by ca, expired
    directory: Path


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    d = tmp_path / "pki"
    d.mkdir()
    ca = CA(d)
    other = CA(d, "other CA")
    return PKI(
        ca=ca,
        server=ca.issue(d / "server", "localhost", server=True),
        client=ca.issue(d / "client", "tlsuser", org="shardmq"),
        stranger=other.issue(d / "stranger", "tlsuser"),
        expired=ca.issue(d / "expired", "tlsuser", expired=True),
        directory=d,
    )


@dataclass
class TLSBroker:
    served: Served
    tls_port: int
    pki: PKI

    def log(self) -> str:
        return self.served.log()

    def client_context(self, cert: Issued | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.path))
        if cert is not None:
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
        return ctx

    def pika_params(
        self, cert: Issued | None = None, credentials: Any = None, **kw: Any
    ) -> pika.ConnectionParameters:
        kw.setdefault("socket_timeout", 5)
        return pika.ConnectionParameters(
            host="127.0.0.1",
            port=self.tls_port,
            credentials=credentials or pika.PlainCredentials("guest", "guest"),
            ssl_options=pika.SSLOptions(self.client_context(cert), "localhost"),
            **kw,
        )

    def connect(self, cert: Issued | None = None, credentials: Any = None) -> Any:
        return pika.BlockingConnection(self.pika_params(cert, credentials))

    def server_serial(self) -> int:
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=5) as raw:
            ctx = self.client_context(self.pki.client)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                return int(s.getpeercert()["serialNumber"], 16)


def start(
    serve: ServeFactory,
    pki: PKI,
    mode: tuple[int, str],
    *,
    tls: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    wait: bool = True,
) -> TLSBroker:
    workers, acceptor = mode
    tls_port = free_port()
    config: dict[str, dict[str, Any]] = {
        "tls": {
            "port": tls_port,
            "certfile": str(pki.server.cert),
            "keyfile": str(pki.server.key),
            "cacertfile": str(pki.ca.path),
            **(tls or {}),
        },
        "supervisor": {"acceptor": acceptor},
    }
    if server:
        config["server"] = server
    if auth:
        config["auth"] = auth
    served = serve(workers, config=config)
    broker = TLSBroker(served, tls_port, pki)
    if wait:
        # every worker ready (with hand-off the port answers once the first one is)
        ready = f"shardmq ready: {workers} workers" if workers > 1 else "shardmq ready"
        wait_for(lambda: ready in served.log() or served.proc.poll(), 30, "ready", served.log)
        assert served.proc.poll() is None, served.log()
    return broker


def round_trip(conn: Any, name: str) -> None:
    ch = conn.channel()
    ch.queue_declare(name, auto_delete=True)
    ch.basic_publish("", name, b"over tls")
    for _ in range(50):
        method, _props, body = ch.basic_get(name, auto_ack=True)
        if method is not None:
            assert body == b"over tls"
            return
        time.sleep(0.05)
    raise AssertionError("message not back")


def assert_healthy(broker: TLSBroker, pids: list[int]) -> None:
    """A normal client still works, no worker died, no traceback was logged."""
    with broker.connect() as conn:
        round_trip(conn, "tls-after")
    assert broker.served.worker_pids() == pids
    assert "Traceback" not in broker.log()


# ---------------------------------------------------------------------- clients
@pytest.mark.parametrize("mode", MODES)
def test_pika_aiopika_kombu_over_tls(serve: ServeFactory, pki: PKI, mode: tuple[int, str]) -> None:
    broker = start(serve, pki, mode)
    for i in range(4):  # several connections: every worker gets some
        with broker.connect() as conn:
            round_trip(conn, f"tls-pika-{i}")

    async def aio() -> bytes:
        url = f"amqps://guest:guest@localhost:{broker.tls_port}/"
        conn = await aio_pika.connect(url, ssl_context=broker.client_context())
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue("tls-aio", auto_delete=True)
            await ch.default_exchange.publish(aio_pika.Message(b"aio"), routing_key="tls-aio")
            for _ in range(50):
                msg = await q.get(no_ack=True, fail=False)
                if msg is not None:
                    return msg.body
                await asyncio.sleep(0.05)
        return b""

    assert asyncio.run(aio()) == b"aio"
    ssl_opts = {"ca_certs": str(pki.ca.path), "cert_reqs": ssl.CERT_REQUIRED}
    url = f"amqp://guest:guest@localhost:{broker.tls_port}//"
    with kombu.Connection(url, ssl=ssl_opts, connect_timeout=5) as conn:
        q = conn.SimpleQueue("tls-kombu")
        q.put(b"kombu")
        assert q.get(timeout=5).body == b"kombu"
        q.clear()
        q.close()
    assert "Traceback" not in broker.log()


# ---------------------------------------------------------------------- verification
def handshake_fails(broker: TLSBroker, cert: Issued | None) -> None:
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError, OSError)):
        with broker.connect(cert) as conn:
            conn.channel().queue_declare("tls-never", auto_delete=True)


@pytest.mark.parametrize("mode", MODES[:2])
def test_verify_peer_refuses_bad_client_certificates(
    serve: ServeFactory, pki: PKI, mode: tuple[int, str]
) -> None:
    broker = start(serve, pki, mode, tls={"verify": "verify_peer", "fail_if_no_peer_cert": True})
    pids = broker.served.worker_pids()
    handshake_fails(broker, None)
    handshake_fails(broker, pki.stranger)
    handshake_fails(broker, pki.expired)

    def refusals() -> int:
        return broker.log().count("TLS handshake failed")

    wait_for(lambda: refusals() >= 3, 10, "three refusals logged", broker.log)
    log = broker.log()
    assert "peer did not return a certificate" in log
    assert "certificate refused" in log or "certificate verify failed" in log
    with broker.connect(pki.client) as conn:  # a good certificate, PLAIN login
        round_trip(conn, "tls-verified")
    assert_healthy_with_cert(broker, pids)


def assert_healthy_with_cert(broker: TLSBroker, pids: list[int]) -> None:
    with broker.connect(broker.pki.client) as conn:
        round_trip(conn, "tls-after")
    assert broker.served.worker_pids() == pids
    assert "Traceback" not in broker.log()


# ---------------------------------------------------------------------- EXTERNAL
@pytest.mark.parametrize("mode", MODES[:2])
def test_external_login_with_client_certificate(
    serve: ServeFactory, pki: PKI, mode: tuple[int, str]
) -> None:
    broker = start(
        serve,
        pki,
        mode,
        tls={"verify": "verify_peer"},
        auth={"mechanisms": ["PLAIN", "AMQPLAIN", "EXTERNAL"]},
    )
    external = pika.credentials.ExternalCredentials()
    # the user does not exist yet: refused (403 at connection.start-ok)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        broker.connect(pki.client, external)
    served = broker.served
    assert ctl(served, "add_user", "tlsuser", "unused-password").returncode == 0
    assert ctl(served, "set_permissions", "tlsuser", ".*", ".*", ".*").returncode == 0
    for _ in range(3):
        with broker.connect(pki.client, external) as conn:
            round_trip(conn, "tls-external")
    # no client certificate: EXTERNAL is not offered
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        broker.connect(None, external)
    # not on the plain port either
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", served.port, credentials=external)
        )
    assert "EXTERNAL login refused: user 'tlsuser'" in broker.log()
    assert "Traceback" not in broker.log()


def test_external_distinguished_name(serve: ServeFactory, pki: PKI) -> None:
    broker = start(
        serve,
        pki,
        (1, "reuseport"),
        tls={"verify": "verify_peer", "ssl_cert_login_from": "distinguished_name"},
        auth={"mechanisms": ["EXTERNAL", "PLAIN"]},
    )
    served = broker.served
    assert ctl(served, "add_user", "CN=tlsuser,O=shardmq", "x").returncode == 0
    assert ctl(served, "set_permissions", "CN=tlsuser,O=shardmq", ".*", ".*", ".*").returncode == 0
    with broker.connect(pki.client, pika.credentials.ExternalCredentials()) as conn:
        round_trip(conn, "tls-dn")


# ---------------------------------------------------------------------- bad input
def client_hello() -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def send_and_read(port: int, data: bytes, close_early: bool = False) -> bytes:
    """Send ``data``, then read until the broker closes (or just close: truncated)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if close_early:
            return b""
        got = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk


@pytest.mark.parametrize("mode", MODES)
def test_bad_input_on_both_ports(serve: ServeFactory, pki: PKI, mode: tuple[int, str]) -> None:
    broker = start(serve, pki, mode, tls={"verify": "verify_peer", "fail_if_no_peer_cert": True})
    pids = broker.served.worker_pids()
    # a client that stays connected through all of it
    with broker.connect(pki.client) as bystander:
        ch = bystander.channel()
        ch.queue_declare("tls-bystander", auto_delete=True)
        # a plain AMQP header on the TLS port: closed, no AMQP answer
        assert not send_and_read(broker.tls_port, HEADER).startswith(b"AMQP")
        # a TLS ClientHello on the plain port: the AMQP header back, then closed
        assert send_and_read(broker.served.port, client_hello()) == HEADER
        # a truncated handshake: half a ClientHello, then the client goes away
        hello = client_hello()
        send_and_read(broker.tls_port, hello[: len(hello) // 2], close_early=True)
        # expired and wrong-CA certificates
        handshake_fails(broker, pki.expired)
        handshake_fails(broker, pki.stranger)
        wait_for(
            lambda: broker.log().count("TLS handshake failed") >= 4,
            20,
            "handshake failures logged",
            broker.log,
        )
        ch.basic_publish("", "tls-bystander", b"still here")
        method, _p, body = ch.basic_get("tls-bystander", auto_ack=True)
        assert body == b"still here" or method is None
    lines = [ln for ln in broker.log().splitlines() if "TLS handshake failed" in ln]
    assert all("connection 127.0.0.1:" in ln for ln in lines), lines
    assert_healthy_with_cert(broker, pids)


def test_silent_client_times_out(serve: ServeFactory, pki: PKI) -> None:
    workers, acceptor = 1, "reuseport"
    tls_port = free_port()
    config = {
        "tls": {"port": tls_port, "certfile": str(pki.server.cert), "keyfile": str(pki.server.key)},
        "amqp": {"handshake_timeout": 1.0},
        "supervisor": {"acceptor": acceptor},
    }
    served = serve(workers, config=config)
    served.wait_ready()
    with socket.create_connection(("127.0.0.1", tls_port), timeout=30) as s:
        assert s.recv(1) == b""  # closed by the broker, nothing sent
    wait_for(lambda: "TLS handshake failed: timed out" in served.log(), 10, "logged", served.log)
    assert served.proc.poll() is None and "Traceback" not in served.log()


# ---------------------------------------------------------------------- listeners
@pytest.mark.parametrize("mode", MODES)
def test_plain_listener_off(serve: ServeFactory, pki: PKI, mode: tuple[int, str]) -> None:
    broker = start(serve, pki, mode, server={"tcp_listener": False})
    with broker.connect() as conn:
        round_trip(conn, "tls-only")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", broker.served.port), timeout=5).close()


@pytest.mark.parametrize("mode", MODES)
def test_sighup_reloads_the_certificate(
    serve: ServeFactory, pki: PKI, mode: tuple[int, str]
) -> None:
    broker = start(serve, pki, mode)
    assert broker.server_serial() == pki.server.serial
    old = broker.connect()
    ch = old.channel()
    ch.queue_declare("tls-old", auto_delete=True)
    renewed = pki.ca.issue(pki.directory / "server-new", "localhost", server=True)
    renewed.cert.replace(pki.server.cert)
    renewed.key.replace(pki.server.key)
    broker.served.proc.send_signal(signal.SIGHUP)
    workers = mode[0]
    wait_for(
        lambda: broker.log().count("TLS certificates reloaded") >= workers,
        20,
        "every worker reloaded",
        broker.log,
    )
    for _ in range(2 * workers):  # whichever worker takes the connection
        assert broker.server_serial() == renewed.serial
    ch.basic_publish("", "tls-old", b"old connection")  # still open, still served
    assert ch.basic_get("tls-old", auto_ack=True)[2] in (b"old connection", None)
    assert old.is_open
    old.close()
    assert "Traceback" not in broker.log()


# ---------------------------------------------------------------------- start-up errors
@pytest.mark.parametrize("workers", [1, 3])
def test_missing_certificate_is_one_line(serve: ServeFactory, pki: PKI, workers: int) -> None:
    missing = pki.directory / "nope.pem"
    broker = start(serve, pki, (workers, "reuseport"), tls={"certfile": str(missing)}, wait=False)
    assert broker.served.wait_exit(30) == ExitCode.TLS_CONFIG_INVALID, broker.log()
    lines = startup_lines(broker.log())
    assert len(lines) == 1 and str(missing) in lines[0] and "no such file" in lines[0]
    assert "Traceback" not in broker.log()


def test_key_mismatch_is_one_line(serve: ServeFactory, pki: PKI) -> None:
    broker = start(serve, pki, (1, "reuseport"), tls={"keyfile": str(pki.client.key)}, wait=False)
    assert broker.served.wait_exit(30) == ExitCode.TLS_CONFIG_INVALID, broker.log()
    lines = startup_lines(broker.log())
    assert len(lines) == 1 and "does not match" in lines[0], broker.log()


def test_tls_port_in_use(serve: ServeFactory, pki: PKI) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        broker = start(serve, pki, (3, "reuseport"), tls={"port": port}, wait=False)
        assert broker.served.wait_exit(30) == ExitCode.PORT_IN_USE, broker.log()
    lines = startup_lines(broker.log())
    assert len(lines) == 1 and f"port {port}" in lines[0] and "tls.port" in lines[0]


@pytest.mark.parametrize("mode", [(1, "reuseport"), (2, "handoff")])
def test_pending_handshakes_count_per_address(
    serve: ServeFactory, pki: PKI, mode: tuple[int, str]
) -> None:
    """Sockets that never finish their TLS handshake count as unauthenticated
    connections of their address: past ``max_unauthenticated_per_address`` on a worker,
    more are closed at once; a real TLS client from another address still gets in."""
    workers, _acceptor = mode
    limit = 3
    broker = start(serve, pki, mode, server={"max_unauthenticated_per_address": limit}, wait=True)
    pids = broker.served.worker_pids()
    silent = []
    try:
        for _ in range(limit * workers + 6):
            s = socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5)
            silent.append(s)
        closed = 0
        for s in silent:
            s.settimeout(2.0)
            try:
                closed += s.recv(1) == b""
            except TimeoutError:
                pass  # held in its handshake
            except ConnectionResetError:
                closed += 1
        # each worker holds at most ``limit`` of them; the rest were refused at once
        assert closed >= len(silent) - limit * workers, (closed, len(silent))
        assert closed < len(silent), "nothing was held at all"
        wait_for(
            lambda: "max_unauthenticated_per_address" in broker.log(), 10, "logged", broker.log
        )
        # another address is not affected (127.0.0.2 is loopback too)
        raw = socket.create_connection(
            ("127.0.0.1", broker.tls_port), timeout=10, source_address=("127.0.0.2", 0)
        )
        with broker.client_context(pki.client).wrap_socket(raw, server_hostname="localhost") as t:
            t.sendall(b"AMQP\x00\x00\x09\x01")
            assert t.recv(7)[:1] == b"\x01"  # connection.start's method frame
    finally:
        for s in silent:
            s.close()
    assert_healthy(broker, pids)
