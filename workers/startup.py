"""What a broker claims before it serves, and its one-line start-up errors.

Owns:
- ``StartupError``: a start-up failure an operator must fix, as one line (what, where,
  what to do) and its ``workers.exitcodes.ExitCode``; ``report_startup_error`` logs it
  and tells systemd (STATUS=, never READY=1).
- ``lock_data_dir``: the data directory created (mode 0700: its definitions hold
  password hashes; one warning when an existing one is open to group or others),
  checked (a directory, writable, not on a pseudo filesystem) and locked: ``flock`` on ``<data_dir>/shardmq.lock``, which
  holds the supervisor's pid.
- ``claim_port``: the port checked and claimed: a lock named for the port (an abstract
  Unix socket ``@shardmq.port.<port>``, so no two shardmq brokers of this host, or
  network namespace, share a port whatever their listen addresses and acceptor modes)
  and a plain bind (no SO_REUSEPORT) of host:port, which fails while any program
  listens there, SO_REUSEPORT or not.
- ``claim_broker``: both, in that order (``BrokerClaim``); the AMQPS port is claimed
  the same way (its own lock and plain bind, the same errors) when TLS is on, and the
  plain port is not claimed when the plain listener is off.
- ``tls_server``: the TLS context built once before anything is claimed, so a bad
  ``[tls]`` setting is one line and ``ExitCode.TLS_CONFIG_INVALID``.

Invariants:
- Every lock is held by an open file description that the workers inherit
  (``BrokerClaim.inherit_fds``): the data dir and the port stay claimed until the last
  process of the broker exits, so a broker started while the workers of a SIGKILLed
  supervisor are still exiting waits for them (at most ``ORPHAN_WAIT`` seconds) instead
  of sharing the port or the data dir with them. Nothing has to be cleaned up after a
  ``kill -9``: the kernel drops both locks with the last descriptor.
- A broker that holds the port lock binds its listening sockets only after the plain
  bind succeeded, so SO_REUSEPORT never joins another broker's socket group.
- Nothing here raises anything but ``StartupError`` for a condition of the host (ports,
  paths, permissions); no traceback reaches the operator for those.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import struct
import time

from shardmq.config import Config
from shardmq.net.tls import TLSConfigError, TLSServer
from workers.exitcodes import ExitCode
from workers.sdnotify import notify

log = logging.getLogger("shardmq.startup")

LOCK_FILE = "shardmq.lock"
ORPHAN_WAIT = 5.0  # seconds to wait for the workers of a dead supervisor to let go
RETRY_INTERVAL = 0.05
# filesystems the kernel makes up: a data dir there cannot hold data
PSEUDO_FILESYSTEMS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "bpf",
        "pstore",
        "efivarfs",
        "fusectl",
        "mqueue",
        "binfmt_misc",
        "autofs",
    }
)
_OCTAL = re.compile(r"\\([0-7]{3})")
FIX_DATA_DIR = "choose another with --data-dir or server.data_dir"
FIX_PORT = "stop it, or start this broker with another --port (server.port)"
FIX_TLS_PORT = "stop it, or choose another tls.port"


class StartupError(Exception):
    """A start-up failure: ``str()`` is the one line to log, ``code`` the exit code."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def report_startup_error(err: StartupError) -> int:
    """Log ``err`` as one line, tell systemd why (no READY=1 was or will be sent) and
    return the exit code."""
    log.critical("cannot start: %s", err)
    notify(f"STATUS=cannot start: {err}")
    return int(err.code)


# ---------------------------------------------------------------------- processes
def _alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------- data dir
def filesystem_type(path: str) -> str | None:
    """The type of the filesystem ``path`` (absolute, need not exist) would be on,
    from /proc/self/mounts (None where that is unreadable)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    best, fstype = "", None
    real = os.path.realpath(path)
    for fields in mounts:
        if len(fields) < 3:
            continue
        point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[1])  # \040: space
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[2]
    return fstype


def _dir_error(where: str, exc: OSError, doing: str) -> StartupError:
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return StartupError(
            ExitCode.DATA_DIR_NOT_A_DIRECTORY,
            f"data dir {where} is not a directory (it, or a directory above it, is a "
            f"file): remove that file or {FIX_DATA_DIR}",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "read-only filesystem" if exc.errno == errno.EROFS else "permission denied"
        return StartupError(
            ExitCode.DATA_DIR_NOT_WRITABLE,
            f"data dir {where} is not writable ({doing}: {reason}) for user "
            f"{os.geteuid()}: give it write access or {FIX_DATA_DIR}",
        )
    return StartupError(
        ExitCode.DATA_DIR_UNUSABLE,
        f"data dir {where} cannot be used ({doing}: {exc.strerror or exc}): {FIX_DATA_DIR}",
    )


class DataDirLock:
    """The flock of ``<data_dir>/shardmq.lock`` held through ``fd`` (inheritable by
    passing ``fd`` to a child; released when every copy is closed)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # drops the flock (the file stays: no unlink race)
            self.fd = -1


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


DATA_DIR_MODE = 0o700


def warn_if_readable(where: str) -> bool:
    """One warning when the data dir lets its group or others in (it holds password
    hashes): True when it does."""
    try:
        mode = os.stat(where).st_mode & 0o777
    except OSError:
        return False
    if not mode & 0o077:
        return False
    log.warning(
        "data dir %s is open to its group or others (mode %04o); it holds password "
        "hashes: chmod 700 %s",
        where,
        mode,
        where,
    )
    return True


def lock_data_dir(data_dir: str) -> DataDirLock:
    """Create ``data_dir`` if needed, check it and lock it for this broker's life."""
    where = os.path.abspath(data_dir)
    fstype = filesystem_type(where)
    if fstype in PSEUDO_FILESYSTEMS:
        raise StartupError(
            ExitCode.DATA_DIR_UNUSABLE,
            f"data dir {where} is on {fstype}, a filesystem the kernel makes up that "
            f"cannot hold data: {FIX_DATA_DIR}",
        )
    try:
        # 0700: the definitions in it hold password hashes (parents get the default)
        os.makedirs(where, mode=DATA_DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise _dir_error(where, exc, "creating it") from None
    if not os.path.isdir(where):
        raise _dir_error(where, NotADirectoryError(errno.ENOTDIR, "not a directory"), "")
    warn_if_readable(where)
    path = os.path.join(where, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _dir_error(where, exc, f"creating {LOCK_FILE}") from None
    deadline = time.monotonic() + ORPHAN_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise _dir_error(where, exc, f"locking {LOCK_FILE}") from None
        holder = _read_pid(fd)
        alive = holder is not None and _alive(holder)
        if alive or time.monotonic() > deadline:
            os.close(fd)
            who = f"pid {holder}" if alive else f"workers of pid {holder}, which is gone"
            raise StartupError(
                ExitCode.DATA_DIR_IN_USE,
                f"data dir {where} is in use by another running shardmq ({who}): "
                f"stop it, or {FIX_DATA_DIR}",
            )
        # its supervisor is dead (kill -9): its workers are on their way out
        time.sleep(RETRY_INTERVAL)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise _dir_error(where, exc, f"writing {LOCK_FILE}") from None
    return DataDirLock(path, fd)


# ---------------------------------------------------------------------- port
def port_lock_name(port: int) -> str:
    return f"\0shardmq.port.{port}"


def _lock_holder(name: str) -> int | None:
    """The pid that listens on the abstract socket ``name`` (SO_PEERCRED), or None."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.setblocking(False)
        try:
            c.connect(name)
            cred = c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
    pid: int = struct.unpack("3i", cred)[0]
    return pid or None


def _port_lock(port: int, fix: str = FIX_PORT) -> socket.socket | None:
    """The abstract socket that marks ``port`` as this shardmq's (None if this host does
    not allow one: the plain bind still refuses a port another broker listens on; the
    lock adds the pid to the message and closes the window between two brokers
    starting at the same moment)."""
    name = port_lock_name(port)
    deadline = time.monotonic() + ORPHAN_WAIT
    while True:
        lock: socket.socket | None = None
        try:
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lock.bind(name)
            lock.listen(8)
            return lock
        except OSError as exc:
            if lock is not None:
                lock.close()
            if exc.errno != errno.EADDRINUSE:
                log.warning("no port lock for port %d (%s); relying on the bind", port, exc)
                return None
        holder = _lock_holder(name)
        alive = holder is None or _alive(holder)
        if alive or time.monotonic() > deadline:
            who = (
                "workers of a shardmq whose supervisor is gone"
                if holder is not None and not alive
                else "another running shardmq" + (f" (pid {holder})" if holder else "")
            )
            raise StartupError(ExitCode.PORT_IN_USE, f"port {port} is in use by {who}: {fix}")
        time.sleep(RETRY_INTERVAL)


def bind_error(host: str, port: int, exc: OSError, fix: str = FIX_PORT) -> StartupError:
    """``exc`` from binding ``host:port`` as the start-up error an operator reads."""
    where = f"{host or '*'}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            ExitCode.PORT_IN_USE,
            f"port {port} is in use: another program listens on {where}: {fix}",
        )
    if exc.errno == errno.EACCES:
        return StartupError(
            ExitCode.LISTEN_FAILED,
            f"cannot listen on {where}: permission denied (a port below 1024 needs "
            "CAP_NET_BIND_SERVICE): grant it, or use a port above 1023 with --port",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(
            ExitCode.LISTEN_FAILED,
            f"cannot listen on {where}: {host} is not an address of this host: "
            "fix --host (server.host), or use 0.0.0.0 for every address",
        )
    return StartupError(
        ExitCode.LISTEN_FAILED,
        f"cannot listen on {where}: {exc.strerror or exc}: fix --host/--port",
    )


def listen_address(host: str, port: int) -> tuple[socket.AddressFamily, int, tuple[object, ...]]:
    """(family, proto, sockaddr) to listen on for ``host:port`` (StartupError when the
    host does not resolve)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise StartupError(
            ExitCode.LISTEN_FAILED,
            f"cannot listen on {host}:{port}: host {host!r} does not resolve "
            f"({exc}): fix --host (server.host)",
        ) from None
    family, _type, proto, _canon, addr = infos[0]
    return family, proto, addr


def http_listener(host: str, port: int, setting: str, what: str) -> socket.socket:
    """A non-blocking listening socket on ``host:port`` for an HTTP endpoint of the
    admin process (SO_REUSEADDR); ``StartupError`` naming ``what`` (e.g. "management
    API") and its config ``setting`` (e.g. "management.port") when it cannot be had."""
    family, proto, addr = listen_address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        err = bind_error(host, port, exc)
        text = str(err).replace("--port (server.port)", setting)
        raise StartupError(err.code, f"{what}: {text}") from None
    return sock


class PortClaim:
    """``lock``: the abstract socket naming the port (None for port 0); ``sock``: a
    plain socket bound to host:port, not listening yet (SO_REUSEADDR, no SO_REUSEPORT),
    which the caller keeps as its listener (``take_socket``) or closes before it binds
    an SO_REUSEPORT group (``close_socket``)."""

    def __init__(self, host: str, port: int, lock: socket.socket | None, sock: socket.socket):
        self.host = host
        self.port = port
        self.lock = lock
        self.sock: socket.socket | None = sock

    def take_socket(self) -> socket.socket:
        sock, self.sock = self.sock, None
        assert sock is not None, "the bound socket was taken already"
        return sock

    def close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def release(self) -> None:
        self.close_socket()
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def claim_port(host: str, port: int, fix: str = FIX_PORT) -> PortClaim:
    family, proto, addr = listen_address(host, port)
    lock = _port_lock(port, fix) if port else None
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if lock is not None:
            lock.close()
        raise bind_error(host, port, exc, fix) from None
    return PortClaim(host, port, lock, sock)


# ---------------------------------------------------------------------- both
class BrokerClaim:
    """The data dir lock and the port claims of one broker, for its whole life
    (``port``: the plain AMQP port, None when that listener is off; ``tls``: the AMQPS
    port, None when TLS is off)."""

    def __init__(
        self, data_dir: DataDirLock, port: PortClaim | None, tls: PortClaim | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.tls = tls

    def inherit_fds(self) -> list[int]:
        """Descriptors every worker keeps open until it exits (the locks)."""
        fds = [self.data_dir.fd]
        for claim in (self.port, self.tls):
            if claim is not None and claim.lock is not None:
                fds.append(claim.lock.fileno())
        return [fd for fd in fds if fd >= 0]

    def release(self) -> None:
        for claim in (self.port, self.tls):
            if claim is not None:
                claim.release()
        self.data_dir.release()


def claim_broker(
    data_dir: str, host: str, port: int | None, tls_port: int | None = None
) -> BrokerClaim:
    """Lock ``data_dir``, then claim ``host:port`` (unless None: no plain listener) and
    ``host:tls_port`` (unless None: no TLS); ``StartupError`` if any fails."""
    lock = lock_data_dir(data_dir)
    plain: PortClaim | None = None
    try:
        plain = claim_port(host, port) if port is not None else None
        tls = claim_port(host, tls_port, FIX_TLS_PORT) if tls_port is not None else None
        return BrokerClaim(lock, plain, tls)
    except BaseException:
        if plain is not None:
            plain.release()
        lock.release()
        raise


def tls_server(config: Config) -> TLSServer | None:
    """The broker's ``TLSServer`` (None when TLS is off); ``StartupError`` with
    ``ExitCode.TLS_CONFIG_INVALID`` when its files cannot make a context."""
    if not config.tls.enabled:
        return None
    try:
        return TLSServer(config.tls, config.amqp.handshake_timeout)
    except TLSConfigError as exc:
        raise StartupError(ExitCode.TLS_CONFIG_INVALID, str(exc)) from None
