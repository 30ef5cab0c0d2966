"""Durable storage: queue segment stores, group commit, definitions, disk monitor.

Owns nothing itself; see the modules. Nothing here imports the broker's I/O layers:
the broker plugs stores into queues and calls ``flush()`` once per event-loop turn.
"""
