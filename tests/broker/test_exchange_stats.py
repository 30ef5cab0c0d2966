"""Exchange statistics counted in routing (``VHost.route``, ``RouteEntry``): publish_in
per publish and publish_out per queue reached, on the exchange published to, whether the
route came from the cache, was cached just then, or is never cached (headers), and kept
across cache clears; ``lookup`` counts nothing."""

from __future__ import annotations

import struct

from shardmq.amqp.codec import make_exrk
from shardmq.broker.vhost import VHost
from shardmq.message import Message

KW = {"passive": False, "durable": False, "auto_delete": False, "internal": False}
QKW = {"passive": False, "durable": False, "exclusive": False, "auto_delete": False}


def _msg(exchange: str, rk: str) -> Message:
    header = struct.pack(">HHQH", 60, 0, 1, 0)  # basic, body size 1, no properties
    return Message.from_parts(make_exrk(exchange, rk), header, b"x", 0)


def _counts(vh: VHost) -> dict[str, tuple[int, int]]:
    return {name: (n_in, n_out) for name, n_in, n_out in vh.exchange_counts()}


def test_counts_through_cache_clears() -> None:
    vh = VHost("/")
    vh.declare_exchange("fan", "fanout", arguments={}, **KW)
    vh.declare_exchange("hdr", "headers", arguments={}, **KW)
    qs = [vh.declare_queue(f"q{i}", 0, arguments={}, **QKW) for i in range(3)]
    for q in qs[:2]:
        vh.bind(q, "fan", "", {})
    vh.bind(qs[0], "hdr", "", {"x-match": "all"})
    for _ in range(3):
        vh.route(_msg("fan", ""), 3)
    assert _counts(vh) == {"fan": (3, 6)}
    vh.route(_msg("fan", ""), 3)
    vh.bind(qs[2], "fan", "", {})  # clears the cache: the hits so far are kept
    for _ in range(2):
        vh.route(_msg("fan", ""), 3)
    vh.lookup(_msg("fan", ""), 3)  # not counted (tx pre-check, dead-lettering)
    for _ in range(5):
        vh.route(_msg("", "q1"), 0)
    vh.route(_msg("", "nowhere"), 0)
    vh.route(_msg("hdr", ""), 3)  # never cached
    assert _counts(vh) == {"fan": (6, 14), "": (6, 5), "hdr": (1, 1)}
    assert _counts(vh) == {"fan": (6, 14), "": (6, 5), "hdr": (1, 1)}  # reading folds once
