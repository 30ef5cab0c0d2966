"""Issue 12, points 7 and 9: alternate exchanges, the x-consistent-hash exchange and the
x-delayed-message exchange, driven with pika against 1 and 3 workers.

Invariants: routing is checked by counting or draining queues after confirmed
publishes; every AE and consistent-hash expectation also holds on RabbitMQ 3.10 with
the consistent hash plugin (run with ``SHARDMQ_TEST_URI``). The delayed exchange has no
plugin on the reference broker: those tests skip there. No timing assertions: delays are
checked by order and by "not yet / eventually", never by a measured duration bound.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from .conftest import EXTERNAL_URI
from .helpers import Env, channel_error, get_bodies, publish_confirmed, queue_counts

pytestmark = pytest.mark.timeout(60)

needs_delayed = pytest.mark.skipif(
    bool(EXTERNAL_URI),
    reason="x-delayed-message is built into shardmq; the reference RabbitMQ has no plugin",
)


def drain(ch: BlockingChannel, queue: str) -> list[bytes]:
    out: list[bytes] = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def mandatory_returned(ch: BlockingChannel, exchange: str, rk: str, body: bytes = b"m") -> bool:
    """Publish mandatory on a confirm channel: True if it came back unroutable."""
    try:
        ch.basic_publish(exchange, rk, body, mandatory=True)
    except pika.exceptions.UnroutableError:
        return True
    return False


def declare_queues(env: Env, ch: BlockingChannel, n: int) -> list[str]:
    names = [env.queue() for _ in range(n)]
    for q in names:
        ch.queue_declare(q)
    return names


# --------------------------------------------------------------------------- alternate


def test_unroutable_goes_to_the_alternate_exchange(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x, ae = env.exchange(), env.exchange("ae")
    q, qae = declare_queues(env, ch, 2)
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    ch.queue_bind(q, x, "known")
    ch.queue_bind(qae, ae, "")
    ch.confirm_delivery()
    assert not mandatory_returned(ch, x, "known", b"a")
    assert not mandatory_returned(ch, x, "unknown", b"b")  # the AE routed it: no return
    assert drain(ch, q) == [b"a"]
    assert drain(ch, qae) == [b"b"]


def test_mandatory_returns_when_the_alternate_routes_nowhere(env: Env) -> None:
    ch = env.channel()
    x, ae = env.exchange(), env.exchange("ae")
    ch.exchange_declare(ae, "direct")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    ch.confirm_delivery()
    assert mandatory_returned(ch, x, "nothing")


def test_alternate_chains_are_followed_and_cycles_stop(env: Env) -> None:
    ch = env.channel()
    x1, x2, x3 = env.exchange("a"), env.exchange("b"), env.exchange("c")
    (q,) = declare_queues(env, ch, 1)
    ch.exchange_declare(x3, "fanout")
    ch.exchange_declare(x2, "direct", arguments={"alternate-exchange": x3})
    ch.exchange_declare(x1, "topic", arguments={"alternate-exchange": x2})
    ch.queue_bind(q, x3, "")
    ch.confirm_delivery()
    assert not mandatory_returned(ch, x1, "no.match", b"chained")
    assert drain(ch, q) == [b"chained"]
    # a cycle of alternates with no binding anywhere: unroutable, and no hang
    c1, c2 = env.exchange("c1"), env.exchange("c2")
    ch.exchange_declare(c1, "direct", arguments={"alternate-exchange": c2})
    ch.exchange_declare(c2, "direct", arguments={"alternate-exchange": c1})
    assert mandatory_returned(ch, c1, "k")
    # an alternate pointing at itself
    c3 = env.exchange("self")
    ch.exchange_declare(c3, "direct", arguments={"alternate-exchange": c3})
    assert mandatory_returned(ch, c3, "k")


def test_a_missing_alternate_is_unroutable(env: Env) -> None:
    ch = env.channel()
    x = env.exchange()
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": env.exchange("gone")})
    ch.confirm_delivery()
    assert mandatory_returned(ch, x, "k")


def test_alternate_applies_per_exchange_in_exchange_to_exchange_routing(env: Env) -> None:
    """RabbitMQ: an exchange uses its alternate only when its own bindings give nothing;
    a binding to another exchange counts, even if that exchange routes nowhere."""
    ch = env.channel()
    src, mid, ae_src, ae_mid = (env.exchange(p) for p in ("src", "mid", "aes", "aem"))
    q_src, q_mid = declare_queues(env, ch, 2)
    for ae, q in ((ae_src, q_src), (ae_mid, q_mid)):
        ch.exchange_declare(ae, "fanout")
        ch.queue_bind(q, ae, "")
    ch.exchange_declare(mid, "direct", arguments={"alternate-exchange": ae_mid})
    ch.exchange_declare(src, "fanout", arguments={"alternate-exchange": ae_src})
    ch.exchange_bind(mid, src, "")
    ch.confirm_delivery()
    assert not mandatory_returned(ch, src, "k", b"via-mid")
    assert drain(ch, q_mid) == [b"via-mid"]
    assert drain(ch, q_src) == []


def test_alternate_to_many_queues_on_every_worker(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x, ae = env.exchange(), env.exchange("ae")
    queues = declare_queues(env, ch, 6)  # spread over the workers by name
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(x, "headers", arguments={"alternate-exchange": ae})
    for q in queues:
        ch.queue_bind(q, ae, "")
    publish_confirmed(conn, x, "k", [b"1", b"2", b"3"])
    for q in queues:
        assert drain(ch, q) == [b"1", b"2", b"3"]


def test_alternate_exchange_argument_of_a_wrong_type_is_406(env: Env) -> None:
    conn = env.conn()
    x = env.exchange()
    err = channel_error(
        conn, lambda ch: ch.exchange_declare(x, "direct", arguments={"alternate-exchange": 5})
    )
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' "
        f"in exchange '{x}' in vhost '/'"
    )


# --------------------------------------------------------------------------- consistent hash


def chash_setup(
    env: Env, weights: list[int], arguments: dict | None = None
) -> tuple[pika.BlockingConnection, BlockingChannel, str, list[str]]:
    conn = env.conn()
    ch = conn.channel()
    x = env.exchange("chash")
    ch.exchange_declare(x, "x-consistent-hash", arguments=arguments)
    queues = declare_queues(env, ch, len(weights))
    for q, w in zip(queues, weights, strict=True):
        ch.queue_bind(q, x, str(w))
    return conn, ch, x, queues


def test_consistent_hash_spreads_by_weight_and_keeps_keys_together(env: Env) -> None:
    conn, ch, x, queues = chash_setup(env, [1, 2, 3])
    pub = conn.channel()
    pub.confirm_delivery()
    n = 3000
    for i in range(n):
        pub.basic_publish(x, f"key-{i}", b"")
    counts = [queue_counts(ch, q)[0] for q in queues]
    assert sum(counts) == n  # exactly one queue per message
    for c, w in zip(counts, [1, 2, 3], strict=True):
        assert abs(c - n * w / 6) < 0.25 * n * w / 6, counts  # weights respected, roughly
    for q in queues:
        ch.queue_purge(q)
    for _ in range(30):
        pub.basic_publish(x, "the-same-key", b"")
    counts = [queue_counts(ch, q)[0] for q in queues]
    assert sorted(counts) == [0, 0, 30]  # same key -> same queue


def test_consistent_hash_on_a_header(env: Env) -> None:
    conn, ch, x, queues = chash_setup(env, [1, 1, 1], {"hash-header": "user"})
    pub = conn.channel()
    pub.confirm_delivery()
    for i in range(30):  # routing keys vary, the header does not
        pub.basic_publish(x, f"rk-{i}", b"", pika.BasicProperties(headers={"user": "alice"}))
    counts = [queue_counts(ch, q)[0] for q in queues]
    assert sorted(counts) == [0, 0, 30]
    for q in queues:
        ch.queue_purge(q)
    for i in range(300):
        pub.basic_publish(x, "rk", b"", pika.BasicProperties(headers={"user": f"u{i}"}))
    assert all(queue_counts(ch, q)[0] > 30 for q in queues)


def test_consistent_hash_on_a_property(env: Env) -> None:
    conn, ch, x, queues = chash_setup(env, [1, 1, 1], {"hash-property": "message_id"})
    pub = conn.channel()
    pub.confirm_delivery()
    for i in range(30):
        pub.basic_publish(x, f"rk-{i}", b"", pika.BasicProperties(message_id="m-1"))
    counts = [queue_counts(ch, q)[0] for q in queues]
    assert sorted(counts) == [0, 0, 30]


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("abc", 'PRECONDITION_FAILED - The binding key must be an integer: <<"abc">>'),
        ("0", "PRECONDITION_FAILED - The binding key must be greater than 0"),
        ("-3", "PRECONDITION_FAILED - The binding key must be greater than 0"),
    ],
)
def test_consistent_hash_bad_binding_key(env: Env, key: str, text: str) -> None:
    conn, ch, x, _ = chash_setup(env, [])
    (q,) = declare_queues(env, ch, 1)
    err = channel_error(conn, lambda c: c.queue_bind(q, x, key))
    assert (err.reply_code, err.reply_text) == (406, text)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (
            {"hash-header": "h", "hash-property": "message_id"},
            "PRECONDITION_FAILED - hash-header and hash-property are mutually exclusive",
        ),
        ({"hash-property": "foo"}, "PRECONDITION_FAILED - Unsupported property: foo"),
    ],
)
def test_consistent_hash_bad_arguments(env: Env, args: dict, text: str) -> None:
    conn = env.conn()
    x = env.exchange()
    err = channel_error(conn, lambda c: c.exchange_declare(x, "x-consistent-hash", arguments=args))
    assert (err.reply_code, err.reply_text) == (406, text)


def test_consistent_hash_with_an_alternate_when_unbound(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x, ae = env.exchange("chash"), env.exchange("ae")
    (q,) = declare_queues(env, ch, 1)
    ch.exchange_declare(ae, "fanout")
    ch.queue_bind(q, ae, "")
    ch.exchange_declare(x, "x-consistent-hash", arguments={"alternate-exchange": ae})
    publish_confirmed(conn, x, "k", [b"x"])
    assert get_bodies(ch, q, 1) == [b"x"]


def test_consistent_hash_without_the_header_goes_to_one_queue(env: Env) -> None:
    """The plugin hashes a missing header as ``undefined``: all such messages meet."""
    conn, ch, x, queues = chash_setup(env, [1, 1, 1], {"hash-header": "user"})
    publish_confirmed(conn, x, "", [b""] * 10)
    publish_confirmed(conn, x, "other", [b""] * 10)
    counts = [queue_counts(ch, q)[0] for q in queues]
    assert sorted(counts) == [0, 0, 20]


# --------------------------------------------------------------------------- delayed


def delayed_exchange(ch: BlockingChannel, env: Env, dtype: str = "direct", **kw: object) -> str:
    x = env.exchange("delayed")
    args: dict = {"x-delayed-type": dtype}
    args.update(kw)
    ch.exchange_declare(x, "x-delayed-message", arguments=args)
    return x


def delay(ms: object) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"x-delay": ms})


@needs_delayed
def test_delayed_messages_arrive_in_due_order_after_immediate_ones(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = delayed_exchange(ch, env)
    queues = declare_queues(env, ch, 3)  # on different workers
    for q in queues:
        ch.queue_bind(q, x, "k")
    pub = conn.channel()
    pub.confirm_delivery()
    pub.basic_publish(x, "k", b"d900", delay(900))
    pub.basic_publish(x, "k", b"d300", delay(300))
    pub.basic_publish(x, "k", b"now", pika.BasicProperties())
    pub.basic_publish(x, "k", b"neg", delay(-10))
    pub.basic_publish(x, "k", b"d600", delay(600))
    pub.basic_publish(x, "other", b"unbound", delay(100))
    for q in queues:
        assert get_bodies(ch, q, 5) == [b"now", b"neg", b"d300", b"d600", b"d900"]


@needs_delayed
def test_a_held_message_is_not_delivered_before_its_time(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    x = delayed_exchange(ch, env, "fanout")
    (q,) = declare_queues(env, ch, 1)
    ch.queue_bind(q, x, "")
    publish_confirmed(conn, x, "", [b"later"], delay(4000))
    assert queue_counts(ch, q)[0] == 0  # held (checked well before 4 s)
    assert get_bodies(ch, q, 1, timeout=10) == [b"later"]


@needs_delayed
def test_delayed_topic_and_alternate(env: Env) -> None:
    conn = env.conn()
    ch = conn.channel()
    ae = env.exchange("ae")
    ch.exchange_declare(ae, "fanout")
    x = delayed_exchange(ch, env, "topic", **{"alternate-exchange": ae})
    q, qae = declare_queues(env, ch, 2)
    ch.queue_bind(q, x, "a.#")
    ch.queue_bind(qae, ae, "")
    pub = conn.channel()
    pub.confirm_delivery()
    # mandatory on a held publish: accepted, never returned (see shardmq.broker.delayed)
    pub.basic_publish(x, "z", b"to-ae", delay(200), mandatory=True)  # no UnroutableError
    pub.basic_publish(x, "a.x", b"topic", delay(200))
    assert get_bodies(ch, qae, 1) == [b"to-ae"]
    assert get_bodies(ch, q, 1) == [b"topic"]


@needs_delayed
def test_delayed_exchange_arguments_are_checked(env: Env) -> None:
    conn = env.conn()
    x = env.exchange()
    err = channel_error(conn, lambda c: c.exchange_declare(x, "x-delayed-message"))
    assert (err.reply_code, err.reply_text) == (
        406,
        "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing "
        "exchange type",
    )
    err = channel_error(
        conn,
        lambda c: c.exchange_declare(
            x, "x-delayed-message", arguments={"x-delayed-type": "x-delayed-message"}
        ),
    )
    assert (err.reply_code, err.reply_text) == (
        406,
        "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' can't be of type "
        "'x-delayed-message'",
    )
    bad = env.conn()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        bad.channel().exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": "nope"})
    assert ei.value.reply_code == 503
    assert ei.value.reply_text == "COMMAND_INVALID - unknown exchange type 'nope'"
