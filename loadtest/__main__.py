"""``python -m loadtest``: the same as ``python -m loadtest.bench`` / ``shardmq bench``."""

import sys

from loadtest.bench import main

sys.exit(main())
