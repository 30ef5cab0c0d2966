"""Replies and deliveries to a client that never reads are bounded (issue 16).

A raw client pipelines basic.get + basic.recover of a 1 MiB message 1,000 times and
never reads (1 GB of would-be replies): the broker stops reading it once its output
passes the hold mark, so the broker's RSS stays bounded and other clients work. A
no-ack consumer with no prefetch limit that never reads gets no more than its socket
buffers hold: the rest stays ready in the queue (local and cross-worker).
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from pathlib import Path

import pytest

from tests.process.ownbroker import OwnBroker, start_own
from tests.support import rawamqp as raw

MIB = 1024 * 1024
BASIC_GET = (60, 70)
BASIC_RECOVER = (60, 110)
RSS_MARGIN = 200 * MIB  # for 1 GB of would-be replies


@pytest.fixture(params=[1, 3], ids=["workers1", "workers3"])
def own(request: pytest.FixtureRequest, tmp_path: Path) -> OwnBroker:
    b = start_own(tmp_path, request.param)
    request.addfinalizer(b.stop)
    return b


def _peak_rss(b: OwnBroker, seconds: float) -> int:
    """The highest total RSS seen over ``seconds`` (sampled; not a timing assertion)."""
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, b.rss())
        time.sleep(0.05)
    return peak


def _others_work(b: OwnBroker) -> None:
    with b.connect() as c:
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"still here")
        for _ in range(100):
            _m, _p, body = ch.basic_get(q, auto_ack=True)
            if body is not None:
                break
            time.sleep(0.05)
        assert body == b"still here"


def test_pipelined_get_recover_never_read_is_bounded(own: OwnBroker) -> None:
    qname = f"flow-get-{uuid.uuid4().hex[:8]}"
    with own.connect() as c:
        ch = c.channel()
        ch.queue_declare(qname)
        ch.basic_publish("", qname, b"x" * MIB)
    base = own.rss()
    pair = raw.method(1, BASIC_GET, struct.pack(">H", 0) + raw.shortstr(qname) + raw.bits(False))
    pair += raw.method(1, BASIC_RECOVER, raw.bits(True))
    abuser = raw.RawConnection("127.0.0.1", own.port)
    try:
        abuser.handshake()
        abuser.open_channel(1)
        abuser.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        abuser.send(pair * 1000)  # 1,000 x 1 MiB of replies; never read
        peak = _peak_rss(own, 4.0)
        assert peak - base < RSS_MARGIN, (
            f"broker grew {(peak - base) >> 20} MiB for a client that never reads"
        )
        _others_work(own)
    finally:
        abuser.close()
    _others_work(own)
    with own.connect() as c:
        c.channel().queue_delete(qname)
    own_log = own.log()
    assert "Traceback" not in own_log, own_log[-3000:]


def test_no_ack_consumer_that_never_reads_is_bounded(own: OwnBroker) -> None:
    """Deliveries stop once its socket is full: the rest stays in the queue."""
    qname = f"flow-noack-{uuid.uuid4().hex[:8]}"
    size = 64 * 1024
    count = 1000  # 64 MiB
    bound = 32 * MIB  # kernel buffers both sides + the broker's write buffer
    with own.connect() as c:
        c.channel().queue_declare(qname)
    sink = raw.RawConnection("127.0.0.1", own.port)
    try:
        sink.handshake()
        sink.open_channel(1)
        sink.send(raw.basic_consume(1, qname, "sink", no_ack=True))
        sink.expect((60, 21), channel=1)
        # every publisher connection (over the workers) sends a share
        pubs = [own.connect() for _ in range(3)]
        try:
            chans = [p.channel() for p in pubs]
            for i in range(count):
                chans[i % 3].basic_publish("", qname, b"m" * size)
            for p in pubs:
                p.process_data_events(0)
        finally:
            for p in pubs:
                p.close()
        with own.connect() as c:
            ch = c.channel()
            ready = 0
            for _ in range(60):
                ready = ch.queue_declare(qname, passive=True).method.message_count
                time.sleep(0.1)
                again = ch.queue_declare(qname, passive=True).method.message_count
                if again == ready and ready > 0:
                    break
        delivered = count - ready
        assert delivered * size < bound, (
            f"{delivered} of {count} messages ({delivered * size >> 20} MiB) were "
            "delivered to a consumer that reads nothing"
        )
    finally:
        sink.close()
    with own.connect() as c:
        c.channel().queue_delete(qname)
