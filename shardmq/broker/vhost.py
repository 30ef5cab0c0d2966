"""A virtual host: its exchanges, queues and bindings, and publish routing.

Owns: ``VHost`` — every metadata operation (declare, delete, bind, unbind) with
RabbitMQ's checks and reply codes, and ``route`` from an exchange to the set of queues.

Invariants:
- The route cache maps the publish's ``exrk`` bytes to the queues it reaches (local
  ones, and remote ones grouped by owning shard); any change of
  exchanges, queues or bindings clears it. Routes through a headers exchange depend on
  the message and are never cached.
- Exchange statistics (RabbitMQ's ``publish_in``/``publish_out``): ``route`` (a client's
  publish, counted) bumps one integer per publish, the cache entry's ``hits`` (or, for
  an uncached route, the exchange's ``st_in``/``st_out``); hits are folded into the
  exchange when the cache is cleared and when ``exchange_counts`` reads them, never
  per message. ``lookup`` (the tx pre-check, dead-lettering) routes without counting,
  as RabbitMQ counts neither. ``publish_out`` is per queue reached, on the exchange
  published to (not on exchanges reached through bindings), as RabbitMQ.
- Exchange-to-exchange routing visits each exchange at most once (cycles are fine) and
  yields each queue at most once.
- Alternate exchanges as RabbitMQ's ``rabbit_exchange:route``: an exchange whose own
  bindings give no destination at all passes the message to its alternate exchange
  (``effective_alternate``), which joins the same traversal (chains followed, each
  exchange visited once, so cycles stop); a missing alternate is skipped (unroutable,
  one warning logged per exchange and alternate name). Routing happens on the
  publisher's worker over its replica of the exchanges, so the result is the same
  with any number of workers, and it is cached like any other route.
- A publish to an ``x-delayed-message`` exchange with a positive integer ``x-delay``
  header is not routed: ``route`` answers ``HELD`` (no side effect) and the connection
  hands it to ``shardmq.broker.delayed``, which routes it later through
  ``route_from``. ``route`` never caches a route through a delayed exchange;
  ``route_from`` has its own cache (``from_cache``), cleared with the other.
- Errors raised are ``SoftError`` / ``HardError`` with RabbitMQ's codes and texts, and
  in RabbitMQ 3.10's order; unbind is idempotent (a missing queue, exchange or binding
  is ok) and the default exchange is refused (403) even to a passive declare.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, Union

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
from shardmq.broker import chash
from shardmq.broker.exchange import Exchange, effective_alternate
from shardmq.broker.policies import Policy, PolicySet
from shardmq.broker.qargs import parse_queue_args
from shardmq.broker.qtype import check_queue_type
from shardmq.broker.queue import Queue
from shardmq.broker.routing import DELAYED_TYPE, EXCHANGE_TYPES, rabbit_type_name
from shardmq.message import Message

if TYPE_CHECKING:
    from shardmq.broker.remote import RemoteQueue

log = logging.getLogger("shardmq.vhost")

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


AnyQueue = Union[Queue, "RemoteQueue"]
# Queues on other workers a publish goes to, grouped by the worker (shard) owning them.
RemoteGroups = tuple[tuple[int, tuple["RemoteQueue", ...]], ...]
# (local queues, remote groups)
Route = tuple[tuple[Queue, ...], RemoteGroups]
_NO_ROUTE: Route = ((), ())
# ``route``'s answer for a publish a delayed exchange holds: compared by identity (it
# equals ``_NO_ROUTE`` but is a different object).
HELD: Route = tuple([(), ()])  # type: ignore[assignment]


def delay_of(msg: Message) -> int:
    """The ``x-delay`` header of a publish to a delayed exchange, in ms; 0 when absent,
    not an integer, or not positive (routed at once, as the plugin does)."""
    headers = msg.properties().headers
    if not headers:
        return 0
    d = headers.get("x-delay")
    if isinstance(d, bool) or not isinstance(d, int):
        return 0
    return d if d > 0 else 0


class QueueFactory(Protocol):
    """Makes the object of a newly declared queue: a ``Queue`` (with its store, if
    durable) where it lives, a ``RemoteQueue`` on the other workers."""

    def __call__(
        self,
        name: str,
        vhost: str,
        *,
        durable: bool,
        exclusive: bool,
        owner: int,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> AnyQueue: ...


def _local_queue(name: str, vhost: str, **kw: Any) -> AnyQueue:
    return Queue(name, vhost, **kw)


class RouteEntry:
    """A cached route, the exchange it starts at, how many queues it reaches, and how
    many publishes took it since its counts were last folded into the exchange."""

    __slots__ = ("route", "ex", "n", "hits")

    def __init__(self, route: Route, ex: Exchange, hits: int) -> None:
        self.route = route
        self.ex = ex
        self.n = _reach(route)
        self.hits = hits

    def fold(self) -> None:
        hits = self.hits
        if hits:
            self.hits = 0
            ex = self.ex
            ex.st_in += hits
            ex.st_out += hits * self.n


def _reach(route: Route) -> int:
    local, remote = route
    return len(local) + sum(len(qs) for _shard, qs in remote)


class VHost:
    def __init__(self, name: str, queue_factory: QueueFactory = _local_queue) -> None:
        self.name = name
        self.queue_factory = queue_factory
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, AnyQueue] = {}
        self.route_cache: dict[bytes, RouteEntry] = {}
        self.from_cache: dict[bytes, Route] = {}  # route_from's, for due delayed messages
        self.on_queue_deleted: Callable[[AnyQueue], None] = lambda q: None
        self._missing_ae_logged: set[tuple[str, str]] = set()  # (exchange, alternate)
        self.policies = PolicySet()
        self.exchanges[""] = Exchange("", "direct", durable=True)
        for name_, type_ in _STANDARD_EXCHANGES:
            self.exchanges[name_] = Exchange(name_, type_, durable=True)

    def _changed(self) -> None:
        if self.route_cache:
            self._fold()
            self.route_cache.clear()
        if self.from_cache:
            self.from_cache.clear()

    # ------------------------------------------------------------ lookup
    def _where(self) -> str:
        return f"in vhost '{self.name}'"

    def exchange(self, name: str) -> Exchange:
        ex = self.exchanges.get(name)
        if ex is None:
            raise SoftError(NOT_FOUND, f"no exchange '{name}' {self._where()}")
        return ex

    def queue(self, name: str, requester: int) -> AnyQueue:
        q = self.queues.get(name)
        if q is None:
            raise SoftError(NOT_FOUND, f"no queue '{name}' {self._where()}")
        self.check_exclusive(q, requester)
        return q

    def check_exclusive(self, q: AnyQueue, requester: int | None) -> None:
        """``requester`` is a connection id; None means "refuse any exclusive access"."""
        if requester is None or (q.exclusive and q.owner != requester):
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
            self._check_bindable(name)  # RabbitMQ 3.10: 403, passive or not
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
        if type not in EXCHANGE_TYPES:
            raise HardError(COMMAND_INVALID, f"unknown exchange type '{type}'")
        ex = self.exchanges.get(name)
        if ex is None:
            self._check_exchange_arguments(name, type, arguments)
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

    def _check_exchange_arguments(self, name: str, type: str, arguments: dict[str, Any]) -> None:
        """RabbitMQ's (and its plugins') checks of a new exchange's arguments."""
        ae = arguments.get("alternate-exchange")
        if ae is not None and not isinstance(ae, str | bytes):
            raise SoftError(
                PRECONDITION_FAILED,
                f"invalid type '{rabbit_type_name(ae)}' for arg 'alternate-exchange' in "
                f"exchange '{name}' {self._where()}",
            )
        if type == "x-consistent-hash":
            chash.check_arguments(arguments)
        elif type == DELAYED_TYPE:
            inner = arguments.get("x-delayed-type")
            if isinstance(inner, bytes):
                inner = inner.decode("utf-8", "replace")
            if not isinstance(inner, str):
                raise SoftError(
                    PRECONDITION_FAILED,
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type",
                )
            if inner == DELAYED_TYPE:
                raise SoftError(
                    PRECONDITION_FAILED,
                    "Invalid argument, 'x-delayed-type' can't be of type 'x-delayed-message'",
                )
            if inner not in EXCHANGE_TYPES:
                raise HardError(COMMAND_INVALID, f"unknown exchange type '{inner}'")
            if inner == "x-consistent-hash":
                chash.check_arguments(arguments)

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
        requester: int,
        *,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
        server_named: bool = False,
    ) -> AnyQueue:
        if passive:
            pq = self.queue(name, requester)
            if isinstance(pq, Queue):
                pq.touch()  # RabbitMQ: any declare uses the queue (x-expires)
            return pq
        if not name:
            name = "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        elif name.startswith("amq.") and not server_named:
            raise SoftError(ACCESS_REFUSED, f"queue name '{name}' contains reserved prefix 'amq.*'")
        parse_queue_args(arguments, name, self.name)  # 406 for an invalid x- argument
        check_queue_type(
            arguments,
            name,
            self.name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
        )
        q = self.queues.get(name)
        if q is not None:
            self.check_exclusive(q, requester)
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
            if isinstance(q, Queue):
                q.touch()  # a re-declare uses the queue (x-expires)
            return q
        q = self.queue_factory(
            name,
            self.name,
            durable=durable,
            exclusive=exclusive,
            owner=requester if exclusive else 0,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        self.queues[name] = q
        self._changed()
        return q

    def delete_queue(self, q: AnyQueue, *, if_unused: bool = False, if_empty: bool = False) -> int:
        """Only the queue's owner knows whether it is used or empty: elsewhere those
        checks were made by the owner before the delete was sequenced."""
        if isinstance(q, Queue):
            if if_unused and q.consumers:
                raise SoftError(PRECONDITION_FAILED, f"queue '{q.name}' {self._where()} in use")
            if if_empty and q.message_count:
                raise SoftError(PRECONDITION_FAILED, f"queue '{q.name}' {self._where()} not empty")
        return self.remove_queue(q)

    def remove_queue(self, q: AnyQueue) -> int:
        if q.deleted:
            return 0
        count = q.message_count if isinstance(q, Queue) else 0
        q.deleted = True
        self.queues.pop(q.name, None)
        for src in list(q.sources):
            src.router.remove_destination(q)
            self._maybe_auto_delete(src)
        q.sources.clear()
        if isinstance(q, Queue):
            q.purge()
        self._changed()
        self.on_queue_deleted(q)
        return count

    # ------------------------------------------------------------ bindings
    def _check_bindable(self, name: str) -> None:
        if name == "":
            raise SoftError(ACCESS_REFUSED, "operation not permitted on the default exchange")

    def check_binding_ends(self, dest_is_queue: bool, dest_name: str, source_name: str) -> None:
        """A bind's first checks, in RabbitMQ's order: the default exchange at either end
        (403), then the source exchange (404); the destination is looked up after."""
        self._check_bindable(source_name)
        if not dest_is_queue:
            self._check_bindable(dest_name)
        self.exchange(source_name)

    def bind(
        self, dest: AnyQueue | Exchange, source_name: str, routing_key: str, arguments: dict
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
        self,
        dest_is_queue: bool,
        dest_name: str,
        source_name: str,
        routing_key: str,
        arguments: dict,
        requester: int,
    ) -> None:
        """As RabbitMQ 3.10: 403 when either end is the default exchange; otherwise
        idempotent (a missing source, destination or binding is ok), and a locked
        exclusive queue is refused (405) only when the binding exists."""
        self._check_bindable(source_name)
        if not dest_is_queue:
            self._check_bindable(dest_name)
        src = self.exchanges.get(source_name)
        dest: AnyQueue | Exchange | None = (
            self.queues.get(dest_name) if dest_is_queue else self.exchanges.get(dest_name)
        )
        if src is None or dest is None or not src.router.has_binding(dest, routing_key, arguments):
            return
        if not isinstance(dest, Exchange):
            self.check_exclusive(dest, requester)
        src.router.remove_binding(dest, routing_key, arguments)
        if not src.router.has_destination(dest):
            dest.sources.discard(src)
        self._changed()
        self._maybe_auto_delete(src)

    # ------------------------------------------------------------ routing
    def route(self, msg: Message, exlen: int) -> Route:
        """(local queues, remote queues grouped by shard) a client's publish goes to,
        counted on the exchange (``RouteEntry``). Raises 404 for a missing exchange,
        403 for an internal one."""
        hit = self.route_cache.get(msg.exrk)
        if hit is not None:
            hit.hits += 1
            return hit.route
        return self._route(msg, True)

    def lookup(self, msg: Message, exlen: int) -> Route:
        """As ``route``, not counted (the tx pre-check, a dead-lettered copy)."""
        hit = self.route_cache.get(msg.exrk)
        if hit is not None:
            return hit.route
        return self._route(msg, False)

    def _route(self, msg: Message, count: bool) -> Route:
        exrk = msg.exrk
        exchange_name, routing_key = exrk_names(exrk)
        if exchange_name == "":
            q = self.queues.get(routing_key)
            route = _group((q,) if q is not None else ())
            self._cache(exrk, route, self.exchanges[""], count)
            return route
        ex = self.exchange(exchange_name)
        if ex.internal:
            raise SoftError(
                ACCESS_REFUSED,
                f"cannot publish to internal exchange '{exchange_name}' {self._where()}",
            )
        if ex.type == DELAYED_TYPE:
            if delay_of(msg):
                if count:
                    ex.st_in += 1
                return HELD
            route, _ = self._traverse(ex, msg, routing_key)
            if count:  # never cached: the next publish may carry x-delay
                ex.st_in += 1
                ex.st_out += _reach(route)
            return route
        route, cacheable = self._traverse(ex, msg, routing_key)
        if cacheable:
            self._cache(exrk, route, ex, count)
        elif count:
            ex.st_in += 1
            ex.st_out += _reach(route)
        return route

    def exchange_counts(self) -> list[tuple[str, int, int]]:
        """(name, publish_in, publish_out) of the exchanges clients published to."""
        self._fold()
        return [(e.name, e.st_in, e.st_out) for e in self.exchanges.values() if e.st_in]

    def _fold(self) -> None:
        for entry in self.route_cache.values():
            if entry.hits:
                entry.fold()

    def route_from(self, ex: Exchange, msg: Message) -> Route:
        """Route ``msg`` from ``ex`` now, whatever its ``x-delay`` (a delayed message
        that is due); cached apart from ``route``'s cache (same rules)."""
        exrk = msg.exrk
        route = self.from_cache.get(exrk)
        if route is not None:
            return route
        route, cacheable = self._traverse(ex, msg, msg.routing_key)
        if cacheable:
            if len(self.from_cache) >= _ROUTE_CACHE_MAX:
                self.from_cache.clear()
            self.from_cache[exrk] = route
        return route

    def _traverse(self, ex: Exchange, msg: Message, routing_key: str) -> tuple[Route, bool]:
        """(route, cacheable) of ``msg`` entering at ``ex``: exchange-to-exchange
        bindings and alternate exchanges followed, each exchange visited once."""
        cacheable = True
        found: dict[AnyQueue, None] = {}
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
                dests = router.route_message(routing_key, msg.properties())
            else:
                dests = router.route(routing_key, None)
            if not dests:
                ae_name = effective_alternate(e)
                if ae_name is not None:
                    self._to_alternate(e, ae_name, routing_key, stack, found)
                continue
            for d in dests:
                if isinstance(d, Exchange):
                    stack.append(d)
                else:
                    found[d] = None
        return _group(tuple(found)), cacheable

    def _to_alternate(
        self,
        e: Exchange,
        ae_name: str,
        routing_key: str,
        stack: list[Exchange],
        found: dict[AnyQueue, None],
    ) -> None:
        if ae_name == "":  # the default exchange: the queue named by the routing key
            q = self.queues.get(routing_key)
            if q is not None:
                found[q] = None
            return
        ae = self.exchanges.get(ae_name)
        if ae is not None:
            stack.append(ae)
            return
        key = (e.name, ae_name)
        if key not in self._missing_ae_logged:
            self._missing_ae_logged.add(key)
            log.warning(
                "alternate exchange '%s' of exchange '%s' %s does not exist; "
                "messages it would take are unroutable",
                ae_name,
                e.name,
                self._where(),
            )

    def _cache(self, exrk: bytes, route: Route, ex: Exchange, count: bool) -> None:
        cache = self.route_cache
        if len(cache) >= _ROUTE_CACHE_MAX:
            self._fold()
            cache.clear()
        cache[exrk] = RouteEntry(route, ex, 1 if count else 0)

    # ------------------------------------------------------------ policies
    def assign_policy(self, obj: AnyQueue | Exchange) -> None:
        """Give ``obj`` the policy that applies to it now (None: none does); a queue or
        exchange with a ``policy_changed`` method hears of a change."""
        kind = "exchange" if isinstance(obj, Exchange) else "queue"
        policy = None if obj.name == "" else self.policies.match(kind, obj.name)
        if obj.policy is policy:
            return
        obj.policy = policy
        hook: Callable[[], None] | None = getattr(obj, "policy_changed", None)
        if hook is not None:
            hook()

    def _reassign_policies(self) -> None:
        for q in list(self.queues.values()):
            self.assign_policy(q)
        for ex in list(self.exchanges.values()):
            self.assign_policy(ex)
        self._changed()

    def set_policy(self, policy: Policy) -> None:
        """Create or replace a policy; it applies at once to existing queues and
        exchanges."""
        self.policies.put(policy)
        self._reassign_policies()

    def clear_policy(self, name: str) -> bool:
        """Remove policy ``name`` (False: there was none)."""
        if self.policies.remove(name) is None:
            return False
        self._reassign_policies()
        return True


def _group(queues: tuple[AnyQueue, ...]) -> Route:
    if not queues:
        return _NO_ROUTE
    local = tuple(q for q in queues if isinstance(q, Queue))
    if len(local) == len(queues):
        return (local, ())
    by_shard: dict[int, list[RemoteQueue]] = {}
    for q in queues:
        if not isinstance(q, Queue):
            by_shard.setdefault(q.shard, []).append(q)
    return (local, tuple((shard, tuple(qs)) for shard, qs in sorted(by_shard.items())))


def _arg_repr(v: object) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return f"'{_b(v)}'"
    if isinstance(v, int):
        return f"'{v}'"
    return f"'{v}'"
