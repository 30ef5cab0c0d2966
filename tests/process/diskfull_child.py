"""Child of test_disk_full.py, run inside ``unshare -rm`` with a small tmpfs at DIR:
a real broker (``shardmq serve``, WORKERS workers) whose data dir fills up under
persistent publishing with confirms. Prints a JSON report.

1. Fill: publish 1 KiB persistent messages to a durable queue with confirms, one at a
   time, until one is nacked or the publisher is blocked (the disk alarm).
2. The broker must still be up and answer a new connection; then kill -9 it.
3. Free space (delete the ballast file, as an operator would), restart on the same
   data dir and drain the queue.

Usage: python -m tests.process.diskfull_child DIR WORKERS
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pika
import pika.exceptions

from tests.support.launch import serve_args, spawn, terminate, wait_answering
from tests.support.ports import free_port

QUEUE = "diskfull"


def start(root: Path, workers: int, port: int, n: int) -> tuple[object, Path]:
    cfg = root / "shardmq.toml"
    log = Path(os.environ.get("DISKFULL_LOGS", "/tmp")) / f"diskfull-broker-{n}.log"
    proc = spawn(serve_args(port, workers, root / "data", cfg), log)
    wait_answering(proc, port, lambda: log.read_text(errors="replace"), lambda: None)
    return proc, log


def params(port: int) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        "127.0.0.1",
        port,
        credentials=pika.PlainCredentials("guest", "guest"),
        blocked_connection_timeout=5,
        socket_timeout=10,
    )


def main(root: Path, workers: int) -> None:
    (root / "shardmq.toml").write_text(
        '[store]\nsegment_size = 65536\ndisk_free_limit = 131072\nfsync = "always"\n'
        "[management]\nenabled = false\n"
    )
    (root / "ballast").write_bytes(bytes(512 * 1024))
    port = free_port()
    proc, log1 = start(root, workers, port, 1)
    confirmed: list[int] = []
    outcome = "none"
    conn = pika.BlockingConnection(params(port))
    try:
        ch = conn.channel()
        ch.queue_declare(QUEUE, durable=True)
        ch.confirm_delivery()
        for i in range(1, 100_000):
            try:
                ch.basic_publish(
                    "", QUEUE, b"%08d" % i + bytes(1016), pika.BasicProperties(delivery_mode=2)
                )
            except pika.exceptions.NackError:
                outcome = "nack"
                break
            except pika.exceptions.ConnectionBlockedTimeout:
                outcome = "blocked"
                break
            confirmed.append(i)
    finally:
        try:
            conn.close()
        except pika.exceptions.AMQPError:
            pass
    alive = proc.poll() is None  # type: ignore[attr-defined]
    answers = False
    if alive:
        with pika.BlockingConnection(params(port)) as c2:
            answers = c2.channel().queue_declare(QUEUE, passive=True).method.message_count >= 0
    os.killpg(proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    proc.wait()  # type: ignore[attr-defined]
    (root / "ballast").unlink()
    time.sleep(0.2)
    proc2, log2 = start(root, workers, port, 2)
    drained: list[int] = []
    try:
        with pika.BlockingConnection(params(port)) as c3:
            ch3 = c3.channel()
            while True:
                method, _props, body = ch3.basic_get(QUEUE)
                if method is None:
                    break
                drained.append(int(body[:8]))
                ch3.basic_ack(method.delivery_tag)
    finally:
        code = terminate(proc2, 20)  # type: ignore[arg-type]
    print(
        json.dumps(
            {
                "outcome": outcome,
                "confirmed": confirmed,
                "alive": alive,
                "answers": answers,
                "drained": drained,
                "exit": code,
                "log1": log1.read_text(errors="replace"),
                "log2": log2.read_text(errors="replace"),
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
