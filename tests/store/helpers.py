"""Helpers for the store tests: messages built the way the broker builds them."""

from __future__ import annotations

import os
import struct

from shardmq.amqp.methods import BasicProperties
from shardmq.message import Message


def exrk(exchange: str = "", routing_key: str = "q") -> bytes:
    ex, rk = exchange.encode(), routing_key.encode()
    return bytes((len(ex),)) + ex + bytes((len(rk),)) + rk


def header(body_size: int, props: BasicProperties) -> bytes:
    return struct.pack(">HHQ", 60, 0, body_size) + props.encode()


def make(
    body: bytes,
    persistent: bool = True,
    props: BasicProperties | None = None,
    routing_key: str = "q",
    frame_max: int = 131072,
) -> Message:
    if props is None:
        props = BasicProperties(delivery_mode=2 if persistent else 1)
    hdr = header(len(body), props)
    if hasattr(Message, "from_parts"):
        return Message.from_parts(exrk("", routing_key), hdr, body, frame_max=frame_max)
    return Message(exrk("", routing_key), hdr, body)  # type: ignore[call-arg]


def same(a: Message, b: Message) -> bool:
    """Byte-identical content (exchange/routing key, properties, body)."""
    return a.exrk == b.exrk and a.header == b.header and a.body == b.body


def disk_bytes(path: str) -> int:
    """Bytes really allocated on disk under ``path`` (st_blocks)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def files(path: str, ext: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(ext))
