"""Child process of test_crash.py: a store under random publish/consume/ack/requeue load.

Protocol on stdout (one line per fact, written only once the fact holds on disk as far
as a kill -9 is concerned):

    R <id> <0|1>   recovered at start, in store order, with its redelivered flag
    READY
    D <id>         the publish <id> is durable (on_durable after fsync)
    a <id>         <id> is about to be acked (said before the ack is written: a kill
                   after the write but before "A" must not make the test expect it)
    T <id>         <id> was delivered (its delivered marker is written)
    A <id>         <id> was acked (its ack is written)

Usage: python -m tests.store.crash_child DIR FIRST_ID SEED
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from shardmq.store.commit import ThreadCommitter
from shardmq.store.queue_store import DiskQueueStore
from shardmq.store.settings import StoreSettings
from tests.store.helpers import make

SETTINGS = StoreSettings(
    fsync="always", segment_size=64 * 1024, queue_memory_budget=32 * 1024, index_sync_ms=50
)


def emit(lines: list[str]) -> None:
    if lines:
        os.write(1, ("\n".join(lines) + "\n").encode())


async def main(path: str, next_id: int, seed: int) -> None:
    rnd = random.Random(seed)
    committer = ThreadCommitter.from_settings(SETTINGS)

    def on_durable(tokens: list) -> None:
        emit([f"D {t}" for t in tokens])

    def on_failed(tokens: list, exc: OSError) -> None:
        raise SystemExit(f"unexpected write failure {exc}")

    store = DiskQueueStore.open(
        path, settings=SETTINGS, committer=committer, on_durable=on_durable, on_failed=on_failed
    )
    recovered = []
    while store:
        m = store.take()
        recovered.append(m)
    store.flush()
    emit([f"R {int(m.body)} {int(m in store.redelivered)}" for m in recovered])
    store.redelivered.update(recovered)
    store.requeue(recovered)
    # Recovered messages may include publishes the parent never heard of (written, not
    # yet confirmed at the kill): new ids must sort after them, like their sids do.
    if recovered:
        next_id = max(next_id, int(recovered[-1].body) + 1)
    emit(["READY"])
    unacked: list = []
    while True:
        for _ in range(rnd.randint(0, 60)):
            persistent = rnd.random() > 0.05
            store.push(
                make(b"%d" % next_id, persistent=persistent, props=None),
                next_id if persistent else None,
            )
            next_id += 1
        taken, acked = [], []
        for _ in range(rnd.randint(0, 60)):
            if not store:
                break
            m = store.take()
            store.redelivered.discard(m)
            taken.append(m)
            if rnd.random() < 0.7:
                store.ack(m)
                acked.append(m)
            else:
                unacked.append(m)
        if unacked and rnd.random() < 0.3:
            rnd.shuffle(unacked)
            k = rnd.randint(1, len(unacked))
            back, unacked = unacked[:k], unacked[k:]
            half = len(back) // 2
            for m in back[:half]:
                store.ack(m)
                acked.append(m)
            store.redelivered.update(back[half:])
            store.requeue(back[half:])
        emit([f"a {int(m.body)}" for m in acked])
        store.flush()
        emit([f"T {int(m.body)}" for m in taken] + [f"A {int(m.body)}" for m in acked])
        await asyncio.sleep(rnd.choice((0, 0, 0.001, 0.003)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
