"""The broker under the generated unit's sandbox, as far as this machine allows (no
systemd runs here): ``tests.support.sandbox`` applies ProtectSystem=strict with the
data dir writable, no capability, no_new_privs, MemoryDenyWriteExecute (the kernel's
PR_SET_MDWE), the ``@system-service ~@privileged`` syscall filter and the three address
families; the broker must start (READY=1), serve, answer ``ctl status`` and respawn a
killed worker inside it, and stop cleanly.

Not checked here (see the sandbox module): User= and PrivateUsers= (the interpreter
lives under /root, 0700: the broker keeps uid 0, without capabilities), PrivateTmp=,
PrivateDevices= beyond /dev/shm, ProtectProc=, ProtectKernel*=, RestrictNamespaces=."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from tests.support import sandbox
from tests.support.launch import REPO_ROOT, serve_args, terminate
from tests.support.notifysock import Notifications
from tests.support.ports import free_port
from tests.support.procs import running, wait_for
from workers.status import read_broker_status, read_workers

REASON = sandbox.available()


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    n = Notifications()
    try:
        yield n
    finally:
        n.close()


def confinement(pid: int) -> tuple[str, str, str]:
    """Seccomp mode, no_new_privs and effective capabilities of ``pid``."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return status["Seccomp"].strip(), status["NoNewPrivs"].strip(), status["CapEff"].strip()


pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no sandbox here: {REASON}")

_PROBE = """
import ctypes, mmap, os, socket, sys
def outcome(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return e.strerror
rw = sys.argv[1]
print("ro", outcome(lambda: open("/etc/shardmq-sandbox-probe", "w")))
print("rw", outcome(lambda: open(os.path.join(rw, "probe"), "w")))
print("netlink", outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)))
print("inet", outcome(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()))
print("wx", outcome(lambda: mmap.mmap(-1, 4096, prot=7)))
libc = ctypes.CDLL(None, use_errno=True)
print("sysfs", "ok" if libc.syscall(139, 3) >= 0 else os.strerror(ctypes.get_errno()))
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print("caps", status["CapEff"].strip(), status["CapBnd"].strip())
print("nnp", status["NoNewPrivs"].strip())
"""


def test_the_sandbox_confines(tmp_path: Path) -> None:
    """The emulation is real: what the unit forbids fails inside, what it allows works."""
    res = subprocess.run(
        sandbox.command([sys.executable, "-c", _PROBE, str(tmp_path)], [str(tmp_path)]),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    seen = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    assert seen["ro"] == "Read-only file system"
    assert seen["rw"] == "ok" and seen["inet"] == "ok"
    assert seen["netlink"] == "Operation not permitted"
    assert seen["wx"] == "Permission denied"
    if platform.machine() == "x86_64":  # sysfs(2) is @obsolete: outside @system-service
        assert seen["sysfs"] == "Operation not permitted"
    assert seen["caps"] == "0000000000000000 0000000000000000"
    assert seen["nnp"] == "1"


@pytest.mark.parametrize("workers", [1, 3])
def test_broker_starts_serves_and_respawns_in_the_sandbox(
    tmp_path: Path,
    notifications: Notifications,
    workers: int,
) -> None:
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    log = tmp_path / "broker.log"
    env = dict(os.environ)
    env["NOTIFY_SOCKET"] = notifications.env_value
    env["WATCHDOG_USEC"] = "2000000"
    argv = [sys.executable, "-m", *serve_args(port, workers, data)]
    cmd = sandbox.command(argv, [str(data)])  # as launch.spawn does, inside the sandbox
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        notifications.wait("READY", 60, log)
        conn = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1)
        )
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("sandbox-q", durable=True)
        for i in range(20):
            ch.basic_publish("", "sandbox-q", b"m%d" % i, pika.BasicProperties(delivery_mode=2))
        got = [ch.basic_get("sandbox-q", auto_ack=True)[2] for _ in range(20)]
        assert got == [b"m%d" % i for i in range(20)]
        conn.close()
        assert len(read_broker_status(str(data)).reports) == workers
        notifications.wait("WATCHDOG", 10, log)
        # the broker and each worker run confined: seccomp filter, no_new_privs, no caps
        pids = [proc.pid] + [w.pid for w in read_workers(str(data)) or []]
        for pid in pids:
            assert confinement(pid) == ("2", "1", "0000000000000000"), pid

        if workers > 1:  # a worker killed inside the sandbox is respawned inside it
            before = {w.slot: w.pid for w in read_workers(str(data)) or []}
            os.kill(before[1], signal.SIGKILL)

            def respawned() -> bool:
                now = {w.slot: w for w in read_workers(str(data)) or []}
                w = now.get(1)
                return bool(w and w.pid != before[1] and w.ready and running(w.pid))

            wait_for(respawned, 30, "worker 1 respawned", lambda: log.read_text())
            for _ in range(6):  # new connections land on every worker, the new one too
                c = pika.BlockingConnection(
                    pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1)
                )
                c.channel().queue_declare("", exclusive=True)
                c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "Operation not permitted" not in text, text
    finally:
        terminate(proc, 15)
