"""``python -m loadtest.amqp10pubcost``: every message it feeds is published (it checks
that itself), over AMQP 1.0 settled and unsettled and over 0-9-1, and it reports a time."""

from __future__ import annotations

from loadtest.amqp10pubcost import amqp091, amqp10


def test_each_flow_publishes_everything_and_is_timed() -> None:
    for run in (lambda: amqp10(True, 3000), lambda: amqp10(False, 3000), lambda: amqp091(3000)):
        assert run() > 0
