"""A real disk-full: a 256 KiB tmpfs in a private mount namespace (``unshare -rm``)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_real_enospc_nacks_alarms_recovers(tmp_path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) not installed: cannot mount a private tmpfs")
    mnt = str(tmp_path / "tiny")
    os.mkdir(mnt)
    script = (
        f"mount -t tmpfs -o size=256k tmpfs {mnt} || exit 77; "
        f"exec {sys.executable} -m tests.store.tinyfs_child {mnt}"
    )
    out = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, timeout=60
    )
    if out.returncode == 77 or b"Operation not permitted" in out.stderr:
        pytest.skip("no permission for a private tmpfs mount here")
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    r = json.loads(out.stdout)
    # the disk filled up: some publishes were nacked with ENOSPC, none silently dropped
    assert r["failed"], r
    assert {e for _, e in r["failed"]} == {errno.ENOSPC}
    failed_ids = [t for t, _ in r["failed"]]
    assert r["durable"] + len(failed_ids) == r["pushed"]
    assert r["alarm_when_full"] and r["alarms"][0] is True
    # everything is still delivered in order (the nacked ones from memory)
    assert r["drained"] == list(range(1, r["pushed"] + 1))
    # consuming freed the segments: the alarm cleared, new publishes are durable
    assert not r["alarm_after_drain"] and r["alarms"] == [True, False]
    assert r["later_durable"] == list(range(r["pushed"] + 1, r["last"] + 1))
    # after a restart: only what was stored and not acked
    assert r["back"] == r["later_durable"]
