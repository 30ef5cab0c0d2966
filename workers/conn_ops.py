"""Client operations the admin side runs on every worker (through
``workers.worker_ops``): ``clients`` (this worker's open connections, their channels and
consumers, as RabbitMQ's management rows) and ``close_connection`` (a forced close).

Owns: the ops (and ``sac_active``), ``gather_clients`` (the admin side's listing of
them all) and the row shapes (``connection_row``, ``channel_row``,
``consumer_row``; RabbitMQ 3.10's field names; the admin side adds ``node``) and
``connection_name`` (RabbitMQ's ``"PEER_HOST:PEER_PORT -> HOST:PORT"``). A client with
``management_fields`` (AMQP 1.0) gives its protocol's fields (``protocol`` "AMQP 1-0",
``sessions``, ``links``); its sessions are its channels.

Invariants:
- A connection lives on the worker that accepted it, so every worker is asked and each
  answers for its own: a listing is the union, a close is done by the one that has it.
- Only open connections (past connection.open) are listed, as RabbitMQ lists them.
- A forced close is connection.close 320 with ``CONNECTION_FORCED - <reason>``, the
  reason ``X-Reason`` gave (RabbitMQ's default otherwise), and one log line.
- Rows are made when asked, by walking the worker's connections and channels once;
  nothing is counted per message for them (``recv_oct``/``send_oct`` and the read and
  write counts are the socket layer's, one add per read or write call).
- A consumer's ``active``/``activity_status`` on a single-active-consumer queue is
  known to the queue's owner: ``sac_active`` lists the owner's first consumers, and
  the admin side settles the rows of consumers whose queue is on another worker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from shardmq.amqp.errors import CONNECTION_FORCED
from shardmq.broker.connection import peer_host
from shardmq.broker.consumer_order import single_active
from shardmq.broker.queue import Consumer, Queue
from workers.queue_ops import json_value
from workers.worker_ops import call_all, op

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker
    from shardmq.broker.channel import Channel
    from shardmq.broker.connection import BrokerConnection

log = logging.getLogger("shardmq.ops")

DEFAULT_REASON = "Closed via management plugin"


def _port(peer: str) -> int:
    try:
        return int(peer.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0


def _local(conn: BrokerConnection, broker: Broker) -> tuple[str, int]:
    """The address and port the client connected to."""
    transport = getattr(getattr(conn.client, "io", None), "transport", None)
    where = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(where, tuple) and len(where) >= 2:
        return str(where[0]), int(where[1])
    return broker.config.server.host, broker.config.server.port


def connection_name(conn: BrokerConnection, broker: Broker) -> str:
    host, port = _local(conn, broker)
    return f"{peer_host(conn.peer)}:{_port(conn.peer)} -> {host}:{port}"


def connection_row(conn: BrokerConnection, broker: Broker) -> dict[str, Any]:
    client: Any = conn.client
    engine = getattr(client, "engine", None)
    tls = getattr(client, "tls", None)
    host, port = _local(conn, broker)
    if conn.alarm_blocked:
        state = "blocked" if conn.published else "blocking"
    else:
        state = "running"
    row: dict[str, Any] = {
        "name": connection_name(conn, broker),
        "type": "network",
        "user": conn.user,
        "user_who_performed_action": conn.user,
        "vhost": conn.vhost.name,
        "host": host,
        "port": port,
        "peer_host": peer_host(conn.peer),
        "peer_port": _port(conn.peer),
        "channels": len(conn.channels),
        "state": state,
        "ssl": tls is not None,
        "ssl_protocol": tls.version if tls is not None else "",
        "ssl_key_exchange": "",
        "ssl_cipher": "",
        "ssl_hash": "",
        "peer_cert_subject": "",
        "peer_cert_issuer": "",
        "peer_cert_validity": "",
        "auth_mechanism": getattr(client, "auth_mechanism", ""),
        "connected_at": int(getattr(client, "connected_at", 0) * 1000),
        "send_pend": 0,
        "_gid": conn.gid,  # unique across workers (``sac_active``); the admin side drops it
        **_traffic(client),
    }
    own = getattr(client, "management_fields", None)
    if own is not None:  # AMQP 1.0: protocol, timeout, frame_max, sessions, links, ...
        row.update(own())
    else:
        row.update(
            protocol="AMQP 0-9-1",
            client_properties=json_value(engine.client_properties) if engine else {},
            timeout=engine.heartbeat if engine else 0,
            frame_max=engine.frame_max if engine else 0,
            channel_max=engine.channel_max if engine else 0,
        )
    return row


def _traffic(client: Any) -> dict[str, int]:
    """Bytes and socket reads/writes so far (``shardmq.net.server.AMQPProtocol``)."""
    io = getattr(client, "io", None)
    return {k: int(getattr(io, k, 0)) for k in ("recv_oct", "recv_cnt", "send_oct", "send_cnt")}


def channel_row(ch: Channel, conn_row: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": f"{conn_row['name']} ({ch.number})",
        "number": ch.number,
        "user": conn_row["user"],
        "user_who_performed_action": conn_row["user"],
        "vhost": conn_row["vhost"],
        "connection_details": {
            "name": conn_row["name"],
            "peer_host": conn_row["peer_host"],
            "peer_port": conn_row["peer_port"],
        },
        "consumer_count": len(ch.consumers),
        "messages_unacknowledged": len(ch.unacked),
        "messages_unconfirmed": len(ch.unconfirmed),
        "messages_uncommitted": len(ch.tx_publishes),
        "acks_uncommitted": len(ch.tx_acks),
        "prefetch_count": ch.prefetch,
        "global_prefetch_count": ch.global_prefetch,
        "confirm": ch.confirm,
        "transactional": ch.tx,
        "state": "running" if ch.flow else "flow",
    }


def consumer_row(c: Consumer, ch_row: dict[str, Any], conn_row: dict[str, Any]) -> dict[str, Any]:
    return {
        "consumer_tag": c.tag,
        "queue": {"name": c.queue.name, "vhost": conn_row["vhost"]},
        "channel_details": {
            "name": ch_row["name"],
            "number": ch_row["number"],
            "connection_name": conn_row["name"],
            "peer_host": conn_row["peer_host"],
            "peer_port": conn_row["peer_port"],
            "user": conn_row["user"],
        },
        "ack_required": not c.no_ack,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch,
        "arguments": json_value(c.arguments or {}),
        **_activity(c, ch_row, conn_row),
    }


def _activity(c: Consumer, ch_row: dict[str, Any], conn_row: dict[str, Any]) -> dict[str, Any]:
    """RabbitMQ 3.10's ``active`` and ``activity_status``: "up" but on a queue with a
    single active consumer, where the first consumer is "single_active" and the others
    "waiting" (inactive). A queue owned by another worker: that worker knows which is
    first (``sac_active``), so the row carries ``_sac`` for the admin side to settle."""
    q = c.queue
    if not single_active(q.arguments):
        return {"active": True, "activity_status": "up"}
    if isinstance(q, Queue):
        first = bool(q.consumers) and q.consumers[0] is c
        return {"active": first, "activity_status": "single_active" if first else "waiting"}
    key = [q.vhost, q.name, conn_row["_gid"], ch_row["number"], c.tag]
    return {"active": False, "activity_status": "waiting", "_sac": key}


@op("sac_active")
def sac_active(broker: Broker, args: dict[str, Any]) -> list[list[Any]]:
    """The active consumer of each single-active-consumer queue this worker owns:
    ``[vhost, queue, connection gid, channel number, consumer tag]``."""
    out: list[list[Any]] = []
    for vh in broker.vhosts.values():
        for q in vh.queues.values():
            if not isinstance(q, Queue) or not q.consumers or not single_active(q.arguments):
                continue
            c: Any = q.consumers[0]
            if isinstance(c, Consumer):
                key = [c.channel.conn.gid, c.channel.number, c.tag]
            else:  # a consumer on another worker (``xshard.owner.ProxyConsumer``)
                key = [c.gid, c.chnum, c.tag]
            out.append([vh.name, q.name, *key])
    return out


@op("clients")
def clients(broker: Broker, args: dict[str, Any]) -> list[dict[str, Any]]:
    """This worker's open connections, each with ``_channels`` (each with
    ``_consumers``), which the admin side takes apart."""
    rows: list[dict[str, Any]] = []
    for conn in list(broker.connections):
        row = connection_row(conn, broker)
        chans = []
        for ch in sorted(conn.channels.values(), key=lambda c: c.number):
            ch_row = channel_row(ch, row)
            ch_row["_consumers"] = [consumer_row(c, ch_row, row) for c in ch.consumers.values()]
            chans.append(ch_row)
        row["_channels"] = chans
        rows.append(row)
    return rows


@op("close_connection")
def close_connection(broker: Broker, args: dict[str, Any]) -> int:
    """Close the connections named ``name`` (0 or 1 here); how many were closed."""
    name = args.get("name")
    reason = args.get("reason") or DEFAULT_REASON
    closed = 0
    for conn in list(broker.connections):
        if connection_name(conn, broker) == name and not conn.closing:
            text = f"CONNECTION_FORCED - {reason}"
            log.info("closing connection %s: %s (management)", conn.peer, text)
            conn.client.close(CONNECTION_FORCED, text)
            closed += 1
    return closed


# ---------------------------------------------------------------------- admin side
async def gather_clients(data_dir: str) -> list[dict[str, Any]]:
    """Every worker's open connections (op ``clients``; each with ``_channels``, each
    with ``_consumers``), sorted by name, with the consumers of single-active-consumer
    queues owned by another worker settled (op ``sac_active`` of the owners, asked
    only when there are such consumers)."""
    rows = [row for _slot, answer in await call_all(data_dir, "clients", {}) for row in answer]
    rows.sort(key=lambda r: r["name"])
    pending = [
        c for row in rows for ch in row["_channels"] for c in ch["_consumers"] if "_sac" in c
    ]
    if pending:
        firsts = {
            tuple(key)
            for _slot, answer in await call_all(data_dir, "sac_active", {})
            for key in answer
        }
        for c in pending:
            if tuple(c.pop("_sac")) in firsts:
                c["active"], c["activity_status"] = True, "single_active"
    return rows
