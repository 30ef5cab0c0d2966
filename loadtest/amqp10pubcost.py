"""The broker's CPU per publish, in process: ``python -m loadtest.amqp10pubcost``.

Owns: feeding pre-built bytes into a broker connection with no socket and no consumer
(``loadtest.inproc``'s broker), in 64 KiB reads, and timing it in process CPU time (so
other processes on the machine matter little): AMQP 1.0 one-frame transfers of 16 B
(settled, and unsettled with the confirms flushed after each read) through
``AMQP10Connection`` (engine, adapter, domain publish into a queue), and the same
publishes over AMQP 0-9-1 through ``AMQP091Connection`` for comparison. The queue is
purged after each read so that it does not grow. Prints microseconds per message
(each of ``--runs`` runs, sorted, and their median).

Invariants: it only reads the code it imports (run it with ``PYTHONPATH`` set to the
tree to measure); every message it feeds is published (checked).
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

from loadtest.inproc import FakeIO, connect, content_frames, make_broker, method_frame
from shardmq.adapter.amqp10 import AMQP10Connection
from shardmq.amqp import methods as M
from shardmq.amqp1.client import ClientEngine
from shardmq.amqp1.sections import data_header
from shardmq.broker.broker import LocalSequencer

READ = 65536


class _Client:
    def on_open(self, hostname: str | None) -> None: ...
    def on_begin(self, session: Any) -> None: ...
    def on_end(self, session: Any) -> None: ...
    def after_attach(self, session: Any, link: Any) -> None: ...
    def on_detach(self, session: Any, link: Any, error: Any) -> None: ...
    def on_flow(self, session: Any, link: Any, drain: bool) -> None: ...
    def on_transfer(self, session: Any, link: Any, d: Any) -> None: ...
    def on_disposition(self, session: Any, d: Any) -> None: ...
    def on_close(self) -> None: ...


def amqp10(settled: bool, n: int) -> float:
    broker = make_broker()
    c091 = connect(broker)
    c091.open_channel(1)
    c091.declare(1, "q")
    conn = AMQP10Connection(broker, "127.0.0.1:1", FakeIO(), lambda: None)
    cl = ClientEngine(_Client(), lambda: None, user="guest", password="guest")
    cl.start()

    def pump() -> None:
        for _ in range(50):
            a = cl.take_output()
            if a:
                conn.feed(bytes(a))
            seq = broker.sequencer
            if isinstance(seq, LocalSequencer) and seq.waiting:
                seq.commit()
            b = conn.take_output()
            if b:
                cl.feed(bytes(b))
            if not a and not b:
                return

    pump()
    s = cl.begin()
    pump()
    link = cl.attach(s, "snd", receiver=False, address="/queue/q", settled=settled)
    pump()
    # the client's transfers, built with its own engine (credit and window held open:
    # the broker's flow frames are not read back here)
    payload = data_header(16) + b"x" * 16
    for i in range(n):
        link.credit = 10
        s.remote_incoming_window = 10
        cl.send_transfer(s, link, i.to_bytes(8, "big"), payload, settled)
    data = bytes(cl.take_output() or b"")
    engine = conn.engine
    engine.session_window = 2**31
    for session in engine.sessions.values():
        session.incoming_window = 2**31
        for lk in session.links.values():
            lk.credit = 2**31
    q = conn.domain.vhost.queues["q"]
    reads = [data[i : i + READ] for i in range(0, len(data), READ)]
    before = q.st_publish
    gc.collect()
    t = time.process_time()
    for r in reads:
        conn.feed(r)
        conn.take_output()  # the confirms (unsettled), as the I/O layer each loop turn
        q.purge()
    dt = time.process_time() - t
    if q.st_publish - before != n:
        raise RuntimeError(f"published {q.st_publish - before} of {n}")
    return dt / n * 1e6


def amqp091(n: int) -> float:
    broker = make_broker()
    c = connect(broker)
    c.open_channel(1)
    c.declare(1, "q")
    one = method_frame(1, M.BasicPublish(exchange="", routing_key="q")) + content_frames(
        1, b"x" * 16
    )
    data = one * n
    reads = [data[i : i + READ] for i in range(0, len(data), READ)]
    q = c.conn.domain.vhost.queues["q"]
    before = q.st_publish
    gc.collect()
    t = time.process_time()
    for r in reads:
        c.conn.feed(r)
        c.conn.engine.out.clear()
        q.purge()
    dt = time.process_time() - t
    if q.st_publish - before != n:
        raise RuntimeError(f"published {q.st_publish - before} of {n}")
    return dt / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200_000, help="messages per run")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    for name, run in (
        ("AMQP 1.0 settled  ", lambda: amqp10(True, args.n)),
        ("AMQP 1.0 unsettled", lambda: amqp10(False, args.n)),
        ("AMQP 0-9-1 publish", lambda: amqp091(args.n)),
    ):
        got = sorted(run() for _ in range(args.runs))
        runs = " ".join(f"{x:.2f}" for x in got)
        print(f"{name}  {runs}  us/msg (median {got[len(got) // 2]:.2f})")


if __name__ == "__main__":
    main()
