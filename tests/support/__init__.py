"""Helpers shared by the test directories (and nothing else): one copy of each.

- ``ports``: ``free_port()`` on 127.0.0.1.
- ``probe``: ``amqp_answers(port)``: a broker is up once it answers the protocol header.
- ``launch``: start ``shardmq serve`` (or ``python -m workers.supervisor``) from this
  tree on 127.0.0.1 in its own session, and wait until it answers AMQP.
- ``procs``: processes: alive (not a zombie), descendants, bounded ``wait_for``.
- ``rawamqp``: a hand-rolled AMQP 0-9-1 client and frame builders for protocol tests.
"""
