"""``shardmq ctl`` commands on a running broker's objects and clients: ``purge_queue``,
``delete_queue`` (rabbitmqctl's names, arguments, progress lines and output).

Owns: those click commands (``COMMANDS``, added to ``shardmq ctl`` by ``shardmq.cli``).
They talk to the control socket as the commands of ``shardmq.ctlcommands`` do (same
``--data-dir``/``--config`` lookup, ``--formatter``).

Invariants: exit codes as rabbitmqctl's: 0 done, 1 refused by the broker (unknown
queue, precondition), 2 bad usage (click), 69 no broker reachable.
"""

from __future__ import annotations

from typing import Any

import click

from shardmq.ctlcommands import broker_options, request, vhost_option


@click.command("purge_queue")
@broker_options
@vhost_option
@click.argument("name")
@click.pass_context
def purge_queue(ctx: click.Context, vhost: str, name: str, **opts: Any) -> None:
    """Remove the ready messages of queue NAME."""
    click.echo(f"Purging queue '{name}' in vhost '{vhost}' ...")
    request(ctx, opts, "purge_queue", vhost=vhost, name=name)


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


COMMANDS = [purge_queue, delete_queue]
