"""Users and their permissions per virtual host: the state every worker replicates.

Owns: ``User``, ``Permission`` and ``Access`` (the users by name and the permissions by
(vhost, user)), changed only by the metadata ops in ``shardmq.broker.metadata`` so that
every worker holds the same users and permissions in the same order of changes.

Invariants:
- Users hold only salted password hashes (``shardmq.auth.passwords``), never passwords.
- A permission's three patterns are regexes searched in resource names (RabbitMQ's
  ``re:run``); an empty pattern grants nothing (RabbitMQ reads it as ``^$``).
- Deleting a user deletes its permissions and limits; deleting a vhost deletes the
  permissions in it and its limits.
"""

from __future__ import annotations

import functools
import re
import weakref
from dataclasses import dataclass, field
from typing import Any

from shardmq.auth.limits import Limits
from shardmq.auth.passwords import SHA256, check_password

TAGS = ("administrator", "monitoring", "policymaker", "management", "impersonator")


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    hashing_algorithm: str = SHA256
    tags: tuple[str, ...] = ()

    def check(self, password: str) -> bool:
        return check_password(self.password_hash, password, self.hashing_algorithm)


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern if pattern else "^$")


@dataclass(frozen=True)
class Permission:
    user: str
    vhost: str
    configure: str
    write: str
    read: str
    _res: tuple[re.Pattern[str], ...] = field(compare=False, repr=False, default=())

    @classmethod
    def make(cls, user: str, vhost: str, configure: str, write: str, read: str) -> Permission:
        """``re.error`` when a pattern is not a regex."""
        res = (_compile(configure), _compile(write), _compile(read))
        return cls(user, vhost, configure, write, read, res)

    def allows(self, kind: str, name: str) -> bool:
        """``kind`` is "configure", "write" or "read"."""
        regex = self._res[("configure", "write", "read").index(kind)]
        return regex.search(name) is not None


@dataclass(frozen=True)
class TopicPermission:
    """Write/read regexes on the routing keys of one topic exchange; ``{username}`` and
    ``{vhost}`` in a pattern stand for the connection's user and vhost."""

    user: str
    vhost: str
    exchange: str
    write: str
    read: str

    def allows(self, kind: str, routing_key: str) -> bool:
        pattern = self.write if kind == "write" else self.read
        pattern = pattern.replace("{username}", re.escape(self.user))
        pattern = pattern.replace("{vhost}", re.escape(self.vhost))
        return _cached(pattern).search(routing_key) is not None


@functools.lru_cache(maxsize=1024)
def _cached(pattern: str) -> re.Pattern[str]:
    return _compile(pattern)


class Access:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.permissions: dict[tuple[str, str], Permission] = {}  # (vhost, user)
        # (vhost, user) -> exchange -> its topic permission
        self.topics: dict[tuple[str, str], dict[str, TopicPermission]] = {}
        self.version = 0  # changes with every change of users or permissions
        self.limits = Limits()  # per vhost and per user (``shardmq.auth.limits``)
        # whoever caches a decision (``Authorizer``) and must drop it on a change
        self._watchers: weakref.WeakSet[Any] = weakref.WeakSet()

    def watch(self, watcher: Any) -> None:
        """``watcher.stale()`` is called at every change of users or permissions (held
        weakly: a closed connection's ``Authorizer`` just goes)."""
        self._watchers.add(watcher)

    def shrink_watchers(self) -> None:
        """Rebuild the watcher set so its table fits what is left (after a flood of
        connections, ``net.memtrim``)."""
        self._watchers = weakref.WeakSet(list(self._watchers))

    def _changed(self) -> None:
        self.version += 1
        for w in list(self._watchers):
            w.stale()

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        if user is None or not user.check(password):
            return None
        return user

    def permission(self, user: str, vhost: str) -> Permission | None:
        return self.permissions.get((vhost, user))

    def put_user(self, user: User) -> None:
        self.users[user.name] = user
        self._changed()

    def delete_user(self, name: str) -> bool:
        if self.users.pop(name, None) is None:
            return False
        for key in [k for k in self.permissions if k[1] == name]:
            del self.permissions[key]
        for key in [k for k in self.topics if k[1] == name]:
            del self.topics[key]
        self.limits.user_deleted(name)
        self._changed()
        return True

    def set_permission(self, perm: Permission) -> None:
        self.permissions[(perm.vhost, perm.user)] = perm
        self._changed()

    def clear_permission(self, vhost: str, user: str) -> bool:
        self._changed()
        return self.permissions.pop((vhost, user), None) is not None

    def set_topic_permission(self, perm: TopicPermission) -> None:
        self.topics.setdefault((perm.vhost, perm.user), {})[perm.exchange] = perm
        self._changed()

    def clear_topic_permissions(self, vhost: str, user: str, exchange: str | None) -> None:
        """Remove ``user``'s topic permission on ``exchange`` (None: on every one)."""
        mine = self.topics.get((vhost, user))
        if mine is not None:
            if exchange is None:
                mine.clear()
            else:
                mine.pop(exchange, None)
            if not mine:
                del self.topics[(vhost, user)]
        self._changed()

    def vhost_deleted(self, vhost: str) -> None:
        for key in [k for k in self.permissions if k[0] == vhost]:
            del self.permissions[key]
        for key in [k for k in self.topics if k[0] == vhost]:
            del self.topics[key]
        self.limits.vhost_deleted(vhost)
        self._changed()
