"""The users a broker starts with when its data directory holds none.

Owns: ``seed_ops`` — the config file's ``[[users]]`` (default: guest/guest,
administrator) as metadata ops: each user added with a salted hash of its password and
full permissions (``.*`` for configure, write and read) on every configured vhost.

Invariant: seeding happens only on an empty user set (a fresh data directory); users
managed at run time (``shardmq ctl add_user`` ...) are never overwritten by the config.
"""

from __future__ import annotations

from shardmq.auth.passwords import SHA256, hash_password
from shardmq.broker import metadata as md
from shardmq.config import Config


def seed_ops(config: Config) -> list[md.Op]:
    ops: list[md.Op] = []
    vhosts = config.vhosts or ["/"]
    for user in config.users:
        ops.append(md.AddUser("", user.name, hash_password(user.password), SHA256, list(user.tags)))
        for vhost in vhosts:
            ops.append(md.SetPermissions(vhost, user.name, ".*", ".*", ".*"))
    return ops


def seed(metadata: md.Metadata, config: Config) -> int:
    """Apply ``seed_ops`` when ``metadata`` has no users; returns how many users."""
    if metadata.access.users:
        return 0
    for op in seed_ops(config):
        metadata.apply(op)
    return len(config.users)
