"""Policies set, listed and cleared with ``shardmq ctl`` (rabbitmqctl's syntax) on a
running broker; refusals exit 69 with rabbitmqctl's texts and change nothing."""

from __future__ import annotations

import json

from tests.support.ctl import ctl

from .conftest import Broker
from .helpers import unique


def _policies(broker: Broker) -> dict[str, dict[str, object]]:
    res = ctl(broker, "list_policies", "--formatter", "json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    out = {}
    for row in rows:
        d = row["definition"]
        row["definition"] = json.loads(d) if isinstance(d, str) else d
        out[row["name"]] = row
    return out


def test_set_list_clear_policy(broker: Broker) -> None:
    name = unique("pol")
    res = ctl(
        broker,
        "set_policy",
        "--priority",
        "3",
        "--apply-to",
        "queues",
        name,
        f"^{name}\\.",
        '{"max-length": 10, "overflow": "reject-publish"}',
    )
    assert res.returncode == 0, res.stderr
    assert f'Setting policy "{name}"' in res.stdout
    try:
        got = _policies(broker)[name]
        assert got["vhost"] == "/"
        assert got["pattern"] == f"^{name}\\."
        assert got["apply-to"] == "queues"
        assert got["priority"] == 3
        assert got["definition"] == {"max-length": 10, "overflow": "reject-publish"}
        table = ctl(broker, "list_policies")
        assert table.returncode == 0
        assert "vhost\tname\tpattern\tapply-to\tdefinition\tpriority" in table.stdout
        # replacing keeps one policy of that name
        res = ctl(broker, "set_policy", name, "^x", '{"expires": 5000}')
        assert res.returncode == 0, res.stderr
        got = _policies(broker)[name]
        assert got["definition"] == {"expires": 5000} and got["apply-to"] == "all"
    finally:
        res = ctl(broker, "clear_policy", name)
    assert res.returncode == 0, res.stderr
    assert name not in _policies(broker)


def test_invalid_policies_are_refused_with_rabbitmqs_text(broker: Broker) -> None:
    name = unique("bad")
    for definition, text in [
        ('{"message-ttl": -1}', "-1 is not a valid message TTL"),
        ('{"foo": 1}', "are not recognised policy settings"),
        ("{}", "no policy provided"),
        ('{"overflow": "bogus"}', "is not a valid overflow value"),
    ]:
        res = ctl(broker, "set_policy", name, ".*", definition)
        assert res.returncode == 69, (definition, res.stdout, res.stderr)
        assert "Validation failed" in res.stderr and text in res.stderr, res.stderr
    res = ctl(broker, "set_policy", "--apply-to", "bogus", name, ".*", '{"max-length": 1}')
    assert res.returncode == 69
    assert "apply-to 'bogus' unrecognised" in res.stderr
    res = ctl(broker, "set_policy", name, "[", '{"max-length": 1}')
    assert res.returncode == 69
    assert "pattern should be regular expression but is invalid" in res.stderr
    assert name not in _policies(broker)
    res = ctl(broker, "clear_policy", name)
    assert res.returncode == 69
    assert "Parameter does not exist" in res.stderr
