"""Every AMQP behaviour is the same wherever the publisher, the queue and the consumer land.

Owns: the placement tests of the multi-worker issue, against a 3-worker broker. Each
client connection is reopened until it lands on the worker the test asks for (the
``worker`` server property says where), and every queue name is chosen so that its owner
(``shard_for``) is the worker the test asks for. Two placements are covered: publisher,
queue and consumer on three different workers (``spread``), and publisher and consumer
on one worker with the queue on another (``together``). Exchanges and bindings are
declared by a connection on a worker that is neither the publisher's nor the queue's.

Invariants: placements are checked, never assumed (``on`` fails if it cannot land on the
worker); counts are read only after the events they depend on were seen by a client
(confirms, deliveries, -ok replies); a check that nothing more arrives pumps the
connection for a bounded window first (it can only pass wrongly, never fail wrongly);
effects the broker applies after a close are awaited with a bounded poll.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from shardmq.broker.metadata import shard_for
from tests.support import rawamqp as raw

from .helpers import (
    WAIT,
    Env,
    channel_error,
    get_bodies,
    pika_on_worker,
    queue_counts,
    queue_exists,
    raw_on_worker,
    unique,
    wait_counts,
    wait_queue_gone,
)
from .test_confirms_tx import check_confirm_coverage

WORKERS = 3
QUIET = 0.3  # how long "nothing more arrives" is watched for

pytestmark = [
    pytest.mark.timeout(60),
    # only the 3-worker broker: the placements below need three workers
    pytest.mark.parametrize("broker", [WORKERS], indirect=True, ids=[f"workers{WORKERS}"]),
]


@dataclass(frozen=True)
class Placement:
    pub: int  # the publisher's worker
    queue: int  # the queue's owner
    cons: int  # the consumer's worker

    @property
    def decl(self) -> int:
        """Where exchanges and bindings are declared: neither the publisher's worker nor
        the queue's."""
        return next(w for w in range(WORKERS) if w not in (self.pub, self.queue))

    @property
    def third(self) -> int:
        """A worker that is neither the queue's nor the consumer's."""
        return next(w for w in range(WORKERS) if w not in (self.queue, self.cons))


PLACEMENTS = {
    "spread": Placement(pub=0, queue=1, cons=2),
    "together": Placement(pub=0, queue=1, cons=0),
}


class Workers:
    """Connections and queue names placed on chosen workers (tracked by ``env``)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.vhost = env.broker.vhost

    def conn(self, worker: int, **kw: Any) -> pika.BlockingConnection:
        """A BlockingConnection served by ``worker`` (reconnect until it lands there)."""
        return pika_on_worker(lambda: self.env.conn(**kw), worker)

    def raw(self, worker: int) -> raw.RawConnection:
        """A handshaken raw connection served by ``worker``, channel 1 open."""
        return raw_on_worker(self.env.raw, worker)

    def queue(self, worker: int, prefix: str = "q") -> str:
        """A fresh queue name owned by ``worker`` (deleted at cleanup)."""
        while True:
            name = unique(f"{prefix}.w{worker}")
            if shard_for(self.vhost, name, WORKERS) == worker:
                self.env.queues.append(name)
                return name


@pytest.fixture
def w(env: Env) -> Workers:
    if env.broker.workers != WORKERS:
        pytest.skip("needs a shardmq broker with 3 workers")
    return Workers(env)


@pytest.fixture(params=list(PLACEMENTS.values()), ids=list(PLACEMENTS))
def place(request: pytest.FixtureRequest) -> Placement:
    return request.param


# ------------------------------------------------------------------------- helpers


def pump(
    conns: list[pika.BlockingConnection],
    predicate: Callable[[], bool],
    what: str,
    timeout: float = WAIT,
) -> None:
    """Pump several connections' I/O until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        for c in conns:
            c.process_data_events(time_limit=0.01)


def quiet(conns: list[pika.BlockingConnection], seconds: float = QUIET) -> None:
    """Pump for a while, so that anything the broker should not have sent would arrive."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.02)


def hold(conn: pika.BlockingConnection, got: list[Delivery], n: int, limit: str) -> None:
    """Wait for ``n`` deliveries, then make sure no more arrive (``limit`` holds)."""
    pump([conn], lambda: len(got) >= n, f"{n} deliveries")
    quiet([conn])
    assert len(got) == n, f"{limit} exceeded: {len(got)} deliveries, limit {n}"


def confirming(conn: pika.BlockingConnection) -> BlockingChannel:
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def publish_n(ch: BlockingChannel, queue: str, n: int, prefix: str = "m") -> list[bytes]:
    bodies = [f"{prefix}{i}".encode() for i in range(n)]
    for b in bodies:
        ch.basic_publish("", queue, b)
    return bodies


Delivery = tuple[Basic.Deliver, BasicProperties, bytes]


def collector(out: list[Delivery]) -> Callable[..., None]:
    return lambda _ch, m, p, b: out.append((m, p, b))


# ------------------------------------------------------------------------- the fixtures


def test_placement_helpers_land_where_asked(w: Workers) -> None:
    for worker in range(WORKERS):
        c = w.conn(worker)
        assert c._impl.server_properties["worker"] == worker
        assert shard_for(w.vhost, w.queue(worker), WORKERS) == worker
    assert w.raw(2).start_args["server_properties"]["worker"] == 2


# ------------------------------------------------------------------------- routing


def test_routing_through_exchanges_declared_on_another_worker(w: Workers, place: Placement) -> None:
    env = w.env
    decl = w.conn(place.decl).channel()
    pub = confirming(w.conn(place.pub))
    cons = w.conn(place.cons).channel()
    kinds = ("direct", "topic", "fanout", "headers", "e2e")
    qs = {k: w.queue(place.queue, k) for k in kinds}
    for q in qs.values():
        decl.queue_declare(q)
    xd, xt, xf, xh = (env.exchange(k) for k in kinds[:4])
    src, dst = env.exchange("src"), env.exchange("dst")
    for x, kind in ((xd, "direct"), (xt, "topic"), (xf, "fanout"), (xh, "headers")):
        decl.exchange_declare(x, kind)
    decl.exchange_declare(src, "topic")
    decl.exchange_declare(dst, "direct")

    def hdr(**h: Any) -> BasicProperties:
        return BasicProperties(headers=h)

    # Each publish goes out right after the bind-ok, from another worker; mandatory +
    # confirms make a return (not routed) raise UnroutableError.
    decl.queue_bind(qs["direct"], xd, "rk.d")
    pub.basic_publish(xd, "rk.d", b"direct-1", mandatory=True)
    decl.queue_bind(qs["topic"], xt, "a.*.c")
    pub.basic_publish(xt, "a.b.c", b"topic-1", mandatory=True)
    decl.queue_bind(qs["topic"], xt, "x.#")
    pub.basic_publish(xt, "x", b"topic-2", mandatory=True)
    pub.basic_publish(xt, "x.y.z", b"topic-3", mandatory=True)
    decl.queue_bind(qs["fanout"], xf)
    pub.basic_publish(xf, "anything", b"fanout-1", mandatory=True)
    decl.queue_bind(qs["headers"], xh, arguments={"x-match": "all", "a": 1, "b": "two"})
    pub.basic_publish(xh, "", b"headers-1", hdr(a=1, b="two", c=3), mandatory=True)
    decl.queue_bind(qs["headers"], xh, arguments={"x-match": "any", "z": "yes", "y": 0})
    pub.basic_publish(xh, "", b"headers-2", hdr(z="yes"), mandatory=True)
    decl.queue_bind(qs["e2e"], dst, "k.1")
    decl.exchange_bind(destination=dst, source=src, routing_key="k.*")
    pub.basic_publish(src, "k.1", b"e2e-1", mandatory=True)

    unroutable = [
        (xd, "rk.other", None),
        (xt, "a.b", None),
        (xt, "y.x", None),
        (xh, "", hdr(a=1)),
        (xh, "", hdr(z="no")),
        (src, "k.2", None),  # through src, but dst has no binding for it
        (src, "j.1", None),  # src's binding does not match
    ]
    for x, rk, props in unroutable:
        with pytest.raises(pika.exceptions.UnroutableError) as err:
            pub.basic_publish(x, rk, b"nowhere", props, mandatory=True)
        ret = err.value.messages[0].method
        assert (ret.reply_code, ret.reply_text, ret.exchange, ret.routing_key) == (
            312,
            "NO_ROUTE",
            x,
            rk,
        )

    # unbind-ok on one worker: the very next publish from another is unroutable
    decl.exchange_unbind(destination=dst, source=src, routing_key="k.*")
    with pytest.raises(pika.exceptions.UnroutableError):
        pub.basic_publish(src, "k.1", b"after-unbind", mandatory=True)
    decl.queue_unbind(qs["direct"], xd, "rk.d")
    with pytest.raises(pika.exceptions.UnroutableError):
        pub.basic_publish(xd, "rk.d", b"after-unbind", mandatory=True)

    expected = {
        "direct": [b"direct-1"],
        "topic": [b"topic-1", b"topic-2", b"topic-3"],
        "fanout": [b"fanout-1"],
        "headers": [b"headers-1", b"headers-2"],
        "e2e": [b"e2e-1"],
    }
    for kind, bodies in expected.items():
        assert queue_counts(cons, qs[kind]) == (len(bodies), 0), kind
        assert get_bodies(cons, qs[kind], len(bodies)) == bodies, kind
        assert queue_counts(cons, qs[kind]) == (0, 0), kind


def test_fanout_to_every_worker_from_any_worker(w: Workers, place: Placement) -> None:
    decl = w.conn(place.decl).channel()
    x = w.env.exchange("fan")
    decl.exchange_declare(x, "fanout")
    qs = [w.queue(worker, "fan") for worker in range(WORKERS)]
    for q in qs:
        decl.queue_declare(q)
        decl.queue_bind(q, x)
    pub = confirming(w.conn(place.pub))
    bodies = [f"f{i}".encode() for i in range(20)]
    for b in bodies:
        pub.basic_publish(x, "", b, mandatory=True)
    cons = w.conn(place.cons).channel()
    for q in qs:
        assert get_bodies(cons, q, len(bodies)) == bodies


# ------------------------------------------------------------------------- consumers


def test_round_robin_between_consumers_on_two_workers(w: Workers, place: Placement) -> None:
    q = w.queue(place.queue)
    a, b = w.conn(place.cons), w.conn(place.third)
    got_a: list[Delivery] = []
    got_b: list[Delivery] = []
    cha, chb = a.channel(), b.channel()
    cha.queue_declare(q)
    cha.basic_consume(q, collector(got_a), auto_ack=True)
    chb.basic_consume(q, collector(got_b), auto_ack=True)
    bodies = publish_n(confirming(w.conn(place.pub)), q, 20)
    pump([a, b], lambda: len(got_a) + len(got_b) == 20, "20 deliveries")
    bodies_a = [d[2] for d in got_a]
    bodies_b = [d[2] for d in got_b]
    # strict alternation in publish order, whichever consumer came first
    assert sorted([bodies_a, bodies_b]) == sorted([bodies[0::2], bodies[1::2]])


def test_prefetch_per_consumer_with_remote_consumer(w: Workers, place: Placement) -> None:
    q = w.queue(place.queue)
    conn = w.conn(place.cons)
    ch = conn.channel()
    ch.queue_declare(q)
    bodies = publish_n(confirming(w.conn(place.pub)), q, 10)
    observer = w.conn(place.third).channel()
    ch.basic_qos(prefetch_count=3)
    got: list[Delivery] = []
    ch.basic_consume(q, collector(got))

    def held(n: int) -> None:
        hold(conn, got, n, "prefetch")

    held(3)
    assert queue_counts(observer, q) == (7, 1)
    ch.basic_ack(got[0][0].delivery_tag)
    held(4)
    ch.basic_ack(got[3][0].delivery_tag, multiple=True)
    held(7)
    ch.basic_nack(got[6][0].delivery_tag, multiple=True, requeue=False)
    held(10)
    assert [d[2] for d in got] == bodies
    assert queue_counts(observer, q) == (0, 1)


def test_global_prefetch_spans_queues_on_two_workers(w: Workers, place: Placement) -> None:
    # qa is remote; qb is remote (spread) or on the consumer's own worker (together)
    qa, qb = w.queue(place.queue, "ga"), w.queue(place.pub, "gb")
    conn = w.conn(place.cons)
    ch = conn.channel()
    pub = confirming(w.conn(place.pub))
    for q, prefix in ((qa, "a"), (qb, "b")):
        ch.queue_declare(q)
        publish_n(pub, q, 6, prefix=prefix)
    ch.basic_qos(prefetch_count=4, global_qos=True)
    got: list[Delivery] = []
    ch.basic_consume(qa, collector(got))
    ch.basic_consume(qb, collector(got))

    def held(n: int) -> None:
        hold(conn, got, n, "global prefetch")

    held(4)
    ch.basic_ack(got[1][0].delivery_tag)
    held(5)
    ch.basic_ack(got[-1][0].delivery_tag, multiple=True)
    held(9)
    ch.basic_ack(got[-1][0].delivery_tag, multiple=True)
    held(12)
    assert {d[2] for d in got} == {f"{p}{i}".encode() for p in "ab" for i in range(6)}


def test_ack_nack_reject_of_remote_deliveries(w: Workers, place: Placement) -> None:
    q = w.queue(place.queue)
    conn = w.conn(place.cons)
    ch = conn.channel()
    ch.queue_declare(q)
    bodies = publish_n(confirming(w.conn(place.pub)), q, 6)
    got: list[Delivery] = []
    ch.basic_consume(q, collector(got))
    pump([conn], lambda: len(got) == 6, "6 deliveries")
    assert [d[2] for d in got] == bodies
    assert not any(d[0].redelivered for d in got)
    tags = [d[0].delivery_tag for d in got]
    ch.basic_ack(tags[2], multiple=True)  # m0 m1 m2
    ch.basic_nack(tags[4], multiple=True, requeue=True)  # m3 m4 back
    ch.basic_reject(tags[5], requeue=False)  # m5 dropped
    pump([conn], lambda: len(got) == 8, "2 redeliveries")
    again = got[6:]
    assert [d[2] for d in again] == [b"m3", b"m4"]
    assert all(d[0].redelivered for d in again)
    ch.basic_nack(again[0][0].delivery_tag, multiple=False, requeue=False)  # m3 dropped
    ch.basic_reject(again[1][0].delivery_tag, requeue=True)  # m4 once more
    pump([conn], lambda: len(got) == 9, "m4 redelivered again")
    assert got[8][2] == b"m4" and got[8][0].redelivered
    ch.basic_ack(got[8][0].delivery_tag)
    quiet([conn])
    assert len(got) == 9
    observer = w.conn(place.third).channel()
    assert queue_counts(observer, q) == (0, 1)
    ch.close()
    assert queue_counts(observer, q) == (0, 0)  # nothing unacked came back


@pytest.mark.parametrize("how", ["channel", "connection"])
def test_unacked_requeued_when_remote_consumer_closes(
    w: Workers, place: Placement, how: str
) -> None:
    q = w.queue(place.queue)
    conn = w.conn(place.cons)
    ch = conn.channel()
    ch.queue_declare(q)
    bodies = publish_n(confirming(w.conn(place.pub)), q, 5)
    ch.basic_qos(prefetch_count=3)
    got: list[Delivery] = []
    ch.basic_consume(q, collector(got))
    pump([conn], lambda: len(got) == 3, "3 deliveries")
    ch.basic_ack(got[0][0].delivery_tag)  # m0 settled: m3 comes, m1 m2 m3 held
    pump([conn], lambda: len(got) == 4, "a 4th delivery")
    observer = w.conn(place.third)
    assert queue_counts(observer.channel(), q) == (1, 1)
    if how == "channel":
        ch.close()
    else:
        conn.close()
    wait_counts(observer, q, (4, 0))
    again = w.conn(place.cons).channel()
    out = []
    while len(out) < 4:
        m, _p, b = again.basic_get(q, auto_ack=True)
        assert m is not None, f"queue emptied after {out}"
        out.append((b, m.redelivered))
    assert out == [(bodies[1], True), (bodies[2], True), (bodies[3], True), (bodies[4], False)]


# ------------------------------------------------------------------------- publishing


def test_confirms_for_remote_queue_and_fanout_over_all_workers(
    w: Workers, place: Placement
) -> None:
    decl = w.conn(place.decl).channel()
    x = w.env.exchange("cfan")
    decl.exchange_declare(x, "fanout")
    qs = [w.queue(worker, "cf") for worker in range(WORKERS)]
    for q in qs:
        decl.queue_declare(q)
        decl.queue_bind(q, x)
    target = w.queue(place.queue, "ct")
    decl.queue_declare(target)
    c = w.raw(place.pub)
    c.send(raw.method(1, raw.CONFIRM_SELECT, raw.bits(False)))
    c.expect(raw.CONFIRM_SELECT_OK, channel=1)
    n = 300
    # odd sequence numbers to the remote queue, even ones to the fanout (all workers)
    c.send(
        b"".join(
            raw.publish(1, "", target, b"t%d" % i) if i % 2 else raw.publish(1, x, "", b"f%d" % i)
            for i in range(1, n + 1)
        )
    )
    acks: list[tuple[int, bool]] = []
    while not acks or acks[-1][0] < n:
        f = c.recv_method()
        assert f is not None and f.ids == raw.BASIC_ACK, f and f.ids  # never a nack
        r = f.args()
        acks.append((r.longlong(), bool(r.octet() & 1)))
    check_confirm_coverage(acks, n)
    # confirmed means enqueued: counts are exact now, from the consumer's worker
    cons = w.conn(place.cons).channel()
    assert queue_counts(cons, target) == (n // 2, 0)
    for q in qs:
        assert queue_counts(cons, q) == (n // 2, 0)
    assert get_bodies(cons, target, n // 2) == [b"t%d" % i for i in range(1, n + 1, 2)]


def test_mandatory_return_without_confirms(w: Workers, place: Placement) -> None:
    decl = w.conn(place.decl).channel()
    x = w.env.exchange("mand")
    decl.exchange_declare(x, "direct")
    q = w.queue(place.queue)
    decl.queue_declare(q)
    decl.queue_bind(q, x, "there")
    conn = w.conn(place.pub)
    ch = conn.channel()
    returned: list[tuple[Basic.Return, BasicProperties, bytes]] = []
    ch.add_on_return_callback(lambda _c, m, p, b: returned.append((m, p, b)))
    props = BasicProperties(message_id="m-1", headers={"k": "v"})
    ch.basic_publish(x, "there", b"routed", props, mandatory=True)
    ch.basic_publish(x, "nowhere", b"lost", props, mandatory=True)
    ch.basic_publish(x, "nowhere", b"dropped", props)  # not mandatory: dropped silently
    # the queue's last binding goes (on the declaring worker): unroutable at once
    decl.queue_delete(q)
    ch.basic_publish(x, "there", b"lost-too", props, mandatory=True)
    pump([conn], lambda: len(returned) == 2, "2 basic.return")
    quiet([conn])
    assert [
        (m.reply_code, m.reply_text, m.exchange, m.routing_key, b) for m, _p, b in returned
    ] == [
        (312, "NO_ROUTE", x, "nowhere", b"lost"),
        (312, "NO_ROUTE", x, "there", b"lost-too"),
    ]
    assert all((p.message_id, p.headers) == ("m-1", {"k": "v"}) for _m, p, _b in returned)


def test_transactions_with_remote_queue(w: Workers, place: Placement) -> None:
    q = w.queue(place.queue)
    observer = w.conn(place.third).channel()
    observer.queue_declare(q)
    tx = w.conn(place.pub).channel()
    tx.tx_select()
    for b in (b"t1", b"t2", b"t3"):
        tx.basic_publish("", q, b)
    assert queue_counts(observer, q) == (0, 0)  # nothing before the commit
    tx.tx_commit()
    assert queue_counts(observer, q) == (3, 0)  # commit-ok: all of them enqueued
    tx.basic_publish("", q, b"rolled-back")
    tx.tx_rollback()
    tx.basic_publish("", q, b"t4")
    tx.tx_commit()
    assert queue_counts(observer, q) == (4, 0)

    conn = w.conn(place.cons)
    cch = conn.channel()
    cch.tx_select()
    got: list[Delivery] = []
    cch.basic_consume(q, collector(got))
    pump([conn], lambda: len(got) == 4, "4 deliveries")
    assert [d[2] for d in got] == [b"t1", b"t2", b"t3", b"t4"]
    cch.basic_ack(got[-1][0].delivery_tag, multiple=True)
    cch.tx_rollback()  # the acks are forgotten: still unacked
    assert queue_counts(observer, q) == (0, 1)
    cch.basic_ack(got[1][0].delivery_tag, multiple=True)  # t1 t2
    cch.tx_commit()
    cch.close()  # t3 t4 were never acked in a commit: back in the queue
    wait_counts(observer.connection, q, (2, 0))
    m, _p, b = observer.basic_get(q, auto_ack=True)
    assert m is not None and (b, m.redelivered) == (b"t3", True)


# ------------------------------------------------------------------------- queues


def test_exclusive_queue_of_a_connection_on_another_worker(w: Workers, place: Placement) -> None:
    owner = w.conn(place.cons)
    q = w.queue(place.queue, "excl")
    och = owner.channel()
    och.queue_declare(q, exclusive=True)
    others = [w.conn(worker) for worker in range(WORKERS) if worker != place.cons]
    ops: list[Callable[[BlockingChannel], Any]] = [
        lambda ch: ch.queue_declare(q, passive=True),
        lambda ch: ch.queue_declare(q, exclusive=True),
        lambda ch: ch.basic_consume(q, lambda *a: None),
        lambda ch: ch.basic_get(q),
        lambda ch: ch.queue_bind(q, "amq.fanout"),
        lambda ch: ch.queue_purge(q),
        lambda ch: ch.queue_delete(q),
    ]
    for other in others:
        for op in ops:
            err = channel_error(other, op)
            assert err.reply_code == 405, (other._impl.server_properties["worker"], err)
            assert err.reply_text.startswith("RESOURCE_LOCKED")
        # publishing to it is allowed from anywhere
        confirming(other).basic_publish("", q, b"from-%d" % other._impl.server_properties["worker"])
    assert get_bodies(och, q, 2) == [
        b"from-%d" % o._impl.server_properties["worker"] for o in others
    ]
    owner.close()
    for other in others:
        wait_queue_gone(other, q)
    others[0].channel().queue_declare(q)  # the name is free again, for anyone


def test_auto_delete_when_last_remote_consumer_cancels(w: Workers, place: Placement) -> None:
    q = w.queue(place.queue, "ad")
    a, b = w.conn(place.cons), w.conn(place.third)
    cha, chb = a.channel(), b.channel()
    cha.queue_declare(q, auto_delete=True)
    ta = cha.basic_consume(q, lambda *args: None)
    tb = chb.basic_consume(q, lambda *args: None)
    observer = w.conn(place.queue)
    assert queue_counts(observer.channel(), q) == (0, 2)
    cha.basic_cancel(ta)
    assert queue_counts(observer.channel(), q) == (0, 1)  # one consumer left: kept
    chb.basic_cancel(tb)
    wait_queue_gone(observer, q)


def test_basic_get_from_remote_queue(w: Workers, place: Placement) -> None:
    q = w.queue(place.queue)
    ch = w.conn(place.cons).channel()
    ch.queue_declare(q)
    bodies = publish_n(confirming(w.conn(place.pub)), q, 3)
    seen = []
    for i in range(3):
        m, _p, b = ch.basic_get(q, auto_ack=(i != 1))
        assert m is not None
        seen.append((b, m.message_count, m.redelivered))
        if i == 1:
            ch.basic_reject(m.delivery_tag, requeue=True)
            m2, _p, b2 = ch.basic_get(q)
            assert m2 is not None
            assert (b2, m2.message_count, m2.redelivered) == (bodies[1], 1, True)
            ch.basic_ack(m2.delivery_tag)
    assert seen == [(bodies[0], 2, False), (bodies[1], 1, False), (bodies[2], 0, False)]
    assert ch.basic_get(q) == (None, None, None)  # get-empty
    assert queue_counts(ch, q) == (0, 0)


def test_purge_and_delete_of_remote_queue(w: Workers, place: Placement) -> None:
    q = w.queue(place.queue)
    admin = w.conn(place.decl)
    admin.channel().queue_declare(q)
    pub = confirming(w.conn(place.pub))
    publish_n(pub, q, 4)
    cons = w.conn(place.cons)
    cch = cons.channel()
    cch.basic_qos(prefetch_count=1)
    got: list[Delivery] = []
    tag = cch.basic_consume(q, collector(got))
    pump([cons], lambda: len(got) == 1, "1 delivery")
    assert queue_counts(admin.channel(), q) == (3, 1)
    err = channel_error(admin, lambda ch: ch.queue_delete(q, if_unused=True))
    assert err.reply_code == 406 and err.reply_text.startswith("PRECONDITION_FAILED")
    err = channel_error(admin, lambda ch: ch.queue_delete(q, if_empty=True))
    assert err.reply_code == 406 and err.reply_text.startswith("PRECONDITION_FAILED")
    assert admin.channel().queue_purge(q).method.message_count == 3  # ready ones only
    assert queue_counts(admin.channel(), q) == (0, 1)
    cch.basic_cancel(tag)
    cch.close()  # the unacked one comes back
    wait_counts(admin, q, (1, 0))
    assert admin.channel().queue_purge(q).method.message_count == 1
    assert admin.channel().queue_purge(q).method.message_count == 0
    publish_n(pub, q, 2)
    err = channel_error(admin, lambda ch: ch.queue_delete(q, if_empty=True))
    assert err.reply_code == 406
    ok = admin.channel().queue_delete(q, if_unused=True).method
    assert ok.message_count == 2
    assert not queue_exists(cons, q)
    # an empty, unused queue: if-empty and if-unused both pass
    admin.channel().queue_declare(q)
    assert admin.channel().queue_delete(q, if_empty=True, if_unused=True).method.message_count == 0
    assert not queue_exists(w.conn(place.queue), q)


def test_server_cancel_when_queue_deleted_from_third_worker(w: Workers, place: Placement) -> None:
    q = w.queue(place.queue)
    conn = w.conn(place.cons)
    ch = conn.channel()
    ch.queue_declare(q)
    cancels: list[Basic.Cancel] = []
    ch.add_on_cancel_callback(lambda frame: cancels.append(frame.method))
    got: list[Delivery] = []
    tag = ch.basic_consume(q, collector(got))
    publish_n(confirming(w.conn(place.pub)), q, 2)
    pump([conn], lambda: len(got) == 2, "2 deliveries")
    deleter = w.conn(place.third)
    assert deleter.channel().queue_delete(q).method.message_count == 0  # 2 unacked
    pump([conn], lambda: bool(cancels), "server-sent basic.cancel")
    assert [c.consumer_tag for c in cancels] == [tag]
    # the channel lives on; acking what the gone queue delivered is harmless
    ch.basic_ack(got[1][0].delivery_tag, multiple=True)
    assert ch.is_open
    assert ch.queue_declare("", exclusive=True).method.queue
    assert not queue_exists(conn, q)


# ------------------------------------------------------------------------- content


def _full_properties() -> BasicProperties:
    return BasicProperties(
        content_type="application/octet-stream",
        content_encoding="identity",
        headers={
            "str": "värde",
            "int": 7,
            "neg": -(2**40),
            "bool": True,
            "when": datetime(2024, 2, 29, 12, 30, 1),
            "dec": Decimal("12.34"),
            "bytes": b"\x00\xff raw",
            "list": [1, "two", [3], {"four": 4}],
            "table": {"nested": {"deeper": "yes"}, "n": None},
        },
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="reply.queue",
        expiration="600000",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="kind",
        user_id="guest",
        app_id="placement-test",
    )


def test_properties_and_bodies_identical_across_workers(w: Workers, place: Placement) -> None:
    q = w.queue(place.queue)
    conn = w.conn(place.cons)
    ch = conn.channel()
    ch.queue_declare(q)
    frame_max = conn._impl.params.frame_max
    big = os.urandom(frame_max * 2 + 12345)
    bodies = [b"", b"small", big]
    props = _full_properties()
    pub = confirming(w.conn(place.pub))
    for b in bodies:
        pub.basic_publish("", q, b, props)
    got: list[Delivery] = []
    ch.basic_consume(q, collector(got), auto_ack=True)
    pump([conn], lambda: len(got) == 3, "3 deliveries")
    assert [d[2] for d in got] == bodies
    expected = BasicProperties()  # what pika makes of its own encoding (timestamps: UTC)
    expected.decode(b"".join(props.encode()))
    for _m, p, _b in got:
        assert p.__dict__ == expected.__dict__


def test_content_header_bytes_identical_across_workers(w: Workers, place: Placement) -> None:
    """The header frame a consumer gets is the publisher's, byte for byte."""
    q = w.queue(place.queue)
    pub, cons = w.raw(place.pub), w.raw(place.cons)
    cons.declare_queue(1, q)
    encoded = _full_properties().encode()  # [flags, property list...] as pika writes them
    flags, props = int.from_bytes(encoded[0], "big"), b"".join(encoded[1:])
    body = os.urandom(pub.frame_max * 2 + 777)
    pub.send(raw.publish(1, "", q, body, flags=flags, props=props, frame_max=pub.frame_max))
    pub.send(raw.publish(1, "", q, b"", flags=flags, props=props, frame_max=pub.frame_max))
    cons.send(raw.basic_consume(1, q, "c1", no_ack=True))
    cons.expect(raw.BASIC_CONSUME_OK, channel=1)
    for expected in (body, b""):
        _m, header, got, _sizes = cons.read_message()
        assert header.payload == raw._CONTENT_HEAD.pack(60, 0, len(expected), flags) + props
        assert got == expected
