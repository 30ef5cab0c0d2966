"""Fixtures for the load generator's tests: the integration tier's ``broker``.

With ``SHARDMQ_TEST_URI`` set (e.g. ``amqp://guest:guest@127.0.0.1:5672/``) the tests run
against that broker; otherwise the integration fixture starts a shardmq.
"""

from tests.integration.conftest import broker  # noqa: F401  (re-exported fixture)
