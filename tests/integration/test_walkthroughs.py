"""End-to-end walkthroughs the way users write them: the RabbitMQ tutorials (fanout logs,
topic routing with a shared work queue, RPC with reply_to/correlation_id) with pika
(BlockingConnection and SelectConnection) and aio-pika, kombu producer/consumer, and
message properties passed through byte-for-byte.

Invariants: every client runs in this process; an RPC server thread owns its own
connection (pika connections are not shared across threads); all waits are bounded.
"""

from __future__ import annotations

import asyncio
import datetime
import struct
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import aio_pika
import kombu
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.select_connection import SelectConnection

from tests.support import rawamqp as raw

from .helpers import WAIT, Env, publish_confirmed

pytestmark = pytest.mark.timeout(30)


def pump_all(
    conns: list[pika.BlockingConnection], predicate: Callable[[], bool], what: str
) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        for c in conns:
            c.process_data_events(time_limit=0.01)


# --------------------------------------------------------------------------- tutorial 3


def test_fanout_logs_walkthrough(env: Env) -> None:
    """emit_log.py / receive_logs.py: every receiver gets every log line."""
    logs = env.exchange("logs")
    receivers = []
    for _ in range(2):
        conn = env.conn()
        ch = conn.channel()
        ch.exchange_declare(exchange=logs, exchange_type="fanout")
        result = ch.queue_declare(queue="", exclusive=True)
        queue_name = result.method.queue
        ch.queue_bind(exchange=logs, queue=queue_name)
        got: list[bytes] = []
        ch.basic_consume(
            queue=queue_name,
            on_message_callback=lambda c, m, p, b, g=got: g.append(b),
            auto_ack=True,
        )
        receivers.append((conn, got))

    emitter = env.conn()
    ech = emitter.channel()
    ech.exchange_declare(exchange=logs, exchange_type="fanout")
    lines = [f"info: Hello World! {i}".encode() for i in range(5)]
    for line in lines:
        ech.basic_publish(exchange=logs, routing_key="", body=line)
    emitter.close()

    conns = [c for c, _g in receivers]
    pump_all(conns, lambda: all(len(g) == len(lines) for _c, g in receivers), "every log line")
    for _c, got in receivers:
        assert got == lines


# --------------------------------------------------------------------------- tutorial 5


def test_topic_ohio_with_shared_queue_round_robin(env: Env) -> None:
    x = env.exchange("weather")
    setup = env.conn()
    sch = setup.channel()
    sch.exchange_declare(x, "topic")
    shared, single = env.queue("any-ohio"), env.queue("one-word-ohio")
    sch.queue_declare(shared)
    sch.queue_declare(single)
    sch.queue_bind(shared, x, "#.ohio")
    sch.queue_bind(single, x, "*.ohio")

    workers = []
    for _ in range(3):  # three consumers, three connections, one queue
        conn = env.conn()
        got: list[bytes] = []
        conn.channel().basic_consume(shared, lambda c, m, p, b, g=got: g.append(b), auto_ack=True)
        workers.append((conn, got))
    single_conn = env.conn()
    single_got: list[bytes] = []
    single_conn.channel().basic_consume(
        single, lambda c, m, p, b: single_got.append(b), auto_ack=True
    )

    keys = ["ohio", "us.ohio", "us.east.ohio", "ohio.news", "us.texas", "weather.us.ohio"] * 3
    pub = setup.channel()
    pub.confirm_delivery()
    for i, key in enumerate(keys):
        pub.basic_publish(x, key, f"{i}:{key}".encode())

    matching = [f"{i}:{k}".encode() for i, k in enumerate(keys) if k.endswith("ohio")]
    one_word = [f"{i}:{k}".encode() for i, k in enumerate(keys) if k == "us.ohio"]
    conns = [c for c, _g in workers] + [single_conn]
    pump_all(
        conns,
        lambda: sum(len(g) for _c, g in workers) == len(matching) and len(single_got) == 3,
        "ohio deliveries",
    )
    per_worker = [g for _c, g in workers]
    assert sorted(len(g) for g in per_worker) == [4, 4, 4]  # round-robin: 12 split evenly
    assert sorted(b for g in per_worker for b in g) == sorted(matching)
    for g in per_worker:  # each worker sees every third message, in publish order
        idx = [matching.index(b) for b in g]
        assert idx == sorted(idx) and all(b - a == 3 for a, b in zip(idx, idx[1:], strict=False))
    assert single_got == one_word


# --------------------------------------------------------------------------- tutorial 6


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class RpcServer(threading.Thread):
    """rpc_server.py on its own BlockingConnection, until ``stop`` is set."""

    def __init__(self, env: Env, queue: str) -> None:
        super().__init__(daemon=True)
        self.conn = env.broker.blocking()
        self.queue = queue
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def on_request(
        self,
        ch: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        response = str(_fib(int(body)))
        ch.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(correlation_id=props.correlation_id),
            body=response,
        )
        ch.basic_ack(delivery_tag=method.delivery_tag)

    def run(self) -> None:
        try:
            ch = self.conn.channel()
            ch.queue_declare(queue=self.queue)
            ch.basic_qos(prefetch_count=1)
            ch.basic_consume(queue=self.queue, on_message_callback=self.on_request)
            self.ready.set()
            while not self.stop.is_set():
                self.conn.process_data_events(time_limit=0.02)
        except BaseException as e:  # reported to the test thread
            self.error = e
            self.ready.set()
        finally:
            try:
                self.conn.close()
            except Exception:
                pass


def test_rpc_round_trip_blocking_server_select_client(env: Env) -> None:
    rpc_queue = env.queue("rpc")
    server = RpcServer(env, rpc_queue)
    server.start()
    try:
        assert server.ready.wait(WAIT) and server.error is None, server.error
        requests = {str(uuid.uuid4()): n for n in (1, 10, 30)}
        answers: dict[str, int] = {}
        state: dict[str, object] = {}

        def on_open(conn: SelectConnection) -> None:
            conn.channel(on_open_callback=on_channel)

        def on_channel(ch: pika.channel.Channel) -> None:
            state["ch"] = ch
            ch.queue_declare("", exclusive=True, callback=on_callback_queue)

        def on_callback_queue(frame: pika.frame.Method) -> None:
            ch = state["ch"]
            callback_queue = frame.method.queue
            ch.basic_consume(callback_queue, on_response, auto_ack=True)
            for corr_id, n in requests.items():
                ch.basic_publish(
                    exchange="",
                    routing_key=rpc_queue,
                    properties=pika.BasicProperties(
                        reply_to=callback_queue, correlation_id=corr_id
                    ),
                    body=str(n),
                )

        def on_response(
            ch: pika.channel.Channel,
            method: pika.spec.Basic.Deliver,
            props: pika.BasicProperties,
            body: bytes,
        ) -> None:
            answers[props.correlation_id] = int(body)
            if len(answers) == len(requests):
                ch.connection.close()

        conn = SelectConnection(
            env.broker.pika_params(),
            on_open_callback=on_open,
            on_open_error_callback=lambda c, e: (state.setdefault("error", e), c.ioloop.stop()),
            on_close_callback=lambda c, _r: c.ioloop.stop(),
        )
        conn.ioloop.call_later(WAIT, conn.ioloop.stop)
        conn.ioloop.start()
        if conn.is_open:
            conn.close()
            conn.ioloop.start()
        assert "error" not in state, state.get("error")
        assert answers == {corr: _fib(n) for corr, n in requests.items()}
    finally:
        server.stop.set()
        server.join(WAIT)
    assert server.error is None, server.error


def test_rpc_round_trip_aio_pika(env: Env) -> None:
    rpc_queue = env.queue("rpc-aio")

    async def main() -> dict[str, int]:
        server_conn = await aio_pika.connect(env.broker.uri, timeout=WAIT)
        client_conn = await aio_pika.connect(env.broker.uri, timeout=WAIT)
        async with server_conn, client_conn:
            sch = await server_conn.channel()
            await sch.set_qos(prefetch_count=1)
            queue = await sch.declare_queue(rpc_queue)

            async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with message.process():
                    n = int(message.body)
                    await sch.default_exchange.publish(
                        aio_pika.Message(
                            body=str(_fib(n)).encode(), correlation_id=message.correlation_id
                        ),
                        routing_key=message.reply_to,
                    )

            await queue.consume(serve)

            cch = await client_conn.channel()
            callback_queue = await cch.declare_queue(exclusive=True)
            loop = asyncio.get_running_loop()
            futures: dict[str, asyncio.Future[int]] = {}

            async def on_response(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                futures[message.correlation_id].set_result(int(message.body))

            await callback_queue.consume(on_response, no_ack=True)
            for n in (5, 20):
                corr = str(uuid.uuid4())
                futures[corr] = loop.create_future()
                await cch.default_exchange.publish(
                    aio_pika.Message(
                        body=str(n).encode(), correlation_id=corr, reply_to=callback_queue.name
                    ),
                    routing_key=rpc_queue,
                )
            values = await asyncio.wait_for(asyncio.gather(*futures.values()), WAIT)
            return dict(zip(futures, values, strict=True))

    answers = asyncio.run(main())
    assert sorted(answers.values()) == sorted([_fib(5), _fib(20)])


def test_aio_pika_consumer_with_qos_and_ack(env: Env) -> None:
    q = env.queue("aio")

    async def main() -> tuple[list[bytes], int]:
        conn = await aio_pika.connect(env.broker.uri, timeout=WAIT)
        async with conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=2)
            queue = await ch.declare_queue(q)
            for i in range(6):
                await ch.default_exchange.publish(
                    aio_pika.Message(str(i).encode(), delivery_mode=2), routing_key=q
                )
            got: list[bytes] = []
            async with queue.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 6:
                        break
            declared = await ch.declare_queue(q, passive=True)
            return got, declared.declaration_result.message_count

    got, remaining = asyncio.run(asyncio.wait_for(main(), WAIT * 2))
    assert got == [str(i).encode() for i in range(6)]
    assert remaining == 0


# --------------------------------------------------------------------------- kombu


def test_kombu_producer_consumer_round_trip(env: Env) -> None:
    x_name, q_name = env.exchange("kombu"), env.queue("kombu")
    exchange = kombu.Exchange(x_name, type="topic", durable=False)
    queue = kombu.Queue(q_name, exchange=exchange, routing_key="jobs.#", durable=False)
    got: list[tuple[object, dict, str]] = []

    def on_message(body: object, message: kombu.Message) -> None:
        got.append((body, dict(message.headers), message.content_type))
        message.ack()

    with kombu.Connection(env.broker.uri, connect_timeout=WAIT) as conn:
        with conn.Producer() as producer:
            for i in range(3):
                producer.publish(
                    {"job": i, "text": "héllo"},
                    exchange=exchange,
                    routing_key=f"jobs.{i}",
                    declare=[queue],
                    serializer="json",
                    headers={"attempt": i},
                    retry=False,
                )
        with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + WAIT
            while len(got) < 3 and time.monotonic() < deadline:
                conn.drain_events(timeout=WAIT)
        assert got == [
            ({"job": i, "text": "héllo"}, {"attempt": i}, "application/json") for i in range(3)
        ]
        with conn.channel() as ch:
            _name, messages, _consumers = ch.queue_declare(q_name, passive=True)
            assert messages == 0


# --------------------------------------------------------------------------- properties

_S = struct


def _lstr(b: bytes) -> bytes:
    return _S.pack(">I", len(b)) + b


_HEADER_FIELDS = b"".join(
    [
        raw.shortstr("bool") + b"t\x01",
        raw.shortstr("i8") + b"b" + _S.pack(">b", -5),
        raw.shortstr("u8") + b"B" + _S.pack(">B", 250),
        raw.shortstr("i16") + b"s" + _S.pack(">h", -30000),
        raw.shortstr("u16") + b"u" + _S.pack(">H", 60000),
        raw.shortstr("i32") + b"I" + _S.pack(">i", -(2**31)),
        raw.shortstr("u32") + b"i" + _S.pack(">I", 2**32 - 1),
        raw.shortstr("i64") + b"l" + _S.pack(">q", -(2**63)),
        raw.shortstr("u64") + b"L" + _S.pack(">Q", 2**64 - 1),
        raw.shortstr("f32") + b"f" + _S.pack(">f", 1.5),
        raw.shortstr("f64") + b"d" + _S.pack(">d", -2.25),
        raw.shortstr("dec") + b"D" + _S.pack(">Bi", 2, 12345),
        raw.shortstr("str") + b"S" + _lstr("héllo".encode()),
        raw.shortstr("bytes") + b"x" + _lstr(b"\x00\xff"),
        raw.shortstr("arr")
        + b"A"
        + _lstr(b"t\x00" + b"I" + _S.pack(">i", 7) + b"S" + _lstr(b"in-array")),
        raw.shortstr("ts") + b"T" + _S.pack(">Q", 1700000000),
        raw.shortstr("nested")
        + b"F"
        + _lstr(raw.shortstr("deep") + b"F" + _lstr(raw.shortstr("x") + b"V")),
        raw.shortstr("void") + b"V",
    ]
)
ALL_PROPERTIES = b"".join(
    [
        raw.shortstr("application/x-test"),  # content-type
        raw.shortstr("gzip"),  # content-encoding
        _lstr(_HEADER_FIELDS),  # headers
        b"\x02",  # delivery-mode
        b"\x05",  # priority
        raw.shortstr("corr-1"),  # correlation-id
        raw.shortstr("reply.q"),  # reply-to
        raw.shortstr("60000"),  # expiration
        raw.shortstr("msg-1"),  # message-id
        _S.pack(">Q", 1700000001),  # timestamp
        raw.shortstr("test.type"),  # type
        raw.shortstr("guest"),  # user-id (must be the authenticated user)
        raw.shortstr("app-1"),  # app-id
        raw.shortstr("cluster-1"),  # cluster-id (deprecated, still passed through)
    ]
)
ALL_FLAGS = 0xFFFC  # bits 15..2: all 14 basic properties present


@pytest.mark.parametrize("route", ["default-exchange", "headers-exchange"])
def test_all_properties_pass_through_byte_identical(env: Env, route: str) -> None:
    c = env.raw()
    c.handshake()
    c.open_channel(1)
    q, _, _ = c.declare_queue(1, "", exclusive=True)
    exchange, key = "", q
    if route == "headers-exchange":  # the broker must look at the headers to route
        exchange, key = "amq.match", ""
        args = _S.pack(">H", 0) + raw.shortstr(q) + raw.shortstr("amq.match") + raw.shortstr("")
        binding = raw.table({"x-match": "all", "str": "héllo"})
        c.send(raw.method(1, (50, 20), args + raw.bits(False) + binding))
        c.expect((50, 21), channel=1)
    c.send(raw.publish(1, exchange, key, b"payload", flags=ALL_FLAGS, props=ALL_PROPERTIES))
    c.send(raw.basic_consume(1, q, "c1", no_ack=True))
    c.expect(raw.BASIC_CONSUME_OK, channel=1)
    _m, header, body, _sizes = c.read_message()
    assert body == b"payload"
    assert header.payload == _S.pack(">HHQH", 60, 0, 7, ALL_FLAGS) + ALL_PROPERTIES


def test_all_properties_round_trip_pika(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    headers = {
        "str": "value",
        "int": 42,
        "negative": -7,
        "big": 2**40,
        "bool": True,
        "decimal": Decimal("3.14"),
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "list": [1, "two", [3], {"four": 4}],
        "nested": {"a": {"b": {"c": "deep"}}},
        "none": None,
        "bytes": b"\x00\x01binary",
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=3,
        correlation_id="corr",
        reply_to="replies",
        expiration="60000",
        message_id="mid",
        timestamp=1700000000,
        type="event",
        user_id="guest",
        app_id="tests",
        cluster_id="c1",
    )
    publish_confirmed(conn, "", q, [b"{}"], props)
    m, got, body = ch.basic_get(q, auto_ack=True)
    assert m is not None and body == b"{}"
    for name in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    ):
        assert getattr(got, name) == getattr(props, name), name
    assert got.headers == headers


def test_user_id_must_match_authenticated_user(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="someone-else"))
    assert err.value.reply_code == 406
    assert err.value.reply_text.startswith("PRECONDITION_FAILED")
