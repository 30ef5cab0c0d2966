"""The worker side of ``tests.celeryapp``: ``celery -A tests.celeryapp.worker worker``.

Owns: ``app``, built from ``SHARDMQ_CELERY_BROKER`` (broker URL) and
``SHARDMQ_CELERY_PREFIX`` (queue name prefix) set by the test that starts the worker.
"""

from __future__ import annotations

import os

from tests.celeryapp import make_app

app = make_app(os.environ["SHARDMQ_CELERY_BROKER"], os.environ["SHARDMQ_CELERY_PREFIX"])
