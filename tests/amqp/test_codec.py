"""Golden bytes for the hand-tuned hot-path writers, cross-checked with the method table."""

from __future__ import annotations

import struct

from shardmq.amqp import methods as M
from shardmq.amqp.codec import (
    exrk_names,
    make_exrk,
    raw_body,
    write_confirm,
    write_deliver,
    write_get_ok,
    write_return,
)
from shardmq.message import Message

HEADER = struct.pack(">HHQ", 60, 0, 5) + M.BasicProperties(delivery_mode=2).encode()


def _frames(buf: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(buf):
        t, ch, size = struct.unpack_from(">BHI", buf, pos)
        assert buf[pos + 7 + size] == 0xCE
        out.append((t, ch, buf[pos + 7 : pos + 7 + size]))
        pos += 8 + size
    return out


def _msg(body: bytes, channel: int = 1, frame_max: int = 131072) -> Message:
    header = struct.pack(">HHQ", 60, 0, len(body)) + M.BasicProperties(delivery_mode=2).encode()
    return Message.from_parts(make_exrk("ex", "rk"), header, body, 1, channel, frame_max)


def test_deliver_golden_bytes() -> None:
    out = bytearray()
    msg = _msg(b"hello")
    write_deliver(out, 1, b"\x02ct", 7, True, msg.exrk, msg, 4096)
    expected = (
        b"\x01\x00\x01\x00\x00\x00\x16"  # method frame, channel 1, 22 bytes
        b"\x00\x3c\x00\x3c"  # basic.deliver
        b"\x02ct"
        b"\x00\x00\x00\x00\x00\x00\x00\x07"
        b"\x01"
        b"\x02ex\x02rk"
        b"\xce"
    )
    assert bytes(out[: len(expected)]) == expected
    assert bytes(out[len(expected) :]) == msg.raw  # the publisher's frames, unchanged
    frames = _frames(bytes(out))
    assert [f[0] for f in frames] == [1, 2, 3]
    assert M.decode_method(frames[0][2]) == M.BasicDeliver(
        consumer_tag="ct", delivery_tag=7, redelivered=True, exchange="ex", routing_key="rk"
    )
    assert frames[1][2] == HEADER
    assert frames[2][2] == b"hello"


def test_other_channel_or_smaller_frame_max_is_reframed() -> None:
    body = bytes(range(256)) * 40  # 10240 bytes, published as one 131072-max frame
    msg = _msg(body)
    out = bytearray()
    write_deliver(out, 3, b"\x01t", 1, False, msg.exrk, msg, 4096)
    frames = _frames(bytes(out))
    bodies = [f[2] for f in frames if f[0] == 3]
    assert [len(b) for b in bodies] == [4088, 4088, 2064]
    assert b"".join(bodies) == body
    assert all(f[1] == 3 for f in frames)


def test_multi_frame_raw_body_round_trip() -> None:
    body = bytes(range(256)) * 40
    msg = _msg(body, channel=2, frame_max=4096)
    assert msg.fmax == 4088 and msg.body == body == raw_body(msg.raw, msg.hsize)
    out = bytearray()
    write_deliver(out, 2, b"\x01t", 1, False, msg.exrk, msg, 8192)
    assert out.endswith(msg.raw)


def test_empty_body_has_no_body_frame() -> None:
    out = bytearray()
    msg = _msg(b"")
    write_deliver(out, 1, b"\x01t", 1, False, msg.exrk, msg, 4096)
    assert [f[0] for f in _frames(bytes(out))] == [1, 2]
    assert msg.body == b""


def test_get_ok_return_and_confirm_match_the_method_table() -> None:
    exrk = make_exrk("amq.direct", "key")
    msg = _msg(b"hello")
    out = bytearray()
    write_get_ok(out, 2, 9, False, exrk, 41, msg, 131072)
    assert M.decode_method(_frames(bytes(out))[0][2]) == M.BasicGetOk(
        delivery_tag=9,
        redelivered=False,
        exchange="amq.direct",
        routing_key="key",
        message_count=41,
    )
    out = bytearray()
    write_return(out, 2, 312, "NO_ROUTE", exrk, msg, 131072)
    frames = _frames(bytes(out))
    assert M.decode_method(frames[0][2]) == M.BasicReturn(
        reply_code=312, reply_text="NO_ROUTE", exchange="amq.direct", routing_key="key"
    )
    assert frames[2][2] == b"hello"
    out = bytearray()
    write_confirm(out, 5, 1000, True, True)
    write_confirm(out, 5, 1001, False, False)
    frames = _frames(bytes(out))
    assert M.decode_method(frames[0][2]) == M.BasicAck(delivery_tag=1000, multiple=True)
    assert M.decode_method(frames[1][2]) == M.BasicNack(delivery_tag=1001, multiple=False)


def test_exrk_round_trip_with_utf8() -> None:
    exrk = make_exrk("échange", "clé.#")
    assert exrk_names(exrk) == ("échange", "clé.#")


def test_new_message_sets_what_the_class_sets() -> None:
    from shardmq.message import Message, new_message

    args = (b"\x01x\x01k", b"raw-frames", 3, 20, 300, 77)
    by_class, by_fn = Message(*args), new_message(*args)
    assert type(by_fn) is Message
    for slot in Message.__slots__:  # an unset slot raises here
        assert getattr(by_fn, slot) == getattr(by_class, slot), slot
