"""AMQP 1.0 clients in the listings (issue 15 item 9): ``/api/connections`` and ``shardmq
ctl list_connections`` give RabbitMQ's protocol string ("AMQP 1-0" beside "AMQP 0-9-1"),
shardmq adds the connection's session and link counts; ``/api/channels`` lists its
sessions; ``shardmq ctl status`` counts AMQP 1.0 connections, sessions and links.
Qpid Proton and pika, 1 and 3 workers.
"""

from __future__ import annotations

from typing import Any

import pika
from proton.reactor import Container
from proton.utils import BlockingConnection

from tests.integration.test_management import _name, wait_for
from tests.integration.test_management_ops import Ops, ops

__all__ = ["ops"]  # the fixture


def test_amqp1_connections_sessions_and_links_are_listed(ops: Ops) -> None:
    m = ops.m
    q = _name("obs")
    pconn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", m.amqp_port))
    pconn.channel().queue_declare(q)
    box = Container()
    box.container_id = _name("observed")
    url = f"amqp://guest:guest@127.0.0.1:{m.amqp_port}"
    c = BlockingConnection(url, timeout=10, container=box, allowed_mechs="PLAIN")
    try:
        c.create_sender(f"/queue/{q}")
        c.create_receiver(f"/queue/{q}", credit=5)

        def amqp1_rows() -> list[dict[str, Any]]:
            rows = m.ok("GET", "/api/connections")
            # "AMQP 1-0" as RabbitMQ 4; RabbitMQ 3.10's plugin says "AMQP 1.0"
            return [r for r in rows if r["protocol"] in ("AMQP 1-0", "AMQP 1.0")]

        rows = wait_for(amqp1_rows)
        assert rows, m.ok("GET", "/api/connections")
        mine = rows
        if m.workers is not None:  # shardmq: the container-id, sessions and links
            mine = [
                r for r in rows if r["client_properties"].get("container_id") == box.container_id
            ]
            assert len(mine) == 1
            assert mine[0]["sessions"] == 1 and mine[0]["links"] == 2
            assert mine[0]["channels"] == 1 and mine[0]["auth_mechanism"] == "PLAIN"
        all_rows = m.ok("GET", "/api/connections")
        assert any(r["protocol"] == "AMQP 0-9-1" for r in all_rows)
        name = mine[0]["name"]
        chans = wait_for(
            lambda: [
                ch
                for ch in m.ok("GET", "/api/channels")
                if ch["connection_details"]["name"] == name
            ]
        )
        assert len(chans) >= 1
        if ops.data_dir is not None:
            out = ops.ctl("list_connections", "name", "protocol")
            assert out.returncode == 0, out.stderr
            assert f"{name}\tAMQP 1-0" in out.stdout, out.stdout
            assert "AMQP 0-9-1" in out.stdout
            status = ops.ctl("status")
            assert status.returncode == 0, status.stderr
            assert "1 AMQP 1.0: 1 session(s), 2 link(s)" in status.stdout, status.stdout
    finally:
        c.close()
        ch = pconn.channel()
        ch.queue_delete(q)
        pconn.close()
