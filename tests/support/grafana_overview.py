"""The metric names RabbitMQ's published Grafana dashboard "RabbitMQ-Overview" queries.

Source: rabbitmq/rabbitmq-server,
deps/rabbitmq_prometheus/docker/grafana/dashboards/RabbitMQ-Overview.json at commit
008e4584cd3dd8cb3b7e82f338a9a6315c5315b1 (dashboard version 20210322): every metric
name in its panels' ``expr`` queries and its template variables, listed by hand (the
dashboard itself is not copied). ``tests/integration/test_prometheus.py`` checks that
shardmq's ``/metrics`` has each of them, so the dashboard's queries resolve.
"""

OVERVIEW_DASHBOARD_METRICS = (
    "rabbitmq_identity_info",
    "rabbitmq_build_info",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages_published_total",
    "rabbitmq_queues",
    "rabbitmq_queues_declared_total",
    "rabbitmq_queues_created_total",
    "rabbitmq_queues_deleted_total",
    "rabbitmq_channels",
    "rabbitmq_channels_opened_total",
    "rabbitmq_channels_closed_total",
    "rabbitmq_channel_consumers",
    "rabbitmq_channel_messages_published_total",
    "rabbitmq_channel_messages_confirmed_total",
    "rabbitmq_channel_messages_unconfirmed",
    "rabbitmq_channel_messages_unroutable_dropped_total",
    "rabbitmq_channel_messages_unroutable_returned_total",
    "rabbitmq_channel_messages_delivered_total",
    "rabbitmq_channel_messages_delivered_ack_total",
    "rabbitmq_channel_messages_redelivered_total",
    "rabbitmq_channel_messages_acked_total",
    "rabbitmq_channel_get_total",
    "rabbitmq_channel_get_ack_total",
    "rabbitmq_channel_get_empty_total",
    "rabbitmq_connections",
    "rabbitmq_connections_opened_total",
    "rabbitmq_connections_closed_total",
    "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_disk_space_available_bytes",
    "rabbitmq_process_max_fds",
    "rabbitmq_process_open_fds",
    "rabbitmq_process_max_tcp_sockets",
    "rabbitmq_process_open_tcp_sockets",
)
