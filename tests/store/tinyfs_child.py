"""Child of test_tinyfs.py, run inside ``unshare -rm`` with a 256 KiB tmpfs mounted at
DIR: fill the disk for real, check the nacks and the alarm, free space by consuming,
publish again, restart. Prints a JSON report.

Usage: python -m tests.store.tinyfs_child DIR
"""

from __future__ import annotations

import json
import sys

from shardmq.store.commit import InlineCommitter
from shardmq.store.disk import DiskMonitor
from shardmq.store.queue_store import DiskQueueStore
from shardmq.store.settings import StoreSettings
from tests.store.helpers import make

SETTINGS = StoreSettings(segment_size=32 * 1024, fsync="always", index_sync_ms=0)


def main(root: str) -> None:
    durable: list[int] = []
    failed: list[tuple[int, int | None]] = []
    alarms: list[bool] = []
    monitor = DiskMonitor(root, 64 * 1024, on_change=alarms.append, recovery_margin=32 * 1024)

    def on_failed(tokens: list, exc: OSError) -> None:
        failed.extend((t, exc.errno) for t in tokens)
        monitor.note_write_error(exc)

    def open_store() -> DiskQueueStore:
        return DiskQueueStore.open(
            f"{root}/q",
            settings=SETTINGS,
            committer=InlineCommitter.from_settings(SETTINGS),
            on_durable=durable.extend,
            on_failed=on_failed,
        )

    s = open_store()
    i = 0
    while not failed and i < 10_000:
        for _ in range(20):
            i += 1
            s.push(make(b"%08d" % i + bytes(1000)), i)
        s.flush()
    pushed = i
    alarm_when_full = monitor.alarm
    drained = []
    while s:
        m = s.take()
        drained.append(int(m.body[:8]))
        s.ack(m)
        s.flush()
    monitor.check()
    alarm_after_drain = monitor.alarm
    before = len(durable)
    for _ in range(10):
        i += 1
        s.push(make(b"%08d" % i + bytes(1000)), i)
    s.flush()
    later_durable = durable[before:]
    s.close()
    r = open_store()
    back = []
    while r:
        back.append(int(r.take().body[:8]))
    print(
        json.dumps(
            {
                "pushed": pushed,
                "durable": len(durable) - len(later_durable),
                "failed": failed,
                "alarm_when_full": alarm_when_full,
                "alarm_after_drain": alarm_after_drain,
                "alarms": alarms,
                "drained": drained,
                "later_durable": later_durable,
                "back": back,
                "last": i,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
