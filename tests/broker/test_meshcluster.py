"""Cross-worker semantics through the real mesh (shared-memory rings, batch records),
in one process: ``MeshCluster`` pumps the workers in turn instead of event loops."""

from __future__ import annotations

from loadtest.inproc import content_frames, method_frame
from loadtest.meshcluster import MeshCluster
from loadtest.xshard_cost import PLACEMENTS, one_run
from shardmq.amqp import methods as M


def test_batches_through_real_rings_keep_order_and_lose_nothing() -> None:
    cl = MeshCluster(3)
    try:
        fast, acked = cl.queue_on(1, "fast"), cl.queue_on(1, "acked")
        pub, c_noack, c_ack = cl.connect(0), cl.connect(2), cl.connect(0)
        for client in (pub, c_noack, c_ack):
            client.open_channel(1)
        pub.conn.feed(method_frame(1, M.ExchangeDeclare(exchange="fx", type="fanout")))
        for q in (fast, acked):
            pub.conn.feed(method_frame(1, M.QueueDeclare(queue=q)))
            pub.conn.feed(method_frame(1, M.QueueBind(queue=q, exchange="fx")))
        cl.pump()
        c_noack.conn.feed(method_frame(1, M.BasicConsume(queue=fast, no_ack=True)))
        c_ack.conn.feed(method_frame(1, M.BasicQos(prefetch_count=50)))
        c_ack.conn.feed(method_frame(1, M.BasicConsume(queue=acked)))
        cl.pump()
        bodies = [f"m{i:04d}".encode() * (1 + i % 7) for i in range(600)]
        pub.conn.feed(
            b"".join(
                method_frame(1, M.BasicPublish(exchange="fx")) + content_frames(1, b)
                for b in bodies
            )
        )
        cl.pump()
        assert c_noack.bodies() == bodies  # one no-ack consumer on a third worker
        assert c_ack.bodies() == bodies[:50]  # credit: the prefetch window, no more
        for n in range(50, 600, 50):
            last = c_ack.deliveries[-1].method.delivery_tag  # type: ignore[attr-defined]
            c_ack.conn.feed(method_frame(1, M.BasicAck(delivery_tag=last, multiple=True)))
            cl.pump()
            assert c_ack.bodies() == bodies[: n + 50]
        last = c_ack.deliveries[-1].method.delivery_tag  # type: ignore[attr-defined]
        c_ack.conn.feed(method_frame(1, M.BasicAck(delivery_tag=last, multiple=True)))
        cl.pump()
        assert not cl.brokers[1].shards.owner.held
        assert cl.brokers[1].vhosts["/"].queues[acked].message_count == 0
    finally:
        cl.close()


def test_xshard_cost_runs_and_counts_every_message() -> None:
    for placement in PLACEMENTS.values():
        assert one_run(*placement, 1000) > 0  # raises SystemExit on a lost message
