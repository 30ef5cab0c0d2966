"""The broker's map of unsettled deliveries to an AMQP 1.0 client
(``shardmq.adapter.amqp10.SessionState``: a run of consecutive delivery-ids and tags,
the rest in a dict) against a plain dict of delivery-id -> (tag, link)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shardmq.adapter.amqp10 import SessionState
from shardmq.amqp1.engine import Link

SEQ = 2**32

ops = st.lists(
    st.one_of(
        # a delivery: on link 0 or 1, tags skipped (deliveries held back), settled or not
        st.tuples(st.just("send"), st.integers(0, 1), st.integers(0, 2), st.booleans()),
        # a disposition of first..first+span, first relative to the oldest id sent
        st.tuples(st.just("settle"), st.integers(-3, 40), st.integers(0, 12), st.just(False)),
        st.tuples(st.just("drop"), st.integers(0, 1), st.just(0), st.just(False)),
    ),
    max_size=80,
)


def _run(start: int, steps: list[Any]) -> None:
    links = [Link("a", 0, 0, False), Link("b", 1, 1, False)]
    st_ = SessionState(None)  # type: ignore[arg-type]
    model: dict[int, tuple[int, Link]] = {}
    did = start
    tag = 0
    first_did = start
    for op, a, b, c in steps:
        if op == "send":
            tag += 1 + b
            if not c:  # unsettled: tracked
                st_.track(links[a], did, tag)
                model[did] = (tag, links[a])
            did = (did + 1) % SEQ
        elif op == "settle":
            first = (first_did + a) % SEQ
            last = first + b
            if last >= SEQ:
                continue  # the adapter refuses a range that wraps
            ta, tb, tags = st_.take(first, last)
            got = set(tags) | set(range(ta, tb + 1))
            assert len(got) == len(tags) + max(0, tb - ta + 1)  # no tag twice
            want = {model.pop(d)[0] for d in list(model) if first <= d <= last}
            assert got == want
        else:
            got_l = st_.drop_link(links[a])
            want_l = [d for d, (_t, lk) in model.items() if lk is links[a]]
            assert got_l == [model.pop(d)[0] for d in want_l]  # in the order sent
    rest = st_.drop_link(links[0]) + st_.drop_link(links[1])
    assert sorted(rest) == sorted(t for t, _l in model.values())


@given(steps=ops)
def test_outgoing_map_equals_a_dict(steps: list[Any]) -> None:
    _run(0, steps)


@given(steps=ops)
def test_outgoing_map_across_the_delivery_id_wrap(steps: list[Any]) -> None:
    _run(SEQ - 5, steps)


def test_one_link_in_order_stays_one_run() -> None:
    link = Link("a", 0, 0, False)
    s = SessionState(None)  # type: ignore[arg-type]
    for i in range(1000):
        s.track(link, i, 100 + i)
    assert s.run_n == 1000 and not s.outgoing
    assert s.take(0, 249) == (100, 349, [])
    assert s.take(250, 499) == (350, 599, [])
    assert (s.run_did, s.run_tag, s.run_n) == (500, 600, 500) and not s.outgoing
