"""``shardmq ctl`` commands that act on a running broker through its control socket.

Owns: the click commands (rabbitmqctl's names, argument order and options:
``set_policy [-p VHOST] [--priority N] [--apply-to queues|exchanges|all] NAME PATTERN
DEFINITION``, ``clear_policy``, ``list_policies``; ``add_user NAME [PASSWORD]``,
``delete_user``, ``change_password``, ``clear_password``, ``set_user_tags NAME TAG...``,
``list_users``, ``authenticate_user``; ``add_vhost``, ``delete_vhost``, ``list_vhosts``;
``set_permissions [-p VHOST] USER CONF WRITE READ``, ``clear_permissions``,
``list_permissions``, ``list_user_permissions USER``), how they
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
from shardmq.ctlclient import EX_DATAERR, EX_UNAVAILABLE, CtlError, call

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


# ---------------------------------------------------------------------- users
def _password(password: str | None, prompt: bool = True) -> str:
    """The password argument, else one line of stdin (a prompt without echo on a tty)."""
    if password is not None:
        return password
    if sys.stdin.isatty():
        if prompt:
            return str(click.prompt("Password", hide_input=True))
    else:
        line = sys.stdin.readline().rstrip("\r\n")
        if line:
            return line
    refuse("Password is not provided via argument or stdin", EX_DATAERR)


@click.command("add_user")
@broker_options
@click.argument("name")
@click.argument("password", required=False)
@click.pass_context
def add_user(ctx: click.Context, name: str, password: str | None, **opts: Any) -> None:
    """Create user NAME (PASSWORD from the argument or stdin); no tags, no permissions."""
    click.echo(f'Adding user "{name}" ...')
    request(ctx, opts, "add_user", name=name, password=_password(password))


@click.command("delete_user")
@broker_options
@click.argument("name")
@click.pass_context
def delete_user(ctx: click.Context, name: str, **opts: Any) -> None:
    """Delete user NAME and its permissions; its connections are closed (320)."""
    click.echo(f'Deleting user "{name}" ...')
    request(ctx, opts, "delete_user", name=name)


@click.command("change_password")
@broker_options
@click.argument("name")
@click.argument("password", required=False)
@click.pass_context
def change_password(ctx: click.Context, name: str, password: str | None, **opts: Any) -> None:
    """Set user NAME's password."""
    click.echo(f'Changing password for user "{name}" ...')
    request(ctx, opts, "change_password", name=name, password=_password(password))


@click.command("clear_password")
@broker_options
@click.argument("name")
@click.pass_context
def clear_password(ctx: click.Context, name: str, **opts: Any) -> None:
    """Remove user NAME's password (it can then not log in with one)."""
    click.echo(f'Clearing password for user "{name}" ...')
    request(ctx, opts, "clear_password", name=name)


@click.command("set_user_tags")
@broker_options
@click.argument("name")
@click.argument("tags", nargs=-1)
@click.pass_context
def set_user_tags(ctx: click.Context, name: str, tags: tuple[str, ...], **opts: Any) -> None:
    """Replace user NAME's tags (administrator, monitoring, policymaker, management...)."""
    click.echo(f'Setting tags for user "{name}" to [{", ".join(tags)}] ...')
    request(ctx, opts, "set_user_tags", name=name, tags=list(tags))


@click.command("list_users")
@broker_options
@formatter_option
@click.pass_context
def list_users(ctx: click.Context, formatter: str, **opts: Any) -> None:
    """Users and their tags."""
    rows = request(ctx, opts, "list_users")
    if formatter != "json":
        click.echo("Listing users ...")
        for row in rows:
            row["tags"] = "[" + ", ".join(row["tags"]) + "]"
    print_rows(rows, ["user", "tags"], formatter)


@click.command("authenticate_user")
@broker_options
@click.argument("name")
@click.argument("password", required=False)
@click.pass_context
def authenticate_user(ctx: click.Context, name: str, password: str | None, **opts: Any) -> None:
    """Check NAME's password against the broker's users."""
    click.echo(f'Authenticating user "{name}" ...')
    request(ctx, opts, "authenticate_user", name=name, password=_password(password))
    click.echo("Success")


# ---------------------------------------------------------------------- vhosts
@click.command("add_vhost")
@broker_options
@click.argument("name")
@click.pass_context
def add_vhost(ctx: click.Context, name: str, **opts: Any) -> None:
    """Create virtual host NAME (with its amq.* exchanges)."""
    click.echo(f'Adding vhost "{name}" ...')
    request(ctx, opts, "add_vhost", name=name)


@click.command("delete_vhost")
@broker_options
@click.argument("name")
@click.pass_context
def delete_vhost(ctx: click.Context, name: str, **opts: Any) -> None:
    """Delete virtual host NAME with its queues, messages, exchanges and bindings."""
    click.echo(f'Deleting vhost "{name}" ...')
    request(ctx, opts, "delete_vhost", name=name)


@click.command("list_vhosts")
@broker_options
@formatter_option
@click.pass_context
def list_vhosts(ctx: click.Context, formatter: str, **opts: Any) -> None:
    """Virtual hosts."""
    rows = request(ctx, opts, "list_vhosts")
    if formatter != "json":
        click.echo("Listing vhosts ...")
    print_rows(rows, ["name"], formatter)


# ---------------------------------------------------------------------- permissions
@click.command("set_permissions")
@broker_options
@vhost_option
@click.argument("user")
@click.argument("configure")
@click.argument("write")
@click.argument("read")
@click.pass_context
def set_permissions(
    ctx: click.Context, vhost: str, user: str, configure: str, write: str, read: str, **opts: Any
) -> None:
    """Grant USER the CONFIGURE, WRITE and READ regexes on a vhost."""
    click.echo(f'Setting permissions for user "{user}" in vhost "{vhost}" ...')
    request(
        ctx,
        opts,
        "set_permissions",
        vhost=vhost,
        user=user,
        configure=configure,
        write=write,
        read=read,
    )


@click.command("clear_permissions")
@broker_options
@vhost_option
@click.argument("user")
@click.pass_context
def clear_permissions(ctx: click.Context, vhost: str, user: str, **opts: Any) -> None:
    """Revoke USER's permissions on a vhost."""
    click.echo(f'Clearing permissions for user "{user}" in vhost "{vhost}" ...')
    request(ctx, opts, "clear_permissions", vhost=vhost, user=user)


@click.command("list_permissions")
@broker_options
@vhost_option
@formatter_option
@click.pass_context
def list_permissions(ctx: click.Context, vhost: str, formatter: str, **opts: Any) -> None:
    """Every user's permissions on a vhost."""
    rows = request(ctx, opts, "list_permissions", vhost=vhost)
    if formatter != "json":
        click.echo(f'Listing permissions for vhost "{vhost}" ...')
    print_rows(rows, ["user", "configure", "write", "read"], formatter)


@click.command("list_user_permissions")
@broker_options
@formatter_option
@click.argument("user")
@click.pass_context
def list_user_permissions(ctx: click.Context, formatter: str, user: str, **opts: Any) -> None:
    """USER's permissions on every vhost."""
    rows = request(ctx, opts, "list_user_permissions", name=user)
    if formatter != "json":
        click.echo(f'Listing permissions for user "{user}" ...')
    print_rows(rows, ["vhost", "configure", "write", "read"], formatter)


@click.command("set_topic_permissions")
@broker_options
@vhost_option
@click.argument("user")
@click.argument("exchange")
@click.argument("write")
@click.argument("read")
@click.pass_context
def set_topic_permissions(
    ctx: click.Context, vhost: str, user: str, exchange: str, write: str, read: str, **opts: Any
) -> None:
    """Limit USER's routing keys on topic EXCHANGE: WRITE (publish) and READ (bind)
    regexes; {username} and {vhost} expand."""
    click.echo(
        f'Setting topic permissions on "{exchange}" for user "{user}" in vhost "{vhost}" ...'
    )
    request(
        ctx,
        opts,
        "set_topic_permissions",
        vhost=vhost,
        user=user,
        exchange=exchange,
        write=write,
        read=read,
    )


@click.command("clear_topic_permissions")
@broker_options
@vhost_option
@click.argument("user")
@click.argument("exchange", required=False, default="")
@click.pass_context
def clear_topic_permissions(
    ctx: click.Context, vhost: str, user: str, exchange: str, **opts: Any
) -> None:
    """Remove USER's topic permissions on EXCHANGE (or on every exchange)."""
    where = f'on "{exchange}" ' if exchange else ""
    click.echo(f'Clearing topic permissions {where}for user "{user}" in vhost "{vhost}" ...')
    request(ctx, opts, "clear_topic_permissions", vhost=vhost, user=user, exchange=exchange)


@click.command("list_topic_permissions")
@broker_options
@vhost_option
@formatter_option
@click.pass_context
def list_topic_permissions(ctx: click.Context, vhost: str, formatter: str, **opts: Any) -> None:
    """Topic permissions of every user on a vhost."""
    rows = request(ctx, opts, "list_topic_permissions", vhost=vhost)
    if formatter != "json":
        click.echo(f'Listing topic permissions for vhost "{vhost}" ...')
    print_rows(rows, ["user", "exchange", "write", "read"], formatter)


@click.command("list_user_topic_permissions")
@broker_options
@formatter_option
@click.argument("user")
@click.pass_context
def list_user_topic_permissions(ctx: click.Context, formatter: str, user: str, **opts: Any) -> None:
    """USER's topic permissions on every vhost."""
    rows = request(ctx, opts, "list_user_topic_permissions", name=user)
    if formatter != "json":
        click.echo(f'Listing topic permissions for user "{user}" ...')
    print_rows(rows, ["vhost", "exchange", "write", "read"], formatter)


COMMANDS = [
    set_topic_permissions,
    clear_topic_permissions,
    list_topic_permissions,
    list_user_topic_permissions,
    set_policy,
    clear_policy,
    list_policies,
    add_user,
    delete_user,
    change_password,
    clear_password,
    set_user_tags,
    list_users,
    authenticate_user,
    add_vhost,
    delete_vhost,
    list_vhosts,
    set_permissions,
    clear_permissions,
    list_permissions,
    list_user_permissions,
]
