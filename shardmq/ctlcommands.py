"""``shardmq ctl`` commands that act on a running broker through its control socket.

Owns: the click commands (rabbitmqctl's names, argument order and options:
``set_policy [-p VHOST] [--priority N] [--apply-to queues|exchanges|all] NAME PATTERN
DEFINITION``, ``clear_policy``, ``list_policies``; ``add_user NAME [PASSWORD]``,
``delete_user``, ``change_password``, ``clear_password``, ``set_user_tags NAME TAG...``,
``list_users``, ``authenticate_user``; ``add_vhost``, ``delete_vhost``, ``list_vhosts``;
``set_permissions [-p VHOST] USER CONF WRITE READ``, ``clear_permissions``,
``list_permissions``, ``list_user_permissions USER``, and the topic permissions'
four), each a plain action or listing (``shardmq.ctlbase``'s two shapes) unless it
reads a password or shapes its output.

Invariants: as ``shardmq.ctlbase``: a refused or failed command prints ``Error:`` and
the reason on stderr and exits ``EX_UNAVAILABLE`` (69), as rabbitmqctl does; success
exits 0.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from shardmq.ctlbase import (
    action_command,
    broker_options,
    formatter_option,
    listing_command,
    print_rows,
    refuse,
    request,
    vhost_option,
)
from shardmq.ctlclient import EX_DATAERR


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


clear_policy = action_command(
    "clear_policy",
    "Remove policy NAME.",
    'Clearing policy "{name}" on vhost "{vhost}" ...',
    "name",
    vhost=True,
)


list_policies = listing_command(
    "list_policies",
    "The policies of a virtual host.",
    'Listing policies for vhost "{vhost}" ...',
    ["vhost", "name", "pattern", "apply-to", "definition", "priority"],
    "vhost",
)


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


delete_user = action_command(
    "delete_user",
    "Delete user NAME and its permissions; its connections are closed (320).",
    'Deleting user "{name}" ...',
    "name",
)


@click.command("change_password")
@broker_options
@click.argument("name")
@click.argument("password", required=False)
@click.pass_context
def change_password(ctx: click.Context, name: str, password: str | None, **opts: Any) -> None:
    """Set user NAME's password."""
    click.echo(f'Changing password for user "{name}" ...')
    request(ctx, opts, "change_password", name=name, password=_password(password))


clear_password = action_command(
    "clear_password",
    "Remove user NAME's password (it can then not log in with one).",
    'Clearing password for user "{name}" ...',
    "name",
)


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
add_vhost = action_command(
    "add_vhost",
    "Create virtual host NAME (with its amq.* exchanges).",
    'Adding vhost "{name}" ...',
    "name",
)


delete_vhost = action_command(
    "delete_vhost",
    "Delete virtual host NAME with its queues, messages, exchanges and bindings.",
    'Deleting vhost "{name}" ...',
    "name",
)


list_vhosts = listing_command("list_vhosts", "Virtual hosts.", "Listing vhosts ...", ["name"])


# ---------------------------------------------------------------------- permissions
set_permissions = action_command(
    "set_permissions",
    "Grant USER the CONFIGURE, WRITE and READ regexes on a vhost.",
    'Setting permissions for user "{user}" in vhost "{vhost}" ...',
    "user",
    "configure",
    "write",
    "read",
    vhost=True,
)


clear_permissions = action_command(
    "clear_permissions",
    "Revoke USER's permissions on a vhost.",
    'Clearing permissions for user "{user}" in vhost "{vhost}" ...',
    "user",
    vhost=True,
)


list_permissions = listing_command(
    "list_permissions",
    "Every user's permissions on a vhost.",
    'Listing permissions for vhost "{vhost}" ...',
    ["user", "configure", "write", "read"],
    "vhost",
)


list_user_permissions = listing_command(
    "list_user_permissions",
    "USER's permissions on every vhost.",
    'Listing permissions for user "{user}" ...',
    ["vhost", "configure", "write", "read"],
    "user",
)


set_topic_permissions = action_command(
    "set_topic_permissions",
    "Limit USER's routing keys on topic EXCHANGE: WRITE (publish) and READ (bind) "
    "regexes; {username} and {vhost} expand.",
    'Setting topic permissions on "{exchange}" for user "{user}" in vhost "{vhost}" ...',
    "user",
    "exchange",
    "write",
    "read",
    vhost=True,
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


list_topic_permissions = listing_command(
    "list_topic_permissions",
    "Topic permissions of every user on a vhost.",
    'Listing topic permissions for vhost "{vhost}" ...',
    ["user", "exchange", "write", "read"],
    "vhost",
)


list_user_topic_permissions = listing_command(
    "list_user_topic_permissions",
    "USER's topic permissions on every vhost.",
    'Listing topic permissions for user "{user}" ...',
    ["vhost", "exchange", "write", "read"],
    "user",
    header=False,  # as rabbitmqctl 3.10: no header row here (list_user_permissions has one)
)


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
