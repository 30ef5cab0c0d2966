"""``workers.mgmt_stats.StatsHistory`` without a broker: worker counters summed, kept
across a worker's respawn (its counters start again from 0), per-queue counts as
reported, rates from two samples an interval apart; and the worker side's counters
(``shardmq.broker.stats``) as a real report carries them."""

from __future__ import annotations

from shardmq.broker.stats import FIELDS, MessageStats, queue_counters
from workers.live_stats import WorkerStats
from workers.mgmt_stats import StatsHistory
from workers.status import QueueStatus, WorkerReport


def _report(slot: int, pid: int, published: int, qpub: int = 0) -> WorkerReport:
    counters = dict.fromkeys(FIELDS, 0)
    counters["published"] = published
    counters["queues_created"] = 1
    q = QueueStatus(
        vhost="/",
        name=f"q{slot}",
        durable=False,
        exclusive=False,
        auto_delete=False,
        messages=0,
        messages_ready=0,
        messages_unacknowledged=0,
        consumers=0,
        message_stats={"publish": qpub},
    )
    stats = WorkerStats(
        counters=counters,
        channels=1,
        consumers=0,
        unconfirmed=0,
        queues_owned=1,
        loop_lag=0.0,
        loop_lag_max=0.0,
        cpu_seconds=0.0,
        rss_bytes=0,
        open_fds=0,
        max_fds=0,
        cross_records=0,
        ring_fill=0.0,
    )
    return WorkerReport(slot=slot, pid=pid, written_at=0.0, connections=1, queues=[q], stats=stats)


def test_totals_survive_a_respawn_and_rates_come_from_samples() -> None:
    h = StatsHistory("/nonexistent", interval=5.0)
    h.observe([_report(0, 100, 10, 4), _report(1, 200, 5)], now=1000.0)
    assert h.totals["published"] == 15
    assert h.overview_message_stats()["publish"] == 15
    assert h.overview_message_stats()["publish_details"] == {"rate": 0.0}  # one sample
    # worker 1 respawned (new pid, counting from 0 again): nothing it counted is lost
    h.observe([_report(0, 100, 30, 14), _report(1, 201, 2)], now=1002.0)
    assert h.totals["published"] == 15 + 20 + 2
    assert h.queue_message_stats("/", "q0")["publish"] == 14
    assert h.rates == {}  # 2 s after the first sample: not a new one yet
    h.observe([_report(0, 100, 60, 24), _report(1, 201, 12)], now=1005.0)
    # 5 s after the first sample: 62 published since (30 + 2 + 30 ... ) over 5 s
    assert h.totals["published"] == 77
    assert h.rates["published"] == (77 - 15) / 5.0
    assert h.overview_message_stats()["publish_details"] == {"rate": round(62 / 5, 1)}
    assert h.queue_message_stats("/", "q0")["publish_details"] == {"rate": 4.0}
    assert h.queue_message_stats("/", "nope") == {}
    churn = h.churn_rates()
    assert churn["queue_created"] == 3 and churn["queue_deleted"] == 1  # 3 made, 2 left


class _Q:
    st_publish = 9
    st_deliver_manual = 4
    st_deliver_auto = 3
    st_get = 4
    st_get_auto = 1
    st_ack = 5
    st_redeliver = 2


def test_queue_counters_shape() -> None:
    assert queue_counters(_Q()) == {
        "publish": 9,
        "deliver": 4,
        "deliver_no_ack": 3,
        "get": 3,
        "get_no_ack": 1,
        "deliver_get": 11,
        "ack": 5,
        "redeliver": 2,
    }
    s = MessageStats()
    s.published += 3
    s.unroutable_dropped += 1
    s.fold(_Q())  # a deleted queue's counts stay
    snap = s.snapshot([_Q()])
    assert set(snap) == set(FIELDS)
    assert (snap["published"], snap["routed"]) == (3, 2)
    assert (snap["deliver_auto"], snap["deliver_manual"]) == (6, 8)
    assert (snap["get_auto"], snap["get_manual"], snap["redelivered"]) == (2, 6, 4)
