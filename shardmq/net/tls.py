"""TLS for the AMQPS listener: the server's ``SSLContext`` and the client certificate's
identity.

Owns: ``build_context`` (an ``ssl.SSLContext`` from ``TLSSettings``: certificate and
key, CA file, peer verification, versions, ciphers; ``TLSConfigError`` with one line
an operator can act on), ``TLSServer`` (the context in use, replaced by ``reload`` on
SIGHUP; ``adopt``: an accepted socket's handshake, then the AMQP protocol) and
``TLSListener`` (the accept loop of the AMQPS listening socket), ``TLSPeer`` (what a connection knows of its TLS
peer: the user name EXTERNAL would log in as) and ``peer_identity`` (that name from a
verified certificate, per ``ssl_cert_login_from``, in RabbitMQ's formats).

Invariants:
- ``build_context`` reads every file it names each time it is called (a SIGHUP builds a
  new context; connections made with the old one keep it) and never raises anything but
  ``TLSConfigError``; the message never contains key material.
- Every accepted socket, listened for or handed off, is wrapped with the context current
  when it was accepted (``loop.connect_accepted_socket(ssl=...)``): a reload never
  touches open connections. The AMQP protocol is made for the socket but sees it
  (``connection_made``) only once the handshake is done.
- A failed handshake (not TLS, truncated, timed out, certificate refused) is one
  warning line naming the peer and OpenSSL's reason; the socket is closed and the AMQP
  protocol is never made.
- A socket in its handshake counts for admission (``admission``, set by
  ``shardmq.net.server.serve``) as an unauthenticated connection of its address from
  accept until the handshake ends: the fd alarm and
  ``max_unauthenticated_per_address`` refuse a flood of handshakes that never finish
  (closed at once, before any TLS byte), as they refuse plain connections.
- A peer identity exists only for a certificate OpenSSL verified against ``cacertfile``
  (``verify_peer``); with ``verify_none`` no certificate is requested, so EXTERNAL is
  never offered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardmq.net.tls_settings import TLSSettings

if TYPE_CHECKING:
    from shardmq.net.limits import Admission

log = logging.getLogger("shardmq.tls")

_VERSIONS = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}
# OpenSSL's short names (as ``openssl x509 -nameopt RFC2253`` and RabbitMQ print them)
_SHORT = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


class TLSConfigError(Exception):
    """The ``[tls]`` settings cannot make a context: ``str()`` is the one line to log."""


def _readable(setting: str, path: str) -> None:
    if not os.path.isfile(path):
        raise TLSConfigError(f"tls.{setting} {path}: no such file: fix the path")
    if not os.access(path, os.R_OK):
        raise TLSConfigError(
            f"tls.{setting} {path}: not readable by user {os.geteuid()}: fix its permissions"
        )


def build_context(tls: TLSSettings) -> ssl.SSLContext:
    """The server context for ``tls`` (``TLSConfigError`` when it cannot be made)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = sorted(_VERSIONS[v] for v in tls.versions)
    ctx.minimum_version = versions[0]
    ctx.maximum_version = versions[-1]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _readable("certfile", tls.certfile)
    if tls.keyfile:
        _readable("keyfile", tls.keyfile)
    try:
        ctx.load_cert_chain(tls.certfile, tls.keyfile or None)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TLSConfigError(
                f"tls.keyfile {tls.keyfile} does not match the certificate in tls.certfile "
                f"{tls.certfile}: configure the key of that certificate"
            ) from None
        raise TLSConfigError(
            f"tls.certfile {tls.certfile} / tls.keyfile {tls.keyfile or '(in certfile)'}: "
            f"not a PEM certificate and its private key ({exc.reason or exc}): fix the files"
        ) from None
    if tls.cacertfile:
        _readable("cacertfile", tls.cacertfile)
        try:
            ctx.load_verify_locations(cafile=tls.cacertfile)
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"tls.cacertfile {tls.cacertfile}: no PEM CA certificate in it "
                f"({exc.reason or exc}): fix the file"
            ) from None
    elif tls.verify == "verify_peer":
        raise TLSConfigError(
            'tls.verify = "verify_peer" needs tls.cacertfile (the CAs client '
            "certificates must chain to): set it"
        )
    if tls.verify == "verify_peer":
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.fail_if_no_peer_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if tls.ciphers:
        try:
            ctx.set_ciphers(":".join(tls.ciphers))
        except ssl.SSLError:
            raise TLSConfigError(
                f"tls.ciphers: OpenSSL knows none of {tls.ciphers}: fix the list"
            ) from None
    return ctx


def _escape(value: str) -> str:
    """An attribute value as RFC 4514 writes it."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def distinguished_name(subject: Any) -> str:
    """``getpeercert()['subject']`` as RabbitMQ's ``distinguished_name``: RFC 4514, the
    last RDN first (``CN=name,O=org,C=US``)."""
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(rdns)


def peer_identity(cert: dict[str, Any], login_from: str) -> str | None:
    """The user name in a verified peer certificate (``getpeercert()``), or None."""
    subject = cert.get("subject") or ()
    if login_from == "distinguished_name":
        return distinguished_name(subject) or None
    if login_from == "subject_alternative_name":
        # RabbitMQ's default: the first SAN (ssl_cert_login_san_index 0)
        for _kind, value in cert.get("subjectAltName") or ():
            return str(value)
        return None
    # common_name: the first CN
    names = [v for rdn in subject for k, v in rdn if k == "commonName"]
    return names[0] if names else None


@dataclass(frozen=True, slots=True)
class TLSPeer:
    """A connection's TLS side: the negotiated version and the user name of the
    verified client certificate (None: no verified certificate, no EXTERNAL)."""

    version: str
    user: str | None


def tls_peer(ssl_object: Any, login_from: str) -> TLSPeer:
    """``TLSPeer`` of a handshaken ``ssl.SSLObject`` (``transport.get_extra_info``)."""
    version = str(ssl_object.version() or "")
    try:
        cert = ssl_object.getpeercert()
    except (ValueError, ssl.SSLError):
        cert = None
    user = peer_identity(cert, login_from) if cert else None
    return TLSPeer(version, user)


# ---------------------------------------------------------------------- accepting
ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).lower().replace("_", " ")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "taking longer" in str(exc):
        return "timed out (amqp.handshake_timeout)"
    if isinstance(exc, (ConnectionError, EOFError)):
        return "the client closed the connection"
    return f"{type(exc).__name__}: {exc}"


class _Handshaking:
    """A socket in its TLS handshake, as admission sees it: not yet opened."""

    __slots__ = ()
    opened = False


class TLSServer:
    """The TLS side of the AMQPS listener: ``context`` (the current ``SSLContext``),
    ``reload`` (a new context from new settings; the old one is kept if that fails,
    logged), ``adopt`` (one accepted socket through its handshake to the AMQP protocol)
    and ``listen`` (accept on a listening socket until ``close``)."""

    def __init__(self, settings: TLSSettings, handshake_timeout: float) -> None:
        self.settings = settings
        self.handshake_timeout = handshake_timeout
        self.context = build_context(settings)
        self.admission: Admission | None = None  # set by the server that listens

    def reload(self, settings: TLSSettings) -> bool:
        try:
            context = build_context(settings)
        except TLSConfigError as exc:
            log.error("TLS reload: %s; keeping the current certificates", exc)
            return False
        self.settings = settings
        self.context = context
        log.info("TLS certificates reloaded from %s", settings.certfile)
        return True

    def adopt(
        self, loop: asyncio.AbstractEventLoop, factory: ProtocolFactory, sock: socket.socket
    ) -> asyncio.Task[None]:
        """Serve the accepted ``sock`` with ``factory``'s protocol once its handshake with
        the current context is done; a failed handshake is one log line, ``sock``
        closed."""
        return loop.create_task(self._adopt(loop, factory, sock))

    async def _adopt(
        self, loop: asyncio.AbstractEventLoop, factory: ProtocolFactory, sock: socket.socket
    ) -> None:
        try:
            peer = sock.getpeername()
            where = f"{peer[0]}:{peer[1]}"
            address = str(peer[0])
        except OSError:
            where = address = "(gone)"
        admission = self.admission
        gate = _Handshaking()
        if admission is not None and not admission.admit(gate, address):
            admission.closed(gate, address)  # refused: logged once by admission
            sock.close()
            return
        try:
            sock.setblocking(False)
            await loop.connect_accepted_socket(
                factory,  # type: ignore[arg-type]
                sock,
                ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except Exception as exc:
            log.warning("connection %s: TLS handshake failed: %s", where, _reason(exc))
            sock.close()
        finally:
            if admission is not None:
                admission.closed(gate, address)

    def listen(
        self, loop: asyncio.AbstractEventLoop, factory: ProtocolFactory, sock: socket.socket
    ) -> TLSListener:
        return TLSListener(self, loop, factory, sock)


class TLSListener:
    """Accepts on a listening socket (its own reader on ``loop``, at most
    ``ACCEPT_BATCH`` per wake-up) and hands each socket to ``TLSServer.adopt``."""

    ACCEPT_BATCH = 64
    ACCEPT_RETRY = 0.5  # seconds without accepting after accept failed (no descriptor)

    def __init__(
        self,
        server: TLSServer,
        loop: asyncio.AbstractEventLoop,
        factory: ProtocolFactory,
        sock: socket.socket,
    ) -> None:
        self.server = server
        self.loop = loop
        self.factory = factory
        self.sock = sock
        self._retry: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        sock.listen(1024)
        loop.add_reader(sock.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        for _ in range(self.ACCEPT_BATCH):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and the like: stop listening for a while instead of spinning
                # on a socket that stays readable (one line per pause)
                log.warning("TLS accept failed: %s; retrying in %g s", exc, self.ACCEPT_RETRY)
                self.loop.remove_reader(self.sock.fileno())
                self._retry = self.loop.call_later(self.ACCEPT_RETRY, self._resume)
                return
            self.server.adopt(self.loop, self.factory, conn)

    def _resume(self) -> None:
        self._retry = None
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._on_accept)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
