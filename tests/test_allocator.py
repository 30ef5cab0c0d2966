"""``shardmq.allocator``: when ``serve`` starts itself again under another allocator.

The re-exec itself (same pid, every process under the chosen allocator, an environment
that wins) is tested on a real broker in ``tests/process/test_allocator.py``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shardmq import allocator


def test_current_is_what_the_interpreter_was_started_with() -> None:
    for name in allocator.ALLOCATORS:
        env = dict(os.environ, PYTHONMALLOC=name)
        out = subprocess.run(
            [sys.executable, "-c", "from shardmq import allocator; print(allocator.current())"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert out == name


@pytest.mark.parametrize("choice", allocator.ALLOCATORS)
def test_reexec_only_when_the_choice_is_not_in_effect(choice: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV}
    assert allocator.reexec_needed(choice, env) == (allocator.current() != choice)


@pytest.mark.parametrize("choice", allocator.ALLOCATORS)
def test_an_allocator_in_the_environment_wins_and_stops_a_second_reexec(choice: str) -> None:
    env = dict(os.environ, PYTHONMALLOC="pymalloc_debug")
    assert not allocator.reexec_needed(choice, env)


def test_an_empty_pythonmalloc_is_unset() -> None:
    env = dict(os.environ, PYTHONMALLOC="")
    other = "pymalloc" if allocator.current() == "malloc" else "malloc"
    assert allocator.reexec_needed(other, env)


def test_a_failed_reexec_runs_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(allocator, "reexec_needed", lambda choice: True)
    monkeypatch.setattr(allocator.os, "execve", refuse)
    allocator.ensure("malloc")  # returns: the broker starts as it was started
    assert "cannot start again with PYTHONMALLOC=malloc" in capsys.readouterr().err
