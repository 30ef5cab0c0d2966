"""Fixtures for the ipc unit tier: unique shared-memory names that are always unlinked."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest

from shardmq.ipc.ring import Ring, unlink_quietly


@pytest.fixture
def shm_name() -> Iterator[Callable[[], str]]:
    """Factory of fresh POSIX shm names (``/shardmq-test.<random>.<k>``), unlinked at teardown."""
    made: list[str] = []
    tag = f"{os.getpid()}.{secrets.token_hex(3)}"

    def make() -> str:
        name = f"/shardmq-test.{tag}.{len(made)}"
        made.append(name)
        return name

    yield make
    for name in made:
        unlink_quietly(name)


@pytest.fixture
def ring_factory(shm_name: Callable[[], str]) -> Iterator[Callable[[int], Ring]]:
    rings: list[Ring] = []

    def make(capacity: int) -> Ring:
        r = Ring.create(shm_name(), capacity)
        rings.append(r)
        return r

    yield make
    for r in rings:
        r.close()
        r.unlink()
