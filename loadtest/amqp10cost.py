"""CPU per message of the AMQP 1.0 delivery path, in one process, without sockets.

Owns: ``python -m loadtest.amqp10cost`` — a broker (``loadtest.inproc.make_broker``), a
queue filled through the 0-9-1 adapter, and the load generator's own AMQP 1.0 consumer
(``loadtest.amqp10.Conn`` + ``Receiver``, the sans-IO client engine) attached to it;
bytes are pumped between the two by hand. It times, separately, the broker's outbound
half (the credit flow and the dispositions it reads, the transfers it writes: its
``feed`` and ``take_output``) and the consumer's receive path, per message, for a
settled (``--settled``) or an unsettled receiver (accepting ranges every
``--ack-every``) with link credit ``--credit`` topped up at half, as the bench does.
Filling the queue is not timed. Numbers are for comparing two trees on one machine
(the same command, ``PYTHONPATH`` pointing at each), not absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from loadtest.amqp10 import Conn, Receiver
from loadtest.client import URI
from loadtest.inproc import connect, content_frames, make_broker, method_frame
from loadtest.worker import WorkerPlan
from shardmq.adapter.amqp10 import AMQP10Connection
from shardmq.amqp import methods as M
from shardmq.broker.broker import LocalSequencer

QUEUE = "amqp10cost"


class _IO:
    def set_reading(self, active: bool) -> None:
        pass

    def tuned(self) -> None:
        pass

    def hold(self, seconds: float) -> None:
        pass


def _commit(broker: Any) -> None:
    seq = broker.sequencer
    if isinstance(seq, LocalSequencer) and seq.waiting:
        seq.commit()


def run(n: int, settled: bool, credit: int, ack_every: int, size: int) -> dict[str, Any]:
    broker = make_broker()
    c091 = connect(broker)
    c091.call(1, M.ChannelOpen())
    c091.call(1, M.QueueDeclare(queue=QUEUE))
    body = b"\x00" * size
    pub = method_frame(1, M.BasicPublish(exchange="", routing_key=QUEUE)) + content_frames(1, body)
    for _ in range(n // 1000):
        c091.conn.feed(pub * 1000)
        c091.conn.take_output()
    broker_conn = AMQP10Connection(broker, "127.0.0.1:40001", _IO(), lambda: None)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    uri = URI.parse("amqp://guest:guest@127.0.0.1:5672/")
    client = Conn(uri, loop)
    client.engine.wake = lambda: None
    plan = WorkerPlan(
        role="consumer",
        index=0,
        uri="",
        auto_ack=settled,
        credit=credit,
        ack_every=ack_every,
        size=size,
    )
    rec = Receiver(client, plan)
    t_broker = 0.0
    t_client = 0.0
    clock = time.process_time

    def pump(timed: bool) -> bool:
        nonlocal t_broker, t_client
        moved = False
        data = client.engine.take_output()
        if data:
            moved = True
            t0 = clock()
            broker_conn.feed(bytes(data))
            t1 = clock()
            if timed:
                t_broker += t1 - t0
            _commit(broker)
        t0 = clock()
        out = broker_conn.take_output()
        t1 = clock()
        if timed:
            t_broker += t1 - t0
        if out:
            moved = True
            client.engine.feed(bytes(out))
            if timed:
                t_client += clock() - t1
        return moved

    client.engine.start()
    while pump(False):
        pass
    client.session = client.engine.begin()
    while pump(False):
        pass
    client.engine.attach(
        client.session, "cost-r", receiver=True, address=f"/queue/{QUEUE}", settled=settled
    )
    while pump(False):
        pass
    link = client.session.by_name["cost-r"]
    client.engine.grant(client.session, link, credit)
    while rec.consumed < n:
        if not pump(True):
            rec.ack_pending()  # what the generator's progress tick does
            if not pump(True):
                break
    rec.ack_pending()
    while pump(True):
        pass
    loop.close()
    got = rec.consumed
    unacked = sum(len(st.user.ch.unacked) for st in broker_conn.engine.sessions.values())
    return {
        "messages": got,
        "broker_us": t_broker / max(got, 1) * 1e6,
        "consumer_us": t_client / max(got, 1) * 1e6,
        "left_in_queue": len(broker.vhosts["/"].queues[QUEUE].store),
        "unacked": unacked,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000, help="messages (a multiple of 1000)")
    ap.add_argument("--settled", action="store_true", help="a settled receiver (auto-ack)")
    ap.add_argument("--credit", type=int, default=1000)
    ap.add_argument("--ack-every", type=int, default=250)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="report the median of these")
    a = ap.parse_args()
    res = [run(a.n, a.settled, a.credit, a.ack_every, a.size) for _ in range(a.rounds)]
    res.sort(key=lambda r: r["broker_us"])
    mid = res[len(res) // 2]
    cons = sorted(r["consumer_us"] for r in res)[len(res) // 2]
    print(
        f"{'settled' if a.settled else 'unsettled'}: {mid['messages']} messages, "
        f"broker outbound {mid['broker_us']:.2f} us/msg, consumer {cons:.2f} us/msg "
        f"(median of {a.rounds}; left in queue {mid['left_in_queue']})"
    )


if __name__ == "__main__":
    main()
