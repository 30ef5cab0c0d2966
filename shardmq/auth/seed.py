"""The users a broker starts with when its data directory holds none.

Owns: ``seed_ops`` — the config file's ``[[users]]`` (default: guest/guest,
administrator) as metadata ops: each user added with a salted hash of its password and
full permissions (``.*`` for configure, write and read) on every configured vhost.

Invariant: seeding happens only on an empty user set (a fresh data directory, after its
stored definitions loaded); users managed at run time (``shardmq ctl add_user`` ...) are
never overwritten by the config. Seeded users are saved like any other.
"""

from __future__ import annotations

from typing import Protocol

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


class Recorder(Protocol):
    def after(self, op: md.Op) -> bool: ...


def seed(metadata: md.Metadata, config: Config, keeper: Recorder | None = None) -> int:
    """Apply ``seed_ops`` when ``metadata`` has no users (and save them with ``keeper``,
    the durable definitions, when there is one); returns how many users."""
    if metadata.access.users:
        return 0
    for op in seed_ops(config):
        metadata.apply(op)
        if keeper is not None:
            keeper.after(op)
    return len(config.users)
