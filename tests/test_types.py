"""The type checker is part of the test suite: mypy over shardmq/ and workers/ (its
settings are pyproject.toml's [tool.mypy]) reports no error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_mypy_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=590
    )
    assert result.returncode == 0, result.stdout + result.stderr
