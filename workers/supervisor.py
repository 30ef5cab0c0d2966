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


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(config: Config) -> int:
    setup_logging(config.server.log_level)
    os.makedirs(config.server.data_dir, exist_ok=True)
    from shardmq.net.server import serve

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0
