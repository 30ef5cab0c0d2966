"""Metadata operations: every change to exchanges, queues and bindings, as data.

Owns: the ``Op`` structs (what a client's declare / delete / bind asks for), their
wire encoding, and ``Metadata`` — a set of vhosts that applies ops deterministically.

Invariants:
- Applying the same ops in the same order to two ``Metadata`` replicas gives the same
  exchanges, queues and bindings (and raises the same errors): that is what lets one
  sequencer order changes and every worker replay them.
- Checks that need a queue's live state (if-unused, if-empty, message counts) are made
  only where the queue lives (``Queue``, not ``RemoteQueue``); the sequencer asks the
  owner first, so every other replica can apply without them.
- Exclusive ownership is a connection id (``gid``), never an object, so it means the
  same thing in every process.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import zlib
from collections.abc import Callable
from typing import Any

import msgspec

from shardmq.amqp.errors import NOT_FOUND, PRECONDITION_FAILED, AMQPError, HardError, SoftError
from shardmq.amqp.fieldtable import decode_table, encode_table
from shardmq.auth.access import Access, Permission, TopicPermission, User
from shardmq.auth.limits import LimitError, parse_limits, queue_limit_refused
from shardmq.broker.exchange import Exchange
from shardmq.broker.policies import PolicyError, make_policy
from shardmq.broker.queue import Queue
from shardmq.broker.vhost import AnyQueue, QueueFactory, VHost


class Op(msgspec.Struct, tag=True, tag_field="op", array_like=True, frozen=True):
    vhost: str


class DeclareExchange(Op, frozen=True):
    name: str
    type: str
    passive: bool
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: bytes


class DeleteExchange(Op, frozen=True):
    name: str
    if_unused: bool


class Bind(Op, frozen=True):
    dest_is_queue: bool
    dest: str
    source: str
    routing_key: str
    arguments: bytes
    requester: int


class Unbind(Bind, frozen=True):
    pass


class DeclareQueue(Op, frozen=True):
    name: str
    passive: bool
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: bytes
    requester: int
    server_named: bool = False


class DeleteQueue(Op, frozen=True):
    name: str
    if_unused: bool
    if_empty: bool
    requester: int  # 0: the broker itself (auto-delete, exclusive owner gone)


class DropOwners(Op, frozen=True):
    """Delete the exclusive queues of every connection of worker ``slot`` (it died)."""

    slot: int


class SetPolicy(Op, frozen=True):
    """Create or replace policy ``name`` (validated by ``policies.make_policy`` first;
    ``definition`` is its JSON text)."""

    name: str
    pattern: str
    apply_to: str
    priority: int
    definition: str


class ClearPolicy(Op, frozen=True):
    name: str


class AddVHost(Op, frozen=True):
    """Create vhost ``vhost`` with its amq.* exchanges (no-op when it exists)."""


class DeleteVHost(Op, frozen=True):
    """Delete vhost ``vhost``: its queues (with their messages), exchanges, bindings,
    policies and permissions; its connections are closed (``on_access_change``)."""


class AddUser(Op, frozen=True):
    """Create a user (``vhost`` unused: ""); refused when it exists."""

    name: str
    password_hash: str
    hashing_algorithm: str
    tags: list[str]


class UpdateUser(Op, frozen=True):
    """Change an existing user's password hash and/or tags (None: unchanged)."""

    name: str
    password_hash: str | None
    hashing_algorithm: str | None
    tags: list[str] | None


class DeleteUser(Op, frozen=True):
    """Delete a user and its permissions; its connections are closed."""

    name: str


class SetPermissions(Op, frozen=True):
    user: str
    configure: str
    write: str
    read: str


class ClearPermissions(Op, frozen=True):
    user: str


class SetTopicPermissions(Op, frozen=True):
    user: str
    exchange: str
    write: str
    read: str


class ClearTopicPermissions(Op, frozen=True):
    """``exchange`` "": every topic permission of ``user`` in ``vhost``."""

    user: str
    exchange: str


class SetVHostLimits(Op, frozen=True):
    """Set vhost ``vhost``'s limits (``limits``: a JSON object, validated by
    ``shardmq.auth.limits.parse_limits``); ``merge``: into the ones set (the management
    API's PUT of one limit), else replacing them (``set_vhost_limits``)."""

    limits: str
    merge: bool = False


class ClearVHostLimits(Op, frozen=True):
    """``name`` "": every limit of the vhost."""

    name: str = ""


class SetUserLimits(Op, frozen=True):
    """Merge ``limits`` (a JSON object) into user ``user``'s (``vhost`` unused: "")."""

    user: str
    limits: str


class ClearUserLimits(Op, frozen=True):
    """``name`` "all": every limit of the user."""

    user: str
    name: str


class QueueInfo(msgspec.Struct, array_like=True, frozen=True):
    name: str
    message_count: int
    consumer_count: int


AnyOp = (
    DeclareExchange
    | DeleteExchange
    | Bind
    | Unbind
    | DeclareQueue
    | DeleteQueue
    | DropOwners
    | SetPolicy
    | ClearPolicy
    | AddVHost
    | DeleteVHost
    | AddUser
    | UpdateUser
    | DeleteUser
    | SetPermissions
    | ClearPermissions
    | SetTopicPermissions
    | ClearTopicPermissions
    | SetVHostLimits
    | ClearVHostLimits
    | SetUserLimits
    | ClearUserLimits
)

# Ops that change who may do what: the broker closes connections they affect.
ACCESS_OPS = (DeleteVHost, DeleteUser)

# What ``Metadata.apply`` returns: QueueInfo for queue.declare, the message count for
# queue.delete, None for the rest.
OpResult = QueueInfo | int | None
# An error as it crosses between processes (``error_of``); a list once it went through
# msgpack.
ErrorData = tuple[bool, int, str, int, int] | list[Any]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyOp)


def encode_op(op: Op) -> bytes:
    return _encoder.encode(op)


def decode_op(data: bytes) -> AnyOp:
    return _decoder.decode(data)


def server_named_queue() -> str:
    return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def table_bytes(arguments: dict[str, Any] | None) -> bytes:
    return encode_table(arguments) if arguments else b""


def table_of(data: bytes) -> dict[str, Any]:
    return decode_table(data, 0)[0] if data else {}


def shard_for(vhost: str, queue: str, workers: int) -> int:
    """The worker that owns a queue: a stable hash (never Python's salted ``hash``)."""
    return zlib.crc32(f"{vhost}\0{queue}".encode()) % workers


def gid_slot(gid: int) -> int:
    return gid >> 32


class Metadata:
    """The vhosts of one process, changed only through ``apply``."""

    def __init__(self, vhost_names: list[str], queue_factory: QueueFactory) -> None:
        self.queue_factory = queue_factory
        self.vhosts: dict[str, VHost] = {}
        self.version = 0
        self.on_queue_deleted: Callable[[AnyQueue], None] = lambda q: None
        # called after an op of ``ACCESS_OPS`` applied (the broker closes connections)
        self.on_access_change: Callable[[Op], None] = lambda op: None
        self.access = Access()
        for name in vhost_names:
            self.add_vhost(name)

    def add_vhost(self, name: str) -> VHost:
        vh = self.vhosts.get(name)
        if vh is None:
            vh = self.vhosts[name] = VHost(name, self.queue_factory)
            vh.on_queue_deleted = self._queue_deleted
        return vh

    def _queue_deleted(self, q: AnyQueue) -> None:
        self.on_queue_deleted(q)

    def delete_vhost(self, name: str) -> bool:
        """Remove vhost ``name`` and everything in it (False: there was none)."""
        vh = self.vhosts.get(name)
        if vh is None:
            return False
        for q in list(vh.queues.values()):
            vh.remove_queue(q)
        del self.vhosts[name]
        self.access.vhost_deleted(name)
        return True

    def vhost(self, name: str) -> VHost:
        vh = self.vhosts.get(name)
        if vh is None:
            raise HardError(530, f"vhost {name} not found")
        return vh

    def apply(self, op: Op) -> OpResult:
        """Apply one op; returns its result (QueueInfo for queue declare, a message
        count for queue delete, else None). Raises the AMQP error a client would get."""
        handler = _APPLY[type(op)]
        result = handler(self, op)
        self.version += 1
        if isinstance(op, ACCESS_OPS):
            self.on_access_change(op)
        return result

    def owner_check(self, op: Op) -> bool:
        """True when ``op`` must first be applied where its queue lives."""
        return isinstance(op, DeclareQueue | DeleteQueue)


def _declare_exchange(md: Metadata, op: DeclareExchange) -> None:
    vh = md.vhost(op.vhost)
    vh.declare_exchange(
        op.name,
        op.type,
        passive=op.passive,
        durable=op.durable,
        auto_delete=op.auto_delete,
        internal=op.internal,
        arguments=table_of(op.arguments),
    )
    ex = vh.exchanges.get(op.name)
    if ex is not None and not op.passive:
        vh.assign_policy(ex)


def _delete_exchange(md: Metadata, op: DeleteExchange) -> None:
    md.vhost(op.vhost).delete_exchange(op.name, if_unused=op.if_unused)


def _bind_dest(vh: VHost, op: Bind) -> AnyQueue | Exchange:
    vh.check_binding_ends(op.dest_is_queue, op.dest, op.source)
    if op.dest_is_queue:
        return vh.queue(op.dest, op.requester)
    return vh.exchange(op.dest)


def _bind(md: Metadata, op: Bind) -> None:
    vh = md.vhost(op.vhost)
    vh.bind(_bind_dest(vh, op), op.source, op.routing_key, table_of(op.arguments))


def _unbind(md: Metadata, op: Unbind) -> None:
    md.vhost(op.vhost).unbind(
        op.dest_is_queue, op.dest, op.source, op.routing_key, table_of(op.arguments), op.requester
    )


def _declare_queue(md: Metadata, op: DeclareQueue) -> QueueInfo:
    vh = md.vhost(op.vhost)
    if not op.passive and op.name not in vh.queues:
        limit = md.access.limits.vhost(op.vhost, "max-queues")
        if limit >= 0 and len(vh.queues) >= limit:
            raise queue_limit_refused(op.name, op.vhost, limit)
    q = vh.declare_queue(
        op.name,
        op.requester,
        passive=op.passive,
        durable=op.durable,
        exclusive=op.exclusive,
        auto_delete=op.auto_delete,
        arguments=table_of(op.arguments),
        server_named=op.server_named,
    )
    if not op.passive:
        vh.assign_policy(q)
    if isinstance(q, Queue):
        return QueueInfo(q.name, q.message_count, len(q.consumers))
    return QueueInfo(q.name, 0, 0)


def _delete_queue(md: Metadata, op: DeleteQueue) -> int:
    vh = md.vhost(op.vhost)
    q = vh.queues.get(op.name)
    if q is None:
        return 0
    if op.requester:
        vh.check_exclusive(q, op.requester)
    return vh.delete_queue(q, if_unused=op.if_unused, if_empty=op.if_empty)


def _drop_owners(md: Metadata, op: DropOwners) -> None:
    for vh in md.vhosts.values():
        for q in list(vh.queues.values()):
            if q.exclusive and gid_slot(q.owner) == op.slot:
                vh.remove_queue(q)


def _set_policy(md: Metadata, op: SetPolicy) -> None:
    try:
        policy = make_policy(
            op.vhost,
            op.name,
            op.pattern,
            json.loads(op.definition),
            priority=op.priority,
            apply_to=op.apply_to,
        )
    except (PolicyError, ValueError) as exc:
        raise SoftError(PRECONDITION_FAILED, str(exc)) from None
    md.vhost(op.vhost).set_policy(policy)


def _clear_policy(md: Metadata, op: ClearPolicy) -> None:
    if not md.vhost(op.vhost).clear_policy(op.name):
        raise SoftError(NOT_FOUND, "Parameter does not exist")


def _add_vhost(md: Metadata, op: AddVHost) -> None:
    if not op.vhost:
        raise SoftError(PRECONDITION_FAILED, "virtual host name must not be empty")
    md.add_vhost(op.vhost)


def _delete_vhost(md: Metadata, op: DeleteVHost) -> None:
    if not md.delete_vhost(op.vhost):
        raise SoftError(NOT_FOUND, f"Virtual host '{op.vhost}' does not exist")


def _user(md: Metadata, name: str) -> User:
    user = md.access.users.get(name)
    if user is None:
        raise SoftError(NOT_FOUND, f'User "{name}" does not exist')
    return user


def _add_user(md: Metadata, op: AddUser) -> None:
    if op.name in md.access.users:
        raise SoftError(PRECONDITION_FAILED, f'User "{op.name}" already exists')
    md.access.put_user(User(op.name, op.password_hash, op.hashing_algorithm, tuple(op.tags)))


def _update_user(md: Metadata, op: UpdateUser) -> None:
    user = _user(md, op.name)
    if op.password_hash is not None:
        algorithm = op.hashing_algorithm or user.hashing_algorithm
        user = dataclasses.replace(
            user, password_hash=op.password_hash, hashing_algorithm=algorithm
        )
    if op.tags is not None:
        user = dataclasses.replace(user, tags=tuple(op.tags))
    md.access.put_user(user)


def _delete_user(md: Metadata, op: DeleteUser) -> None:
    _user(md, op.name)
    md.access.delete_user(op.name)


def _set_permissions(md: Metadata, op: SetPermissions) -> None:
    _user(md, op.user)
    if op.vhost not in md.vhosts:
        raise SoftError(NOT_FOUND, f"Virtual host '{op.vhost}' does not exist")
    try:
        perm = Permission.make(op.user, op.vhost, op.configure, op.write, op.read)
    except re.error as exc:
        raise SoftError(PRECONDITION_FAILED, f"invalid regular expression: {exc}") from None
    md.access.set_permission(perm)


def _clear_permissions(md: Metadata, op: ClearPermissions) -> None:
    _user(md, op.user)
    if op.vhost not in md.vhosts:
        raise SoftError(NOT_FOUND, f"Virtual host '{op.vhost}' does not exist")
    md.access.clear_permission(op.vhost, op.user)


def _set_topic_permissions(md: Metadata, op: SetTopicPermissions) -> None:
    _user(md, op.user)
    if op.vhost not in md.vhosts:
        raise SoftError(NOT_FOUND, f"Virtual host '{op.vhost}' does not exist")
    for pattern in (op.write, op.read):
        try:
            re.compile(pattern.replace("{username}", "u").replace("{vhost}", "v"))
        except re.error as exc:
            raise SoftError(PRECONDITION_FAILED, f"invalid regular expression: {exc}") from None
    md.access.set_topic_permission(
        TopicPermission(op.user, op.vhost, op.exchange, op.write, op.read)
    )


def _clear_topic_permissions(md: Metadata, op: ClearTopicPermissions) -> None:
    _user(md, op.user)
    md.access.clear_topic_permissions(op.vhost, op.user, op.exchange or None)


def _parse(text: str, user: bool) -> dict[str, int]:
    try:
        return parse_limits(text, user)
    except LimitError as exc:
        raise SoftError(PRECONDITION_FAILED, str(exc)) from None


def _set_vhost_limits(md: Metadata, op: SetVHostLimits) -> None:
    if op.vhost not in md.vhosts:
        raise SoftError(NOT_FOUND, f"Virtual host '{op.vhost}' does not exist")
    md.access.limits.set_vhost(op.vhost, _parse(op.limits, False), op.merge)


def _clear_vhost_limits(md: Metadata, op: ClearVHostLimits) -> None:
    if not md.access.limits.clear_vhost(op.vhost, op.name) and not op.name:
        raise SoftError(NOT_FOUND, "Parameter does not exist")


def _set_user_limits(md: Metadata, op: SetUserLimits) -> None:
    _user(md, op.user)
    md.access.limits.set_user(op.user, _parse(op.limits, True))


def _clear_user_limits(md: Metadata, op: ClearUserLimits) -> None:
    _user(md, op.user)
    md.access.limits.clear_user(op.user, op.name)


# Any: each handler takes the Op subclass it is keyed by (a dict cannot say so)
_APPLY: dict[type[Op], Callable[[Metadata, Any], OpResult]] = {
    DeclareExchange: _declare_exchange,
    DeleteExchange: _delete_exchange,
    Bind: _bind,
    Unbind: _unbind,
    DeclareQueue: _declare_queue,
    DeleteQueue: _delete_queue,
    DropOwners: _drop_owners,
    SetPolicy: _set_policy,
    ClearPolicy: _clear_policy,
    AddVHost: _add_vhost,
    DeleteVHost: _delete_vhost,
    AddUser: _add_user,
    UpdateUser: _update_user,
    DeleteUser: _delete_user,
    SetPermissions: _set_permissions,
    ClearPermissions: _clear_permissions,
    SetTopicPermissions: _set_topic_permissions,
    ClearTopicPermissions: _clear_topic_permissions,
    SetVHostLimits: _set_vhost_limits,
    ClearVHostLimits: _clear_vhost_limits,
    SetUserLimits: _set_user_limits,
    ClearUserLimits: _clear_user_limits,
}


def error_of(exc: AMQPError) -> tuple[bool, int, str, int, int]:
    return (exc.soft, exc.reply_code, exc.text, exc.class_id, exc.method_id)


def error_from(data: ErrorData) -> AMQPError:
    soft, code, text, class_id, method_id = data
    cls = SoftError if soft else HardError
    return cls(code, text, class_id, method_id)
