"""``shardmq ctl`` commands for limits, with rabbitmqctl's names, arguments and output:
``set_vhost_limits [-p VHOST] JSON``, ``clear_vhost_limits [-p VHOST]``,
``list_vhost_limits [-p VHOST] [--global]``, ``set_user_limits USER JSON``,
``clear_user_limits USER NAME|all``, ``list_user_limits [--user USER] [--global]``.

Owns: the click commands (the broker side is ``workers.admin_limits``); they are
added to ``shardmq ctl`` by ``shardmq.cli`` beside ``shardmq.ctlcommands.COMMANDS``
(the shared pieces are ``shardmq.ctlbase``'s).
Output as rabbitmqctl 3.10: a progress line, then for one vhost or user its limits as
compact JSON; with ``--global`` a tab-separated table (``vhost``/``user``, ``limits``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from shardmq.ctlbase import (
    action_command,
    broker_options,
    formatter_option,
    print_rows,
    request,
    vhost_option,
)


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


clear_vhost_limits = action_command(
    "clear_vhost_limits",
    "Remove every limit of a vhost.",
    'Clearing vhost "{vhost}" limits ...',
    vhost=True,
)


def _show_limits(
    ctx: click.Context,
    opts: dict[str, Any],
    kind: str,
    name: str,
    all_: bool,
    formatter: str,
    none: str,
    as_json: Callable[[str], dict[str, Any]],
) -> None:
    """rabbitmqctl's output of ``list_{kind}_limits``: one vhost's or user's limits as
    compact JSON (NONE when it has none), or with ``--global`` a table of all of them."""
    rows = request(ctx, opts, f"list_{kind}_limits", **{kind: name}, all=all_)
    if all_:
        if formatter != "json":
            click.echo(f"Listing limits for all {kind}s ...")
        if rows or formatter == "json":
            print_rows(rows, [kind, "limits"], formatter)
        else:
            click.echo("")
        return
    value = rows[0]["limits"] if rows else none
    if formatter == "json":
        click.echo(json.dumps(as_json(value)))
        return
    click.echo(f'Listing limits for {kind} "{name}" ...')
    click.echo(value)


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
    _show_limits(
        ctx, opts, "vhost", vhost, all_, formatter, "", lambda v: {"result": "ok", "value": v}
    )


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
    _show_limits(ctx, opts, "user", user, all_, formatter, "{}", lambda v: {"message": v})


COMMANDS = [
    set_vhost_limits,
    clear_vhost_limits,
    list_vhost_limits,
    set_user_limits,
    clear_user_limits,
    list_user_limits,
]
