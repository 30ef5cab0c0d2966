"""Storage settings: one msgspec Struct, to be nested in the broker's main config.

Owns: ``StoreSettings`` (defaults, bounds, docs). ``config/shardmq.toml`` should
document the same fields under ``[store]`` once the lead wires it in.

Invariants: a constructed (or ``msgspec.convert``-ed) ``StoreSettings`` is valid; the
safe fsync policy ("always") is the default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

FsyncPolicy = Literal["always", "batch", "off"]

MiB = 1024 * 1024


class StoreSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    # "always": a publish is confirmed only after the fsync that covers it; flushes that
    #   arrive while an fsync runs share the next one (group commit).
    # "batch": like always, but fsyncs start at most every ``batch_interval_ms``;
    #   confirms wait for them (fewer fsyncs, higher confirm latency).
    # "off": no fsync; confirms go out once the data is written to the OS page cache
    #   (survives kill -9 of the broker, not a power loss or kernel crash).
    fsync: FsyncPolicy = "always"
    batch_interval_ms: Annotated[int, Meta(ge=1, le=10_000)] = 10
    # Ack / delivered markers are written every event-loop turn but fsynced at most this
    # often (never on a confirm's critical path): after a power loss, acks of the last
    # ``index_sync_ms`` may be forgotten and those messages delivered again. 0 = every round.
    index_sync_ms: Annotated[int, Meta(ge=0, le=60_000)] = 100
    # Size at which a queue's segment file is closed and a new one started. A segment's
    # space is freed when every message in it has been acknowledged.
    segment_size: Annotated[int, Meta(ge=4096, le=1 << 30)] = 32 * MiB
    # Per durable queue: bytes of ready messages kept in memory; beyond it persistent
    # messages stay on disk only and are paged in as the queue drains.
    queue_memory_budget: Annotated[int, Meta(ge=4096)] = 16 * MiB
    # Publishers are blocked (connection.blocked) while free space under data_dir is
    # below this many bytes.
    disk_free_limit: Annotated[int, Meta(ge=0)] = 50_000_000
    # How often the free-disk monitor looks (seconds).
    disk_check_interval: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    # Threads that fsync files of different queues in parallel within one commit round.
    sync_threads: Annotated[int, Meta(ge=1, le=64)] = 2
