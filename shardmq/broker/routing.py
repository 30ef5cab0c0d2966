"""Exchange routing tables: direct, fanout, topic (trie) and headers, as RabbitMQ routes.

``make_router`` also builds the two built-in plugin types: ``x-consistent-hash``
(``shardmq.broker.chash``) and ``x-delayed-message``, whose router is the one of its
``x-delayed-type`` (holding delayed messages is ``shardmq.broker.delayed``'s job).

Owns: the bindings of one exchange and the question "which destinations does this
publish go to". Pure Python, no I/O, no knowledge of queues: a destination is any
hashable object (a queue or an exchange), compared by its own ``__eq__``/``__hash__``;
routers are generic in it (``Router[D]``), so ``route`` gives back what was bound.

Invariants:
- A binding is identified by ``(dest, routing_key, arguments)``. Arguments are compared by
  value *and* AMQP field type, as RabbitMQ does: the top-level table is order-insensitive,
  nested tables and arrays are order-sensitive, ``1`` / ``1.0`` / ``True`` / ``"1"`` are four
  different arguments, ``None`` and ``{}`` are the same (see :func:`args_key`).
- ``route()`` returns each destination at most once however many bindings match, as an
  immutable tuple that the caller must not expect to be fresh (it is often cached).
- ``route()`` never mutates state visible to the caller and never raises for any routing
  key or headers table; only ``add_binding`` validates (headers ``x-match``) and raises
  :class:`BindingArgumentError` (406) before changing anything.
- Semantics checked against RabbitMQ 3.10 (observed tables live in the unit tests):
  topic keys split on ``.`` with ``""`` meaning zero words; ``*`` is exactly one (possibly
  empty) word, ``#`` zero or more; headers use Erlang ``==`` on top-level values (numbers
  across int/float/timestamp, longstr equal to byte array) and exact, typed comparison
  inside nested tables/arrays; a void binding value means "header present".
- Known gap: the decoded field tables do not keep integer widths, so nested ``byte 1`` and
  ``signedint 1`` compare equal here while RabbitMQ keeps them apart (and likewise for
  binding identity).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any, ClassVar, Generic, TypeVar

from shardmq.amqp.errors import PRECONDITION_FAILED, SoftError
from shardmq.amqp.fieldtable import ByteArray, Timestamp

__all__ = [
    "DELAYED_TYPE",
    "EXCHANGE_TYPES",
    "ROUTER_TYPES",
    "BindingArgumentError",
    "DirectRouter",
    "FanoutRouter",
    "HeadersRouter",
    "Router",
    "TopicRouter",
    "args_key",
    "make_router",
    "rabbit_type_name",
    "topic_words",
]

# A destination: any hashable object (the broker's queues and exchanges); each router is
# generic in it, so callers get back the type they bound.
D = TypeVar("D", bound=Hashable)

_EMPTY: tuple[Any, ...] = ()
_MISSING: object = object()  # header absent
_PRESENT: object = object()  # binding value is void: header must merely be present
_VOID: object = object()  # header value is void (equal to nothing but itself)


class BindingArgumentError(SoftError, ValueError):
    """Binding arguments RabbitMQ rejects (``PRECONDITION_FAILED``).

    The caller may set ``class_id`` / ``method_id`` (queue.bind or exchange.bind).
    """

    def __init__(self, text: str) -> None:
        super().__init__(PRECONDITION_FAILED, text)


# --------------------------------------------------------------------------- arguments


def _epoch_seconds(v: datetime) -> int:
    if v.tzinfo is None:  # naive datetimes are UTC, as the field table codec takes them
        v = v.replace(tzinfo=UTC)
    return int(v.timestamp())


def _decimal_parts(v: Decimal) -> tuple[Any, ...]:
    """AMQP decimal identity: (scale, signed value), so 1.0 and 1.00 differ as in RabbitMQ."""
    sign, digits, exp = v.as_tuple()
    if not isinstance(exp, int):  # NaN / Infinity: never on the wire, keep them distinct
        return ("D?", str(v))
    value = int("".join(map(str, digits)) or "0")
    if sign:
        value = -value
    if exp > 0:
        return ("D", 0, value * 10**exp)
    return ("D", -exp, value)


def _typed(v: Any) -> Any:
    """D, type-tagged canonical form of a field value (exact AMQP identity)."""
    t = type(v)
    if t is str:
        return ("S", v.encode("utf-8", "surrogatepass"))  # longstr (bytes if not UTF-8)
    if t is int:
        return ("I", v)
    if t is bool:
        return ("t", v)
    if t is bytes:
        return ("S", v)
    if t is float:
        return ("d", v.hex())  # hex: NaN/-0.0 hash and compare as themselves
    if v is None:
        return ("V",)
    if t is dict or isinstance(v, Mapping):
        return ("F", tuple((k, _typed(x)) for k, x in v.items()))
    if t is list or t is tuple:
        return ("A", tuple(_typed(x) for x in v))
    if isinstance(v, ByteArray) or t is bytearray or t is memoryview:
        return ("x", bytes(v))
    if isinstance(v, Timestamp):
        return ("T", int(v))
    if isinstance(v, datetime):
        return ("T", _epoch_seconds(v))
    if isinstance(v, Decimal):
        return _decimal_parts(v)
    if isinstance(v, bool):
        return ("t", bool(v))
    if isinstance(v, int):
        return ("I", int(v))
    if isinstance(v, float):
        return ("d", float(v).hex())
    if isinstance(v, str):
        return ("S", str(v).encode("utf-8", "surrogatepass"))
    if isinstance(v, bytes):
        return ("S", bytes(v))
    try:
        hash(v)
    except TypeError:
        return ("?", t.__qualname__, repr(v))
    return ("?", t.__qualname__, v)


_first = itemgetter(0)


def args_key(arguments: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """Canonical hashable key of a binding's arguments (``None`` and ``{}`` give ``()``).

    Top-level keys are sorted (RabbitMQ sorts the binding table); nested tables and arrays
    keep their order, and every value keeps its field type.
    """
    if not arguments:
        return _EMPTY
    return tuple(sorted(((k, _typed(v)) for k, v in arguments.items()), key=_first))


def _erl(v: Any) -> Any:
    """Form of a top-level header value under which Python ``==`` is Erlang ``==``.

    Numbers (int, float, timestamp) compare numerically; longstr and byte array are both
    binaries; booleans, decimals and void are their own kinds; nested tables and arrays
    compare exactly, type tags included.
    """
    t = type(v)
    if t is str:
        return v.encode("utf-8", "surrogatepass")
    if t is int or t is float or t is bytes:
        return v
    if t is bool:
        return ("t", v)
    if v is None:
        return _VOID
    if isinstance(v, bool):
        return ("t", bool(v))
    if isinstance(v, int | float | bytes):  # Timestamp, ByteArray and other subclasses
        return v
    if isinstance(v, datetime):
        return _epoch_seconds(v)
    if isinstance(v, Decimal):
        return _decimal_parts(v)
    if isinstance(v, str):
        return str(v).encode("utf-8", "surrogatepass")
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    return _typed(v)


# --------------------------------------------------------------------------- base


class Router(Generic[D]):
    """Bindings of one exchange plus the routing function of its type.

    Subclasses implement ``_on_add`` / ``_on_remove`` (called once per binding that is
    really added / removed) and ``route``.
    """

    TYPE: ClassVar[str] = ""
    NEEDS_HEADERS: ClassVar[bool] = False

    __slots__ = ("_bindings", "_by_dest")

    def __init__(self) -> None:
        # (dest, routing_key, args_key) -> arguments (a private shallow copy)
        self._bindings: dict[tuple[D, str, tuple[Any, ...]], dict[str, Any]] = {}
        # dest -> {(routing_key, args_key): None}, for remove_destination
        self._by_dest: dict[D, dict[tuple[str, tuple[Any, ...]], None]] = {}

    # -- bookkeeping, shared by every type

    def add_binding(self, dest: D, routing_key: str, arguments: dict | None) -> bool:
        """Add a binding; True if it is new. Raises BindingArgumentError before any change."""
        args: dict[str, Any] = {} if arguments is None else dict(arguments)
        self._validate(routing_key, args)
        ak = args_key(args)
        bid = (dest, routing_key, ak)
        if bid in self._bindings:
            return False
        self._bindings[bid] = args
        per = self._by_dest.get(dest)
        if per is None:
            per = self._by_dest[dest] = {}
        per[(routing_key, ak)] = None
        self._on_add(dest, routing_key, ak, args)
        return True

    def remove_binding(self, dest: D, routing_key: str, arguments: dict | None) -> bool:
        """Remove a binding; True if it existed."""
        ak = args_key(arguments)
        args = self._bindings.pop((dest, routing_key, ak), None)
        if args is None:
            return False
        per = self._by_dest[dest]
        del per[(routing_key, ak)]
        if not per:
            del self._by_dest[dest]
        self._on_remove(dest, routing_key, ak, args)
        return True

    def remove_destination(self, dest: D) -> int:
        """Drop every binding to ``dest``; return how many there were."""
        per = self._by_dest.pop(dest, None)
        if not per:
            return 0
        for routing_key, ak in per:
            args = self._bindings.pop((dest, routing_key, ak))
            self._on_remove(dest, routing_key, ak, args)
        return len(per)

    def has_binding(self, dest: D, routing_key: str, arguments: dict | None) -> bool:
        return (dest, routing_key, args_key(arguments)) in self._bindings

    def has_destination(self, dest: D) -> bool:
        """True while at least one binding leads to ``dest`` (O(1))."""
        return dest in self._by_dest

    def bindings(self) -> list[tuple[D, str, dict]]:
        """Every binding as ``(dest, routing_key, arguments)``, in binding order."""
        return [(d, rk, dict(a)) for (d, rk, _), a in self._bindings.items()]

    def __len__(self) -> int:
        return len(self._bindings)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} bindings={len(self._bindings)}>"

    # -- per type

    def _validate(self, routing_key: str, args: dict[str, Any]) -> None:
        """Raise BindingArgumentError for arguments this exchange type rejects."""

    def _on_add(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        raise NotImplementedError

    def _on_remove(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        raise NotImplementedError

    def route(self, routing_key: str, headers: dict | None = None) -> Collection[D]:
        """Destinations of a message, each at most once."""
        raise NotImplementedError

    def route_message(self, routing_key: str, props: Any) -> Collection[D]:
        """Routing of a type with ``NEEDS_HEADERS``: ``props`` are the message's decoded
        ``BasicProperties`` (the headers exchange reads their headers; the consistent
        hash exchange may hash a header or a property)."""
        return self.route(routing_key, props.headers or {})


def _inc(counts: dict[D, int], dest: D) -> None:
    counts[dest] = counts.get(dest, 0) + 1


def _dec(counts: dict[D, int], dest: D) -> None:
    n = counts[dest] - 1
    if n:
        counts[dest] = n
    else:
        del counts[dest]


# --------------------------------------------------------------------------- direct


class DirectRouter(Router[D]):
    """Exact routing-key match: one dict lookup returning a prebuilt tuple."""

    TYPE = "direct"
    __slots__ = ("_counts", "_table")

    def __init__(self) -> None:
        super().__init__()
        # routing_key -> {dest: number of bindings with that key}
        self._counts: dict[str, dict[D, int]] = {}
        # routing_key -> tuple(dests); an entry is dropped when its key's bindings change
        self._table: dict[str, tuple[D, ...]] = {}

    def _on_add(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        counts = self._counts.get(routing_key)
        if counts is None:
            counts = self._counts[routing_key] = {}
        _inc(counts, dest)
        self._table.pop(routing_key, None)

    def _on_remove(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        counts = self._counts[routing_key]
        _dec(counts, dest)
        if not counts:
            del self._counts[routing_key]
        self._table.pop(routing_key, None)

    def route(self, routing_key: str, headers: dict | None = None) -> Collection[D]:
        r = self._table.get(routing_key)
        if r is not None:
            return r
        counts = self._counts.get(routing_key)
        if counts is None:
            return _EMPTY
        r = self._table[routing_key] = tuple(counts)
        return r


# --------------------------------------------------------------------------- fanout


class FanoutRouter(Router[D]):
    """Every bound destination; routing key and headers ignored."""

    TYPE = "fanout"
    __slots__ = ("_counts", "_all")

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[D, int] = {}
        self._all: tuple[D, ...] | None = _EMPTY

    def _on_add(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        _inc(self._counts, dest)
        self._all = None

    def _on_remove(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        _dec(self._counts, dest)
        self._all = None

    def route(self, routing_key: str, headers: dict | None = None) -> Collection[D]:
        r = self._all
        if r is None:
            r = self._all = tuple(self._counts)
        return r


# --------------------------------------------------------------------------- topic


def topic_words(key: str) -> list[str]:
    """Split a topic key as RabbitMQ does: ``""`` is no word, ``"a..b"`` is a, "", b."""
    return key.split(".") if key else []


class _Node(Generic[D]):
    """A trie node. ``lit`` holds literal words; ``*`` and ``#`` edges are separate."""

    __slots__ = ("lit", "star", "hash", "is_hash", "dests", "parent", "word")

    def __init__(self, parent: _Node[D] | None, word: str, is_hash: bool) -> None:
        self.lit: dict[str, _Node[D]] = {}
        self.star: _Node[D] | None = None
        self.hash: _Node[D] | None = None
        self.is_hash = is_hash  # reached through a '#': consumes any word, staying here
        self.dests: dict[D, int] = {}  # dest -> bindings ending here
        self.parent = parent
        self.word = word

    def child(self, word: str) -> _Node[D] | None:
        if word == "*":
            return self.star
        if word == "#":
            return self.hash
        return self.lit.get(word)

    def empty(self) -> bool:
        return not self.dests and not self.lit and self.star is None and self.hash is None


class TopicRouter(Router[D]):
    """Topic exchange over a word trie, matched as an NFA over the routing key's words.

    The set of live trie nodes is carried word by word (deduplicated), so ``#`` costs
    O(words x nodes) at worst instead of exponential backtracking. Results are cached per
    routing key (bounded, FIFO eviction) and the cache is dropped on any binding change.
    """

    TYPE = "topic"
    CACHE_SIZE: ClassVar[int] = 4096
    __slots__ = ("_root", "_cache")

    def __init__(self) -> None:
        super().__init__()
        self._root: _Node[D] = _Node(None, "", False)
        self._cache: dict[str, tuple[D, ...]] = {}

    def _on_add(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        node = self._root
        for w in topic_words(routing_key):
            nxt = node.child(w)
            if nxt is None:
                nxt = _Node(node, w, w == "#")
                if w == "*":
                    node.star = nxt
                elif w == "#":
                    node.hash = nxt
                else:
                    node.lit[w] = nxt
            node = nxt
        _inc(node.dests, dest)
        if self._cache:
            self._cache.clear()

    def _on_remove(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        node = self._root
        for w in topic_words(routing_key):
            nxt = node.child(w)
            assert nxt is not None, "binding bookkeeping out of sync with the trie"
            node = nxt
        _dec(node.dests, dest)
        # prune the now-useless tail of the path
        while node.parent is not None and node.empty():
            parent = node.parent
            w = node.word
            if w == "*":
                parent.star = None
            elif w == "#":
                parent.hash = None
            else:
                del parent.lit[w]
            node = parent
        if self._cache:
            self._cache.clear()

    def route(self, routing_key: str, headers: dict | None = None) -> Collection[D]:
        cache = self._cache
        r = cache.get(routing_key)
        if r is not None:
            return r
        r = self._match(routing_key)
        if len(cache) >= self.CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[routing_key] = r
        return r

    def _match(self, routing_key: str) -> tuple[D, ...]:
        # live: nodes reached after the words consumed so far, closed under "# matches
        # zero words" (a node's '#' child, and that child's '#' child, ...)
        live: list[_Node[D]] = []
        seen: set[_Node[D]] = set()
        node: _Node[D] | None = self._root
        while node is not None:
            live.append(node)
            seen.add(node)
            node = node.hash
        for w in topic_words(routing_key):
            nxt: list[_Node[D]] = []
            seen = set()
            for n in live:
                # successors: literal edge, '*' edge, and n itself if n is a '#' node;
                # each followed by its chain of '#' children (zero-word matches)
                c = n.lit.get(w)
                while c is not None and c not in seen:
                    nxt.append(c)
                    seen.add(c)
                    c = c.hash
                c = n.star
                while c is not None and c not in seen:
                    nxt.append(c)
                    seen.add(c)
                    c = c.hash
                c = n if n.is_hash else None
                while c is not None and c not in seen:
                    nxt.append(c)
                    seen.add(c)
                    c = c.hash
            if not nxt:
                return _EMPTY
            live = nxt
        hit: dict[D, int] | None = None
        out: dict[D, None] | None = None
        for n in live:
            if n.dests:
                if hit is None:
                    hit = n.dests
                else:
                    if out is None:
                        out = dict.fromkeys(hit)
                    out.update(dict.fromkeys(n.dests))
        if out is not None:
            return tuple(out)
        return tuple(hit) if hit is not None else _EMPTY


# --------------------------------------------------------------------------- headers

_X_MATCH_MODES: dict[str, tuple[bool, bool]] = {
    # mode -> (all, with_x)
    "all": (True, False),
    "any": (False, False),
    "all-with-x": (True, True),
    "any-with-x": (False, True),
}


def _rabbit_type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, Timestamp):
        return "timestamp"
    if isinstance(v, int):
        return "signedint" if -(2**31) <= v < 2**31 else "long"
    if isinstance(v, float):
        return "double"
    if isinstance(v, Decimal):
        return "decimal"
    if isinstance(v, ByteArray | bytearray | memoryview):
        return "binary"
    if isinstance(v, Mapping):
        return "table"
    if isinstance(v, list | tuple):
        return "array"
    if isinstance(v, datetime):
        return "timestamp"
    if v is None:
        return "void"
    return type(v).__name__


rabbit_type_name = _rabbit_type_name  # the field type RabbitMQ names in its error texts


def _erl_binary(v: str | bytes) -> str:
    text = v if isinstance(v, str) else v.decode("utf-8", "backslashreplace")
    return '<<"' + text.replace("\\", "\\\\").replace('"', '\\"') + '">>'


def _x_match(args: Mapping[str, Any]) -> tuple[bool, bool]:
    """(all, with_x) of a binding; raises BindingArgumentError like RabbitMQ's validation."""
    xm = args.get("x-match", _MISSING)
    if xm is _MISSING:
        return True, False
    if isinstance(xm, str | bytes) and not isinstance(xm, ByteArray):  # longstr
        mode = _X_MATCH_MODES.get(xm if isinstance(xm, str) else xm.decode("latin-1"))
        if mode is None:
            raise BindingArgumentError(
                f"Invalid x-match field value {_erl_binary(xm)}; "
                "expected all, any, all-with-x, or any-with-x"
            )
        return mode
    shown = _erl_binary(bytes(xm)) if isinstance(xm, ByteArray) else repr(xm)
    raise BindingArgumentError(
        f"Invalid x-match field type {_rabbit_type_name(xm)} (value {shown}); expected longstr"
    )


def _match_all(pats: tuple[tuple[str, Any], ...], h: dict[str, Any]) -> bool:
    for k, pv in pats:
        dv = h.get(k, _MISSING)
        if dv is _MISSING or (pv is not _PRESENT and dv != pv):
            return False
    return True


class _HeadersGroup(Generic[D]):
    """All bindings sharing one argument table: one matcher, refcounted destinations.

    ``pats`` are ``(key, value)`` with the value in :func:`_erl` form, or ``_PRESENT`` for a
    void binding value. ``index`` lists where the group is registered in the router's
    index: ``(True, key)`` in ``by_key`` or ``(False, (key, value))`` in ``by_pair``.
    """

    __slots__ = ("all", "pats", "dests", "dests_tuple", "index")

    def __init__(self, args: Mapping[str, Any]) -> None:
        all_, with_x = _x_match(args)
        pats = []
        for k, v in args.items():
            if k == "x-match" or (not with_x and k.startswith("x-")):
                continue
            pats.append((k, _PRESENT if v is None else _erl(v)))
        self.all = all_
        self.pats: tuple[tuple[str, Any], ...] = tuple(pats)
        self.dests: dict[D, int] = {}
        self.dests_tuple: tuple[D, ...] | None = None
        entries: list[tuple[bool, Any]] = []
        if all_:
            # one required pattern is enough to find the candidates; prefer a valued one
            valued: list[tuple[bool, Any]] = [(False, (k, v)) for k, v in pats if v is not _PRESENT]
            entries = valued[:1] or [(True, k) for k, _ in pats[:1]]
        else:
            # any pattern matching is a match: register under every one of them
            entries = [(True, k) if v is _PRESENT else (False, (k, v)) for k, v in pats]
        self.index: tuple[tuple[bool, Any], ...] = tuple(entries)


_IndexBucket = dict[_HeadersGroup[D], None]


class HeadersRouter(Router[D]):
    """Headers exchange: ``x-match`` all (default) / any / all-with-x / any-with-x.

    Bindings with equal argument tables share one group. Groups are indexed by a header
    key (void patterns) or a ``(key, value)`` pair, so routing does a couple of dict
    lookups per message header instead of scanning every binding: an ``any`` group found
    through the index has matched; an ``all`` group found through one of its patterns is
    then checked in full. ``all`` groups without patterns match every message; ``any``
    groups without patterns match none and are not indexed. The routing key is ignored
    (but is part of binding identity).
    """

    TYPE = "headers"
    NEEDS_HEADERS = True
    __slots__ = ("_groups", "_always", "_by_key", "_by_pair")

    def __init__(self) -> None:
        super().__init__()
        self._groups: dict[tuple[Any, ...], _HeadersGroup[D]] = {}
        self._always: _IndexBucket[D] = {}
        self._by_key: dict[str, _IndexBucket[D]] = {}
        self._by_pair: dict[tuple[str, Any], _IndexBucket[D]] = {}

    def _validate(self, routing_key: str, args: dict[str, Any]) -> None:
        _x_match(args)

    def _on_add(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        g = self._groups.get(ak)
        if g is None:
            g = self._groups[ak] = _HeadersGroup(args)
            if g.all and not g.pats:
                self._always[g] = None
            for by_key, k in g.index:
                table: dict[Any, _IndexBucket[D]] = self._by_key if by_key else self._by_pair
                bucket = table.get(k)
                if bucket is None:
                    bucket = table[k] = {}
                bucket[g] = None
        _inc(g.dests, dest)
        g.dests_tuple = None

    def _on_remove(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        g = self._groups[ak]
        _dec(g.dests, dest)
        g.dests_tuple = None
        if g.dests:
            return
        del self._groups[ak]
        self._always.pop(g, None)
        for by_key, k in g.index:
            table: dict[Any, _IndexBucket[D]] = self._by_key if by_key else self._by_pair
            bucket = table[k]
            del bucket[g]
            if not bucket:
                del table[k]

    def route(self, routing_key: str, headers: dict | None = None) -> Collection[D]:
        matched: dict[_HeadersGroup[D], None] = dict(self._always) if self._always else {}
        if headers and (self._by_key or self._by_pair):
            h = {k: _erl(v) for k, v in headers.items()}
            by_key = self._by_key
            by_pair = self._by_pair
            checked: set[_HeadersGroup[D]] = set()
            for k, v in h.items():
                for bucket in (by_key.get(k) if by_key else None, by_pair.get((k, v))):
                    if not bucket:
                        continue
                    for g in bucket:
                        if g in matched:
                            continue
                        if g.all:
                            if g in checked:
                                continue
                            checked.add(g)
                            if not _match_all(g.pats, h):
                                continue
                        matched[g] = None
        if not matched:
            return _EMPTY
        if len(matched) == 1:
            g = next(iter(matched))
            r = g.dests_tuple
            if r is None:
                r = g.dests_tuple = tuple(g.dests)
            return r
        out: dict[D, None] = {}
        for g in matched:
            out.update(dict.fromkeys(g.dests))
        return tuple(out)


# --------------------------------------------------------------------------- registry

ROUTER_TYPES: dict[str, type[Router[Any]]] = {
    DirectRouter.TYPE: DirectRouter,
    FanoutRouter.TYPE: FanoutRouter,
    TopicRouter.TYPE: TopicRouter,
    HeadersRouter.TYPE: HeadersRouter,
}


def make_router(
    exchange_type: str,
    arguments: Mapping[str, Any] | None = None,
    ident: Callable[[Any], bytes] | None = None,
) -> Router[Any]:
    """A fresh, empty router for an exchange type; ValueError for an unknown type.

    ``arguments`` are the exchange's (a delayed exchange routes as its
    ``x-delayed-type``; a consistent hash exchange reads ``hash-header`` /
    ``hash-property``); ``ident`` gives a destination's stable identity, the same in
    every process (consistent hashing places destinations by it).
    """
    if exchange_type == DELAYED_TYPE:
        inner = (arguments or {}).get("x-delayed-type")
        if not isinstance(inner, str) or inner == DELAYED_TYPE:
            raise ValueError(f"bad x-delayed-type {inner!r}")
        exchange_type = inner
    if exchange_type == "x-consistent-hash":
        from shardmq.broker.chash import make_chash_router

        return make_chash_router(arguments or {}, ident or _default_ident)
    cls = ROUTER_TYPES.get(exchange_type)
    if cls is None:
        raise ValueError(f"unknown exchange type {exchange_type!r}")
    return cls()


# The delayed message exchange: it holds messages carrying ``x-delay``, then routes them
# as its ``x-delayed-type`` (``shardmq.broker.delayed``).
DELAYED_TYPE = "x-delayed-message"
# Every exchange type a client may declare.
EXCHANGE_TYPES = frozenset([*ROUTER_TYPES, "x-consistent-hash", DELAYED_TYPE])


def _default_ident(dest: Any) -> bytes:
    return repr(dest).encode("utf-8", "surrogatepass")
