"""Durable users, vhosts, permissions, topic permissions and policies.

Owns: ``access_ops`` (the stored ones as metadata ops, applied at start-up before the
exchanges and queues) and ``record_access`` (after an op of ``ACCESS_KINDS`` applied:
the puts and deletes it means in the ``DefinitionsStore``; the keeper commits them
before the answer, as for a durable declare).

Invariants:
- What is stored is what the metadata holds after the op: a user's salted hash (never a
  password), its tags, the permission patterns and the policy definitions; a deleted
  user or vhost takes its permissions, topic permissions and (vhost) policies with it.
- These definitions are few and change rarely, so a delete may walk the stored ones.
"""

from __future__ import annotations

import json

from shardmq.broker import metadata as md
from shardmq.store.definitions import (
    Definitions,
    DefinitionsStore,
    PermissionDef,
    PolicyDef,
    TopicPermissionDef,
    UserDef,
    VHostDef,
)

ACCESS_KINDS = (
    md.AddVHost,
    md.AddUser,
    md.UpdateUser,
    md.DeleteUser,
    md.SetPermissions,
    md.ClearPermissions,
    md.SetTopicPermissions,
    md.ClearTopicPermissions,
    md.SetPolicy,
    md.ClearPolicy,
)


def access_ops(defs: Definitions) -> list[md.Op]:
    """Vhosts, users, permissions, topic permissions and policies, in that order."""
    ops: list[md.Op] = [md.AddVHost(v.name) for v in defs.vhosts]
    for u in defs.users:
        ops.append(md.AddUser("", u.name, u.password_hash, u.hashing_algorithm, list(u.tags)))
    for p in defs.permissions:
        ops.append(md.SetPermissions(p.vhost, p.user, p.configure, p.write, p.read))
    for t in defs.topic_permissions:
        ops.append(md.SetTopicPermissions(t.vhost, t.user, t.exchange, t.write, t.read))
    for pol in defs.policies:
        ops.append(
            md.SetPolicy(
                pol.vhost,
                pol.name,
                pol.pattern,
                pol.apply_to,
                pol.priority,
                json.dumps(pol.definition),
            )
        )
    return ops


def record_access(store: DefinitionsStore, metadata: md.Metadata, op: md.Op) -> bool:
    """Record what the (applied) access op changed; True when something was."""
    access = metadata.access
    if isinstance(op, md.AddVHost):
        store.put(VHostDef(name=op.vhost))
    elif isinstance(op, md.AddUser | md.UpdateUser):
        u = access.users.get(op.name)
        if u is None:
            return False
        store.put(
            UserDef(
                name=u.name,
                password_hash=u.password_hash,
                hashing_algorithm=u.hashing_algorithm,
                tags=list(u.tags),
            )
        )
    elif isinstance(op, md.DeleteUser):
        stored = store.definitions()
        store.delete(UserDef(name=op.name))
        for p in stored.permissions:
            if p.user == op.name:
                store.delete(p)
        for t in stored.topic_permissions:
            if t.user == op.name:
                store.delete(t)
    elif isinstance(op, md.SetPermissions):
        store.put(
            PermissionDef(
                user=op.user, vhost=op.vhost, configure=op.configure, write=op.write, read=op.read
            )
        )
    elif isinstance(op, md.ClearPermissions):
        store.delete(PermissionDef(user=op.user, vhost=op.vhost))
    elif isinstance(op, md.SetTopicPermissions):
        store.put(
            TopicPermissionDef(
                user=op.user, vhost=op.vhost, exchange=op.exchange, write=op.write, read=op.read
            )
        )
    elif isinstance(op, md.ClearTopicPermissions):
        for t in store.definitions().topic_permissions:
            if t.user == op.user and t.vhost == op.vhost and op.exchange in ("", t.exchange):
                store.delete(t)
    elif isinstance(op, md.SetPolicy):
        store.put(
            PolicyDef(
                vhost=op.vhost,
                name=op.name,
                pattern=op.pattern,
                apply_to=op.apply_to,
                priority=op.priority,
                definition=json.loads(op.definition),
            )
        )
    elif isinstance(op, md.ClearPolicy):
        store.delete(PolicyDef(vhost=op.vhost, name=op.name, pattern=""))
    else:
        return False
    return True


def drop_vhost_access(store: DefinitionsStore, vhost: str) -> None:
    """Vhost ``vhost`` was deleted: its permissions, topic permissions and policies."""
    stored = store.definitions()
    for p in stored.permissions:
        if p.vhost == vhost:
            store.delete(p)
    for t in stored.topic_permissions:
        if t.vhost == vhost:
            store.delete(t)
    for pol in stored.policies:
        if pol.vhost == vhost:
            store.delete(pol)
