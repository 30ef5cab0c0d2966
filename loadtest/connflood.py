"""Connection flood: hold many idle AMQP connections and measure the broker's memory.

Owns: ``main`` (``python -m loadtest.connflood``): starts ``shardmq serve`` on a free
127.0.0.1 port (or measures a running broker given ``--port`` and ``--pid``), opens
``--connections`` connections from ``--procs`` client processes, each completing the
handshake (header, start-ok PLAIN guest/guest, tune-ok with heartbeat 0, open, open-ok)
and then idle, and reports the broker's RSS (every broker process: /proc/<pid>/status)
before, with them all held, and after closing them all. ``start_broker`` /
``stop_broker`` are shared with ``loadtest.backlogmem``.

Invariants: only ever connects to 127.0.0.1; never a pass/fail gate (numbers for
BENCHMARKS.md); each client process opens at most ``--in-flight`` handshakes at once, so
the flood stays under the broker's ``max_unauthenticated_per_address``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.brokerenv import quiet_ports_env

HEADER = b"AMQP\x00\x00\x09\x01"


def _frame(payload: bytes) -> bytes:
    return struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce"


def _shortstr(s: bytes) -> bytes:
    return bytes([len(s)]) + s


START_OK = _frame(
    struct.pack(">HH", 10, 11)
    + struct.pack(">I", 0)  # client properties: empty table
    + _shortstr(b"PLAIN")
    + struct.pack(">I", 12)
    + b"\x00guest\x00guest"
    + _shortstr(b"en_US")
)
TUNE_OK = _frame(struct.pack(">HHHIH", 10, 31, 2047, 131072, 0))
OPEN = _frame(struct.pack(">HH", 10, 40) + _shortstr(b"/") + _shortstr(b"") + b"\x00")


async def _read_method(sock: socket.socket, buf: bytearray) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    while True:
        if len(buf) >= 7:
            ftype, _ch, size = struct.unpack_from(">BHI", buf)
            if len(buf) >= size + 8:
                ids = struct.unpack_from(">HH", buf, 7) if ftype == 1 else (0, 0)
                del buf[: size + 8]
                if ftype == 1:
                    return ids
                continue
        data = await loop.sock_recv(sock, 65536)
        if not data:
            raise ConnectionError("closed by the broker")
        buf += data


async def _connect(port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        buf = bytearray()
        await loop.sock_sendall(sock, HEADER)
        if await _read_method(sock, buf) != (10, 10):
            raise ConnectionError("no connection.start")
        await loop.sock_sendall(sock, START_OK)
        if await _read_method(sock, buf) != (10, 30):
            raise ConnectionError("no connection.tune")
        await loop.sock_sendall(sock, TUNE_OK + OPEN)
        got = await _read_method(sock, buf)
        if got != (10, 41):
            raise ConnectionError(f"no connection.open-ok: {got}")
    except BaseException:
        sock.close()
        raise
    return sock


async def _flood(port: int, n: int, in_flight: int) -> tuple[list[socket.socket], int]:
    gate = asyncio.Semaphore(in_flight)
    held: list[socket.socket] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with gate:
            try:
                held.append(await _connect(port))
            except (OSError, ConnectionError):
                failed += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return held, failed


def _client(port: int, n: int, in_flight: int, ready: mp.Queue, release: mp.Event) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held, failed = asyncio.run(_flood(port, n, in_flight))
    ready.put((len(held), failed))
    release.wait()
    for s in held:
        s.close()
    ready.put("closed")


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(HEADER)
            return bool(s.recv(1))
    except OSError:
        return False


def start_broker(
    workers: int, data: str, allocator: str | None = None
) -> tuple[subprocess.Popen[bytes], int, list[int]] | None:
    """``shardmq serve`` on a free 127.0.0.1 port with its data (and config) under
    ``data``, ``[server] allocator`` set when given; (process, port, every broker pid)
    once it answers, None if it did not start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "shardmq", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers)]
    cmd += ["--data-dir", os.path.join(data, "data"), "--log-level", "warning"]
    if allocator is not None:
        cfg = Path(data, "shardmq.toml")
        cfg.write_text(f'[server]\nallocator = "{allocator}"\n')
        cmd += ["--config", str(cfg)]
    env = quiet_ports_env()
    env.pop("PYTHONMALLOC", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            return None
        time.sleep(0.2)
    return proc, port, [proc.pid, *_children(proc.pid)]


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.connflood", description=__doc__)
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--in-flight", type=int, default=100, help="handshakes at once per proc")
    ap.add_argument("--workers", type=int, default=1, help="workers of the started broker")
    ap.add_argument("--port", type=int, default=0, help="a running broker (with --pid)")
    ap.add_argument("--pid", type=int, action="append", default=[], help="its processes")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds before each reading")
    ap.add_argument(
        "--allocator", choices=("malloc", "pymalloc"), help="[server] allocator of the broker"
    )
    args = ap.parse_args(argv)

    proc: subprocess.Popen[bytes] | None = None
    port = args.port
    pids = list(args.pid)
    tmp = tempfile.TemporaryDirectory(prefix="connflood-")
    if not port:
        started = start_broker(args.workers, tmp.name, args.allocator)
        if started is None:
            print("the broker did not start", file=sys.stderr)
            return 2
        proc, port, pids = started
    try:
        time.sleep(args.settle)
        before = rss(pids)
        ready: mp.Queue = mp.Queue()
        release = mp.Event()
        share = [args.connections // args.procs] * args.procs
        share[0] += args.connections - sum(share)
        clients = [
            mp.Process(target=_client, args=(port, k, args.in_flight, ready, release))
            for k in share
        ]
        t0 = time.monotonic()
        for c in clients:
            c.start()
        results = [ready.get() for _ in clients]
        took = time.monotonic() - t0
        held = sum(r[0] for r in results)
        failed = sum(r[1] for r in results)
        time.sleep(args.settle)
        full = rss(pids)
        release.set()
        for _ in clients:
            ready.get()
        for c in clients:
            c.join()
        time.sleep(args.settle)
        after = rss(pids)
        report = {
            "workers": args.workers if proc is not None else len(pids),
            "connections_held": held,
            "failed": failed,
            "handshake_seconds": round(took, 1),
            "rss_before_mib": round(before / 2**20, 1),
            "rss_held_mib": round(full / 2**20, 1),
            "rss_after_close_mib": round(after / 2**20, 1),
            "kib_per_connection": round((full - before) / 1024 / max(held, 1), 2),
        }
        print(json.dumps(report))
    finally:
        if proc is not None:
            stop_broker(proc)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
