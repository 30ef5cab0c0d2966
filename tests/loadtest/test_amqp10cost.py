"""``loadtest.amqp10cost``: the in-process AMQP 1.0 delivery path delivers every queued
message to the generator's consumer and, unsettled, has every one acknowledged (the
queue ends empty with nothing unacked), in both settlement modes."""

from __future__ import annotations

import pytest

from loadtest.amqp10cost import run


@pytest.mark.parametrize("settled", [True, False])
def test_every_message_delivered_and_settled(settled: bool) -> None:
    got = run(3000, settled, credit=100, ack_every=25, size=16)
    assert got["messages"] == 3000
    assert got["left_in_queue"] == 0
    assert got["unacked"] == 0
    assert got["broker_us"] > 0 and got["consumer_us"] > 0
