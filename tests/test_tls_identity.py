"""Unit tests of ``shardmq.net.tls``: the user name EXTERNAL takes from a certificate
(RabbitMQ's formats) and the one-line errors of ``build_context``."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardmq.net.tls import TLSConfigError, build_context, distinguished_name, peer_identity
from shardmq.net.tls_settings import TLSSettings
from tests.support.tlscerts import CA

CERT = {
    "subject": (
        (("countryName", "GB"),),
        (("organizationName", "Acme, Inc"),),
        (("commonName", "alice"),),
    ),
    "subjectAltName": (("email", "alice@example.com"), ("DNS", "alice.example.com")),
}


def test_common_name_is_the_default() -> None:
    assert peer_identity(CERT, "common_name") == "alice"


def test_distinguished_name_is_rfc4514_last_rdn_first() -> None:
    assert peer_identity(CERT, "distinguished_name") == "CN=alice,O=Acme\\, Inc,C=GB"
    assert distinguished_name(((("commonName", "#x "),),)) == "CN=\\#x\\ "


def test_subject_alternative_name_takes_the_first() -> None:
    assert peer_identity(CERT, "subject_alternative_name") == "alice@example.com"
    assert peer_identity({"subject": CERT["subject"]}, "subject_alternative_name") is None


def test_context_errors_are_one_line(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    server = ca.issue(tmp_path / "server", "localhost", server=True)
    other = ca.issue(tmp_path / "other", "x")
    ok = TLSSettings(certfile=str(server.cert), keyfile=str(server.key), cacertfile=str(ca.path))
    build_context(ok)
    cases = [
        (TLSSettings(certfile=str(tmp_path / "none.pem")), "no such file"),
        (TLSSettings(certfile=str(server.cert), keyfile=str(other.key)), "does not match"),
        (TLSSettings(certfile=str(ca.path), keyfile=str(ca.path)), "not a PEM"),
        (
            TLSSettings(certfile=str(server.cert), keyfile=str(server.key), verify="verify_peer"),
            "needs tls.cacertfile",
        ),
    ]
    for settings, text in cases:
        with pytest.raises(TLSConfigError) as err:
            build_context(settings)
        assert text in str(err.value) and "\n" not in str(err.value)


def test_listener_pauses_after_a_failed_accept(tmp_path: Path) -> None:
    """accept() failing (no descriptor left) is one line and a pause, not a busy loop."""
    import asyncio
    import socket

    from shardmq.net.tls import TLSListener, TLSServer

    ca = CA(tmp_path)
    server = ca.issue(tmp_path / "server", "localhost", server=True)
    tls = TLSServer(TLSSettings(certfile=str(server.cert), keyfile=str(server.key)), 5.0)

    class Failing(socket.socket):
        calls = 0

        def accept(self):  # type: ignore[no-untyped-def]
            Failing.calls += 1
            raise OSError(24, "Too many open files")

    async def main() -> int:
        loop = asyncio.get_running_loop()
        sock = Failing(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        listener = TLSListener(tls, loop, asyncio.Protocol, sock)
        client = socket.create_connection(sock.getsockname())
        await asyncio.sleep(0.2)  # readable the whole time: a busy loop would call often
        listener.close()
        client.close()
        return Failing.calls

    assert asyncio.run(main()) == 1
