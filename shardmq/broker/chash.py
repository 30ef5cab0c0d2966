"""The ``x-consistent-hash`` exchange type, built in (RabbitMQ needs a plugin for it).

Owns: ``ConsistentHashRouter`` — bindings whose routing key is a weight (a positive
integer as a string), and the choice of exactly one destination per message from a hash
of its routing key, or of a header (``hash-header`` exchange argument) or a property
(``hash-property``: ``message_id``, ``correlation_id`` or ``timestamp``).

How a destination is chosen: weighted rendezvous hashing (highest random weight). Each
destination has a seed derived from its identity (kind and name, never object identity
or arrival order); a message's key hash is mixed with every seed into a uniform number
``u`` in (0, 1), and the destination with the smallest ``-ln(u) / weight`` wins. That
is an exponential race, so destination ``i`` wins with probability exactly
``w_i / sum(w)``: no ring of virtual points is needed to smooth the distribution (a
ring with ``k`` points per unit of weight deviates by about ``1/sqrt(k)``), and adding a
destination moves exactly the keys it wins (about ``w_new / sum(w)`` of them), none
between old destinations. Several bindings to one destination add their weights, as
the plugin's buckets do. Cost per message: one blake2b of the key plus one mix per
destination; routes on the routing key are cached by the vhost's route cache.

Invariants:
- The choice depends only on the set of (destination identity, total weight) and the
  key: every worker, and the same broker after a restart, routes a key to the same
  destination whatever order the bindings were made in.
- A missing header or property hashes as one fixed value (RabbitMQ hashes
  ``undefined``): such messages all go to one destination.
- Binding keys are validated as the plugin does: 406 "The binding key must be an
  integer: <<"abc">>" and "The binding key must be greater than 0".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Hashable, Mapping
from hashlib import blake2b
from typing import Any, ClassVar, TypeVar

from shardmq.amqp.errors import PRECONDITION_FAILED, SoftError
from shardmq.broker.routing import BindingArgumentError, Router, rabbit_type_name

__all__ = [
    "HASH_PROPERTIES",
    "ConsistentHashRouter",
    "MessageHashRouter",
    "check_arguments",
    "key_hash",
    "make_chash_router",
]

D = TypeVar("D", bound=Hashable)

HASH_PROPERTIES = ("correlation_id", "message_id", "timestamp")
_M64 = (1 << 64) - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")
_UNDEFINED = b"\x00undefined"  # what a missing header / property hashes as
_EMPTY: tuple[Any, ...] = ()


def key_hash(key: bytes) -> int:
    """A stable 64-bit hash of a key (the same in every process, unlike ``hash``)."""
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "little")


def _mix(z: int) -> int:
    """splitmix64's finalizer: a bijective 64-bit mix."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _erl_binary(text: str) -> str:
    if not text:
        return "<<>>"
    return '<<"' + text.replace("\\", "\\\\").replace('"', '\\"') + '">>'


def parse_weight(routing_key: str) -> int:
    """The weight a binding key names; BindingArgumentError (406) as the plugin says."""
    if not _INTEGER.fullmatch(routing_key):
        raise BindingArgumentError(
            f"The binding key must be an integer: {_erl_binary(routing_key)}"
        )
    w = int(routing_key)
    if w <= 0:
        raise BindingArgumentError("The binding key must be greater than 0")
    return w


def check_arguments(arguments: Mapping[str, Any]) -> None:
    """Validate a consistent hash exchange's arguments (406 with the plugin's texts).

    A non-string ``hash-header`` crashes the plugin (541 INTERNAL_ERROR); here it is a
    406 naming the type instead.
    """
    header = arguments.get("hash-header")
    prop = arguments.get("hash-property")
    if header is not None and prop is not None:
        raise SoftError(PRECONDITION_FAILED, "hash-header and hash-property are mutually exclusive")
    if header is not None and not isinstance(header, str | bytes):
        raise SoftError(
            PRECONDITION_FAILED,
            f"invalid type '{rabbit_type_name(header)}' for arg 'hash-header'; expected longstr",
        )
    if prop is not None:
        name = prop.decode("utf-8", "replace") if isinstance(prop, bytes) else str(prop)
        if name not in HASH_PROPERTIES:
            raise SoftError(PRECONDITION_FAILED, f"Unsupported property: {name}")


def _value_bytes(v: Any) -> bytes:
    if v is None:
        return _UNDEFINED
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass")
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    return repr(v).encode("utf-8", "surrogatepass")


class ConsistentHashRouter(Router[D]):
    """One destination per message, chosen by the routing key's hash (see the module)."""

    TYPE: ClassVar[str] = "x-consistent-hash"
    __slots__ = ("_ident", "_weights", "_table")

    def __init__(self, ident: Callable[[D], bytes]) -> None:
        super().__init__()
        self._ident = ident
        self._weights: dict[D, int] = {}  # dest -> total weight of its bindings
        # (seed, 1/weight, dest), sorted by identity; rebuilt on binding changes
        self._table: tuple[tuple[int, float, D], ...] = ()

    def _validate(self, routing_key: str, args: dict[str, Any]) -> None:
        parse_weight(routing_key)

    def _on_add(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        self._weights[dest] = self._weights.get(dest, 0) + int(routing_key)
        self._rebuild()

    def _on_remove(self, dest: D, routing_key: str, ak: tuple[Any, ...], args: dict) -> None:
        w = self._weights[dest] - int(routing_key)
        if w > 0:
            self._weights[dest] = w
        else:
            del self._weights[dest]
        self._rebuild()

    def _rebuild(self) -> None:
        rows = []
        for dest, w in self._weights.items():
            ident = self._ident(dest)
            rows.append((ident, key_hash(b"dest\x00" + ident), 1.0 / w, dest))
        rows.sort(key=lambda r: r[0])
        self._table = tuple((seed, inv, dest) for _, seed, inv, dest in rows)

    def weights(self) -> dict[D, int]:
        """Destination -> total weight (a copy)."""
        return dict(self._weights)

    def pick(self, key: bytes) -> D | None:
        """The destination of ``key``; None without bindings."""
        table = self._table
        if not table:
            return None
        if len(table) == 1:
            return table[0][2]
        k = key_hash(key)
        best: D | None = None
        best_score = math.inf
        log = math.log
        for seed, inv, dest in table:
            # u in (0, 1): 53 high bits of the mix, offset by half a step
            u = ((_mix(k ^ seed) >> 11) + 0.5) * (1.0 / (1 << 53))
            score = -log(u) * inv
            if score < best_score:
                best_score = score
                best = dest
        return best

    def route(self, routing_key: str, headers: dict | None = None) -> Collection[D]:
        d = self.pick(routing_key.encode("utf-8", "surrogatepass"))
        return _EMPTY if d is None else (d,)


class MessageHashRouter(ConsistentHashRouter[D]):
    """Hashes a header (``hash-header``) or a property (``hash-property``) instead."""

    NEEDS_HEADERS: ClassVar[bool] = True
    __slots__ = ("_header", "_property")

    def __init__(self, ident: Callable[[D], bytes], header: str | None, prop: str | None) -> None:
        super().__init__(ident)
        self._header = header
        self._property = prop

    def route(self, routing_key: str, headers: dict | None = None) -> Collection[D]:
        value = (headers or {}).get(self._header) if self._header is not None else None
        d = self.pick(_value_bytes(value))
        return _EMPTY if d is None else (d,)

    def route_message(self, routing_key: str, props: Any) -> Collection[D]:
        if self._property is None:
            return self.route(routing_key, props.headers)
        value = getattr(props, self._property, None)
        if self._property == "timestamp" and value is not None:
            value = str(int(value))
        d = self.pick(_value_bytes(value))
        return _EMPTY if d is None else (d,)


def make_chash_router(
    arguments: Mapping[str, Any], ident: Callable[[Any], bytes]
) -> ConsistentHashRouter[Any]:
    """The router of a consistent hash exchange with these (validated) arguments."""
    header = arguments.get("hash-header")
    prop = arguments.get("hash-property")
    if isinstance(header, bytes):
        header = header.decode("utf-8", "surrogatepass")
    if isinstance(prop, bytes):
        prop = prop.decode("utf-8", "surrogatepass")
    if header is None and prop is None:
        return ConsistentHashRouter(ident)
    return MessageHashRouter(ident, header, prop)
