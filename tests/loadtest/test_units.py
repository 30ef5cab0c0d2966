"""Broker-free tests of the generator's parts: histogram, publish template, receive loop,
topology plan, suite file, /proc lookup, and the local sink end to end."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from pathlib import Path

import pytest

from loadtest import procstat
from loadtest.bench import BenchConfig, plan_topology, run_bench
from loadtest.client import Client, PublishTemplate
from loadtest.queuefeatures import dead_queue, queue_arguments
from loadtest.scenarios import DEFAULT_SUITE, METRICS, load_suite, scenario_config
from loadtest.stats import Histogram, bucket
from shardmq.amqp import methods as M
from shardmq.broker.metadata import shard_for
from tests.support import rawamqp as raw

_HDR = struct.Struct(">BHI")


# ------------------------------------------------------------------------ histogram
def test_histogram_percentiles_close_to_exact_and_ordered() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(12, 1.5)) for _ in range(20000)]
    h = Histogram()
    for v in values:
        h.record(v)
    s = sorted(values)
    p50, p95, p99, mx = h.percentiles((50, 95, 99, 100))
    assert p50 <= p95 <= p99 <= mx == max(values)
    for got, p in ((p50, 50), (p95, 95), (p99, 99)):
        exact = s[max(0, -(-len(s) * p // 100) - 1)]
        assert bucket(exact) == got or abs(got - exact) <= exact / 128


def test_histogram_runs_merge_and_roundtrip() -> None:
    from array import array

    a = Histogram()
    a.record_runs(array("q", [100, 5000, 5000, -3]), array("q", [2, 1, 3, 1]))
    assert a.total == 7 and a.max == 5000 and a.min == 0
    b = Histogram.from_dict(a.to_dict())
    b.merge(a)
    assert b.total == 14
    assert b.percentiles((0.1,)) == [0]
    assert Histogram().percentiles((50, 100)) == [0, 0]
    assert bucket(255) == 255 and bucket(1000) <= 1000 < bucket(1000) + 4


# ---------------------------------------------------------------- publish template
def _walk(data: bytes) -> list[tuple[int, bytes]]:
    frames, off = [], 0
    while off < len(data):
        t, _ch, size = _HDR.unpack_from(data, off)
        assert data[off + 7 + size] == 0xCE
        frames.append((t, data[off + 7 : off + 7 + size]))
        off += 8 + size
    return frames


@pytest.mark.parametrize("size,frame_max", [(16, 131072), (70000, 4096)])
def test_publish_template_batch_is_valid_frames(size: int, frame_max: int) -> None:
    keys = ["a", "bb", "ccc"]
    props = M.BasicProperties(delivery_mode=2).encode()
    t = PublishTemplate(1, "ex", keys, size, props, frame_max, 8)
    ts = struct.pack(">Q", 123456789)
    data = t.batch(2, 5, ts)
    assert len(data) == sum(len(t.pre[k]) + 8 + len(t.post[k]) for k in (2, 0, 1, 2, 0))
    frames = _walk(data)
    msgs: list[tuple[str, int, bytes]] = []
    i = 0
    while i < len(frames):
        ftype, payload = frames[i]
        assert ftype == 1
        pub = M.decode_method(payload)
        assert isinstance(pub, M.BasicPublish) and pub.exchange == "ex"
        ftype, hdr = frames[i + 1]
        assert ftype == 2
        body_size = struct.unpack_from(">Q", hdr, 4)[0]
        assert M.BasicProperties.decode(hdr, 12).delivery_mode == 2
        body = b""
        i += 2
        while len(body) < body_size:
            ftype, part = frames[i]
            assert ftype == 3 and len(part) <= frame_max - 8
            body += part
            i += 1
        msgs.append((pub.routing_key, body_size, body[:8]))
    assert [m[0] for m in msgs] == ["ccc", "a", "bb", "ccc", "a"]
    assert all(m[1] == size and m[2] == ts for m in msgs)
    assert t.batch(1, 1, ts) == t.pre[1] + ts + t.post[1]


def test_publish_template_rejects_tiny_bodies() -> None:
    with pytest.raises(ValueError):
        PublishTemplate(1, "", ["q"], 4, b"\x00\x00", 131072, 1)


# -------------------------------------------------------------------- receive loop
class _FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False


def _deliveries(n: int, first_tag: int, ts: int, size: int = 20) -> bytes:
    out = b""
    for i in range(n):
        d = M.BasicDeliver(
            consumer_tag="ct", delivery_tag=first_tag + i, exchange="x", routing_key="k"
        )
        p = d.encode()
        out += raw.frame(1, 1, p)
        h = struct.pack(">HHQ", 60, 0, size) + b"\x00\x00"
        out += raw.frame(2, 1, h)
        body = struct.pack(">Q", ts) + bytes(size - 8)
        out += raw.frame(3, 1, body)
    return out


def _feed(c: Client, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        chunk = data[i : i + step]
        buf = c.get_buffer(-1)
        buf[: len(chunk)] = chunk
        c.buffer_updated(len(chunk))


def test_receive_loop_counts_acks_and_latency_across_split_reads() -> None:
    async def go() -> Client:
        c = Client()
        c.transport = _FakeTransport()
        c.ack_every = 4
        c.record = True
        data = _deliveries(10, 1, 1000) + _deliveries(3, 11, 2000)
        _feed(c, data, 7)  # frames split at every odd boundary
        return c

    c = asyncio.run(go())
    assert c.consumed == 13 and c.consumed_bytes == 13 * 20 and c.last_tag == 13
    # acks went out as basic.ack(multiple) frames with increasing tags
    acks = [M.decode_method(p) for t, p in _walk(bytes(c.transport.out)) if t == 1]
    assert acks and all(isinstance(a, M.BasicAck) and a.multiple for a in acks)
    tags = [a.delivery_tag for a in acks]
    assert tags == sorted(tags) and tags[-1] == c.acked_tag
    assert sum(c.lat_n) == 13 and all(v > 0 for v in c.lat_v)


def test_rejecting_consumer_sends_nack_multiple_without_requeue() -> None:
    async def go() -> Client:
        c = Client()
        c.transport = _FakeTransport()
        c.ack_every = 4
        c.reject = True
        _feed(c, _deliveries(6, 1, 1000), 64)
        c.ack_pending()  # the last two, as the rejecter's periodic flush does
        return c

    c = asyncio.run(go())
    nacks = [M.decode_method(p) for t, p in _walk(bytes(c.transport.out)) if t == 1]
    assert [type(n) for n in nacks] == [M.BasicNack, M.BasicNack]
    assert all(n.multiple and not n.requeue for n in nacks)
    assert [n.delivery_tag for n in nacks] == [4, 6]


def test_auto_ack_consumer_never_sends_acks() -> None:
    async def go() -> Client:
        c = Client()
        c.transport = _FakeTransport()
        _feed(c, _deliveries(5, 1, 1000), 64)
        c.ack_pending()  # what a worker calls at stop
        return c

    c = asyncio.run(go())
    assert c.consumed == 5 and c.last_tag == 5
    assert c.transport.out == b""  # acking a no-ack delivery is a 406 from the broker


def test_receive_loop_confirms_and_unsolicited_methods() -> None:
    async def go() -> tuple[Client, list]:
        c = Client()
        c.transport = _FakeTransport()
        seen: list = []
        c.on_confirm = lambda tag, multiple, ack: seen.append((tag, multiple, ack))
        data = b""
        for m in (
            M.BasicAck(delivery_tag=5, multiple=True),
            M.BasicNack(delivery_tag=6, multiple=False),
            M.ConnectionBlocked(reason="low memory"),
        ):
            p = m.encode()
            data += raw.frame(1, 1, p)
        _feed(c, data, 1000)
        return c, seen

    c, seen = asyncio.run(go())
    assert seen == [(5, True, True), (6, False, False)]
    assert c.errors == 1  # the nack
    assert not c.writable  # connection.blocked pauses publishing


# ------------------------------------------------------------------------ topology
def test_topology_shares_queues_and_keys() -> None:
    cfg = BenchConfig(producers=3, consumers=2, queues=5, exchange_type="topic", bindings=2)
    t = plan_topology(cfg.normalized(), "abc")
    assert len(t.queues) == 5 and len(t.bindings) == 10
    assert sorted(q for qs in t.consumer_queues for q in qs) == sorted(t.queues)
    assert all(k.endswith(".x") for keys in t.producer_keys for k in keys)
    assert len({k for keys in t.producer_keys for k in keys}) == 10
    f = plan_topology(BenchConfig(fanout=4, consumers=4).normalized(), "abc")
    assert f.fanout_factor == 4 and f.producer_keys == [[""]]
    assert [len(q) for q in f.consumer_queues] == [1, 1, 1, 1]
    d = plan_topology(BenchConfig(exchange_type="default", consumers=3).normalized(), "abc")
    assert d.exchange == "" and d.bindings == [] and d.producer_keys == [[d.queues[0]]]


def test_dead_letter_topology_and_queue_arguments() -> None:
    cfg = BenchConfig(consumers=2, queues=2, dead_letter=True, message_ttl=500).normalized()
    t = plan_topology(cfg, "abc")
    assert t.dead_queues == [dead_queue(q) for q in t.queues]
    assert t.rejecter_queues == [[q] for q in t.queues]  # rejecters take the sources
    assert t.consumer_queues == [[dead_queue(q)] for q in t.queues]  # consumers the dead
    assert queue_arguments(cfg.message_ttl, True, "q") == {
        "x-message-ttl": 500,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q-dead",
    }
    assert queue_arguments(-1, False, "q") is None
    assert plan_topology(BenchConfig(expire_burst=10).normalized(), "abc").burst_queue
    with pytest.raises(ValueError):
        BenchConfig(dead_letter=True, consumers=0).normalized()


def test_queue_worker_picks_names_that_worker_owns() -> None:
    for slot in range(3):
        cfg = BenchConfig(queues=4, queue_worker=f"{slot}/3").normalized()
        t = plan_topology(cfg, "abc")
        assert len(set(t.queues)) == 4
        assert [shard_for("/", q, 3) for q in t.queues] == [slot] * 4
        assert all(b[0] in t.queues for b in t.bindings)
    for bad in ("1", "3/3", "a/b", "-1/2"):
        with pytest.raises(ValueError):
            BenchConfig(queue_worker=bad).normalized()


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        BenchConfig(size=4).normalized()
    with pytest.raises(ValueError):
        BenchConfig(exchange_type="headers").normalized()
    c = BenchConfig(persistent=True, prefetch=100).normalized()
    assert c.durable and c.multi_ack_every == 25
    assert BenchConfig(auto_ack=True).normalized().multi_ack_every == 0


# ------------------------------------------------------------------------ the suite
def test_suite_file_loads_and_every_scenario_is_valid() -> None:
    suite = load_suite(DEFAULT_SUITE)
    names = [s.name for s in suite.scenarios]
    assert len(names) >= 14
    for sc in suite.scenarios:
        cfg = scenario_config(suite, sc, {"duration": 1.0}, "amqp://127.0.0.1:1/")
        cfg.normalized()
        assert cfg.duration == 1.0  # the command line wins
        assert all(m in METRICS for m in sc.metrics)


def test_suite_rejects_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "s.toml"
    bad.write_text('[[scenario]]\nname = "x"\nproducerz = 2\n')
    with pytest.raises(ValueError, match="producerz"):
        load_suite(bad)


# --------------------------------------------------------------------------- /proc
def test_procstat_finds_the_listening_process() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        pids = procstat.find_broker_pids(port)
        assert os.getpid() in pids
        a = procstat.sample(pids)
        assert a.rss > 0 and a.alive >= 1
    finally:
        s.close()
    assert procstat.pids_listening_on(port) == []


# ---------------------------------------------------------------------------- sink
def test_sink_mode_runs_producer_and_consumer() -> None:
    r = run_bench(
        BenchConfig(
            sink=True, duration=0.5, warmup=0.2, prefetch=50, multi_ack_every=10, quiet=True
        )
    )
    assert r["errors"] == 0, r["error_samples"]
    assert r["published"] > 0 and r["consumed"] > 0
    assert r["broker"] and r["broker"]["pids"]  # the sink process itself


def test_amqps_uri_and_tls_options() -> None:
    from loadtest.client import URI

    u = URI.parse("amqps://u:p@localhost/v?cacertfile=/ca.pem&verify=verify_none")
    assert (u.tls, u.port, u.cacertfile, u.verify, u.vhost) == (True, 5671, "/ca.pem", False, "v")
    ctx = URI.parse("amqps://localhost/?verify=verify_none").ssl_context()
    assert ctx is not None and not ctx.check_hostname
    assert URI.parse("amqp://127.0.0.1/").ssl_context() is None
    cfg = BenchConfig(uri="amqps://localhost:5671/", tls_ca="/tmp/ca.pem").normalized()
    assert URI.parse(cfg.uri).cacertfile == "/tmp/ca.pem"
    assert (
        URI.parse(BenchConfig(uri="amqps://h/", tls_insecure=True).normalized().uri).verify is False
    )
    with pytest.raises(ValueError):
        BenchConfig(uri="amqp://h/", tls_ca="/ca.pem").normalized()
