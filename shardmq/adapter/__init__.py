"""Protocol adapters: each turns one wire protocol into calls on the broker's domain.

Owns nothing itself. ``amqp091`` composes the sans-IO AMQP 0-9-1 engine
(``shardmq.amqp.connection``) with a ``BrokerConnection`` (``shardmq.broker``); an AMQP
1.0 adapter goes beside it, implementing the same seams (``ClientLink``,
``ChannelSink``, and the I/O layer's ``ClientConnection``) over its own engine.
The layering is one way: ``adapter`` imports ``amqp`` and ``broker``, never the reverse.
"""
