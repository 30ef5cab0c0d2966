"""The systemd unit of this installation, as ``shardmq systemd-unit`` prints it.

Owns: ``UnitSpec`` (what an installation chooses: the command, user, data dir, config
file, watchdog), ``default_exec`` (the command that runs this very installation),
``render`` (the unit's text) and ``warnings`` (what would keep the unit's user from
running it). ``systemd/shardmq.service`` is ``render`` of the defaults for a venv in
/opt/shardmq/venv (``reference_spec``), for reading; install what ``shardmq
systemd-unit`` prints.

Invariants:
- ``ExecStart`` is an absolute path that exists when generated with the default
  command (the ``shardmq`` script beside the running interpreter, else the interpreter
  itself with ``-m shardmq``), so ``systemd-analyze verify`` passes on the machine the
  unit was generated on; a shardmq found through ``PYTHONPATH`` keeps that path.
- Type=notify with ``WatchdogSec``: the process systemd starts (the supervisor, or the
  one process of ``--workers 1``) sends READY=1 once it serves, STATUS= with it,
  WATCHDOG=1 every half ``WatchdogSec`` and STOPPING=1 (``workers.sdnotify``);
  ``NotifyAccess=main``. ``KillMode=mixed``: SIGTERM goes to the supervisor, which
  drains its workers; SIGKILL to whatever is left after ``TimeoutStopSec``.
- The sandbox leaves exactly what the broker uses: AF_INET/AF_INET6 (clients), AF_UNIX
  (sd_notify, the supervisor<->worker channels and socket hand-off, ``ctl status``
  sockets), /dev/shm (kept by PrivateDevices; the rings, control block and semaphores
  of ``shardmq.ipc``), the data dir read-write, the ``@system-service`` system calls
  (with ``@resources``: CPU pinning, the fd limit), no capability at all (a port below
  1024 adds CAP_NET_BIND_SERVICE only). ``systemd-analyze security`` rates it 2.x.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_USER = "shardmq"
DEFAULT_DATA_DIR = "/var/lib/shardmq"
DEFAULT_WATCHDOG_SEC = 30
HOME_TREES = ("/home", "/root", "/run/user")


class UnitError(ValueError):
    """A choice that cannot make a working unit (message for the command line)."""


@dataclass
class UnitSpec:
    exec_argv: list[str]  # runs shardmq: [script] or [interpreter, "-m", "shardmq"]
    user: str = DEFAULT_USER
    group: str | None = None  # the user's name when None
    data_dir: str = DEFAULT_DATA_DIR
    config: str | None = None  # --config FILE for serve
    watchdog_sec: int = DEFAULT_WATCHDOG_SEC
    low_port: bool = False  # listens below 1024: CAP_NET_BIND_SERVICE
    pythonpath: list[str] = field(default_factory=list)  # where shardmq is found, if not installed
    interpreter: str = field(default_factory=lambda: str(Path(sys.executable).resolve()))


def _package_root() -> Path:
    """The directory holding the ``shardmq`` package in use."""
    import shardmq

    return Path(shardmq.__file__).resolve().parent.parent


def reference_spec() -> UnitSpec:
    """What ``systemd/shardmq.service`` is rendered from: the defaults, for a venv in
    /opt/shardmq/venv and a config file in /etc/shardmq."""
    venv = "/opt/shardmq/venv/bin"
    return UnitSpec(
        exec_argv=[f"{venv}/shardmq"],
        config="/etc/shardmq/shardmq.toml",
        interpreter=f"{venv}/python3",
    )


def default_exec() -> list[str]:
    """The command that runs this installation: the ``shardmq`` script installed beside
    the running interpreter (a venv's bin/), else ``<interpreter> -m shardmq``."""
    interpreter = Path(sys.executable)
    script = interpreter.parent / "shardmq"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(interpreter.resolve()), "-m", "shardmq"]


def default_pythonpath() -> list[str]:
    """``PYTHONPATH`` the service needs: the entry of this process's ``PYTHONPATH`` that
    provides the ``shardmq`` in use (none when it is installed)."""
    root = _package_root()
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and Path(entry).resolve() == root:
            return [str(root)]
    return []


def parse_exec(command: str) -> list[str]:
    """``--exec``: a command line whose program is made absolute (systemd needs it)."""
    argv = shlex.split(command)
    if not argv:
        raise UnitError("--exec is empty")
    found = shutil.which(argv[0])
    if found is None:
        raise UnitError(f"--exec: {argv[0]} is not an executable file (nor on PATH)")
    return [os.path.abspath(found), *argv[1:]]


def _no_restart() -> str:
    """Exit codes of failures a restart cannot cure (``workers.exitcodes``)."""
    from workers.exitcodes import ExitCode

    codes = (
        ExitCode.USAGE,
        ExitCode.LISTEN_FAILED,
        ExitCode.DATA_DIR_NOT_WRITABLE,
        ExitCode.DATA_DIR_NOT_A_DIRECTORY,
        ExitCode.DATA_DIR_UNUSABLE,
    )
    return " ".join(str(int(c)) for c in codes)


def _under(path: str, trees: tuple[str, ...]) -> bool:
    return any(path == t or path.startswith(t + "/") for t in trees)


def _quote(arg: str) -> str:
    """One ExecStart argument (systemd's quoting, and ``%`` specifiers escaped)."""
    arg = arg.replace("%", "%%")
    if arg and all(c.isalnum() or c in "/._-=:,+@" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(spec: UnitSpec) -> str:
    """The unit file's text for ``spec``."""
    if not os.path.isabs(spec.data_dir):
        raise UnitError(f"--data-dir must be an absolute path, not {spec.data_dir!r}")
    if spec.config is not None and not os.path.isabs(spec.config):
        raise UnitError(f"--config must be an absolute path, not {spec.config!r}")
    if not spec.exec_argv or not os.path.isabs(spec.exec_argv[0]):
        raise UnitError("the command must start with an absolute path")
    data_dir = os.path.normpath(spec.data_dir)
    argv = [*spec.exec_argv, "serve", "--data-dir", data_dir]
    if spec.config is not None:
        argv += ["--config", spec.config]
    group = spec.group or spec.user
    # the interpreter, its packages or the data may live in a home directory
    used = [spec.exec_argv[0], spec.interpreter, data_dir, *spec.pythonpath]
    if spec.config:
        used.append(spec.config)
    protect_home = "read-only" if any(_under(p, HOME_TREES) for p in used) else "yes"
    state = ""
    if os.path.dirname(data_dir) == "/var/lib":
        state = f"StateDirectory={os.path.basename(data_dir)}\nStateDirectoryMode=0700\n"
    env = ""
    if spec.pythonpath:
        env = f"Environment={_quote('PYTHONPATH=' + os.pathsep.join(spec.pythonpath))}\n"
    if spec.low_port:
        caps = (
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n"
        )
        users = ""  # a capability in a user namespace does not reach the host's ports
    else:
        caps = "CapabilityBoundingSet=\nAmbientCapabilities=\n"
        users = "PrivateUsers=yes\n"
    return f"""\
# shardmq AMQP 0-9-1 broker, generated by `shardmq systemd-unit` for
#   {shlex.join(spec.exec_argv)}
# Install: create the '{spec.user}' user (useradd --system {spec.user}), then
#   shardmq systemd-unit ... > /etc/systemd/system/shardmq.service
#   systemd-analyze verify /etc/systemd/system/shardmq.service
#   systemctl daemon-reload && systemctl enable --now shardmq
# Status: shardmq ctl status --data-dir {data_dir}
[Unit]
Description=shardmq AMQP 0-9-1 message broker
Documentation=https://pypi.org/project/shardmq/
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
User={spec.user}
Group={group}
ExecStart={" ".join(_quote(a) for a in argv)}
{env}# SIGTERM to the supervisor: every client gets connection.close 320 CONNECTION_FORCED,
# the workers drain, then exit 0; SIGKILL to what is left after TimeoutStopSec
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=2
# not retried: a bad command line (2), an address it cannot listen on (11), a data dir
# it cannot write (13), that is a file (14) or unusable (15); a port or data dir in use
# (10, 12) may be freed, so those are retried
RestartPreventExitStatus={_no_restart()}
WatchdogSec={spec.watchdog_sec}
LimitNOFILE=1048576
{state}UMask=0027

# Sandbox (systemd-analyze security shardmq.service): what the broker needs and no more
{caps}NoNewPrivileges=yes
{users}ProtectSystem=strict
ReadWritePaths={_quote(data_dir)}
ProtectHome={protect_home}
PrivateTmp=yes
# a private /dev keeps /dev/shm: the workers' rings, control block and semaphores
PrivateDevices=yes
DevicePolicy=closed
RemoveIPC=yes
PrivateMounts=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelLogs=yes
ProtectKernelModules=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def _closed_dir(path: str) -> str | None:
    """The first directory above ``path`` that others cannot enter (mode without o+x)."""
    p = Path(path)
    for parent in reversed(p.parents):
        try:
            mode = parent.stat().st_mode
        except OSError:
            return None
        if not mode & stat.S_IXOTH:
            return str(parent)
    return None


def warnings(spec: UnitSpec) -> list[str]:
    """What would keep ``spec.user`` from running the unit on this machine."""
    out: list[str] = []
    if spec.user == "root":
        out.append("User=root: the broker needs no privilege; use a system user")
    data_dir = os.path.normpath(spec.data_dir)
    if os.path.dirname(data_dir) != "/var/lib" and not os.path.isdir(data_dir):
        out.append(
            f"{data_dir} does not exist: create it, owned by {spec.user}, before starting "
            "(the unit makes only /var/lib/<name> itself, as its StateDirectory)"
        )
    for path in [spec.exec_argv[0], spec.interpreter, *spec.pythonpath]:
        closed = _closed_dir(path)
        if closed is not None and spec.user != "root":
            out.append(
                f"{path} is under {closed}, which user {spec.user} cannot enter: install "
                "shardmq where it can (e.g. python3 -m venv /opt/shardmq/venv)"
            )
            break
    return out
