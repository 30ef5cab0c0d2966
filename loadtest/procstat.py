"""Broker process CPU and memory, read straight from /proc (no psutil).

Owns: finding the processes that listen on a local TCP port (``/proc/net/tcp{,6}`` socket
inodes matched against ``/proc/<pid>/fd``), plus their descendants, and sampling their
summed CPU time (utime + stime) and resident set size.

Invariants: only ever reads /proc; a process that vanishes between two reads is simply
skipped (it contributes nothing), never an exception. Linux only; elsewhere every
function degrades to "nothing found".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_LISTEN = "0A"


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != _LISTEN:
                        continue
                    if int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            continue
    return inodes


def _all_pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def pids_listening_on(port: int) -> list[int]:
    """Pids holding a listening TCP socket on ``port`` (any address), sorted."""
    targets = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not targets:
        return []
    found: list[int] = []
    for pid in _all_pids():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in targets:
                    found.append(pid)
                    break
            except OSError:
                continue
    return sorted(found)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    return int(rest[1])


def with_descendants(pids: list[int]) -> list[int]:
    """``pids`` plus every process whose ancestry leads to one of them."""
    roots = set(pids)
    parent = {}
    for pid in _all_pids():
        pp = _ppid(pid)
        if pp is not None:
            parent[pid] = pp
    out = set(roots)
    for pid in parent:
        seen = pid
        for _ in range(64):
            pp = parent.get(seen)
            if pp is None or pp <= 1:
                break
            if pp in roots:
                out.add(pid)
                break
            seen = pp
    return sorted(out)


def find_broker_pids(port: int) -> list[int]:
    """The processes of a broker listening on local ``port`` (listeners + descendants)."""
    pids = pids_listening_on(port)
    return with_descendants(pids) if pids else []


@dataclass(slots=True)
class ProcSample:
    """Summed over a set of processes at one instant."""

    t: float  # time.monotonic()
    cpu_s: float  # utime + stime, seconds
    rss: int  # bytes
    alive: int  # how many of the pids were readable


def _cpu_rss(pid: int) -> tuple[float, int] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    # rest[0] is field 3 (state); utime/stime are fields 14/15, rss is field 24
    cpu = (int(rest[11]) + int(rest[12])) / _CLK_TCK
    rss = int(rest[21]) * _PAGE
    return cpu, rss


def sample(pids: list[int]) -> ProcSample:
    cpu = 0.0
    rss = 0
    alive = 0
    for pid in pids:
        got = _cpu_rss(pid)
        if got is None:
            continue
        cpu += got[0]
        rss += got[1]
        alive += 1
    return ProcSample(time.monotonic(), cpu, rss, alive)


def cpu_percent(a: ProcSample, b: ProcSample) -> float:
    """CPU use between two samples, in percent of one core (may exceed 100)."""
    dt = b.t - a.t
    if dt <= 0:
        return 0.0
    return 100.0 * (b.cpu_s - a.cpu_s) / dt
