"""Queue and channel semantics through the sans-IO harness (no sockets, no processes)."""

from __future__ import annotations

from loadtest.inproc import FakeIO, connect, make_broker
from shardmq.amqp import methods as M
from shardmq.broker.queue import QUEUE_HIGH_WATER, Queue
from shardmq.broker.storage import MemoryStore
from shardmq.message import Message


def _setup(n_queues: int = 1):
    broker = make_broker()
    c = connect(broker)
    c.open_channel(1)
    for i in range(n_queues):
        c.declare(1, f"q{i}")
    return broker, c


def test_round_robin_between_consumers_on_two_connections() -> None:
    broker, pub = _setup()
    a, b = connect(broker), connect(broker)
    for cl in (a, b):
        cl.open_channel(1)
        cl.consume(1, "q0", no_ack=True)
    for i in range(6):
        pub.publish(1, "", "q0", b"m%d" % i)
    a.pump()
    b.pump()
    assert a.bodies() == [b"m0", b"m2", b"m4"]
    assert b.bodies() == [b"m1", b"m3", b"m5"]


def test_prefetch_per_consumer_and_ack_returns_credit() -> None:
    _broker, c = _setup()
    c.call(1, M.BasicQos(prefetch_count=2))
    c.consume(1, "q0")
    for i in range(5):
        c.publish(1, "", "q0", b"%d" % i)
    assert c.bodies() == [b"0", b"1"]
    c.call(1, M.BasicAck(delivery_tag=1))
    assert c.bodies() == [b"0", b"1", b"2"]
    c.call(1, M.BasicAck(delivery_tag=3, multiple=True))
    assert c.bodies() == [b"0", b"1", b"2", b"3", b"4"]


def test_global_qos_limits_the_channel_across_consumers() -> None:
    _broker, c = _setup(2)
    c.call(1, M.BasicQos(prefetch_count=3, global_=True))
    c.consume(1, "q0")
    c.consume(1, "q1")
    for i in range(4):
        c.publish(1, "", "q0", b"a%d" % i)
        c.publish(1, "", "q1", b"b%d" % i)
    assert len(c.deliveries) == 3


def test_global_qos_room_freed_by_acks_goes_to_the_channels_other_queues() -> None:
    _broker, c = _setup(2)
    c.call(1, M.BasicQos(prefetch_count=2, global_=True))
    for i in range(2):
        c.publish(1, "", "q0", b"a%d" % i)
    for i in range(3):
        c.publish(1, "", "q1", b"b%d" % i)
    c.consume(1, "q0")
    c.consume(1, "q1")
    assert c.bodies() == [b"a0", b"a1"]
    c.call(1, M.BasicAck(delivery_tag=1))  # q0 is empty now: q1 takes the room
    assert c.bodies() == [b"a0", b"a1", b"b0"]
    c.call(1, M.BasicAck(delivery_tag=3, multiple=True))
    assert c.bodies() == [b"a0", b"a1", b"b0", b"b1", b"b2"]
    c.call(1, M.BasicReject(delivery_tag=4, requeue=False))
    c.call(1, M.BasicNack(delivery_tag=5, multiple=True, requeue=False))
    assert len(c.deliveries) == 5


def test_global_qos_ack_dispatches_each_queue_of_the_channel_once(monkeypatch) -> None:
    broker, c = _setup(3)
    c.call(1, M.BasicQos(prefetch_count=2, global_=True))
    for q in ("q0", "q1", "q2"):
        c.consume(1, q)
    c.publish(1, "", "q0", b"a")
    c.publish(1, "", "q0", b"b")
    calls: list[str] = []
    real = Queue.dispatch

    def counting(self: Queue) -> None:
        calls.append(self.name)
        real(self)

    monkeypatch.setattr(Queue, "dispatch", counting)
    c.call(1, M.BasicAck(delivery_tag=1))
    assert calls[0] == "q0" and sorted(calls) == ["q0", "q1", "q2"]
    calls.clear()
    c.call(1, M.BasicAck(delivery_tag=2, multiple=True))
    assert calls[0] == "q0" and sorted(calls) == ["q0", "q1", "q2"]


def test_nack_requeue_keeps_order_and_sets_redelivered() -> None:
    _broker, c = _setup()
    for i in range(4):
        c.publish(1, "", "q0", b"%d" % i)
    c.call(1, M.BasicQos(prefetch_count=2))
    c.consume(1, "q0", tag="t")
    assert c.bodies() == [b"0", b"1"]
    c.call(1, M.BasicCancel(consumer_tag="t"))
    c.call(1, M.BasicNack(delivery_tag=2, multiple=True, requeue=True))
    c.consume(1, "q0", tag="t2")
    got = [(d.body, d.method.redelivered) for d in c.deliveries[2:]]
    assert got == [(b"0", True), (b"1", True)]


def test_unknown_delivery_tag_closes_channel_with_406() -> None:
    _broker, c = _setup()
    c.call(1, M.BasicAck(delivery_tag=42))
    close = c.last(M.ChannelClose)
    assert close.reply_code == 406
    assert (close.class_id, close.method_id) == (60, 80)
    assert "unknown delivery tag 42" in close.reply_text


def test_channel_close_requeues_unacked_to_other_consumer() -> None:
    broker, c = _setup()
    other = connect(broker)
    other.open_channel(1)
    c.consume(1, "q0")
    c.publish(1, "", "q0", b"x")
    assert c.bodies() == [b"x"]
    other.consume(1, "q0", no_ack=True)
    c.call(1, M.ChannelClose(reply_code=200, reply_text="bye"))
    other.pump()
    assert [(d.body, d.method.redelivered) for d in other.deliveries] == [(b"x", True)]


def test_confirms_are_coalesced_into_one_multiple_ack() -> None:
    _broker, c = _setup()
    c.call(1, M.ConfirmSelect())
    payload = b""
    from loadtest.inproc import content_frames, method_frame

    for _ in range(5):
        payload += method_frame(1, M.BasicPublish(routing_key="q0")) + content_frames(1, b"z")
    c.send(payload)
    acks = [m for _ch, m in c.methods if isinstance(m, M.BasicAck)]
    assert acks == [M.BasicAck(delivery_tag=5, multiple=True)]


def test_mandatory_unroutable_is_returned_before_the_confirm() -> None:
    _broker, c = _setup()
    c.call(1, M.ConfirmSelect())
    c.publish(1, "amq.direct", "nowhere", b"r", mandatory=True)
    ret = c.deliveries[-1]
    assert isinstance(ret.method, M.BasicReturn)
    assert ret.method.reply_code == 312 and ret.body == b"r"
    assert isinstance(c.methods[-1][1], M.BasicAck)


def test_tx_rollback_discards_publishes_and_commit_applies_them() -> None:
    _broker, c = _setup()
    c.call(1, M.TxSelect())
    c.publish(1, "", "q0", b"rolled back")
    c.call(1, M.TxRollback())
    c.publish(1, "", "q0", b"kept")
    assert c.declare(1, "q0").message_count == 0
    c.call(1, M.TxCommit())
    assert c.declare(1, "q0").message_count == 1


def test_queue_delete_sends_cancel_to_consumers() -> None:
    _broker, c = _setup()
    c.consume(1, "q0", tag="ct")
    c.call(1, M.QueueDelete(queue="q0"))
    cancels = [m for _ch, m in c.methods if isinstance(m, M.BasicCancel)]
    assert cancels and cancels[0].consumer_tag == "ct"


def test_exclusive_queue_removed_with_its_connection() -> None:
    broker, c = _setup()
    c.declare(1, "ex", exclusive=True)
    assert "ex" in broker.vhosts["/"].queues
    c.conn.connection_lost()
    assert "ex" not in broker.vhosts["/"].queues


def test_backlog_throttles_a_pure_publisher_until_it_drains() -> None:
    broker, pub = _setup()
    cons = connect(broker)
    cons.open_channel(1)
    cons.call(1, M.BasicQos(prefetch_count=1))
    cons.consume(1, "q0")
    io = pub.conn.io
    assert isinstance(io, FakeIO)
    m = Message.from_parts(b"\x00\x02q0", _HEADER, b"")
    for _ in range(QUEUE_HIGH_WATER + 2):
        pub.conn.on_publish(pub.domain.channels[1], m.exrk, 0, 0, m.raw, m.hsize, m.fmax)
    assert io.reading is False
    q = broker.vhosts["/"].queues["q0"]
    # Consumer acks everything: the backlog drains and reading resumes.
    while q.message_count:
        cons.pump()
        tag = cons.deliveries[-1].method.delivery_tag
        cons.call(1, M.BasicAck(delivery_tag=tag))
    assert io.reading is True


def test_memory_alarm_blocks_publishers_with_connection_blocked() -> None:
    broker, pub = _setup()
    pub.publish(1, "", "q0", b"x")
    broker.set_memory_alarm(True)
    pub.pump()
    assert isinstance(pub.methods[-1][1], M.ConnectionBlocked)
    broker.set_memory_alarm(False)
    pub.pump()
    assert isinstance(pub.methods[-1][1], M.ConnectionUnblocked)


_HEADER = b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x00"


def _msg(seq: int) -> Message:
    return Message.from_parts(b"\x00\x00", _HEADER, b"", seq)


def test_memory_store_requeue_restores_original_order() -> None:
    s = MemoryStore()
    msgs = [_msg(i) for i in range(1, 7)]
    for m in msgs:
        s.push(m)
    taken = [s.take() for _ in range(4)]  # 1..4 delivered, 5, 6 ready
    s.requeue([taken[1], taken[3]])  # 2 and 4 come back
    s.requeue([taken[0]])  # then 1
    assert [m.seq for m in s] == [1, 2, 4, 5, 6]


def test_access_request_is_answered() -> None:
    """access.request (deprecated, sent by old clients) gets request-ok with a ticket."""
    broker, pub = _setup()
    pub.call(1, M.AccessRequest(realm="/data"))
    assert pub.last(M.AccessRequestOk).ticket == 1  # type: ignore[attr-defined]
