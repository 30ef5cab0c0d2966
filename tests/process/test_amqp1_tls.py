"""AMQP 1.0 over the AMQPS listener with Qpid Proton (``SSLDomain``): SASL EXTERNAL with
a client certificate the broker verified logs in as the certificate's user, and is
refused without one (not offered: no verified certificate, or the plain port), as for
0-9-1 (``test_tls.py``, whose certificates and broker set-up this reuses); 1 and 3
workers."""

from __future__ import annotations

import pytest
from proton import ConnectionException, Message, SSLDomain
from proton.utils import BlockingConnection

from tests.support.ctl import ctl
from tests.support.tlscerts import Issued

from .served import ServeFactory, serve
from .test_tls import MODES, PKI, TLSBroker, pki, start

__all__ = ["pki", "serve"]

pytestmark = pytest.mark.timeout(180)


def _domain(broker: TLSBroker, cert: Issued | None) -> SSLDomain:
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    domain.set_trusted_ca_db(str(broker.pki.ca.path))
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER)
    if cert is not None:
        domain.set_credentials(str(cert.cert), str(cert.key), None)
    return domain


def _external(
    broker: TLSBroker, cert: Issued | None, port: int | None = None
) -> BlockingConnection:
    scheme = "amqps" if port is None else "amqp"
    return BlockingConnection(
        f"{scheme}://127.0.0.1:{port or broker.tls_port}",
        timeout=10,
        ssl_domain=_domain(broker, cert) if port is None else None,
        allowed_mechs="EXTERNAL",
    )


@pytest.mark.parametrize("mode", MODES[:2])
def test_amqp1_external_with_client_certificate(
    serve: ServeFactory, pki: PKI, mode: tuple[int, str]
) -> None:
    broker = start(
        serve,
        pki,
        mode,
        tls={"verify": "verify_peer"},
        auth={"mechanisms": ["PLAIN", "AMQPLAIN", "EXTERNAL"]},
    )
    served = broker.served
    assert ctl(served, "add_user", "tlsuser", "unused-password").returncode == 0
    assert ctl(served, "set_permissions", "tlsuser", ".*", ".*", ".*").returncode == 0
    with broker.connect() as conn:  # pika, PLAIN over TLS: the queue
        conn.channel().queue_declare("a1-tls-external")
    for _ in range(3):  # several connections: with 3 workers, more than one serves them
        c = _external(broker, pki.client)
        try:
            c.create_sender("/queues/a1-tls-external").send(
                Message(body=b"by certificate", user_id=b"tlsuser")  # checked: the login's
            )
            r = c.create_receiver("/queues/a1-tls-external", credit=1)
            assert bytes(r.receive(timeout=10).body) == b"by certificate"
            r.accept()
        finally:
            c.close()
    # no client certificate: EXTERNAL is not offered, the login fails
    with pytest.raises(ConnectionException):
        _external(broker, None)
    # nor on the plain port
    with pytest.raises(ConnectionException):
        _external(broker, None, port=served.port)
    assert "Traceback" not in broker.log()


def test_amqp1_external_needs_the_mechanism_configured(serve: ServeFactory, pki: PKI) -> None:
    """As for 0-9-1, EXTERNAL is offered only when ``[auth] mechanisms`` names it."""
    broker = start(serve, pki, (1, "reuseport"), tls={"verify": "verify_peer"})
    served = broker.served
    assert ctl(served, "add_user", "tlsuser", "unused-password").returncode == 0
    with pytest.raises(ConnectionException):
        _external(broker, pki.client)
    assert "Traceback" not in broker.log()
