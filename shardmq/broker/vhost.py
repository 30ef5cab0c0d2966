"""A virtual host: its exchanges, queues and bindings, and publish routing.

Owns: ``VHost`` — every metadata operation (declare, delete, bind, unbind) with
RabbitMQ's checks and reply codes, and ``route`` from an exchange to the set of queues.

Invariants:
- The route cache maps the publish's ``exrk`` bytes to a tuple of queues; any change of
  exchanges, queues or bindings clears it. Routes through a headers exchange depend on
  the message and are never cached.
- Exchange-to-exchange routing visits each exchange at most once (cycles are fine) and
  yields each queue at most once.
- Errors raised are ``SoftError`` / ``HardError`` with RabbitMQ's codes and texts.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

from shardmq.amqp.codec import exrk_names
from shardmq.amqp.errors import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    NOT_FOUND,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
    HardError,
    SoftError,
)
from shardmq.broker.exchange import Exchange
from shardmq.broker.message import Message
from shardmq.broker.queue import Queue
from shardmq.broker.routing import ROUTER_TYPES

_ROUTE_CACHE_MAX = 8192
_STANDARD_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)
# Queue arguments RabbitMQ checks for equivalence on re-declare.
_QUEUE_EQUIV_ARGS = (
    "x-expires",
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-queue-type",
    "x-queue-mode",
    "x-single-active-consumer",
)


def _b(v: bool) -> str:
    return "true" if v else "false"


class VHost:
    def __init__(self, name: str) -> None:
        self.name = name
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.route_cache: dict[bytes, tuple[Queue, ...]] = {}
        self.on_queue_deleted: Callable[[Queue], None] = lambda q: None
        self.exchanges[""] = Exchange("", "direct", durable=True)
        for name_, type_ in _STANDARD_EXCHANGES:
            self.exchanges[name_] = Exchange(name_, type_, durable=True)

    def _changed(self) -> None:
        if self.route_cache:
            self.route_cache.clear()

    # ------------------------------------------------------------ lookup
    def _where(self) -> str:
        return f"in vhost '{self.name}'"

    def exchange(self, name: str) -> Exchange:
        ex = self.exchanges.get(name)
        if ex is None:
            raise SoftError(NOT_FOUND, f"no exchange '{name}' {self._where()}")
        return ex

    def queue(self, name: str, conn: object) -> Queue:
        q = self.queues.get(name)
        if q is None:
            raise SoftError(NOT_FOUND, f"no queue '{name}' {self._where()}")
        self.check_exclusive(q, conn)
        return q

    def check_exclusive(self, q: Queue, conn: object | None) -> None:
        if conn is None or (q.exclusive and q.owner is not conn):
            raise SoftError(
                RESOURCE_LOCKED,
                f"cannot obtain exclusive access to locked queue '{q.name}' {self._where()}. "
                "It could be originally declared on another connection or the exclusive "
                "property value does not match that of the original declaration.",
            )

    # ------------------------------------------------------------ exchanges
    def declare_exchange(
        self,
        name: str,
        type: str,
        *,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> Exchange:
        if passive:
            if not name:
                return self.exchanges[""]
            return self.exchange(name)
        if name.startswith("amq.") or name == "":
            existing = self.exchanges.get(name)
            if existing is None or name == "":
                raise SoftError(
                    ACCESS_REFUSED,
                    f"exchange name '{name}' contains reserved prefix 'amq.*'"
                    if name
                    else "operation not permitted on the default exchange",
                )
        if type not in ROUTER_TYPES:
            raise HardError(COMMAND_INVALID, f"unknown exchange type '{type}'")
        ex = self.exchanges.get(name)
        if ex is not None:
            for attr, got, have in (
                ("type", type, ex.type),
                ("durable", durable, ex.durable),
                ("auto_delete", auto_delete, ex.auto_delete),
                ("internal", internal, ex.internal),
            ):
                if got != have:
                    g = got if isinstance(got, str) else _b(got)
                    h = have if isinstance(have, str) else _b(have)
                    raise SoftError(
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{attr}' for exchange '{name}' {self._where()}: "
                        f"received '{g}' but current is '{h}'",
                    )
            ae_got = arguments.get("alternate-exchange")
            ae_have = ex.arguments.get("alternate-exchange")
            if ae_got != ae_have:
                raise SoftError(
                    PRECONDITION_FAILED,
                    f"inequivalent arg 'alternate-exchange' for exchange '{name}' "
                    f"{self._where()}: received '{ae_got}' but current is '{ae_have}'",
                )
            return ex
        ex = Exchange(
            name,
            type,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
        self.exchanges[name] = ex
        self._changed()
        return ex

    def delete_exchange(self, name: str, *, if_unused: bool) -> None:
        if name == "" or name.startswith("amq."):
            raise SoftError(
                ACCESS_REFUSED,
                f"exchange '{name}' {self._where()} is a built-in exchange"
                if name
                else "operation not permitted on the default exchange",
            )
        ex = self.exchanges.get(name)
        if ex is None:
            return  # RabbitMQ: deleting a missing exchange is ok
        if if_unused and len(ex.router):
            raise SoftError(PRECONDITION_FAILED, f"exchange '{name}' {self._where()} in use")
        self._remove_exchange(ex)

    def _remove_exchange(self, ex: Exchange) -> None:
        if ex.deleted:
            return
        ex.deleted = True
        self.exchanges.pop(ex.name, None)
        for dest, _rk, _args in ex.router.bindings():
            dest.sources.discard(ex)
        # bindings where this exchange is the destination
        for src in list(ex.sources):
            src.router.remove_destination(ex)
            self._maybe_auto_delete(src)
        ex.sources.clear()
        self._changed()

    def _maybe_auto_delete(self, ex: Exchange) -> None:
        if ex.auto_delete and ex.had_bindings and not len(ex.router) and not ex.deleted:
            self._remove_exchange(ex)

    # ------------------------------------------------------------ queues
    def declare_queue(
        self,
        name: str,
        conn: object,
        *,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> Queue:
        if passive:
            return self.queue(name, conn)
        if not name:
            name = "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        elif name.startswith("amq."):
            raise SoftError(ACCESS_REFUSED, f"queue name '{name}' contains reserved prefix 'amq.*'")
        q = self.queues.get(name)
        if q is not None:
            self.check_exclusive(q, conn)
            if exclusive != q.exclusive:
                self.check_exclusive(q, None)
            for attr, got, have in (
                ("durable", durable, q.durable),
                ("auto_delete", auto_delete, q.auto_delete),
            ):
                if got != have:
                    raise SoftError(
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{attr}' for queue '{name}' {self._where()}: "
                        f"received '{_b(got)}' but current is '{_b(have)}'",
                    )
            for key in _QUEUE_EQUIV_ARGS:
                got_a, have_a = arguments.get(key), q.arguments.get(key)
                if got_a != have_a:
                    raise SoftError(
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{key}' for queue '{name}' {self._where()}: "
                        f"received {_arg_repr(got_a)} but current is {_arg_repr(have_a)}",
                    )
            return q
        q = Queue(
            name,
            self.name,
            durable=durable,
            exclusive=exclusive,
            owner=conn if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        self.queues[name] = q
        self._changed()
        return q

    def delete_queue(self, q: Queue, *, if_unused: bool = False, if_empty: bool = False) -> int:
        if if_unused and q.consumers:
            raise SoftError(PRECONDITION_FAILED, f"queue '{q.name}' {self._where()} in use")
        if if_empty and q.message_count:
            raise SoftError(PRECONDITION_FAILED, f"queue '{q.name}' {self._where()} not empty")
        return self.remove_queue(q)

    def remove_queue(self, q: Queue) -> int:
        if q.deleted:
            return 0
        count = q.message_count
        q.deleted = True
        self.queues.pop(q.name, None)
        for src in list(q.sources):
            src.router.remove_destination(q)
            self._maybe_auto_delete(src)
        q.sources.clear()
        q.purge()
        self._changed()
        self.on_queue_deleted(q)
        return count

    # ------------------------------------------------------------ bindings
    def _check_bindable(self, name: str) -> None:
        if name == "":
            raise SoftError(ACCESS_REFUSED, "operation not permitted on the default exchange")

    def bind(
        self, dest: Queue | Exchange, source_name: str, routing_key: str, arguments: dict
    ) -> None:
        self._check_bindable(source_name)
        src = self.exchange(source_name)
        if isinstance(dest, Exchange) and dest.name == "":
            raise SoftError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        if src.router.add_binding(dest, routing_key, arguments):
            src.had_bindings = True
            dest.sources.add(src)
            self._changed()

    def unbind(
        self, dest: Queue | Exchange, source_name: str, routing_key: str, arguments: dict
    ) -> None:
        self._check_bindable(source_name)
        src = self.exchanges.get(source_name)
        if src is None:
            return  # RabbitMQ 3.10: unbinding from a missing exchange succeeds
        if src.router.remove_binding(dest, routing_key, arguments):
            if not src.router.has_destination(dest):
                dest.sources.discard(src)
            self._changed()
            self._maybe_auto_delete(src)

    # ------------------------------------------------------------ routing
    def route(self, msg: Message, exlen: int) -> tuple[Queue, ...]:
        """Queues the message goes to. Raises 404 for a missing exchange, 403 internal."""
        exrk = msg.exrk
        queues = self.route_cache.get(exrk)
        if queues is not None:
            return queues
        exchange_name, routing_key = exrk_names(exrk)
        if exchange_name == "":
            q = self.queues.get(routing_key)
            queues = (q,) if q is not None else ()
            self._cache(exrk, queues)
            return queues
        ex = self.exchange(exchange_name)
        if ex.internal:
            raise SoftError(
                ACCESS_REFUSED,
                f"cannot publish to internal exchange '{exchange_name}' {self._where()}",
            )
        cacheable = True
        found: dict[Queue, None] = {}
        seen: set[Exchange] = set()
        stack = [ex]
        while stack:
            e = stack.pop()
            if e in seen:
                continue
            seen.add(e)
            router = e.router
            if router.NEEDS_HEADERS:
                cacheable = False
                headers = msg.properties().headers
                dests = router.route(routing_key, headers or {})
            else:
                dests = router.route(routing_key, None)
            for d in dests:
                if isinstance(d, Queue):
                    found[d] = None
                else:
                    stack.append(d)
        queues = tuple(found)
        if cacheable:
            self._cache(exrk, queues)
        return queues

    def _cache(self, exrk: bytes, queues: tuple[Queue, ...]) -> None:
        cache = self.route_cache
        if len(cache) >= _ROUTE_CACHE_MAX:
            cache.clear()
        cache[exrk] = queues


def _arg_repr(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return f"'{_b(v)}'"
    if isinstance(v, int):
        return f"'{v}'"
    return f"'{v}'"
