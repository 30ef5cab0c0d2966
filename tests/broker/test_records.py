"""Golden bytes of every record that crosses the rings (shardmq/broker/xshard/records.py).

Each test pins the exact bytes of one record kind (fields spaced as in the layout) and
parses them back. A change here is a change of the wire between workers: all workers
of one broker run the same code, so it is allowed, but it must be deliberate.
"""

from __future__ import annotations

import pytest

from shardmq.amqp.errors import ACCESS_REFUSED, SoftError
from shardmq.broker import metadata as md
from shardmq.broker.xshard import records as r

GID = 0x1_0000_0002  # worker 1's connection 2
REF = 0x100_0000_0001  # incarnation 1's first ref


def golden(spaced: str) -> bytes:
    return bytes.fromhex(spaced.replace(" ", ""))


def test_kinds_and_actions_are_pinned() -> None:
    kinds = (r.ENQUEUE, r.DELIVER, r.SETTLE, r.CONFIRM, r.CREDIT, r.REQUEST, r.REPLY)
    assert kinds == (1, 2, 3, 4, 5, 6, 7)
    assert (r.IDLE, r.THROTTLE) == (8, 9)
    assert (r.ACK, r.DROP, r.REQUEUE) == (0, 1, 2)
    assert r.TX_SEQ == 1 << 63


def test_enqueue_head() -> None:
    addr = r.enqueue_address("/", ["a", "bc"])
    assert addr == golden("01 2f  01 61  02 6263")
    data = r.enqueue_head(GID, 3, 2, addr)
    # kind, gid, channel, n queues, address len, address
    assert data == golden("01 0000000100000002 0003 02 0007") + addr
    assert r.parse_enqueue_head(data) == (GID, 3, 2, addr, len(data))
    assert r.parse_enqueue_address(addr, 2) == ("/", ("a", "bc"))


def test_enqueue_item() -> None:
    item = r.pack_enqueue_item(7, 5, 1, 20, 131072, 40)
    # seq, exrk len, raw's channel, header size, largest frame, raw len
    assert item == golden("0000000000000007 0005 0001 00000014 00020000 00000028")
    assert len(item) == r.ENQUEUE_ITEM_SIZE
    assert r.unpack_enqueue_item(b"xx" + item, 2) == (7, 5, 1, 20, 131072, 40)


def test_deliver_head() -> None:
    data = r.deliver_head(GID, 3, b"\x03ctg")
    assert data == golden("02 0000000100000002 0003 03 637467")
    assert r.parse_deliver_head(data + b"items") == (GID, 3, b"\x03ctg", len(data))


def test_deliver_item() -> None:
    item = r.pack_deliver_item(REF, 3, 5, 1, 20, 131072, 40)
    # ref, flags, exrk len, raw's channel, header size, largest frame, raw len
    assert item == golden("0000010000000001 03 0005 0001 00000014 00020000 00000028")
    assert len(item) == r.DELIVER_ITEM_SIZE
    assert r.unpack_deliver_item(item, 0) == (REF, 3, 5, 1, 20, 131072, 40)


def test_settle() -> None:
    data = r.settle_record(r.REQUEUE, [1, REF])
    assert data == golden("03 02 00000002 0000000000000001 0000010000000001")
    assert r.parse_settle(data) == (r.REQUEUE, (1, REF))
    assert r.parse_settle(r.settle_record(r.ACK, [])) == (r.ACK, ())


def test_confirm() -> None:
    data = r.confirm_record(GID, 3, True, [7, r.TX_SEQ | 1])
    assert data == golden("04 0000000100000002 0003 01 00000002 0000000000000007 8000000000000001")
    assert r.parse_confirm(data) == (GID, 3, True, (7, r.TX_SEQ | 1))
    assert r.parse_confirm(r.confirm_record(GID, 3, False, [9]))[2:] == (False, (9,))


@pytest.mark.parametrize(("kind", "first"), [(r.CREDIT, "05"), (r.IDLE, "08")])
def test_credit_and_idle(kind: int, first: str) -> None:
    data = r.credit_record(kind, GID, 3, 512, b"\x03ctg")
    assert data == golden(first + " 0000000100000002 0003 00000200 03 637467")
    assert r.parse_credit(data) == (GID, 3, 512, "ctg")


def test_throttle() -> None:
    data = r.throttle_record(GID, True, "q1")
    assert data == golden("09 0000000100000002 01 02 7131")
    assert r.parse_throttle(data) == (GID, True, "q1")
    assert r.parse_throttle(r.throttle_record(GID, False, "q1")) == (GID, False, "q1")


def test_request_consume() -> None:
    req = r.Consume(4, "/", "q1", GID, 3, "ctg", True, False, 4096, False, -2)
    data = r.request_record(req)
    # kind; msgpack [ "consume", req, vhost, name, gid, channel, tag, no_ack, exclusive,
    # credit, credit_on_settle, priority ]
    assert data == golden(
        "06 9c a7636f6e73756d65 04 a12f a27131 cf0000000100000002 03 a3637467 c3 c2 cd1000 c2 fe"
    )
    assert r.parse_request(data) == req


def test_request_reply_exists() -> None:
    req = r.ReplyExists(7, "amq.rabbitmq.reply-to.x")
    data = r.request_record(req)
    # kind; msgpack [ "reply", req, address ]
    assert data == golden("06 93 a57265706c79 07 b7 616d712e7261626269746d712e7265706c792d746f2e78")
    assert r.parse_request(data) == req


def test_request_cancel_get_purge() -> None:
    cancel = r.Cancel(0, "/", "q1", GID, 3, "ctg")
    get = r.Get(5, "/", "q1", False)
    purge = r.Purge(6, "/", "q1")
    assert r.request_record(cancel) == golden(
        "06 97 a663616e63656c 00 a12f a27131 cf0000000100000002 03 a3637467"
    )
    assert r.request_record(get) == golden("06 95 a3676574 05 a12f a27131 c2")
    assert r.request_record(purge) == golden("06 94 a57075726765 06 a12f a27131")
    for req in (cancel, get, purge):
        assert r.parse_request(r.request_record(req)) == req


def test_reply_get_ok() -> None:
    ok = r.GetOk(REF, True, 3, b"\x00\x01x", 1, 20, 131072, b"raw")
    data = r.reply_record(r.Reply(5, None, ok))
    # kind; msgpack [ req, nil, [ ref, redelivered, count, exrk, channel, header size,
    # largest frame, raw ] ]
    assert data == golden(
        "07 93 05 c0 98 cf0000010000000001 c3 03 c403000178 01 14 ce00020000 c403726177"
    )
    reply = r.parse_reply(data)
    assert reply == r.Reply(5, None, ok)
    assert r.result_value(reply.result) == [REF, True, 3, b"\x00\x01x", 1, 20, 131072, b"raw"]


def test_reply_count_and_error() -> None:
    assert r.reply_record(r.Reply(6, None, 3)) == golden("07 93 06 c0 03")
    assert r.parse_reply(golden("07 93 06 c0 03")) == r.Reply(6, None, 3)
    assert r.parse_reply(golden("07 93 06 c0 c0")) == r.Reply(6, None, None)
    err = md.error_of(SoftError(ACCESS_REFUSED, "ACCESS_REFUSED - x", 60, 20))
    data = r.reply_record(r.Reply(4, err, None))
    assert data == golden("07 93 04 95 c3 cd0193 b2" + b"ACCESS_REFUSED - x".hex() + " 3c 14 c0")
    reply = r.parse_reply(data)
    assert reply.error is not None
    back = md.error_from(reply.error)
    assert (back.soft, back.reply_code, back.text) == (True, ACCESS_REFUSED, "ACCESS_REFUSED - x")
