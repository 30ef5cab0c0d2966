"""The ``[tls]`` section of the config file (RabbitMQ's ``listeners.ssl`` and
``ssl_options``).

Owns: ``TLSSettings``: ``port`` (5671), ``certfile``, ``keyfile``, ``cacertfile``,
``verify`` (``verify_none`` | ``verify_peer``), ``fail_if_no_peer_cert``,
``ssl_cert_login_from`` (the certificate field EXTERNAL takes the user name from),
``versions`` and ``ciphers``. Only the names and values are checked here; the files
are read when the listener's context is built (``shardmq.net.tls``).

Invariants: the TLS listener is on exactly when ``certfile`` is set (``enabled``);
TLS 1.2 is the minimum unless ``versions`` says otherwise.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

TLSVersion = Literal["tlsv1.2", "tlsv1.3"]


class TLSSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    port: Annotated[int, Meta(ge=0, le=65535)] = 5671
    certfile: str = ""
    keyfile: str = ""  # empty: the key is in certfile
    cacertfile: str = ""  # CAs that client certificates must chain to
    verify: Literal["verify_none", "verify_peer"] = "verify_none"
    fail_if_no_peer_cert: bool = False
    ssl_cert_login_from: Literal[
        "common_name", "distinguished_name", "subject_alternative_name"
    ] = "common_name"
    versions: list[TLSVersion] = msgspec.field(default_factory=lambda: ["tlsv1.2", "tlsv1.3"])
    # OpenSSL cipher names for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults); empty:
    # OpenSSL's default list
    ciphers: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError("tls.versions must name at least one version")
        if self.fail_if_no_peer_cert and self.verify != "verify_peer":
            raise ValueError('tls.fail_if_no_peer_cert needs tls.verify = "verify_peer"')

    @property
    def enabled(self) -> bool:
        return bool(self.certfile)
