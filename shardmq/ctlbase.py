"""What every ``shardmq ctl`` command shares: finding the broker, talking to it, printing.

Owns: ``broker_options`` / ``vhost_option`` / ``formatter_option`` (``--data-dir`` and
``--config`` on each command as well as on ``ctl``; ``-p VHOST``; ``--formatter
table|json``), ``request`` (one control-socket call, a refusal printed as rabbitmqctl
does), ``print_rows`` (tab-separated with a header row, or JSON), and the two command
shapes most rabbitmqctl commands have: ``action_command`` (a progress line, then one
request with the command's arguments) and ``listing_command`` (one request, a progress
line unless JSON, the rows).

Invariants: a refused or failed command prints ``Error:`` and the reason on stderr and
exits with the code the broker gave (``EX_UNAVAILABLE``, 69, when none is reachable),
as rabbitmqctl does; success exits 0. A progress line never goes to a JSON listing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Literal, NoReturn, TypeVar

import click

from shardmq.config import ConfigError, load_config
from shardmq.ctlclient import EX_UNAVAILABLE, CtlError, call

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


def refuse(message: str, code: int = EX_UNAVAILABLE) -> NoReturn:
    click.echo(f"Error:\n{message}", err=True)
    sys.exit(code)


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
        refuse(str(exc), exc.code)


def print_rows(
    rows: list[dict[str, Any]], columns: list[str], formatter: str, header: bool = True
) -> None:
    if formatter == "json":
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    if header:
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


_BROKER_OPTS = ("cmd_config", "cmd_data_dir")


def _split(kw: dict[str, Any]) -> dict[str, Any]:
    """Take the broker-finding options out of a command's keyword arguments."""
    return {k: kw.pop(k) for k in _BROKER_OPTS if k in kw}


def action_command(
    name: str, doc: str, progress: str, *arguments: str, vhost: bool = False
) -> click.Command:
    """``ctl NAME [-p VHOST] ARG...``: print PROGRESS (formatted with the arguments),
    then send the broker op NAME with them."""

    @click.pass_context
    def run(ctx: click.Context, **kw: Any) -> None:
        opts = _split(kw)
        click.echo(progress.format(**kw))
        request(ctx, opts, name, **kw)

    run.__doc__ = doc
    fn: Any = run
    for arg in reversed(arguments):
        fn = click.argument(arg)(fn)
    if vhost:
        fn = vhost_option(fn)
    return click.command(name)(broker_options(fn))


def listing_command(
    name: str,
    doc: str,
    title: str,
    columns: list[str],
    scope: Literal["vhost", "user"] | None = None,
    header: bool = True,
) -> click.Command:
    """``ctl NAME [-p VHOST | USER] [--formatter]``: the rows of broker op NAME for a
    vhost (``-p``), a user (an argument, sent as ``name``) or the whole broker, under a
    progress line TITLE (formatted with the vhost or user) unless JSON is asked for; the
    table's header row unless HEADER is false (rabbitmqctl 3.10 leaves it out of some)."""

    @click.pass_context
    def run(ctx: click.Context, formatter: str, **kw: Any) -> None:
        opts = _split(kw)
        rows = request(ctx, opts, name, **({"name": kw["user"]} if scope == "user" else kw))
        if formatter != "json":
            click.echo(title.format(**kw))
        print_rows(rows, columns, formatter, header)

    run.__doc__ = doc
    fn: Any = run
    if scope == "user":
        fn = click.argument("user")(fn)
    fn = formatter_option(fn)
    if scope == "vhost":
        fn = vhost_option(fn)
    return click.command(name)(broker_options(fn))
