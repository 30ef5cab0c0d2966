"""Suite-wide: every broker a test starts serves its management API on a free port
unless its config names one (``shardmq.management``), so parallel brokers never contend
for 15672."""

import os

os.environ.setdefault("SHARDMQ_MANAGEMENT_PORT", "0")
