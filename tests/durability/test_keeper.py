"""DefinitionsKeeper on a metadata replica with placeholder queues (as in the supervisor's
sequencer): what gets saved, when the file is rewritten, and loading it back."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from shardmq.amqp.errors import AMQPError
from shardmq.broker import metadata as md
from shardmq.broker.durable import DefinitionsKeeper
from shardmq.broker.remote import RemoteQueue
from shardmq.store.definitions import Definitions, DefinitionsStore, ExchangeDef, QueueDef


def placeholder(name: str, vhost: str, **kw: Any) -> RemoteQueue:
    return RemoteQueue(name, vhost, md.shard_for(vhost, name, 3), **kw)


def keeper(tmp_path: Path, vhosts: list[str] | None = None) -> DefinitionsKeeper:
    meta = md.Metadata(vhosts or ["/"], placeholder)
    return DefinitionsKeeper(meta, DefinitionsStore(str(tmp_path)))


def apply(k: DefinitionsKeeper, op: md.Op) -> bool:
    k.metadata.apply(op)
    return k.after(op)


def xq(name: str, durable: bool = True, exclusive: bool = False, args: bytes = b"") -> md.Op:
    return md.DeclareQueue("/", name, False, durable, exclusive, False, args, 1 << 32 | 5)


def xe(name: str, durable: bool = True, auto_delete: bool = False, kind: str = "direct") -> md.Op:
    return md.DeclareExchange("/", name, kind, False, durable, auto_delete, False, b"")


def bind(dest: str, source: str, rk: str = "", to_queue: bool = True, args: bytes = b"") -> md.Op:
    return md.Bind("/", to_queue, dest, source, rk, args, 1 << 32 | 5)


def unbind(dest: str, source: str, rk: str = "") -> md.Op:
    return md.Unbind("/", True, dest, source, rk, b"", 1 << 32 | 5)


def saved(tmp_path: Path) -> Definitions:
    return DefinitionsStore(str(tmp_path)).load()


def test_writes_only_when_durable_definitions_change(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    args = md.table_bytes({"x-max-length": 10})
    assert apply(k, xq("tq", durable=False)) is False
    assert apply(k, xq("ex", exclusive=True)) is False
    assert apply(k, xe("tx", durable=False)) is False
    assert apply(k, xq("dq", args=args)) is True
    assert apply(k, xq("dq", args=args)) is False  # re-declare
    assert apply(k, xe("dx", kind="topic")) is True
    assert apply(k, bind("dq", "dx", "a.*", args=md.table_bytes({"k": 1}))) is True
    assert apply(k, bind("dq", "dx", "a.*", args=md.table_bytes({"k": 1}))) is False
    assert apply(k, bind("tq", "dx", "a.*")) is False  # transient destination
    assert apply(k, bind("ex", "dx", "a.*")) is False  # exclusive destination
    assert apply(k, bind("dq", "tx")) is False  # transient source
    assert apply(k, bind("dx", "amq.topic", "#", to_queue=False)) is True
    assert apply(k, md.DeleteQueue("/", "tq", False, False, 0)) is False
    assert k.saves == 4
    d = saved(tmp_path)
    assert [(q.name, q.arguments) for q in d.queues] == [("dq", {"x-max-length": 10})]
    assert [(e.name, e.type) for e in d.exchanges] == [("dx", "topic")]
    assert sorted((b.source, b.destination, b.routing_key) for b in d.bindings) == [
        ("amq.topic", "dx", "#"),
        ("dx", "dq", "a.*"),
    ]
    assert d.bindings[0].arguments == {"k": 1} or d.bindings[1].arguments == {"k": 1}


def test_removals_cascade(tmp_path: Path) -> None:
    k = keeper(tmp_path)
    for op in (xq("dq"), xq("dq2"), xe("ad", auto_delete=True), xe("dx")):
        apply(k, op)
    apply(k, bind("dq", "ad"))
    apply(k, bind("dq2", "dx"))
    n = k.saves
    # deleting dq removes its binding, and the auto-delete exchange loses its last one
    assert apply(k, md.DeleteQueue("/", "dq", False, False, 0)) is True
    d = saved(tmp_path)
    assert [q.name for q in d.queues] == ["dq2"]
    assert [e.name for e in d.exchanges] == ["dx"]
    assert [(b.source, b.destination) for b in d.bindings] == [("dx", "dq2")]
    assert apply(k, unbind("dq2", "dx")) is True
    assert saved(tmp_path).bindings == []
    assert apply(k, unbind("dq2", "dx")) is False  # nothing saved changes
    assert apply(k, md.DeleteExchange("/", "dx", False)) is True
    assert apply(k, md.DeleteExchange("/", "nothing", False)) is False
    assert k.saves == n + 3


def test_load_round_trip_and_foreign_vhosts(tmp_path: Path) -> None:
    k = keeper(tmp_path, ["/", "other"])
    apply(k, xe("dx", kind="fanout"))
    apply(k, xq("dq", args=md.table_bytes({"x-queue-mode": "lazy"})))
    apply(k, bind("dq", "dx"))
    apply(k, md.DeclareQueue("other", "oq", False, True, False, True, b"", 0))

    fresh = keeper(tmp_path, ["/"])  # "other" is not configured any more
    assert fresh.load() == 3
    vh = fresh.metadata.vhosts["/"]
    assert vh.exchanges["dx"].type == "fanout" and vh.exchanges["dx"].durable
    q = vh.queues["dq"]
    assert q.durable and not q.exclusive and q.arguments == {"x-queue-mode": "lazy"}
    assert [d.name for d, _, _ in vh.exchanges["dx"].router.bindings()] == ["dq"]
    assert fresh.saves == 0  # loading writes nothing
    apply(fresh, xq("new"))
    d = saved(tmp_path)
    assert sorted((q.vhost, q.name) for q in d.queues) == [
        ("/", "dq"),
        ("/", "new"),
        ("other", "oq"),
    ]


def test_bad_stored_definition_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    DefinitionsStore(str(tmp_path)).save(
        Definitions(
            exchanges=[ExchangeDef(vhost="/", name="bad", type="no-such-type")],
            queues=[QueueDef(vhost="/", name="ok")],
        )
    )
    k = keeper(tmp_path)
    assert k.load() == 1
    assert "ok" in k.metadata.vhosts["/"].queues
    assert "not restored" in caplog.text
    with pytest.raises(AMQPError):
        k.metadata.vhosts["/"].exchange("bad")


def test_incremental_record_matches_a_full_walk(tmp_path: Path) -> None:
    """Random declares, binds, unbinds and deletes (auto-delete exchanges, e2e bindings,
    exclusive and transient things among them): after every op the keeper's saved
    definitions equal a full walk of the metadata (``collect``), and so does what a
    fresh store loads from disk at the end."""
    rng = random.Random(1616)
    k = keeper(tmp_path)
    queues = [f"q{i}" for i in range(6)]
    exchanges = [f"x{i}" for i in range(5)]
    most_bindings = cascades = 0
    for step in range(1500):
        r = rng.random()
        name_q, name_x = rng.choice(queues), rng.choice(exchanges)
        if r < 0.2:
            durable = rng.random() < 0.7
            op: md.Op = xq(name_q, durable=durable, exclusive=rng.random() < 0.1)
        elif r < 0.35:
            op = xe(name_x, durable=rng.random() < 0.7, auto_delete=rng.random() < 0.4)
        elif r < 0.6:
            if rng.random() < 0.7:
                op = bind(name_q, name_x, rng.choice(["a", "b"]))
            else:
                op = bind(rng.choice(exchanges), name_x, "e", to_queue=False)
        elif r < 0.75:
            op = unbind(name_q, name_x, rng.choice(["a", "b"]))
        elif r < 0.88:
            op = md.DeleteQueue("/", name_q, False, False, 0)
        elif r < 0.98:
            op = md.DeleteExchange("/", name_x, False)
        else:
            op = md.DropOwners("", 1)
        try:
            k.metadata.apply(op)
        except AMQPError:
            continue
        saved_exchanges = len(k.exchanges)
        k.after(op)
        if isinstance(op, md.DeleteQueue | md.Unbind) and len(k.exchanges) < saved_exchanges:
            cascades += 1  # an auto-delete exchange went with its last binding
        most_bindings = max(most_bindings, len(k.bindings))
        exchanges_now, queues_now, bindings_now = k.collect()
        assert (k.exchanges, k.queues, k.bindings) == (
            exchanges_now,
            queues_now,
            bindings_now,
        ), (step, op)
    d = saved(tmp_path)
    assert sorted(e.name for e in d.exchanges) == sorted(n for _, n in k.exchanges)
    assert sorted(q.name for q in d.queues) == sorted(n for _, n in k.queues)
    assert sorted(
        (b.source, b.destination_type, b.destination, b.routing_key) for b in d.bindings
    ) == sorted(
        (s, "queue" if toq else "exchange", dst, rk) for _, s, toq, dst, rk, _ in k.bindings
    )
    assert k.saves > 50 and most_bindings >= 5 and cascades >= 3, (most_bindings, cascades)


def test_a_delete_does_not_walk_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = keeper(tmp_path)
    for i in range(50):
        apply(k, xq(f"q{i}"))
    monkeypatch.setattr(k, "collect", lambda: pytest.fail("walked all definitions"))
    assert apply(k, md.DeleteQueue("/", "q7", False, False, 0)) is True
    assert "q7" not in [q.name for q in saved(tmp_path).queues]


def test_deleted_vhost_takes_its_definitions(tmp_path: Path) -> None:
    k = keeper(tmp_path, ["/", "other"])
    for op in (
        md.DeclareQueue("other", "oq", False, True, False, False, b"", 0),
        md.DeclareExchange("other", "ox", "direct", False, True, False, False, b""),
        md.Bind("other", True, "oq", "ox", "k", b"", 0),
        xq("kept"),
    ):
        apply(k, op)
    assert apply(k, md.DeleteVHost("other")) is True
    d = saved(tmp_path)
    assert [(q.vhost, q.name) for q in d.queues] == [("/", "kept")]
    assert d.exchanges == [] and d.bindings == []
    assert [v.name for v in d.vhosts] == ["/"]
