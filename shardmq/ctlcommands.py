"""``shardmq ctl`` commands that act on a running broker through its control socket.

Owns: the click commands (rabbitmqctl's names, argument order and options:
``set_policy [-p VHOST] [--priority N] [--apply-to queues|exchanges|all] NAME PATTERN
DEFINITION``, ``clear_policy [-p VHOST] NAME``, ``list_policies [-p VHOST]``), how they
find the broker (``--data-dir`` / ``--config`` given to ``ctl`` or to the command) and
how they print: rabbitmqctl's progress line, tab-separated tables or ``--formatter
json``.

Invariants: a refused or failed command prints ``Error:`` and the reason on stderr and
exits ``EX_UNAVAILABLE`` (69), as rabbitmqctl does; success exits 0.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from shardmq.config import ConfigError, load_config
from shardmq.ctlclient import CtlError, call

EX_UNAVAILABLE = 69

F = TypeVar("F", bound=Callable[..., Any])


def broker_options(fn: F) -> F:
    """``--config`` / ``--data-dir`` on a command as well as on ``ctl`` itself."""
    fn = click.option(
        "--data-dir", "cmd_data_dir", default=None, help="The broker's data directory."
    )(fn)
    fn = click.option(
        "--config", "cmd_config", type=click.Path(dir_okay=False), default=None, hidden=True
    )(fn)
    return fn


def vhost_option(fn: F) -> F:
    return click.option("-p", "--vhost", default="/", show_default=True, help="Virtual host.")(fn)


def refuse(message: str) -> NoReturn:
    click.echo(f"Error:\n{message}", err=True)
    sys.exit(EX_UNAVAILABLE)


def data_dir_of(ctx: click.Context, cmd_config: str | None, cmd_data_dir: str | None) -> str:
    group = ctx.find_object(dict) or {}
    try:
        config = load_config(
            cmd_config or group.get("config"), data_dir=cmd_data_dir or group.get("data_dir")
        )
    except ConfigError as exc:
        refuse(str(exc))
    return config.server.data_dir


def request(ctx: click.Context, opts: dict[str, Any], command: str, **args: Any) -> Any:
    where = data_dir_of(ctx, opts.pop("cmd_config", None), opts.pop("cmd_data_dir", None))
    try:
        return call(where, command, **args)
    except CtlError as exc:
        refuse(str(exc))


def print_rows(rows: list[dict[str, Any]], columns: list[str], formatter: str) -> None:
    if formatter == "json":
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    click.echo("\t".join(columns))
    for row in rows:
        click.echo("\t".join(_cell(row.get(c)) for c in columns))


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


formatter_option = click.option(
    "--formatter",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


# ---------------------------------------------------------------------- policies
@click.command("set_policy")
@broker_options
@vhost_option
@click.option("--priority", type=int, default=0, show_default=True)
@click.option(
    "--apply-to",
    "apply_to",
    default="all",
    show_default=True,
    help="queues, exchanges or all.",
)
@click.argument("name")
@click.argument("pattern")
@click.argument("definition")
@click.pass_context
def set_policy(
    ctx: click.Context,
    vhost: str,
    priority: int,
    apply_to: str,
    name: str,
    pattern: str,
    definition: str,
    **opts: Any,
) -> None:
    """Set policy NAME on the queues/exchanges whose names match PATTERN (a regex);
    DEFINITION is a JSON object, e.g. '{"max-length": 1000}'."""
    click.echo(
        f'Setting policy "{name}" for pattern "{pattern}" to "{definition}" '
        f'with priority "{priority}" for vhost "{vhost}" ...'
    )
    request(
        ctx,
        opts,
        "set_policy",
        vhost=vhost,
        name=name,
        pattern=pattern,
        definition=definition,
        priority=priority,
        apply_to=apply_to,
    )


@click.command("clear_policy")
@broker_options
@vhost_option
@click.argument("name")
@click.pass_context
def clear_policy(ctx: click.Context, vhost: str, name: str, **opts: Any) -> None:
    """Remove policy NAME."""
    click.echo(f'Clearing policy "{name}" on vhost "{vhost}" ...')
    request(ctx, opts, "clear_policy", vhost=vhost, name=name)


@click.command("list_policies")
@broker_options
@vhost_option
@formatter_option
@click.pass_context
def list_policies(ctx: click.Context, vhost: str, formatter: str, **opts: Any) -> None:
    """The policies of a virtual host."""
    rows = request(ctx, opts, "list_policies", vhost=vhost)
    if formatter != "json":
        click.echo(f'Listing policies for vhost "{vhost}" ...')
    columns = ["vhost", "name", "pattern", "apply-to", "definition", "priority"]
    print_rows(rows, columns, formatter)


COMMANDS = [set_policy, clear_policy, list_policies]
