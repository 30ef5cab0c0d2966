"""Password hashes (RabbitMQ's format), users and permissions, loopback-only users."""

from __future__ import annotations

import base64
import hashlib

import pytest

from loadtest.inproc import make_broker, new_connection
from shardmq.auth.access import Access, Permission, User
from shardmq.auth.authorize import Authorizer, needs
from shardmq.auth.passwords import MD5, SHA256, SHA512, check_password, hash_password
from shardmq.broker import metadata as md
from shardmq.broker.broker import Broker
from shardmq.broker.connection import is_loopback
from shardmq.config import load_config


def test_hash_is_rabbitmqs_salt_then_sha256_of_salt_and_password() -> None:
    salt = b"\x90\x8d\xc6\x0a"
    stored = hash_password("test12", SHA256, salt)
    raw = base64.b64decode(stored)
    assert raw[:4] == salt and raw[4:] == hashlib.sha256(salt + b"test12").digest()
    assert check_password(stored, "test12") and not check_password(stored, "test13")
    # a hash RabbitMQ 3.10 produced for the password 's3cret-é'
    assert check_password("sZznE05XyuqQarcjJLJjHVz8YUrDxJJNFH0gbG7/ehTbcL/9", "s3cret-é")
    for algorithm in (SHA512, MD5):
        assert check_password(hash_password("pw", algorithm), "pw", algorithm)
    # a different salt each time; malformed or empty hashes match nothing
    assert hash_password("pw") != hash_password("pw")
    for bad in ("", "not base64!", base64.b64encode(b"abc").decode()):
        assert not check_password(bad, "pw")
    with pytest.raises(ValueError):
        hash_password("pw", "rabbit_password_hashing_rot13")


def test_permissions_are_searched_and_empty_grants_nothing() -> None:
    p = Permission.make("u", "/", "^cfg", "", ".*")
    assert p.allows("configure", "cfg-1") and not p.allows("configure", "x-cfg")
    assert not p.allows("write", "anything") and not p.allows("write", "amq.default")
    assert p.allows("read", "x")
    access = Access()
    access.put_user(User("u", hash_password("pw")))
    access.set_permission(p)
    assert access.authenticate("u", "pw") is not None and access.authenticate("u", "x") is None
    access.delete_user("u")
    assert access.permission("u", "/") is None


def test_needs_maps_ops_to_rabbitmqs_permissions() -> None:
    assert needs(md.DeclareQueue("/", "q", False, True, False, False, b"", 1, False)) == [
        ("configure", "queue", "q")
    ]
    assert needs(md.DeclareQueue("/", "q", True, True, False, False, b"", 1, False)) == []
    assert needs(md.Bind("/", True, "q", "", "k", b"", 1)) == [
        ("write", "queue", "q"),
        ("read", "exchange", "amq.default"),
    ]
    assert needs(md.Unbind("/", False, "dx", "sx", "k", b"", 1)) == [
        ("write", "exchange", "dx"),
        ("read", "exchange", "sx"),
    ]
    access = Access()
    access.set_permission(Permission.make("u", "/", "", "^w", ""))
    authz = Authorizer(access, "u", make_broker().vhosts["/"])
    authz.check_publish(b"\x02wx\x01k")
    with pytest.raises(Exception, match="access to exchange 'amq.default' in vhost '/'"):
        authz.check_publish(b"\x00\x01k")


def test_publish_fast_flag_follows_every_permission_change() -> None:
    """The publish path tests only ``Authorizer.fast``: every change of users or
    permissions must clear it on every live authorizer, and the next check decides
    again from the new permissions."""
    access = Access()
    access.set_permission(Permission.make("u", "/", ".*", ".*", ".*"))
    vhost = make_broker().vhosts["/"]
    authz = Authorizer(access, "u", vhost)
    other = Authorizer(access, "u", vhost)
    assert authz.fast and other.fast
    access.set_permission(Permission.make("u", "/", ".*", "^w", ".*"))
    assert not authz.fast and not other.fast
    authz.check_publish(b"\x02wx\x01k")  # decides again: still not fast (restricted)
    assert not authz.fast
    with pytest.raises(Exception, match="access to exchange 'amq.default' in vhost '/'"):
        authz.check_publish(b"\x00\x01k")
    access.set_permission(Permission.make("u", "/", ".*", ".*", ".*"))
    authz.check_publish(b"\x00\x01k")
    assert authz.fast  # unrestricted again
    access.put_user(User("v", hash_password("pw")))  # any change, even another user's
    assert not authz.fast
    del other  # a closed connection's authorizer is not kept alive by the watch
    assert len(access._watchers) == 1


def test_loopback_users_may_only_log_in_over_loopback() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("[::1]:5000")
    assert is_loopback("::ffff:127.0.0.1:5000")
    assert not is_loopback("10.1.2.3:5000") and not is_loopback("test")
    broker = make_broker()
    broker.metadata.apply(md.AddUser("", "bob", hash_password("pw"), SHA256, []))
    remote = new_connection(broker, "10.1.2.3:5000").domain
    assert not remote.login("guest", "guest")
    assert remote.login("bob", "pw")
    assert new_connection(broker, "127.0.0.1:5000").domain.login("guest", "guest")
    config = load_config()
    config.auth.loopback_users = []
    open_broker = Broker(config)
    assert new_connection(open_broker, "10.1.2.3:5000").domain.login("guest", "guest")


def test_watchers_still_told_after_their_set_is_rebuilt() -> None:
    access = Access()

    class Watcher:
        told = 0

        def stale(self) -> None:
            self.told += 1

    kept = [Watcher() for _ in range(3)]
    gone = [Watcher() for _ in range(2000)]
    for w in kept + gone:
        access.watch(w)
    del gone, w
    access.shrink_watchers()
    assert len(access._watchers) == 3
    access.put_user(User("u", hash_password("pw")))
    assert [w.told for w in kept] == [1, 1, 1]
