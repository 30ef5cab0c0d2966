"""``shardmq ctl`` commands for limits, with rabbitmqctl's names, arguments and output:
``set_vhost_limits [-p VHOST] JSON``, ``clear_vhost_limits [-p VHOST]``,
``list_vhost_limits [-p VHOST] [--global]``, ``set_user_limits USER JSON``,
``clear_user_limits USER NAME|all``, ``list_user_limits [--user USER] [--global]``.

Owns: the click commands (the broker side is ``workers.admin_limits``); they are
added to ``shardmq ctl`` by ``shardmq.cli`` beside ``shardmq.ctlcommands.COMMANDS``.
Output as rabbitmqctl 3.10: a progress line, then for one vhost or user its limits as
compact JSON; with ``--global`` a tab-separated table (``vhost``/``user``, ``limits``).
"""

from __future__ import annotations

import json
from typing import Any

import click

from shardmq.ctlcommands import broker_options, formatter_option, print_rows, request, vhost_option


@click.command("set_vhost_limits")
@broker_options
@vhost_option
@click.argument("definition")
@click.pass_context
def set_vhost_limits(ctx: click.Context, vhost: str, definition: str, **opts: Any) -> None:
    """Replace a vhost's limits: DEFINITION is a JSON object, e.g.
    '{"max-connections": 100, "max-queues": 500}' (a negative value: no limit)."""
    click.echo(f'Setting vhost limits to "{definition}" for vhost "{vhost}" ...')
    request(ctx, opts, "set_vhost_limits", vhost=vhost, limits=definition)


@click.command("clear_vhost_limits")
@broker_options
@vhost_option
@click.pass_context
def clear_vhost_limits(ctx: click.Context, vhost: str, **opts: Any) -> None:
    """Remove every limit of a vhost."""
    click.echo(f'Clearing vhost "{vhost}" limits ...')
    request(ctx, opts, "clear_vhost_limits", vhost=vhost)


@click.command("list_vhost_limits")
@broker_options
@vhost_option
@click.option("--global", "all_", is_flag=True, help="Every vhost's limits.")
@formatter_option
@click.pass_context
def list_vhost_limits(
    ctx: click.Context, vhost: str, all_: bool, formatter: str, **opts: Any
) -> None:
    """A vhost's limits (or, with --global, every vhost's)."""
    rows = request(ctx, opts, "list_vhost_limits", vhost=vhost, all=all_)
    if all_:
        if formatter != "json":
            click.echo("Listing limits for all vhosts ...")
        if rows or formatter == "json":
            print_rows(rows, ["vhost", "limits"], formatter)
        else:
            click.echo("")
        return
    value = rows[0]["limits"] if rows else ""
    if formatter == "json":
        click.echo(json.dumps({"result": "ok", "value": value}))
        return
    click.echo(f'Listing limits for vhost "{vhost}" ...')
    click.echo(value)


@click.command("set_user_limits")
@broker_options
@click.argument("user")
@click.argument("definition")
@click.pass_context
def set_user_limits(ctx: click.Context, user: str, definition: str, **opts: Any) -> None:
    """Merge limits into USER's: DEFINITION is a JSON object, e.g.
    '{"max-connections": 10, "max-channels": 100}' (a negative value: no limit)."""
    click.echo(f'Setting user limits to "{definition}" for user "{user}" ...')
    request(ctx, opts, "set_user_limits", user=user, limits=definition)


@click.command("clear_user_limits")
@broker_options
@click.argument("user")
@click.argument("name")
@click.pass_context
def clear_user_limits(ctx: click.Context, user: str, name: str, **opts: Any) -> None:
    """Remove USER's limit NAME (max-connections, max-channels), or all of them."""
    if name == "all":
        click.echo(f'Clearing all limits for user "{user}" ...')
    else:
        click.echo(f'Clearing "{name}" limit for user "{user}" ...')
    request(ctx, opts, "clear_user_limits", user=user, name=name)


@click.command("list_user_limits")
@broker_options
@click.option("--user", default="guest", show_default=True)
@click.option("--global", "all_", is_flag=True, help="Every user's limits.")
@formatter_option
@click.pass_context
def list_user_limits(
    ctx: click.Context, user: str, all_: bool, formatter: str, **opts: Any
) -> None:
    """A user's limits (or, with --global, every user's)."""
    rows = request(ctx, opts, "list_user_limits", user=user, all=all_)
    if all_:
        if formatter != "json":
            click.echo("Listing limits for all users ...")
        if rows or formatter == "json":
            print_rows(rows, ["user", "limits"], formatter)
        else:
            click.echo("")
        return
    value = rows[0]["limits"] if rows else "{}"
    if formatter == "json":
        click.echo(json.dumps({"message": value}))
        return
    click.echo(f'Listing limits for user "{user}" ...')
    click.echo(value)


COMMANDS = [
    set_vhost_limits,
    clear_vhost_limits,
    list_vhost_limits,
    set_user_limits,
    clear_user_limits,
    list_user_limits,
]
