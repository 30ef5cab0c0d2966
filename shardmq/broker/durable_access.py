"""Durable users, vhosts, permissions, topic permissions, policies and limits.

Owns: ``access_ops`` (the stored ones as metadata ops, applied at start-up before the
exchanges and queues), ``limit_ops`` (the vhost and user limits, applied after them) and ``record_access`` (after an op of ``ACCESS_KINDS`` applied:
the puts and deletes it means in the ``DefinitionsStore``; the keeper commits them
before the answer, as for a durable declare).

Invariants:
- What is stored is what the metadata holds after the op: a user's salted hash (never a
  password), its tags, the permission patterns and the policy definitions; a deleted
  user or vhost takes its permissions, topic permissions and (vhost) policies with it;
  limits are kept in the vhost's and the user's own definition (``limits``), as
  RabbitMQ's export keeps a user's.
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
    md.SetVHostLimits,
    md.ClearVHostLimits,
    md.SetUserLimits,
    md.ClearUserLimits,
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


def limit_ops(defs: Definitions) -> list[md.Op]:
    """The stored vhost and user limits: applied after the queues (a lowered
    ``max-queues`` never keeps a stored queue from being recovered)."""
    ops: list[md.Op] = []
    for v in defs.vhosts:
        if v.limits is not None:
            ops.append(md.SetVHostLimits(v.name, json.dumps(v.limits)))
    for u in defs.users:
        if u.limits:
            ops.append(md.SetUserLimits("", u.name, json.dumps(u.limits)))
    return ops


def _vhost_def(metadata: md.Metadata, name: str) -> VHostDef:
    return VHostDef(name=name, limits=metadata.access.limits.vhosts.get(name))


def _user_def(metadata: md.Metadata, name: str) -> UserDef | None:
    access = metadata.access
    u = access.users.get(name)
    if u is None:
        return None
    return UserDef(
        name=u.name,
        password_hash=u.password_hash,
        hashing_algorithm=u.hashing_algorithm,
        tags=list(u.tags),
        limits=dict(access.limits.users.get(name, {})),
    )


def record_access(store: DefinitionsStore, metadata: md.Metadata, op: md.Op) -> bool:
    """Record what the (applied) access op changed; True when something was."""
    if isinstance(op, md.AddVHost | md.SetVHostLimits | md.ClearVHostLimits):
        if op.vhost not in metadata.vhosts:
            return False
        store.put(_vhost_def(metadata, op.vhost))
    elif isinstance(op, md.AddUser | md.UpdateUser | md.SetUserLimits | md.ClearUserLimits):
        user = _user_def(
            metadata, op.user if isinstance(op, md.SetUserLimits | md.ClearUserLimits) else op.name
        )
        if user is None:
            return False
        store.put(user)
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
