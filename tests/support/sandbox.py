"""The generated unit's sandbox without systemd, as far as this machine allows: a
launcher that confines a command the way the unit's directives would, for a test that
runs the broker inside it (no systemd runs here to do it).

    unshare --mount --propagation private -- \\
        python -m tests.support.sandbox --rw DATA_DIR -- python -m shardmq serve ...

Owns: ``command(argv, rw)`` (that command line), the two stages it runs, and
``allowed_syscalls`` (``SystemCallFilter=@system-service ~@privileged`` resolved by
``systemd-analyze syscall-filter``):

1. in a private mount namespace, as root: every mount read-only but /dev, /proc and
   /sys (``ProtectSystem=strict``; /dev/shm stays writable as under PrivateDevices),
   the ``--rw`` directories writable again (``ReadWritePaths``); then ``setpriv``
   empties the capability bounding and inheritable sets and sets no_new_privs
   (``CapabilityBoundingSet=``, ``NoNewPrivileges=yes``): the command has no
   capability although its uid is 0;
2. ``PR_SET_MDWE`` (``MemoryDenyWriteExecute=yes``: the kernel refuses writable and
   executable memory, inherited by every child) and a seccomp filter built with
   libseccomp: the syscalls of ``@system-service`` less ``@privileged``, any other one
   fails with EPERM (``SystemCallErrorNumber=EPERM``), and ``socket()`` only for
   AF_INET, AF_INET6 and AF_UNIX (``RestrictAddressFamilies``); then exec the command.

Not emulated (stated by the tests that use it): ``User=`` (the interpreter here lives
under /root, mode 0700, so the command keeps uid 0, without capabilities),
``PrivateUsers``, ``PrivateTmp``, ``PrivateDevices`` beyond /dev/shm, ``ProtectProc``,
``ProtectKernel*``, ``ProtectClock``, ``RestrictNamespaces`` and the other directives
that only narrow what the broker never does.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import socket
import subprocess
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
EPERM = 1


def _act_errno(errno: int) -> int:
    return 0x00050000 | (errno & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def available() -> str | None:
    """Why the sandbox cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to make a private mount namespace"
    for tool in ("unshare", "setpriv", "mount", "systemd-analyze"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp.so.2 is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"cannot make a mount namespace: {probe.stderr.decode().strip()}"
    return None


def command(argv: list[str], rw: list[str]) -> list[str]:
    """``argv`` run in the sandbox, ``rw`` the writable directories."""
    out = ["unshare", "--mount", "--propagation", "private", "--"]
    out += [sys.executable, "-m", "tests.support.sandbox"]
    for path in rw:
        out += ["--rw", path]
    return [*out, "--", *argv]


def allowed_syscalls() -> set[str]:
    """``@system-service`` less ``@privileged``, as ``systemd-analyze`` lists them."""
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        elif not line.strip():
            current = None

    def expand(name: str, seen: set[str]) -> set[str]:
        out: set[str] = set()
        for item in groups.get(name, []):
            if item.startswith("@"):
                if item not in seen:
                    seen.add(item)
                    out |= expand(item, seen)
            else:
                out.add(item)
        return out

    return expand("@system-service", set()) - expand("@privileged", set())


# ---------------------------------------------------------------------- stage 1
def _protect_system(rw: list[str]) -> None:
    """ProtectSystem=strict + ReadWritePaths in this (private) mount namespace."""
    points: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if not any(mp == t or mp.startswith(t + "/") for t in ("/dev", "/proc", "/sys")):
                points.append(mp)
    for mp in points:
        subprocess.run(["mount", "-o", "remount,bind,ro", mp], capture_output=True)
    for path in rw:
        subprocess.run(["mount", "--bind", path, path], check=True)
        subprocess.run(["mount", "-o", "remount,bind,rw", path], check=True)


# ---------------------------------------------------------------------- stage 2
def _confine() -> None:
    """MemoryDenyWriteExecute, SystemCallFilter, RestrictAddressFamilies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")
    seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = seccomp.seccomp_init(_act_errno(EPERM))
    if not ctx:
        raise OSError("seccomp_init failed")
    for name in sorted(allowed_syscalls() - {"socket"}):
        nr = seccomp.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not a syscall of this architecture
        rc = seccomp.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add {name}")
    nr = seccomp.seccomp_syscall_resolve_name(b"socket")
    for family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        cmp = _ArgCmp(0, SCMP_CMP_EQ, int(family), 0)
        rc = seccomp.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 1, ctypes.byref(cmp))
        if rc < 0:
            raise OSError(-rc, "seccomp_rule_add socket")
    rc = seccomp.seccomp_load(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.support.sandbox")
    ap.add_argument("--rw", action="append", default=[])
    ap.add_argument("--confined", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("argv", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not args.confined:
        _protect_system(args.rw)
        stage2 = [sys.executable, "-m", "tests.support.sandbox", "--confined", "--", *argv]
        setpriv = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]
        os.execvp("setpriv", [*setpriv, *stage2])
    _confine()
    os.execvp(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
