"""The publish parser takes a whole publish (method, header and body frame in one
buffer) in one step and anything else frame by frame: both must do exactly the same.

The same bytes, fed whole (one ``bytes`` buffer: the one-step path where it applies)
and cut at random points (frames arrive split: the frame-by-frame path, on a
``bytearray`` buffer), must give the publisher the same replies and the consumer the
same deliveries, for well-formed publishes and for every kind of broken one.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.inproc import Client, connect, frame, make_broker, method_frame
from shardmq.amqp import methods as M


def _publish(draw: st.DrawFn) -> bytes:
    ch = 1
    routing_key = draw(st.sampled_from(["q", "q", "q", "nowhere"]))
    mandatory = draw(st.booleans())
    method = M.BasicPublish(routing_key=routing_key, mandatory=mandatory).encode()
    body = draw(st.binary(min_size=0, max_size=40))
    props = draw(
        st.sampled_from(
            [
                M.BasicProperties(),
                M.BasicProperties(content_type="text/plain", priority=3),
                M.BasicProperties(user_id="guest"),
                M.BasicProperties(user_id="mallory"),
                M.BasicProperties(expiration="60000"),
                M.BasicProperties(expiration="soon"),
            ]
        )
    )
    header = struct.pack(">HHQ", 60, 0, len(body)) + props.encode()
    bodies = [body] if body else []
    fault = draw(st.integers(0, 14))
    hch = bch = ch
    hend = bend = b"\xce"
    if fault == 1:
        header = struct.pack(">HHQ", 61, 0, len(body)) + props.encode()  # class 61
    elif fault == 2:
        header = header[:12]  # content header too short
    elif fault == 3:
        header = struct.pack(">HHQ", 60, 0, len(body) + 1) + props.encode()  # more announced
    elif fault == 4 and body:
        header = struct.pack(">HHQ", 60, 0, len(body) - 1) + props.encode()  # less announced
    elif fault == 5:
        hch = 2  # header on another (open) channel
    elif fault == 6:
        bch = 3  # body on a channel that is not open
    elif fault == 7:
        hend = b"\x00"  # bad frame end octet of the header
    elif fault == 8:
        bend = b"\x00"  # ... of the body
    elif fault == 9 and len(body) > 1:
        bodies = [body[:1], body[1:]]  # two body frames
    elif fault == 10:
        method = method[:7] + b"\xff" + method[8:]  # exchange name past the frame
    elif fault == 11:
        method = struct.pack(">HHHBBB", 60, 40, 0, 0, 200, 0)  # routing key past it
    elif fault == 12:
        method = method[:-1] + bytes([2])  # immediate=true
    elif fault == 13 and body:
        header = struct.pack(">HHQ", 60, 0, 0) + props.encode()  # empty, body follows
    out = frame(1, ch, method)
    out += struct.pack(">BHI", 2, hch, len(header)) + header + hend
    for part in bodies:
        out += struct.pack(">BHI", 3, bch, len(part)) + part + bend
    return out


@st.composite
def _stream(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = b"".join(_publish(draw) for _ in range(draw(st.integers(1, 6))))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=12))))
    return data, cuts


def _run(data: bytes, cuts: list[int]) -> tuple[list[object], list[object], list[object]]:
    broker = make_broker()
    consumer = connect(broker)
    consumer.open_channel(1)
    consumer.declare(1, "q")
    consumer.consume(1, "q", tag="c1", no_ack=True)
    publisher: Client = connect(broker)
    publisher.open_channel(1)
    publisher.open_channel(2)
    publisher.methods.clear()
    start = 0
    for cut in [*cuts, len(data)]:
        publisher.send(data[start:cut])
        start = cut
    consumer.pump()
    got = [
        (d.method.routing_key, d.method.delivery_tag, d.properties, d.body)  # type: ignore[attr-defined]
        for d in consumer.deliveries
    ]
    returned = [(d.method, d.properties, d.body) for d in publisher.deliveries]
    return list(publisher.methods), returned, got


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stream())
def test_whole_and_split_publishes_are_parsed_alike(stream: tuple[bytes, list[int]]) -> None:
    data, cuts = stream
    assert _run(data, []) == _run(data, cuts)


def test_one_step_path_is_taken_and_publishes() -> None:
    """The cases above compare two runs; this one pins what a plain run delivers."""
    publish = method_frame(1, M.BasicPublish(routing_key="q"))
    header = struct.pack(">HHQ", 60, 0, 3) + M.BasicProperties().encode()
    data = (publish + frame(2, 1, header) + frame(3, 1, b"abc")) * 3
    _methods, _returned, got = _run(data, [])
    assert [(rk, body) for rk, _tag, _props, body in got] == [("q", b"abc")] * 3  # type: ignore[misc]
