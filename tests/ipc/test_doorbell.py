"""Doorbell semantics in one process."""

from __future__ import annotations

import os
import select

import pytest

from shardmq.ipc.doorbell import Doorbell


def readable(bell: Doorbell) -> bool:
    return bool(select.select([bell.fileno()], [], [], 0)[0])


@pytest.mark.parametrize("eventfd", [True, False], ids=["eventfd", "pipe"])
def test_ring_clear_and_spec(eventfd: bool) -> None:
    bell = Doorbell.create(prefer_eventfd=eventfd)
    try:
        assert not readable(bell)
        assert not bell.clear()
        bell.ring()
        bell.ring()
        assert readable(bell)
        assert bell.clear()
        assert not readable(bell)
        assert not bell.clear()
        same = Doorbell.from_spec(bell.spec())
        assert (same.rfd, same.wfd, same.kind) == (bell.rfd, bell.wfd, bell.kind)
        assert set(bell.fds) == {bell.rfd, bell.wfd}
        assert not os.get_inheritable(bell.rfd)  # only pass_fds hands it on
    finally:
        bell.close()


def test_pipe_bell_never_blocks_when_full() -> None:
    bell = Doorbell.create(prefer_eventfd=False)
    try:
        for _ in range(200_000):  # far more than a pipe buffer holds
            bell.ring()
        assert bell.clear()
        assert not readable(bell)
    finally:
        bell.close()


def test_bad_spec() -> None:
    with pytest.raises(ValueError):
        Doorbell.from_spec("x12")
