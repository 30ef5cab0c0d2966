"""``shardmq systemd-unit``: the unit it prints verifies (``systemd-analyze verify``) on
this machine, is rated 3.0 or better by ``systemd-analyze security``, keeps Type=notify
with the watchdog, and the sandbox leaves what the broker uses (``test_sandbox.py`` runs
the broker under that sandbox as far as this machine allows)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shardmq.systemd_unit import (
    UnitError,
    UnitSpec,
    default_exec,
    default_pythonpath,
    reference_spec,
    render,
    warnings,
)
from tests.support.launch import REPO_ROOT

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
MAX_EXPOSURE = 3.0


def generate(tmp_path: Path, *args: str, name: str = "shardmq.service") -> Path:
    out = tmp_path / name
    res = subprocess.run(
        [sys.executable, "-m", "shardmq", "systemd-unit", "-o", str(out), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return out


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def exposure(unit: Path) -> float:
    assert ANALYZE is not None
    res = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert found, f"no exposure in the output of systemd-analyze security:\n{res.stdout}"
    return float(found.group(1))


@needs_analyze
@pytest.mark.parametrize(
    "args",
    [
        [],  # the shardmq script beside this interpreter, or this interpreter -m shardmq
        ["--exec", f"{sys.executable} -m shardmq", "--data-dir", "/srv/mq data"],
        ["--user", "amqp", "--config", "/etc/shardmq/shardmq.toml", "--low-port"],
    ],
    ids=["default", "interpreter", "low-port"],
)
def test_generated_unit_verifies_and_is_rated_3_or_better(tmp_path: Path, args: list[str]) -> None:
    unit = generate(tmp_path, *args)
    res = verify(unit)
    assert res.returncode == 0, res.stderr
    assert unit.name not in res.stderr, res.stderr  # no warning about the unit
    assert exposure(unit) <= MAX_EXPOSURE


@needs_analyze
def test_the_unit_of_a_missing_command_does_not_verify(tmp_path: Path) -> None:
    """What the shipped reference unit shows on a machine without /opt/shardmq/venv:
    the reason to generate the unit for the installation."""
    unit = tmp_path / "shardmq.service"
    unit.write_text(render(reference_spec()))
    res = verify(unit)
    assert res.returncode != 0 and "/opt/shardmq/venv/bin/shardmq" in res.stderr
    assert exposure(unit) <= MAX_EXPOSURE


def test_the_shipped_unit_is_the_reference_rendering() -> None:
    shipped = (REPO_ROOT / "systemd" / "shardmq.service").read_text()
    assert shipped == render(reference_spec()), "regenerate systemd/shardmq.service"


def test_notify_watchdog_and_sandbox_directives(tmp_path: Path) -> None:
    d = directives(generate(tmp_path, "--data-dir", "/var/lib/shardmq", "--watchdog-sec", "20"))
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["20"]
    assert d["KillMode"] == ["mixed"]  # SIGTERM to the supervisor, which drains its workers
    # start-up errors a restart cannot cure are not retried; a port in use may be freed
    assert d["Restart"] == ["on-failure"]
    assert d["RestartPreventExitStatus"] == ["2 11 13 14 15"]
    exec_start = d["ExecStart"][0].split()
    assert exec_start[0] == default_exec()[0] and Path(exec_start[0]).is_file()
    assert exec_start[-3:] == ["serve", "--data-dir", "/var/lib/shardmq"]
    assert d["StateDirectory"] == ["shardmq"]
    assert d["ReadWritePaths"] == ["/var/lib/shardmq"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert d["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert d["PrivateDevices"] == ["yes"]  # keeps /dev/shm: the rings and semaphores
    assert "InaccessiblePaths" not in d and "/dev/shm" not in str(d.get("TemporaryFileSystem"))
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateUsers",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "RemoveIPC",
    ):
        assert d[key] == ["yes"], key


def test_low_port_keeps_only_net_bind_service(tmp_path: Path) -> None:
    d = directives(generate(tmp_path, "--low-port"))
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert d["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert "PrivateUsers" not in d  # a capability in a user namespace cannot bind < 1024


def test_home_directories_stay_readable_when_shardmq_lives_there() -> None:
    spec = UnitSpec(exec_argv=["/opt/v/bin/shardmq"], interpreter="/opt/v/bin/python3")
    assert "ProtectHome=yes" in render(spec)
    spec.interpreter = "/root/.pyenv/versions/3.11.7/bin/python3.11"
    assert "ProtectHome=read-only" in render(spec)
    spec.interpreter, spec.data_dir = "/opt/v/bin/python3", "/home/mq/data"
    unit = render(spec)
    assert "ProtectHome=read-only" in unit and "ReadWritePaths=/home/mq/data" in unit
    assert "StateDirectory" not in unit


def test_a_shardmq_found_through_pythonpath_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import shardmq

    root = str(Path(shardmq.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", f"/nonexistent:{root}")
    assert default_pythonpath() == [root]
    spec = UnitSpec(exec_argv=["/opt/v/bin/shardmq"], pythonpath=[root])
    assert f"Environment=PYTHONPATH={root}\n" in render(spec)
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    assert default_pythonpath() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-dir", "relative/dir"], "--data-dir must be an absolute path"),
        (["--config", "shardmq.toml"], "--config must be an absolute path"),
        (["--exec", "/nonexistent/shardmq"], "is not an executable file"),
    ],
)
def test_bad_choices_are_one_line_errors(args: list[str], message: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "shardmq", "systemd-unit", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert res.stdout == ""


def test_render_refuses_a_relative_command() -> None:
    with pytest.raises(UnitError):
        render(UnitSpec(exec_argv=["shardmq"]))


def test_warns_of_what_would_stop_the_unit_on_this_machine(tmp_path: Path) -> None:
    spec = UnitSpec(
        exec_argv=["/opt/v/bin/shardmq"],
        interpreter="/opt/v/bin/python3",
        data_dir=str(tmp_path / "missing"),
    )
    assert any("does not exist: create it" in w for w in warnings(spec))
    spec.data_dir = str(tmp_path)
    assert not any("does not exist" in w for w in warnings(spec))
    closed = Path(tempfile.mkdtemp(prefix="shardmq-unit-"))  # mode 0700, in /tmp
    try:
        spec.interpreter = str(closed / "bin" / "python3")
        found = [w for w in warnings(spec) if "cannot enter" in w]
        assert found and f"under {closed}, which user shardmq cannot enter" in found[0]
    finally:
        closed.rmdir()
