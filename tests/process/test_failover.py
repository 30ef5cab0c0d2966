"""Failover with 3 workers under load: ``kill -9`` of one worker, and a SIGTERM drain.

Owns: the process-level checks of the multi-worker issue that ``test_supervisor.py``
does not make (that one kills and drains idle brokers): what clients on the surviving
workers see when a worker holding queues dies under traffic (publisher nacks, consumer
cancels, requeues of what the dead worker's consumers held, exclusive queues of its
connections gone, other shards' messages intact, the slot usable again), and that a
drain under load still closes every client with 320 and leaves no worker behind.

Invariants: the victim is SIGSTOPped before the publishes that must be nacked, so none of
them can have reached it (the nacked set is exact, not "some"); clients land on chosen
workers by reconnecting (the ``worker`` server property); every wait is bounded and
nothing is asserted about how fast anything was.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from shardmq.broker.metadata import shard_for
from tests.integration.helpers import pika_on_worker, raw_on_worker
from tests.support import rawamqp as raw
from tests.support.procs import running, wait_for

from .conftest import Sup

WORKERS = 3
VICTIM = 1
WAIT = 10.0

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------- placement


def conn_on(sup: Sup, worker: int) -> pika.BlockingConnection:
    return pika_on_worker(lambda: sup.connect(connection_attempts=1), worker)


def raw_on(sup: Sup, worker: int) -> raw.RawConnection:
    """A handshaken raw connection on ``worker`` with channel 1 open."""
    return raw_on_worker(lambda: raw.RawConnection("127.0.0.1", sup.port, timeout=WAIT), worker)


def queue_on(worker: int, prefix: str) -> str:
    while True:
        name = f"fo.{prefix}.{uuid.uuid4().hex[:10]}"
        if shard_for("/", name, WORKERS) == worker:
            return name


# ------------------------------------------------------------------------- helpers


def pump(conns: list[pika.BlockingConnection], pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT} s waiting for {what}")
        for c in conns:
            c.process_data_events(time_limit=0.01)


def publish_each(ch: BlockingChannel, queue: str, bodies: list[bytes]) -> None:
    """On a confirm-mode channel: returns once every one of them is confirmed."""
    for b in bodies:
        ch.basic_publish("", queue, b)


def drain_get(ch: BlockingChannel, queue: str) -> list[bytes]:
    out = []
    while True:
        m, _p, b = ch.basic_get(queue, auto_ack=True)
        if m is None:
            return out
        out.append(b)


def passive(conn: pika.BlockingConnection, queue: str) -> tuple[int, int] | int:
    """(messages, consumers), or the reply code of the channel error."""
    try:
        ok = conn.channel().queue_declare(queue, passive=True).method
    except pika.exceptions.ChannelClosedByBroker as e:
        return e.reply_code
    return ok.message_count, ok.consumer_count


def lost(conn: pika.BlockingConnection) -> bool:
    """True once the client saw its connection die (socket closed under it)."""
    try:
        conn.process_data_events(time_limit=0.01)
    except pika.exceptions.AMQPConnectionError:
        return True
    return False


class Confirms:
    """A raw publisher in confirm mode: which sequence numbers were acked or nacked."""

    def __init__(self, conn: raw.RawConnection) -> None:
        self.c = conn
        self.seq = 0
        self.dest: dict[int, str] = {}
        self.body: dict[int, bytes] = {}
        self.acked: set[int] = set()
        self.nacked: set[int] = set()
        conn.send(raw.method(1, raw.CONFIRM_SELECT, raw.bits(False)))
        conn.expect(raw.CONFIRM_SELECT_OK, channel=1)

    def publish(self, queues: list[str], n: int, tag: str) -> None:
        """``n`` publishes round the queues, then a basic.qos round trip: once its -ok is
        read, this worker has routed every one of them."""
        frames = []
        for i in range(n):
            self.seq += 1
            q = queues[i % len(queues)]
            self.dest[self.seq] = q
            self.body[self.seq] = f"{tag}:{q}:{self.seq}".encode()
            frames.append(raw.publish(1, "", q, self.body[self.seq]))
        frames.append(raw.method(1, raw.BASIC_QOS, b"\x00\x00\x00\x00\x00\x00\x00"))
        self.c.send(b"".join(frames))
        while True:
            f = self.c.recv_method()
            assert f is not None, "publisher's connection closed"
            if f.ids == raw.BASIC_QOS_OK:
                return
            self._confirm(f)

    def _confirm(self, f: raw.Frame) -> None:
        """Record one basic.ack/nack; a publish must never be answered twice, and a
        multiple ack never spans a nack."""
        assert f.ids in (raw.BASIC_ACK, raw.BASIC_NACK), f.ids
        r = f.args()
        tag, multiple = r.longlong(), bool(r.octet() & 1)
        into = self.acked if f.ids == raw.BASIC_ACK else self.nacked
        answered = self.acked | self.nacked
        if multiple:
            lo = min((s for s in range(1, tag + 1) if s not in answered), default=tag)
            spanned = sorted(s for s in range(lo, tag + 1) if s in answered)
            assert not spanned, f"multiple {f.ids} up to {tag} spans answered {spanned}"
            into.update(range(lo, tag + 1))
        else:
            assert tag not in answered, f"{tag} answered twice"
            into.add(tag)

    def settle_all(self) -> None:
        """Read confirms until every publish so far got an ack or a nack."""
        deadline = time.monotonic() + WAIT
        while len(self.acked) + len(self.nacked) < self.seq:
            left = deadline - time.monotonic()
            assert left > 0, f"unconfirmed: {sorted(set(self.dest) - self.acked - self.nacked)}"
            f = self.c.recv_method(left)
            assert f is not None, "publisher's connection closed"
            self._confirm(f)

    def to(self, queue: str, seqs: set[int]) -> set[int]:
        return {s for s in seqs if self.dest[s] == queue}


# ------------------------------------------------------------------------- kill -9


def test_kill_9_worker_under_load(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(WORKERS, {"stall_timeout": 30.0})
    before = sup.wait_ready()
    victim = before[VICTIM]
    survivors = [w for w in range(WORKERS) if w != VICTIM]  # 0 and 2
    admin = conn_on(sup, 0)
    ach = admin.channel()
    ach.confirm_delivery()

    # Steady queues, one per worker, with known content and no consumer.
    steady = {w: queue_on(w, f"steady{w}") for w in range(WORKERS)}
    steady_bodies = {w: [f"s{w}-{i}".encode() for i in range(30)] for w in range(WORKERS)}
    for w, q in steady.items():
        ach.queue_declare(q)
        publish_each(ach, q, steady_bodies[w])

    # Exclusive queues: one on each worker of a connection on the victim, and one of a
    # connection on worker 2.
    x_victim = conn_on(sup, VICTIM)
    excl_dead = [queue_on(w, "excl-dead") for w in range(WORKERS)]
    for q in excl_dead:
        x_victim.channel().queue_declare(q, exclusive=True)
    x_alive = conn_on(sup, 2)
    excl_alive = queue_on(0, "excl-alive")
    xch = x_alive.channel()
    xch.queue_declare(excl_alive, exclusive=True)

    # Load queues, one per worker, consumed from the surviving workers and the victim.
    load = {w: queue_on(w, f"load{w}") for w in range(WORKERS)}
    for q in load.values():
        ach.queue_declare(q)
    got: dict[str, list[tuple[bytes, bool]]] = {q: [] for q in load.values()}
    cancelled: list[tuple[int, str]] = []

    def consume(conn: pika.BlockingConnection, queue: str, ack: bool) -> str:
        ch = conn.channel()
        worker = conn._impl.server_properties["worker"]
        ch.add_on_cancel_callback(lambda f: cancelled.append((worker, f.method.consumer_tag)))

        def on_msg(c: BlockingChannel, m: Any, _p: Any, body: bytes) -> None:
            got[queue].append((body, m.redelivered))
            if ack:
                c.basic_ack(m.delivery_tag)

        return ch.basic_consume(queue, on_msg)

    c0, c2 = conn_on(sup, 0), conn_on(sup, 2)
    c_victim = conn_on(sup, VICTIM)
    tags = {
        "c0-load1": consume(c0, load[1], ack=True),
        "c0-load2": consume(c0, load[2], ack=True),
        "c2-load1": consume(c2, load[1], ack=True),
        "c2-load0": consume(c2, load[0], ack=True),
    }
    # the victim's consumer of load0 never acks: what it holds must come back to load0
    vch = c_victim.channel()
    vch.basic_qos(prefetch_count=5)
    held_by_victim: list[bytes] = []
    vch.basic_consume(load[0], lambda _c, _m, _p, body: held_by_victim.append(body))

    pub = Confirms(raw_on(sup, 0))
    queues = [load[0], load[1], load[2]]
    pub.publish(queues, 90, "warm")
    pub.settle_all()
    assert pub.nacked == set()
    pump(
        [c0, c2, c_victim],
        lambda: sum(len(v) for v in got.values()) + len(held_by_victim) == 90,
        "warm-up deliveries",
    )
    assert len(held_by_victim) == 5  # its prefetch, never acked
    assert len(got[load[0]]) == 25 and len(got[load[1]]) == 30 and len(got[load[2]]) == 30

    # The victim stops; publishes to its queue can no longer be confirmed, then it dies.
    os.kill(victim.pid, signal.SIGSTOP)
    first_doomed = pub.seq + 1
    pub.publish(queues, 90, "doomed")
    os.kill(victim.pid, signal.SIGKILL)
    pub.settle_all()

    # (1) the publisher: exactly the publishes routed to the dead worker's queue are
    # nacked, everything else is acked
    window = set(range(first_doomed, pub.seq + 1))
    assert pub.nacked == pub.to(load[1], window)
    assert len(pub.nacked) == 30
    assert pub.acked == set(range(1, pub.seq + 1)) - pub.nacked

    # (2) the respawn, in the same slot
    after = wait_for(
        lambda: (s := sup.all_ready()) and s[VICTIM].pid != victim.pid and s,
        WAIT,
        f"worker {VICTIM} respawned",
        sup.log,
    )
    assert after[VICTIM].incarnation == victim.incarnation + 1
    assert [after[w].pid for w in survivors] == [before[w].pid for w in survivors]
    assert not running(victim.pid)
    assert f"worker {VICTIM} (pid {victim.pid}) died (signal SIGKILL); respawning" in sup.log()

    # (3) consumers on the survivors: those of the dead worker's queue are cancelled, the
    # others go on; the victim's clients lost their connections
    pump(
        [c0, c2],
        lambda: len(cancelled) == 2 and len(got[load[0]]) == 60 and len(got[load[2]]) == 60,
        "cancels of load1's consumers and the rest of load0/load2",
    )
    assert sorted(cancelled) == [(0, tags["c0-load1"]), (2, tags["c2-load1"])]
    for conn in (c_victim, x_victim):
        wait_for(lambda conn=conn: lost(conn), WAIT, "victim's client disconnected", sup.log)

    # (4) the other shards' messages are intact: every acked publish to load0/load2 was
    # delivered, the 5 the victim's consumer held again (redelivered), nothing twice
    for w in (0, 2):
        q = load[w]
        expected = sorted(pub.body[s] for s in pub.to(q, pub.acked))
        bodies = [b for b, _r in got[q]]
        assert sorted(bodies) == expected, q
    redelivered = {b for b, r in got[load[0]] if r}
    assert redelivered == set(held_by_victim)
    for w in survivors:
        assert passive(admin, steady[w]) == (30, 0)
        assert drain_get(admin.channel(), steady[w]) == steady_bodies[w]
    # the dead worker's transient queue is still declared, empty: its messages died with it
    assert passive(admin, steady[VICTIM]) == (0, 0)

    # (5) exclusive queues of the victim's connections are gone; others' still work
    for q in excl_dead:
        wait_for(lambda q=q: passive(admin, q) == 404, WAIT, f"{q} deleted", sup.log)
    assert passive(admin, excl_alive) == 405
    publish_each(ach, excl_alive, [b"still-mine"])
    assert drain_get(xch, excl_alive) == [b"still-mine"]

    # (6) the slot works again: its queues take declares, publishes and consumers
    fresh = queue_on(VICTIM, "fresh")
    ach.queue_declare(fresh)
    publish_each(ach, fresh, [b"f1", b"f2"])
    for q in (load[1], steady[VICTIM]):
        publish_each(ach, q, [b"again"])
    new_victim_conn = conn_on(sup, VICTIM)
    assert drain_get(new_victim_conn.channel(), fresh) == [b"f1", b"f2"]
    n_before = len(got[load[1]])
    tags["c2-load1-again"] = consume(c2, load[1], ack=True)
    pump([c2], lambda: len(got[load[1]]) == n_before + 1, "a delivery from the new load1")
    assert got[load[1]][-1] == (b"again", False)
    assert drain_get(c0.channel(), steady[VICTIM]) == [b"again"]
    pub.publish(queues, 3, "after")
    pub.settle_all()
    assert pub.nacked == pub.to(load[1], window)  # no new nack

    for c in (admin, x_alive, c0, c2, new_victim_conn):
        c.close()
    pub.c.close()
    assert sup.proc.poll() is None


# ------------------------------------------------------------------------- threaded load


class Client(threading.Thread):
    """One connection driven by its own thread until ``stop`` is set or the connection
    ends; ``error`` is what ended it (None: stopped)."""

    def __init__(
        self,
        conn: pika.BlockingConnection,
        step: Callable[[pika.BlockingConnection], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.worker = conn._impl.server_properties["worker"]
        self.step = step
        self.stop = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 60  # a bound, should the test never set stop
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                self.step(self.conn)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            self.error = e


def consumer(
    conn: pika.BlockingConnection,
    queues: list[str],
    got: dict[str, list[bytes]],
    cancelled: list[str],
) -> dict[str, str]:
    """Consume ``queues`` on one channel, acking each delivery; returns tag -> queue."""
    ch = conn.channel()
    ch.add_on_cancel_callback(lambda f: cancelled.append(f.method.consumer_tag))
    tags = {}
    for q in queues:

        def on_msg(c: BlockingChannel, m: Any, _p: Any, body: bytes, q: str = q) -> None:
            got[q].append(body)
            c.basic_ack(m.delivery_tag)

        tags[ch.basic_consume(q, on_msg)] = q
    return tags


def pumping(conn: pika.BlockingConnection) -> None:
    conn.process_data_events(time_limit=0.05)


def test_kill_9_during_continuous_traffic(supervisor: Callable[..., Sup]) -> None:
    """Clients keep going while the victim dies (no pause this time): confirms to the
    survivors' queues are never nacked and every acked one is delivered exactly once;
    the dead worker's queue holds, after the respawn, exactly a suffix of what was
    acked for it; its consumers were cancelled."""
    sup = supervisor(WORKERS, {"stall_timeout": 30.0})
    before = sup.wait_ready()
    victim = before[VICTIM]
    load = [queue_on(w, f"cload{w}") for w in range(WORKERS)]
    admin = conn_on(sup, 2)
    for q in load:
        admin.channel().queue_declare(q)
    got: dict[str, list[bytes]] = {q: [] for q in load}
    acked: list[tuple[str, bytes]] = []
    nacked: list[tuple[str, bytes]] = []
    cancels: dict[int, list[str]] = {0: [], 2: []}
    c0, c2 = conn_on(sup, 0), conn_on(sup, 2)
    tags0 = consumer(c0, [load[2], load[1]], got, cancels[0])
    tags2 = consumer(c2, [load[0], load[1]], got, cancels[2])
    pconn = conn_on(sup, 0)
    pch = pconn.channel()
    pch.confirm_delivery()
    counter = iter(range(10**9))

    def publish(_conn: pika.BlockingConnection) -> None:
        i = next(counter)
        q = load[i % WORKERS]
        body = f"{q}:{i}".encode()
        try:
            pch.basic_publish("", q, body)
        except pika.exceptions.NackError:
            nacked.append((q, body))
        else:
            acked.append((q, body))

    stop_pub, stop_cons = threading.Event(), threading.Event()
    clients = [Client(pconn, publish, stop_pub)] + [Client(c, pumping, stop_cons) for c in (c0, c2)]
    for c in clients:
        c.start()

    def published(n: int) -> bool:
        if clients[0].error is not None:
            raise AssertionError(f"the publisher failed: {clients[0].error!r}")
        return len(acked) >= n

    try:
        wait_for(lambda: published(300), WAIT, "traffic before the kill", sup.log)
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(
            lambda: (s := sup.all_ready()) and s[VICTIM].pid != victim.pid,
            WAIT,
            "respawn",
            sup.log,
        )
        n = len(acked)
        wait_for(lambda: published(n + 300), WAIT, "traffic after the respawn", sup.log)
    finally:
        stop_pub.set()
        clients[0].join(WAIT)
    assert clients[0].error is None, clients[0].error

    def delivered_everything() -> bool:
        return all(len(got[load[w]]) >= sum(1 for q, _ in acked if q == load[w]) for w in (0, 2))

    try:
        wait_for(delivered_everything, WAIT, "the survivors' messages delivered", sup.log)
        wait_for(lambda: cancels[0] and cancels[2], WAIT, "load1's consumers cancelled", sup.log)
    finally:
        stop_cons.set()
        for c in clients[1:]:
            c.join(WAIT)
    assert all(c.error is None for c in clients[1:]), [c.error for c in clients]

    assert {q for q, _ in nacked} <= {load[VICTIM]}, "a survivor's queue was nacked"
    for w in (0, 2):
        sent = [b for q, b in acked if q == load[w]]
        assert Counter(got[load[w]]) == Counter(sent), f"load{w} lost or duplicated"
    assert cancels[0] == [next(t for t, q in tags0.items() if q == load[VICTIM])]
    assert cancels[2] == [next(t for t, q in tags2.items() if q == load[VICTIM])]
    # what the new incarnation holds: the acked publishes routed to it, in order, none
    # of which had been delivered (its consumers were gone)
    sent1 = [b for q, b in acked if q == load[VICTIM]]
    left = drain_get(admin.channel(), load[VICTIM])
    assert left, "nothing published to the respawned worker's queue"
    assert left == sent1[len(sent1) - len(left) :]
    assert not set(left) & set(got[load[VICTIM]])
    for c in (admin, c0, c2, pconn):
        c.close()


# ------------------------------------------------------------------------- SIGTERM


def test_sigterm_under_load_closes_every_client_with_320(supervisor: Callable[..., Sup]) -> None:
    sup = supervisor(WORKERS)
    st = sup.wait_ready()
    pids = [w.pid for w in st]
    queues = [queue_on(w, f"drain{w}") for w in range(WORKERS)]
    admin = conn_on(sup, 0)
    for q in queues:
        admin.channel().queue_declare(q)
    admin.close()
    got: dict[str, list[bytes]] = {q: [] for q in queues}
    stop = threading.Event()
    clients: list[Client] = []
    for w in range(WORKERS):
        # a consumer of the next worker's queue, a publisher to all three
        cconn = conn_on(sup, w)
        consumer(cconn, [queues[(w + 1) % WORKERS]], got, [])
        clients.append(Client(cconn, pumping, stop))
        pconn = conn_on(sup, w)
        pch = pconn.channel()
        if w == 0:
            pch.confirm_delivery()  # one of them waits for confirms

        def publish(conn: pika.BlockingConnection, pch: BlockingChannel = pch) -> None:
            for q in queues:
                pch.basic_publish("", q, b"x" * 100)
            conn.process_data_events(time_limit=0)

        clients.append(Client(pconn, publish, stop))
    for c in clients:
        c.start()
    try:
        wait_for(
            lambda: all(len(v) >= 100 for v in got.values()),
            WAIT,
            "traffic on every worker",
            sup.log,
        )
        sup.proc.send_signal(signal.SIGTERM)
        for c in clients:
            c.join(30)
    finally:
        stop.set()
    assert not any(c.is_alive() for c in clients)
    codes = [(c.worker, getattr(c.error, "reply_code", repr(c.error))) for c in clients]
    assert codes == [(c.worker, 320) for c in clients], codes
    assert all(isinstance(c.error, pika.exceptions.ConnectionClosedByBroker) for c in clients)
    assert sup.wait_exit() == 0
    assert not any(running(p) for p in pids), "a worker outlived the supervisor"
    assert "Traceback" not in sup.log(), sup.log()[-3000:]
