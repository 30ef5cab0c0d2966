"""Definitions: exact round trip of field tables, atomic save under simulated and real
crashes, refusal of damaged files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import msgspec
import pytest

from shardmq.amqp.fieldtable import ByteArray, Timestamp, decode_table, encode_table
from shardmq.store import definitions as D
from shardmq.store.definitions import (
    BindingDef,
    Definitions,
    DefinitionsError,
    DefinitionsStore,
    ExchangeDef,
    PermissionDef,
    PolicyDef,
    QueueDef,
    UserDef,
    VHostDef,
)

TABLE = decode_table(
    encode_table(
        {
            "x-message-ttl": 60000,
            "x-max-length": 2**40,
            "x-dead-letter-exchange": "dlx",
            "dec": Decimal("-12.345"),
            "ts": Timestamp(1_700_000_000),
            "raw": ByteArray(b"\x00\x01\xff"),
            "binary": b"\xff\xfe not utf-8",
            "f": 1.5,
            "none": None,
            "flag": True,
            "list": [1, "two", Decimal("3.0"), [Timestamp(4)], {"five": 5}],
            "nested": {"a": {"b": ByteArray(b"c")}},
        }
    )
)[0]


def deep_types(v):
    if isinstance(v, dict):
        return {k: deep_types(x) for k, x in v.items()}
    if isinstance(v, list):
        return [deep_types(x) for x in v]
    return (type(v), v)


def sample(version: int = 1, n: int = 3) -> Definitions:
    return Definitions(
        version=version,
        vhosts=[VHostDef(name="/"), VHostDef(name="prod", description="p", tags=["a"])],
        users=[UserDef(name="guest", password_hash="aGFzaA==", tags=["administrator"])],
        permissions=[PermissionDef(user="guest", vhost="/")],
        exchanges=[
            ExchangeDef(vhost="/", name=f"ex{i}", type="topic", arguments=TABLE) for i in range(n)
        ],
        queues=[QueueDef(vhost="/", name=f"q{i}", arguments=TABLE) for i in range(n)],
        bindings=[
            BindingDef(vhost="/", source="ex0", destination="q0", routing_key="a.#"),
            BindingDef(
                vhost="/",
                source="ex0",
                destination="ex1",
                destination_type="exchange",
                routing_key="",
                arguments={"x-match": "all", "k": Decimal("1.5")},
            ),
        ],
        policies=[PolicyDef(vhost="/", name="p", pattern="^q", definition={"max-length": 5})],
    )


def test_round_trip_is_exact(tmp_path) -> None:
    store = DefinitionsStore(str(tmp_path))
    assert store.load() == Definitions()  # nothing saved yet: empty
    defs = sample()
    store.save(defs)
    back = DefinitionsStore(str(tmp_path)).load()
    assert back == defs
    for a, b in zip(back.queues + back.exchanges, defs.queues + defs.exchanges, strict=True):
        assert deep_types(a.arguments) == deep_types(b.arguments)
    assert deep_types(back.bindings[1].arguments) == deep_types(defs.bindings[1].arguments)
    assert back.bindings[1].destination_type == "exchange"


def test_transient_things_are_refused() -> None:
    with pytest.raises(ValueError):
        D.encode(Definitions(queues=[QueueDef(vhost="/", name="t", durable=False)]))


def test_crash_between_tmp_write_and_rename_keeps_old_state(tmp_path, monkeypatch) -> None:
    store = DefinitionsStore(str(tmp_path))
    old = sample(1)
    store.save(old)
    real_replace = os.replace

    def crash(src, dst):
        if str(src).endswith("definitions.json.tmp"):
            raise SystemExit("simulated crash before the rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SystemExit):
        store.save(sample(2, n=50))
    monkeypatch.undo()
    assert os.path.exists(store.tmp)  # the new state was fully written, not renamed
    assert DefinitionsStore(str(tmp_path)).load() == old
    assert not os.path.exists(store.tmp)  # cleaned up by load
    new = sample(3)
    store.save(new)
    assert DefinitionsStore(str(tmp_path)).load() == new


def test_crash_in_the_middle_of_writing_tmp(tmp_path, monkeypatch) -> None:
    store = DefinitionsStore(str(tmp_path))
    old = sample(1)
    store.save(old)
    real_write = os.write

    def half_write(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise SystemExit("simulated crash mid-write")

    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(SystemExit):
        store.save(sample(2))
    monkeypatch.undo()
    assert DefinitionsStore(str(tmp_path)).load() == old


def test_damaged_file_falls_back_to_previous_or_refuses(tmp_path, caplog) -> None:
    store = DefinitionsStore(str(tmp_path))
    first, second = sample(1), sample(2)
    store.save(first)
    store.save(second)
    data = bytearray(open(store.path, "rb").read())
    data[len(data) // 2] ^= 0x20
    open(store.path, "wb").write(data)
    assert store.load() == first  # the previous version, with an error logged
    assert any("checksum" in r.message for r in caplog.records)
    caplog.clear()
    assert DefinitionsStore(str(tmp_path)).load() == first  # repaired: a fresh snapshot
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    open(store.path, "wb").write(b"garbage")
    open(store.prev, "wb").write(b"garbage")
    with pytest.raises(DefinitionsError):
        store.load()  # never silently start with no definitions
    open(store.path, "wb").write(D.encode(second)[:-10])
    os.unlink(store.prev)
    with pytest.raises(DefinitionsError, match="truncated"):
        store.load()


def test_file_is_readable_json_after_the_header(tmp_path) -> None:
    store = DefinitionsStore(str(tmp_path))
    store.save(sample())
    head, body = open(store.path, "rb").read().split(b"\n", 1)
    assert head.startswith(b"SHARDMQ-DEFINITIONS 2 ")
    doc = msgspec.json.decode(body)
    assert doc["queues"][0]["name"] == "q0" and doc["vhosts"][1]["name"] == "prod"


CHILD = r"""
import sys
from shardmq.store.definitions import DefinitionsStore
from tests.store.test_definitions import sample
store = DefinitionsStore(sys.argv[1])
v = 0
while True:
    v += 1
    store.save(sample(v, n=200))
    sys.stdout.write(f"{v}\n")
    sys.stdout.flush()
"""


def test_kill_9_during_saves_leaves_a_whole_version(tmp_path) -> None:
    """A child saves versions 1, 2, 3... as fast as it can and is SIGKILLed at random
    moments: what loads is always a complete version, at least the last one reported."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for attempt in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            stdout=subprocess.PIPE,
            cwd=root,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # at least one save done
        assert first
        time.sleep(0.01 + 0.03 * attempt)
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read().split()
        proc.wait()
        reported = int(rest[-1]) if rest else int(first)
        defs = DefinitionsStore(str(tmp_path)).load()
        assert defs.version >= reported
        assert defs.version <= reported + 1
        assert defs == sample(defs.version, n=200)
