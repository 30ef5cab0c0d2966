"""Vhost and user limits survive a restart (clean and kill -9) on 1 and 3 workers, and a
lowered ``max-queues`` never keeps stored durable queues from being recovered."""

from __future__ import annotations

import json
from typing import Any

import pika
import pika.exceptions
import pytest

from .conftest import DurableBroker
from .test_access_restart import login, ok


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill9"])
def test_limits_survive_restart(make_durable: Any, workers: int, kill: bool) -> None:
    b: DurableBroker = make_durable(workers=workers)
    ok(b, "add_user", "app", "pw")
    ok(b, "add_vhost", "lim")
    ok(b, "set_permissions", "-p", "lim", "app", ".*", ".*", ".*")
    conn = login(b, "app", "pw", "lim")
    ch = conn.channel()
    for name in ("d1", "d2", "d3"):
        ch.queue_declare(name, durable=True)
    conn.close()
    # lower than the queues that exist: they stay, new ones are refused
    ok(b, "set_vhost_limits", "-p", "lim", '{"max-queues": 2, "max-connections": 1}')
    ok(b, "set_user_limits", "app", '{"max-channels": 1}')
    b.restart(kill=kill)
    out = ok(b, "list_vhost_limits", "-p", "lim")
    assert json.loads(out.splitlines()[-1]) == {"max-queues": 2, "max-connections": 1}
    out = ok(b, "list_user_limits", "--user", "app")
    assert json.loads(out.splitlines()[-1]) == {"max-channels": 1}
    conn = login(b, "app", "pw", "lim")
    try:
        ch = conn.channel()
        for name in ("d1", "d2", "d3"):
            ch.queue_declare(name, durable=True, passive=True)  # all recovered
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare("d4", durable=True)
        assert err.value.reply_code == 406
        with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
            login(b, "app", "pw", "lim")
        assert "connection limit (1) is reached" in str(refused.value)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            conn.channel()
            conn.channel()
        assert closed.value.reply_code == 530
    finally:
        if conn.is_open:
            conn.close()
