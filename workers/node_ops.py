"""What one worker tells the admin side about itself for ``/api/nodes`` and the
overview's totals (through ``workers.worker_ops``): the ``node`` op.

Owns: the op and its answer (``pid``, ``mem_used`` (resident bytes), ``mem_limit``,
``fd_used``, ``fd_total``, ``connections``, ``channels``, ``tasks``, the alarms,
``disk_free_limit``).

Invariants: read from the worker's own state and the OS at the request, in one loop
turn; nothing is counted per message or kept between requests.
"""

from __future__ import annotations

import asyncio
import resource
from typing import TYPE_CHECKING, Any

from shardmq.net.limits import fds_in_use
from workers.lifecycle import memory_limit, rss_bytes
from workers.worker_ops import op

if TYPE_CHECKING:
    from shardmq.broker.broker import Broker


@op("node")
def node(broker: Broker, args: dict[str, Any]) -> dict[str, Any]:
    import os

    server = broker.config.server
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = 0
    return {
        "pid": os.getpid(),
        "mem_used": rss_bytes(),
        "mem_limit": memory_limit(server.memory_high_watermark, server.memory_limit_absolute),
        "fd_used": fds_in_use(),
        "fd_total": soft if soft != resource.RLIM_INFINITY else 0,
        "connections": len(broker.connections),
        "channels": sum(len(c.channels) for c in broker.connections),
        "tasks": tasks,
        "mem_alarm": broker.memory_alarm,
        "disk_free_alarm": broker.disk_alarm,
        "fd_alarm": broker.fd_alarm,
        "disk_free_limit": broker.config.store.disk_free_limit,
    }
