"""``shardmq ctl`` commands on a running broker's objects and clients: ``purge_queue``,
``delete_queue``, ``list_queues [-p VHOST] [COLUMN...]``, ``list_exchanges``,
``list_bindings``, ``list_connections``, ``list_channels``, ``list_consumers``,
``close_connection NAME REASON``, ``export_definitions FILE``, ``import_definitions
FILE`` (``-``: stdout / stdin) and ``environment`` (rabbitmqctl's names, arguments,
column names, progress lines and output; ``--formatter json|table``).

Owns: those click commands (``COMMANDS``, added to ``shardmq ctl`` by ``shardmq.cli``).
They talk to the control socket through ``shardmq.ctlbase`` as every ctl command does
(same ``--data-dir``/``--config`` lookup, ``--formatter``).

Invariants: exit codes as rabbitmqctl's: 0 done, 1 refused by the broker (unknown
queue, precondition), 2 bad usage (click: a missing argument, an unknown column), 69
no broker reachable. A listing prints only the columns asked for (rabbitmqctl's
defaults otherwise), in the order asked.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from shardmq.ctlbase import (
    action_command,
    broker_options,
    formatter_option,
    print_rows,
    refuse,
    request,
    vhost_option,
)

purge_queue = action_command(
    "purge_queue",
    "Remove the ready messages of queue NAME.",
    "Purging queue '{name}' in vhost '{vhost}' ...",
    "name",
    vhost=True,
)


@click.command("delete_queue")
@broker_options
@vhost_option
@click.option("--if-empty", "-e", "if_empty", is_flag=True, help="Only if it has no messages.")
@click.option("--if-unused", "-u", "if_unused", is_flag=True, help="Only if it has no consumers.")
@click.argument("name")
@click.pass_context
def delete_queue(
    ctx: click.Context, vhost: str, if_empty: bool, if_unused: bool, name: str, **opts: Any
) -> None:
    """Delete queue NAME (with its messages)."""
    cond = " and ".join(
        c for c, on in (("if queue is empty", if_empty), ("if queue is unused", if_unused)) if on
    )
    click.echo(f"Deleting queue '{name}' on vhost '{vhost}'{' ' + cond if cond else ''} ...")
    n = request(
        ctx, opts, "delete_queue", vhost=vhost, name=name, if_empty=if_empty, if_unused=if_unused
    )
    click.echo(f"Queue was successfully deleted with {n} messages")


# ---------------------------------------------------------------------- listings
# command -> (what it lists, takes -p, rabbitmqctl's default columns, the columns shardmq has)
LISTINGS: dict[str, tuple[str, bool, list[str], list[str]]] = {
    "list_queues": (
        "queues",
        True,
        ["name", "messages"],
        [
            "name",
            "vhost",
            "durable",
            "auto_delete",
            "exclusive",
            "arguments",
            "policy",
            "pid",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "messages_persistent",
            "consumers",
            "memory",
            "state",
            "type",
            "worker",
        ],
    ),
    "list_exchanges": (
        "exchanges",
        True,
        ["name", "type"],
        ["name", "vhost", "type", "durable", "auto_delete", "internal", "arguments", "policy"],
    ),
    "list_bindings": (
        "bindings",
        True,
        [
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
        ],
        [
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
            "vhost",
        ],
    ),
    "list_connections": (
        "connections",
        False,
        ["user", "peer_host", "peer_port", "state"],
        [
            "pid",
            "name",
            "port",
            "host",
            "peer_port",
            "peer_host",
            "ssl",
            "ssl_protocol",
            "state",
            "channels",
            "protocol",
            "auth_mechanism",
            "user",
            "vhost",
            "timeout",
            "frame_max",
            "channel_max",
            "client_properties",
            "connected_at",
            "type",
        ],
    ),
    "list_channels": (
        "channels",
        False,
        ["pid", "user", "consumer_count", "messages_unacknowledged"],
        [
            "pid",
            "connection",
            "name",
            "number",
            "user",
            "vhost",
            "transactional",
            "confirm",
            "consumer_count",
            "messages_unacknowledged",
            "messages_uncommitted",
            "acks_uncommitted",
            "messages_unconfirmed",
            "prefetch_count",
            "global_prefetch_count",
            "state",
        ],
    ),
    "list_consumers": (
        "consumers",
        True,
        [
            "queue_name",
            "channel_pid",
            "consumer_tag",
            "ack_required",
            "prefetch_count",
            "active",
            "arguments",
        ],
        [
            "queue_name",
            "channel_pid",
            "consumer_tag",
            "ack_required",
            "prefetch_count",
            "active",
            "activity_status",
            "exclusive",
            "arguments",
        ],
    ),
}


def _listing(command: str) -> click.Command:
    what, per_vhost, default, known = LISTINGS[command]

    @click.pass_context
    def run(ctx: click.Context, formatter: str, columns: tuple[str, ...], **opts: Any) -> None:
        wanted = list(columns) or default
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise click.UsageError(
                f"Invalid info item(s): {', '.join(unknown)}; valid: {' '.join(known)}"
            )
        vhost = opts.pop("vhost", None)
        args = {"vhost": vhost} if per_vhost else {}
        rows = request(ctx, opts, command, **args)
        if formatter != "json":
            where = f" for vhost {vhost}" if per_vhost else ""
            click.echo(f"Listing {what}{where} ...")
        print_rows([{c: r.get(c) for c in wanted} for r in rows], wanted, formatter)

    run.__doc__ = (
        f"The {what}{' of a virtual host' if per_vhost else ''}: COLUMNS among "
        f"{' '.join(known)} (default: {' '.join(default)})."
    )
    fn: Any = run
    fn = click.argument("columns", nargs=-1)(fn)
    fn = formatter_option(fn)
    if per_vhost:
        fn = vhost_option(fn)
    fn = broker_options(fn)
    return click.command(command)(fn)


close_connection = action_command(
    "close_connection",
    "Close connection NAME (as list_connections names it) with REASON: the client "
    "gets connection.close 320 CONNECTION_FORCED - REASON.",
    "Closing connection {name}, reason: {reason}...",
    "name",
    "reason",
)


@click.command("export_definitions")
@broker_options
@click.argument("path")
@click.pass_context
def export_definitions(ctx: click.Context, path: str, **opts: Any) -> None:
    """Write the broker's definitions (RabbitMQ's JSON) to PATH ("-": stdout)."""
    doc = request(ctx, opts, "export_definitions")
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if path == "-":
        click.echo(text)
        return
    click.echo(f'Exporting definitions in JSON to a file at "{path}" ...')
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError as exc:
        refuse(f"cannot write {path}: {exc.strerror or exc}", 1)


@click.command("import_definitions")
@broker_options
@click.argument("path")
@click.pass_context
def import_definitions(ctx: click.Context, path: str, **opts: Any) -> None:
    """Import definitions (RabbitMQ's JSON) from PATH ("-": stdin)."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        refuse(f"cannot read {path}: {exc.strerror or exc}", 1)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        refuse(f"{path} is not valid JSON: {exc}", 1)
    if not isinstance(doc, dict):
        refuse(f"{path} is not a definitions object", 1)
    click.echo(f'Importing definitions in JSON from a file at "{path}" ...')
    request(ctx, opts, "import_definitions", definitions=doc)
    click.echo("Successfully imported definitions.")


@click.command("environment")
@broker_options
@formatter_option
@click.pass_context
def environment(ctx: click.Context, formatter: str, **opts: Any) -> None:
    """The settings the running broker uses (seed users' passwords left out)."""
    env = request(ctx, opts, "environment")
    if formatter == "json":
        click.echo(json.dumps(env, ensure_ascii=False))
        return
    click.echo("Application environment of node shardmq ...")
    for section, values in env.items():
        if isinstance(values, dict):
            for key, value in values.items():
                click.echo(f"{section}.{key} = {json.dumps(value, ensure_ascii=False)}")
        else:
            click.echo(f"{section} = {json.dumps(values, ensure_ascii=False)}")


COMMANDS = [
    purge_queue,
    delete_queue,
    *(_listing(name) for name in LISTINGS),
    close_connection,
    export_definitions,
    import_definitions,
    environment,
]
