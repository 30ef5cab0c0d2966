"""Cross-worker data plane: the records that cross the rings (``records``), the owning
worker's side of a queue used from elsewhere (``owner``) and the using worker's side
(``user``). ``shardmq.broker.shards.ShardRouter`` puts the two sides behind one entry
point for the broker."""
