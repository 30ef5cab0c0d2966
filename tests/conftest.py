"""Suite-wide: every broker a test starts serves its management API and its Prometheus
metrics on free ports unless its config names them (``shardmq.management``,
``shardmq.prometheus``), so parallel brokers never contend for 15672 and 15692.

Also guards the session against a test module that imports locust (or gevent) at
collection: gevent's monkey-patching would then reach every later test's subprocess
and socket calls and make them hang far from the cause."""

import os
import sys

import pytest

os.environ.setdefault("SHARDMQ_MANAGEMENT_PORT", "0")
os.environ.setdefault("SHARDMQ_PROMETHEUS_PORT", "0")


def pytest_collection_finish(session: pytest.Session) -> None:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_anything_patched():
        raise pytest.UsageError(
            "a test module imported locust/gevent at collection and monkey-patched the "
            "standard library for the whole session; import it in a child process"
        )
