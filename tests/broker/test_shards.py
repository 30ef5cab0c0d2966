"""Cross-shard semantics with publisher, queue and consumer on different workers."""

from __future__ import annotations

from loadtest.inproc import Client, content_frames, method_frame
from loadtest.meshcluster import Cluster
from shardmq.amqp import methods as M
from shardmq.broker import queue as queue_mod
from shardmq.broker.queue import Queue
from shardmq.broker.remote import REMOTE_CREDIT_CHUNK, REMOTE_WINDOW, RemoteQueue


def _three() -> tuple[Cluster, str]:
    cl = Cluster(3)
    return cl, cl.queue_on(1)


def _call(cl: Cluster, client: Client, channel: int, m: M.Method) -> None:
    client.conn.feed(method_frame(channel, m))
    cl.pump()


def test_queue_lives_on_its_shard_and_replicas_know_it() -> None:
    cl, q = _three()
    pub = cl.connect(0)
    pub.open_channel(1)
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    assert pub.last(M.QueueDeclareOk).queue == q
    assert isinstance(cl.brokers[1].vhosts["/"].queues[q], Queue)
    assert isinstance(cl.brokers[0].vhosts["/"].queues[q], RemoteQueue)
    assert isinstance(cl.brokers[2].vhosts["/"].queues[q], RemoteQueue)


def test_publish_consume_ack_across_three_workers_round_robin() -> None:
    cl, q = _three()
    pub, c1, c2 = cl.connect(0), cl.connect(2), cl.connect(2)
    for c in (pub, c1, c2):
        c.open_channel(1)
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    for c in (c1, c2):
        _call(cl, c, 1, M.BasicQos(prefetch_count=10))
        _call(cl, c, 1, M.BasicConsume(queue=q, consumer_tag="t"))
        assert c.last(M.BasicConsumeOk).consumer_tag == "t"
    for i in range(6):
        pub.publish(1, "", q, b"m%d" % i)
    cl.pump()
    assert c1.bodies() == [b"m0", b"m2", b"m4"]
    assert c2.bodies() == [b"m1", b"m3", b"m5"]
    owner = cl.brokers[1].vhosts["/"].queues[q]
    assert owner.message_count == 0 and len(cl.brokers[1].shards.owner.held) == 6
    _call(cl, c1, 1, M.BasicAck(delivery_tag=3, multiple=True))
    assert len(cl.brokers[1].shards.owner.held) == 3


def test_prefetch_credit_limits_a_remote_consumer() -> None:
    cl, q = _three()
    pub, con = cl.connect(0), cl.connect(2)
    pub.open_channel(1)
    con.open_channel(1)
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    _call(cl, con, 1, M.BasicQos(prefetch_count=2))
    _call(cl, con, 1, M.BasicConsume(queue=q))
    for i in range(5):
        pub.publish(1, "", q, b"%d" % i)
    cl.pump()
    assert con.bodies() == [b"0", b"1"]
    _call(cl, con, 1, M.BasicAck(delivery_tag=1))
    assert con.bodies() == [b"0", b"1", b"2"]


def test_nack_requeue_comes_back_redelivered_and_channel_close_requeues() -> None:
    cl, q = _three()
    pub, con, other = cl.connect(0), cl.connect(2), cl.connect(0)
    for c in (pub, con, other):
        c.open_channel(1)
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    pub.publish(1, "", q, b"a")
    _call(cl, con, 1, M.BasicConsume(queue=q, consumer_tag="x"))
    assert con.bodies() == [b"a"]
    _call(cl, con, 1, M.BasicNack(delivery_tag=1, requeue=True))
    assert [(d.body, d.method.redelivered) for d in con.deliveries] == [
        (b"a", False),
        (b"a", True),
    ]
    _call(cl, con, 1, M.ChannelClose(reply_code=200, reply_text="bye"))
    _call(cl, other, 1, M.BasicGet(queue=q, no_ack=True))
    assert [(d.body, d.method.redelivered) for d in other.deliveries] == [(b"a", True)]


def test_confirm_waits_for_the_owner_and_mandatory_is_decided_locally() -> None:
    cl, q = _three()
    pub = cl.connect(0)
    pub.open_channel(1)
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    _call(cl, pub, 1, M.ConfirmSelect())
    pub.publish(1, "", q, b"1")
    pub.publish(1, "", "nowhere", b"2", mandatory=True)
    cl.pump()
    acks = [m for _c, m in pub.methods if isinstance(m, M.BasicAck)]
    assert acks and acks[-1].delivery_tag == 2
    assert any(isinstance(d.method, M.BasicReturn) for d in pub.deliveries)


def test_bind_then_publish_from_another_worker_routes() -> None:
    cl, q = _three()
    a, b = cl.connect(0), cl.connect(2)
    a.open_channel(1)
    b.open_channel(1)
    _call(cl, a, 1, M.QueueDeclare(queue=q))
    _call(cl, a, 1, M.QueueBind(queue=q, exchange="amq.topic", routing_key="#.ohio"))
    assert a.last(M.QueueBindOk)
    b.publish(1, "amq.topic", "weather.ohio", b"rain")
    cl.pump()
    _call(cl, b, 1, M.BasicGet(queue=q, no_ack=True))
    assert b.bodies() == [b"rain"]


def test_exclusive_queue_is_locked_to_its_connection_across_workers() -> None:
    cl, q = _three()
    a, b = cl.connect(0), cl.connect(2)
    a.open_channel(1)
    b.open_channel(1)
    _call(cl, a, 1, M.QueueDeclare(queue=q, exclusive=True))
    _call(cl, b, 1, M.BasicConsume(queue=q))
    assert b.last(M.ChannelClose).reply_code == 405
    a.conn.connection_lost()
    cl.pump()
    assert all(q not in br.vhosts["/"].queues for br in cl.brokers)


def test_delete_if_unused_is_checked_by_the_owner() -> None:
    cl, q = _three()
    a, b = cl.connect(0), cl.connect(2)
    a.open_channel(1)
    b.open_channel(1)
    _call(cl, a, 1, M.QueueDeclare(queue=q))
    _call(cl, b, 1, M.BasicConsume(queue=q, consumer_tag="c"))
    _call(cl, a, 1, M.QueueDelete(queue=q, if_unused=True))
    assert a.last(M.ChannelClose).reply_code == 406
    assert all(q in br.vhosts["/"].queues for br in cl.brokers)
    a.open_channel(2)
    _call(cl, a, 2, M.QueueDelete(queue=q))
    cancels = [m for _c, m in b.methods if isinstance(m, M.BasicCancel)]
    assert cancels and cancels[0].consumer_tag == "c"


def test_declare_ok_counts_come_from_the_owner() -> None:
    cl, q = _three()
    a = cl.connect(0)
    a.open_channel(1)
    _call(cl, a, 1, M.QueueDeclare(queue=q))
    for _ in range(3):
        a.publish(1, "", q, b"x")
    cl.pump()
    _call(cl, a, 1, M.QueueDeclare(queue=q, passive=True))
    assert a.last(M.QueueDeclareOk).message_count == 3
    _call(cl, a, 1, M.QueuePurge(queue=q))
    assert a.last(M.QueuePurgeOk).message_count == 3


def test_fanout_sends_one_copy_per_owning_worker() -> None:
    cl = Cluster(2)
    names = [cl.queue_on(1, "fa"), cl.queue_on(1, "fb")]
    a = cl.connect(0)
    a.open_channel(1)
    for n in names:
        _call(cl, a, 1, M.QueueDeclare(queue=n))
        _call(cl, a, 1, M.QueueBind(queue=n, exchange="amq.fanout"))
    a.publish(1, "amq.fanout", "", b"f")
    sent = [r for r in cl.records if r[0] == 0 and r[2][0] == 1]
    assert len(sent) == 1
    cl.pump()
    assert all(cl.brokers[1].vhosts["/"].queues[n].message_count == 1 for n in names)


def test_worker_death_nacks_cancels_and_requeues() -> None:
    cl, q = _three()
    q0 = cl.queue_on(0, "z")
    pub, con = cl.connect(0), cl.connect(2)
    pub.open_channel(1)
    con.open_channel(1)
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    _call(cl, pub, 1, M.QueueDeclare(queue=q0))
    _call(cl, con, 1, M.BasicConsume(queue=q, consumer_tag="dead"))
    _call(cl, con, 1, M.BasicConsume(queue=q0, consumer_tag="alive"))
    _call(cl, pub, 1, M.ConfirmSelect())
    pub.publish(1, "", q0, b"keep")
    cl.pump()
    assert con.bodies() == [b"keep"]
    pub.publish(1, "", q, b"lost")  # not pumped: worker 1 dies with it unconfirmed
    cl.kill(1)
    nacks = [m for _c, m in pub.methods if isinstance(m, M.BasicNack)]
    assert nacks and nacks[0].delivery_tag == 2
    cancels = [m.consumer_tag for _c, m in con.methods if isinstance(m, M.BasicCancel)]
    assert cancels == ["dead"]
    # worker 0's queue and its unacked message are untouched
    assert len(cl.brokers[0].vhosts["/"].queues[q0].store) == 0
    assert q in cl.brokers[1].vhosts["/"].queues  # definitions came back with the snapshot


def test_a_settle_meant_for_a_dead_incarnation_never_settles_one_of_the_new() -> None:
    """Refs embed the owner's incarnation (the control block's gen of its slot): an ack
    of a delivery the dead worker 1 made reaches the respawned worker 1, whose own
    counter made the same sequence of refs, and settles nothing there."""
    cl, q = _three()
    pub, con = cl.connect(0), cl.connect(2)
    pub.open_channel(1)
    con.open_channel(1)
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    _call(cl, con, 1, M.BasicConsume(queue=q, consumer_tag="old"))
    pub.publish(1, "", q, b"before")
    cl.pump()
    assert con.bodies() == [b"before"]
    old_refs = set(cl.brokers[1].shards.owner.held)
    cl.kill(1)
    _call(cl, con, 1, M.BasicConsume(queue=q, consumer_tag="new"))
    pub.publish(1, "", q, b"after")
    cl.pump()
    assert con.bodies() == [b"before", b"after"]
    owner = cl.brokers[1].shards.owner
    assert len(owner.held) == 1 and not set(owner.held) & old_refs
    _call(cl, con, 1, M.BasicAck(delivery_tag=1))  # the dead incarnation's delivery
    assert len(owner.held) == 1  # the new incarnation's message is still unacked
    _call(cl, con, 1, M.BasicAck(delivery_tag=2))
    assert not owner.held


def _answers(client: Client) -> dict[int, str]:
    """Each publish's confirm ("ack"/"nack"), checking that none gets two and that a
    multiple ack never spans a nack (a blocking client waits for one answer per publish;
    a second one breaks it)."""
    answered: dict[int, str] = {}
    for _c, m in client.methods:
        if not isinstance(m, (M.BasicAck, M.BasicNack)):
            continue
        kind = "ack" if isinstance(m, M.BasicAck) else "nack"
        tag = m.delivery_tag
        if m.multiple:
            lo = min((s for s in range(1, tag + 1) if s not in answered), default=tag)
            spanned = [s for s in range(lo, tag + 1) if s in answered]
            assert not spanned, f"multiple {kind} {tag} spans answered {spanned}"
            for seq in range(lo, tag + 1):
                answered[seq] = kind
        else:
            assert tag not in answered, f"seq {tag}: {kind} after {answered[tag]}"
            answered[tag] = kind
    return answered


def test_every_publish_is_confirmed_once_when_a_worker_dies() -> None:
    cl, q = _three()
    q0 = cl.queue_on(0, "z")
    pub, lone = cl.connect(0), cl.connect(0)
    for c in (pub, lone):
        c.open_channel(1)
        _call(cl, c, 1, M.ConfirmSelect())
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    _call(cl, pub, 1, M.QueueDeclare(queue=q0))
    pub.publish(1, "", q0, b"a")  # seq 1: acked
    cl.pump()
    pub.publish(1, "", q, b"b")  # seq 2: worker 1 dies with it
    pub.publish(1, "", q0, b"c")  # seq 3: local, confirmable at once
    pub.publish(1, "", q, b"d")  # seq 4: worker 1 dies with it
    pub.publish(1, "", q0, b"e")  # seq 5
    lone.publish(1, "", q, b"x")  # a blocking client's only publish in flight
    cl.kill(1)
    pub.publish(1, "", q0, b"f")  # seq 6
    cl.pump()
    assert _answers(pub) == {1: "ack", 2: "nack", 3: "ack", 4: "nack", 5: "ack", 6: "ack"}
    assert _answers(lone) == {1: "nack"}


def test_global_prefetch_is_shared_by_consumers_of_queues_on_other_workers() -> None:
    """RabbitMQ's global=true: one limit for the channel; queues on workers 0 and 1, the
    consumer on worker 2. The limit holds, the rest stays ready in the queues, and an
    ack frees exactly one slot."""
    cl = Cluster(3)
    qa, qb = cl.queue_on(0, "a"), cl.queue_on(1, "b")
    pub, con = cl.connect(0), cl.connect(2)
    pub.open_channel(1)
    con.open_channel(1)
    for q in (qa, qb):
        _call(cl, pub, 1, M.QueueDeclare(queue=q))
        for i in range(4):
            pub.publish(1, "", q, b"%s%d" % (q.encode(), i))
    cl.pump()
    _call(cl, con, 1, M.BasicQos(prefetch_count=3, global_=True))
    _call(cl, con, 1, M.BasicConsume(queue=qa, consumer_tag="a"))
    _call(cl, con, 1, M.BasicConsume(queue=qb, consumer_tag="b"))
    assert len(con.deliveries) == 3
    ready = (
        cl.brokers[0].vhosts["/"].queues[qa].message_count
        + cl.brokers[1].vhosts["/"].queues[qb].message_count
    )
    assert ready == 5
    _call(cl, con, 1, M.BasicAck(delivery_tag=1))
    assert len(con.deliveries) == 4
    _call(cl, con, 1, M.BasicAck(delivery_tag=0, multiple=True))
    assert len(con.deliveries) == 7
    _call(cl, con, 1, M.BasicQos(prefetch_count=0, global_=True))
    _call(cl, con, 1, M.BasicAck(delivery_tag=0, multiple=True))
    assert len(con.deliveries) == 8
    assert sorted(d.body for d in con.deliveries) == sorted(
        [b"%s%d" % (q.encode(), i) for q in (qa, qb) for i in range(4)]
    )


def test_a_backed_up_queue_throttles_a_publisher_on_another_worker() -> None:
    """As with a local publisher: past the high-water mark (the queue has a consumer that
    does not keep up) the publisher's worker stops reading it; when the backlog halves,
    it reads again. A shard restart releases it too."""
    cl, q = _three()
    pub, con = cl.connect(0), cl.connect(2)
    pub.open_channel(1)
    con.open_channel(1)
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    _call(cl, con, 1, M.BasicQos(prefetch_count=1))
    _call(cl, con, 1, M.BasicConsume(queue=q, consumer_tag="slow"))
    limit = queue_mod.QUEUE_HIGH_WATER
    frame = method_frame(1, M.BasicPublish(routing_key=q)) + content_frames(1, b"x")
    pub.conn.feed(frame * (limit + 10))
    cl.pump()
    cause = ("queue", 1, q)
    assert cause in pub.domain.throttled_by
    owner = cl.brokers[1].vhosts["/"].queues[q]
    assert owner.message_count > limit
    # the consumer goes away and a purge empties the queue: the publisher reads again
    _call(cl, con, 1, M.BasicCancel(consumer_tag="slow"))
    _call(cl, pub, 1, M.QueuePurge(queue=q))
    owner.dispatch()
    cl.pump()
    assert cause not in pub.domain.throttled_by


def test_tx_commit_waits_for_the_workers_owning_the_queues() -> None:
    cl, q1 = _three()
    q2 = cl.queue_on(2, "t")
    q0 = cl.queue_on(0, "t")
    pub = cl.connect(0)
    pub.open_channel(1)
    for name in (q0, q1, q2):
        _call(cl, pub, 1, M.QueueDeclare(queue=name, durable=True))
    _call(cl, pub, 1, M.TxSelect())
    persistent = M.BasicProperties(delivery_mode=2)
    for name in (q0, q1, q2):
        pub.publish(1, "", name, name.encode(), persistent)
    pub.call(1, M.TxCommit())  # the client's worker only: the owners have not seen it
    assert not any(isinstance(m, M.TxCommitOk) for _c, m in pub.methods)
    cl.pump()  # the owners store and confirm
    assert sum(isinstance(m, M.TxCommitOk) for _c, m in pub.methods) == 1
    for slot, name in ((0, q0), (1, q1), (2, q2)):
        assert len(cl.brokers[slot].vhosts["/"].queues[name].store) == 1
    assert not cl.brokers[0].shards.user.tx_waiting
    # an owner that dies before confirming fails the commit: never a commit-ok
    pub.publish(1, "", q1, b"lost", persistent)
    pub.call(1, M.TxCommit())
    cl.kill(1)
    cl.pump()
    assert sum(isinstance(m, M.TxCommitOk) for _c, m in pub.methods) == 1
    closes = [m for _c, m in pub.methods if isinstance(m, M.ConnectionClose)]
    assert closes and closes[-1].reply_code == 541
    assert not cl.brokers[0].shards.user.tx_waiting


def test_batched_remote_deliveries_are_the_bytes_a_local_consumer_gets() -> None:
    """Many messages in one DELIVER record: a no-ack consumer on another worker gets
    the frames a consumer on the queue's worker gets, whether they are copied as
    published (same channel number, frames fit) or re-framed (another channel number,
    a smaller frame_max), and a manual-ack one gets the same with its own tags."""
    cl = Cluster(3)
    names = [cl.queue_on(1, p) for p in ("fast", "chan", "small", "local", "acked")]
    pub = cl.connect(0)
    pub.open_channel(1)
    _call(cl, pub, 1, M.ExchangeDeclare(exchange="fx", type="fanout"))
    for q in names:
        _call(cl, pub, 1, M.QueueDeclare(queue=q))
        _call(cl, pub, 1, M.QueueBind(queue=q, exchange="fx"))
    consumers = {
        "fast": (cl.connect(2), 1, True),
        "chan": (cl.connect(2), 7, True),
        "small": (cl.connect(2, frame_max=4096), 1, True),
        "local": (cl.connect(1), 1, True),
        "acked": (cl.connect(2), 3, False),
    }
    for q, (client, chnum, no_ack) in zip(names, consumers.values(), strict=True):
        client.open_channel(chnum)
        _call(cl, client, chnum, M.BasicConsume(queue=q, consumer_tag="c", no_ack=no_ack))
    props = M.BasicProperties(
        content_type="text/plain", correlation_id="cid", headers={"k": "v", "n": 7}
    )
    bodies = [b"x" * 16, bytes(range(256)) * 40, b"", b"y" * 5000]
    frames = b"".join(
        method_frame(1, M.BasicPublish(exchange="fx", routing_key=f"rk{i}"))
        + content_frames(1, body, props)
        for i, body in enumerate(bodies)
    )
    pub.conn.feed(frames * 3)  # one read: the owner batches the 12 deliveries per consumer
    cl.pump()
    want = bodies * 3
    for name, (client, chnum, _no_ack) in consumers.items():
        got = client.deliveries
        assert [d.body for d in got] == want, name
        assert all(d.channel == chnum for d in got), name
        assert all(d.properties == props for d in got), name
        tags = [d.method.delivery_tag for d in got]  # type: ignore[attr-defined]
        assert tags == list(range(1, 13)), name
        keys = [d.method.routing_key for d in got]  # type: ignore[attr-defined]
        assert keys == [f"rk{i % 4}" for i in range(12)], name
        assert all(d.method.exchange == "fx" for d in got), name  # type: ignore[attr-defined]
        assert not any(d.method.redelivered for d in got), name  # type: ignore[attr-defined]
    acked = consumers["acked"][0]
    assert len(cl.brokers[1].shards.owner.held) == 12
    _call(cl, acked, 3, M.BasicAck(delivery_tag=12, multiple=True))
    assert not cl.brokers[1].shards.owner.held


def test_no_ack_credit_goes_back_in_chunks_never_leaving_the_owner_short() -> None:
    """A remote no-ack consumer's credit returns as its socket takes the deliveries, in
    returns of at least REMOTE_CREDIT_CHUNK (one record per chunk, not one per burst);
    nothing is lost and the owner's window never runs dry while the consumer keeps up."""
    cl, q = _three()
    pub, con = cl.connect(0), cl.connect(2)
    pub.open_channel(1)
    con.open_channel(1)
    _call(cl, pub, 1, M.QueueDeclare(queue=q))
    _call(cl, con, 1, M.BasicConsume(queue=q, no_ack=True))
    proxy = next(iter(cl.brokers[1].shards.owner.proxies.values()))
    assert proxy.credit == REMOTE_WINDOW
    grants: list[int] = []
    router = cl.brokers[2].shards
    real_grant = router.grant
    router.grant = lambda c, n: (grants.append(n), real_grant(c, n))  # type: ignore[method-assign]
    owing = cl.brokers[2].conns_by_gid[con.domain.gid]
    burst = method_frame(1, M.BasicPublish(routing_key=q)) + content_frames(1, b"x")
    sent = 0
    for _ in range(3 * REMOTE_WINDOW // 100):
        pub.conn.feed(burst * 100)
        cl.pump()
        sent += 100
        assert len(con.deliveries) == sent  # never held back: the window is not used up
        held = sum(owing.credit_due.values())
        assert proxy.credit + held == REMOTE_WINDOW  # nothing lost
        assert held < REMOTE_CREDIT_CHUNK
    assert all(n >= REMOTE_CREDIT_CHUNK for n in grants)
    assert len(grants) == sent // REMOTE_CREDIT_CHUNK or len(grants) < sent // 100
