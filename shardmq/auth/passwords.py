"""Password hashes in RabbitMQ's format, so users move between RabbitMQ and shardmq.

Owns: ``hash_password`` and ``check_password`` for RabbitMQ's hashing modules
(``rabbit_password_hashing_sha256``, the default, ``..._sha512`` and the legacy
``..._md5``): the stored value is base64 of a 4-byte random salt followed by
H(salt + UTF-8 password).

Invariants: a password is never stored or logged, only its salted hash; comparison is
constant-time; an empty or malformed stored hash matches no password (a user without a
password cannot log in with one, as in RabbitMQ).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable

SHA256 = "rabbit_password_hashing_sha256"
SHA512 = "rabbit_password_hashing_sha512"
MD5 = "rabbit_password_hashing_md5"

_HASHES: dict[str, Callable[[bytes], bytes]] = {
    SHA256: lambda b: hashlib.sha256(b).digest(),
    SHA512: lambda b: hashlib.sha512(b).digest(),
    MD5: lambda b: hashlib.md5(b).digest(),
}
ALGORITHMS = frozenset(_HASHES)
SALT_BYTES = 4


def hash_password(password: str, algorithm: str = SHA256, salt: bytes | None = None) -> str:
    """The stored form of ``password`` (``ValueError`` for an unknown algorithm)."""
    h = _HASHES.get(algorithm)
    if h is None:
        raise ValueError(f"unknown password hashing algorithm '{algorithm}'")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    return base64.b64encode(salt + h(salt + password.encode())).decode()


def check_password(stored: str, password: str, algorithm: str = SHA256) -> bool:
    h = _HASHES.get(algorithm)
    if h is None or not stored:
        return False
    try:
        raw = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) <= SALT_BYTES:
        return False
    salt, digest = raw[:SALT_BYTES], raw[SALT_BYTES:]
    return hmac.compare_digest(digest, h(salt + password.encode()))
