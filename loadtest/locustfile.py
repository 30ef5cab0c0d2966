"""Locust users that speak AMQP 0-9-1 (pika), for any broker: shardmq or RabbitMQ.

    locust -f loadtest/locustfile.py --headless -u 100 -r 20 -t 60s \\
           --host amqp://guest:guest@127.0.0.1:5672/

Owns: four user classes and how they report to locust's statistics
(``events.request.fire``), so rates, latencies and failures show up as for an HTTP test,
headless or in the web UI:

- ``PublisherUser``  publishes to the work queue in confirm mode; one request
  ``publish+confirm`` per message, response time = publish -> broker ack.
- ``ConsumerUser``   consumes the work queue with manual acks; one request ``consume`` per
  message, response time = end-to-end latency (send time carried in the body).
- ``RpcCallerUser``  request/reply through the RPC queue with a private reply queue; one
  request ``rpc`` per call, response time = round trip; no reply in time = failure.
- ``RpcServerUser``  (exactly one, ``fixed_count``) answers the RPC calls; one request
  ``rpc-serve`` per call, response time = its handling (reply published, request acked),
  not the wait for the next request.

Options (after the usual locust ones): ``--amqp-prefix`` (queue names), ``--message-size``,
``--publish-rate`` and ``--rpc-rate`` (per user, per second), ``--rpc-timeout``.

Invariants: every user owns its own connection (no sharing across greenlets); bodies start
with an 8-byte big-endian ``time.time_ns()`` (wall clock: users may be on several locust
worker machines); the work and RPC queues are declared idempotently by every user and
deleted when the test stops (by the master or the single local runner).
"""

from __future__ import annotations

import logging
import struct
import time
import uuid

import pika
from locust import User, constant, constant_throughput, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import WorkerRunner

_TS = struct.Struct(">Q")


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    parser.add_argument("--amqp-prefix", default="locust", help="queue name prefix")
    parser.add_argument("--message-size", type=int, default=64, help="body bytes (>= 8)")
    parser.add_argument("--publish-rate", type=float, default=10.0, help="msg/s per publisher")
    parser.add_argument("--rpc-rate", type=float, default=5.0, help="calls/s per RPC caller")
    parser.add_argument("--rpc-timeout", type=float, default=5.0, help="seconds per RPC call")


@events.init.add_listener
def _quiet_pika(**_kw: object) -> None:
    # pika logs every connection open/close at INFO: 100 users would bury locust's output
    logging.getLogger("pika").setLevel(logging.WARNING)


def _queues(env: Environment) -> tuple[str, str]:
    prefix = env.parsed_options.amqp_prefix if env.parsed_options else "locust"
    return f"{prefix}.work", f"{prefix}.rpc"


@events.test_stop.add_listener
def _cleanup(environment: Environment, **_kw: object) -> None:
    if isinstance(environment.runner, WorkerRunner) or not environment.host:
        return
    try:
        conn = pika.BlockingConnection(pika.URLParameters(environment.host))
        try:
            ch = conn.channel()
            for q in _queues(environment):
                ch.queue_delete(q)
        finally:
            conn.close()
    except Exception as exc:  # a broker that went away must not hide the results
        print(f"locustfile: clean-up failed: {exc!r}")


class AmqpUser(User):
    """Base: one pika connection + channel per user; helpers to report requests."""

    abstract = True

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.size = max(8, opts.message_size if opts else 64)
        self.work_q, self.rpc_q = _queues(self.environment)
        self.padding = b"x" * (self.size - 8)
        t0 = time.perf_counter()
        try:
            self.conn = pika.BlockingConnection(pika.URLParameters(self.host))
            self.ch = self.conn.channel()
            self.ch.queue_declare(self.work_q)
            self.ch.queue_declare(self.rpc_q)
        except Exception as exc:
            self.report("connect", t0, 0, exc)
            raise
        self.report("connect", t0, 0)

    def on_stop(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing left to report
                pass

    def body(self) -> bytes:
        return _TS.pack(time.time_ns()) + self.padding

    def report(
        self,
        name: str,
        t0: float,
        length: int,
        exc: BaseException | None = None,
        ms: float | None = None,
    ) -> None:
        self.environment.events.request.fire(
            request_type="amqp",
            name=name,
            response_time=ms if ms is not None else (time.perf_counter() - t0) * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )


class PublisherUser(AmqpUser):
    weight = 3

    def wait_time(self) -> float:
        opts = self.environment.parsed_options
        return constant_throughput(opts.publish_rate if opts else 10.0)(self)

    def on_start(self) -> None:
        super().on_start()
        self.ch.confirm_delivery()

    @task
    def publish(self) -> None:
        body = self.body()
        t0 = time.perf_counter()
        try:
            self.ch.basic_publish("", self.work_q, body)
        except Exception as exc:
            self.report("publish+confirm", t0, len(body), exc)
        else:
            self.report("publish+confirm", t0, len(body))


class ConsumerUser(AmqpUser):
    weight = 2
    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        self.ch.basic_qos(prefetch_count=50)
        self.stream = self.ch.consume(self.work_q, inactivity_timeout=1.0)

    @task
    def consume(self) -> None:
        t0 = time.perf_counter()
        try:
            method, _props, body = next(self.stream)
            if method is None:
                return  # idle second: nothing published, not a failure
            self.ch.basic_ack(method.delivery_tag)
        except Exception as exc:
            self.report("consume", t0, 0, exc)
            return
        latency_ms = (time.time_ns() - _TS.unpack_from(body)[0]) / 1e6
        self.report("consume", t0, len(body), ms=max(0.0, latency_ms))


class RpcCallerUser(AmqpUser):
    weight = 1

    def wait_time(self) -> float:
        opts = self.environment.parsed_options
        return constant_throughput(opts.rpc_rate if opts else 5.0)(self)

    def on_start(self) -> None:
        super().on_start()
        opts = self.environment.parsed_options
        self.timeout = opts.rpc_timeout if opts else 5.0
        ok = self.ch.queue_declare("", exclusive=True, auto_delete=True)
        self.reply_q = ok.method.queue
        self.replies = self.ch.consume(self.reply_q, auto_ack=True, inactivity_timeout=0.25)

    @task
    def call(self) -> None:
        cid = uuid.uuid4().hex
        body = self.body()
        props = pika.BasicProperties(reply_to=self.reply_q, correlation_id=cid)
        t0 = time.perf_counter()
        try:
            self.ch.basic_publish("", self.rpc_q, body, props)
            deadline = t0 + self.timeout
            while True:
                method, rprops, _ = next(self.replies)
                if method is not None and rprops.correlation_id == cid:
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"no RPC reply within {self.timeout:g} s")
        except Exception as exc:
            self.report("rpc", t0, len(body), exc)
        else:
            self.report("rpc", t0, len(body))


class RpcServerUser(AmqpUser):
    fixed_count = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        self.ch.basic_qos(prefetch_count=100)
        self.requests = self.ch.consume(self.rpc_q, inactivity_timeout=1.0)

    @task
    def serve(self) -> None:
        """One request answered; its time is the handling only (reply published and
        request acked), not the wait for the request to arrive."""
        try:
            method, props, body = next(self.requests)
        except Exception as exc:  # the connection failed while waiting: no handling time
            self.report("rpc-serve", time.perf_counter(), 0, exc)
            return
        if method is None:
            return  # idle second: no request, not a failure
        t0 = time.perf_counter()
        try:
            self.ch.basic_publish(
                "",
                props.reply_to,
                body,
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
            self.ch.basic_ack(method.delivery_tag)
        except Exception as exc:
            self.report("rpc-serve", t0, 0, exc)
        else:
            self.report("rpc-serve", t0, len(body))
