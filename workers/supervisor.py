"""Process layer: run the broker's worker(s), logging, signals, data directory.

Owns: process start-up and exit codes. With one worker the broker runs in this process
and needs no shared memory at all. No AMQP logic lives here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from shardmq.config import Config
from workers.sdnotify import notify, watchdog_interval


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _main(config: Config) -> None:
    from shardmq.net.server import serve

    loop = asyncio.get_running_loop()
    interval = watchdog_interval()
    if interval:

        def ping() -> None:
            notify("WATCHDOG=1")
            loop.call_later(interval, ping)

        loop.call_later(interval, ping)

    def ready(addrs: str) -> None:
        notify(f"READY=1\nSTATUS=accepting AMQP on {addrs}\nMAINPID={os.getpid()}")

    await serve(config, ready=ready)
    notify("STOPPING=1")


def run(config: Config) -> int:
    setup_logging(config.server.log_level)
    os.makedirs(config.server.data_dir, exist_ok=True)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(_main(config))
    else:
        uvloop.run(_main(config))
    return 0
