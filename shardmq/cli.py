"""Command line: ``shardmq serve``, ``shardmq ctl ...``, ``shardmq systemd-unit``,
``shardmq bench``.

Owns: argument parsing and turning flags into a validated ``Config``; it delegates the
process work to ``workers``, the unit's text to ``shardmq.systemd_unit`` and the load
generator to ``loadtest``.

Invariants: ``shardmq serve`` exits with the broker's ``workers.exitcodes.ExitCode``
(a start-up error, e.g. the port or the data dir in use, is one log line and its own
code, never a traceback); every error reported here (bad config, no broker found, a
unit that cannot work) is one line and exits ``ExitCode.FAILED``.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from shardmq import ctlcommands as ctl_commands
from shardmq import ctllimits as ctl_limits
from shardmq import ctlobjects as ctl_objects
from shardmq.config import ConfigError, load_config
from workers.exitcodes import ExitCode


def fail(message: str) -> NoReturn:
    """Print ``message`` as click does and exit ``ExitCode.FAILED``."""
    error = click.ClickException(message)
    error.exit_code = ExitCode.FAILED
    raise error


@click.group()
@click.version_option(package_name="shardmq")
def cli() -> None:
    """shardmq: an AMQP 0-9-1 message broker that uses every core."""


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML config file (see config/shardmq.toml).",
)
@click.option("--host", default=None, help="Listen address [default: 0.0.0.0].")
@click.option("--port", type=int, default=None, help="AMQP port [default: 5672].")
@click.option(
    "--workers", type=int, default=None, help="Worker processes; 0 = one per core [default: 0]."
)
@click.option("--data-dir", default=None, help="Data directory [default: ./shardmq-data].")
@click.option("--log-level", default=None, help="debug, info, warning, error.")
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    data_dir: str | None,
    log_level: str | None,
) -> None:
    """Start the broker in the foreground.

    \b
    Exit codes: 0 stopped cleanly, 1 failed, 10 port in use, 11 cannot listen on the
    address, 12 data dir in use by another broker, 13 data dir not writable, 14 data
    dir is a file, 15 data dir unusable (e.g. under /proc), 16 TLS certificate, key or
    CA file unusable. Start-up errors are one log line."""
    try:
        config = load_config(
            config_path,
            host=host,
            port=port,
            workers=workers,
            data_dir=data_dir,
            log_level=log_level,
        )
    except ConfigError as exc:
        fail(str(exc))
    from shardmq import allocator

    allocator.ensure(config.server.allocator)  # may start this process again, same pid
    from workers.supervisor import run

    overrides = {
        "host": host,
        "port": port,
        "workers": workers,
        "data_dir": data_dir,
        "log_level": log_level,
    }
    sys.exit(run(config, config_path=config_path, overrides=overrides))


@cli.group()
@click.option("--data-dir", default=None, help="The running broker's data directory.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.pass_context
def ctl(ctx: click.Context, data_dir: str | None, config_path: str | None) -> None:
    """Inspect and change a running broker (on this machine, through its data directory)."""
    ctx.obj = {"data_dir": data_dir, "config": config_path}


for _command in [*ctl_commands.COMMANDS, *ctl_objects.COMMANDS, *ctl_limits.COMMANDS]:
    ctl.add_command(_command)


@ctl.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--data-dir", default=None, help="The broker's data directory.")
@click.option("--json", "as_json_flag", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(
    ctx: click.Context, config_path: str | None, data_dir: str | None, as_json_flag: bool
) -> None:
    """Workers, their connections and the queues each one owns."""
    from workers.status import as_json, as_table, not_found_message, read_broker_status

    group = ctx.find_object(dict) or {}  # --config / --data-dir given to ctl itself
    try:
        config = load_config(
            config_path or group.get("config"), data_dir=data_dir or group.get("data_dir")
        )
    except ConfigError as exc:
        fail(str(exc))
    where = config.server.data_dir
    current = read_broker_status(where)
    if not current.found:
        fail(not_found_message(where))
    click.echo(as_json(current) if as_json_flag else as_table(current))


@cli.command("systemd-unit")
@click.option(
    "--exec",
    "command",
    default=None,
    help="Command that runs shardmq [default: the shardmq script beside this "
    "interpreter, else this interpreter with -m shardmq].",
)
@click.option("--user", default="shardmq", show_default=True, help="User= (and Group=).")
@click.option("--group", default=None, help="Group= [default: the user's name].")
@click.option(
    "--data-dir",
    default="/var/lib/shardmq",
    show_default=True,
    help="The broker's data directory (absolute).",
)
@click.option("--config", "config_path", default=None, help="serve --config FILE (absolute).")
@click.option("--watchdog-sec", type=int, default=30, show_default=True, help="WatchdogSec=.")
@click.option("--low-port", is_flag=True, help="Listens below 1024: keeps CAP_NET_BIND_SERVICE.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write to FILE."
)
def systemd_unit(
    command: str | None,
    user: str,
    group: str | None,
    data_dir: str,
    config_path: str | None,
    watchdog_sec: int,
    low_port: bool,
    output: str | None,
) -> None:
    """Print a systemd unit (Type=notify, watchdog, sandboxed) for this installation."""
    from shardmq.systemd_unit import (
        UnitError,
        UnitSpec,
        default_exec,
        default_pythonpath,
        parse_exec,
        render,
        warnings,
    )

    try:
        spec = UnitSpec(
            exec_argv=parse_exec(command) if command else default_exec(),
            user=user,
            group=group,
            data_dir=data_dir,
            config=config_path,
            watchdog_sec=watchdog_sec,
            low_port=low_port,
            pythonpath=[] if command else default_pythonpath(),
        )
        text = render(spec)
    except UnitError as exc:
        fail(str(exc))
    for warning in warnings(spec):
        click.echo(f"warning: {warning}", err=True)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w") as f:
            f.write(text)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}")


@cli.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Load generator (see loadtest/README.md; `shardmq bench --help`)."""
    from loadtest.bench import main as bench_main

    sys.exit(bench_main(list(args)))


def main() -> int:
    cli(prog_name="shardmq")
    return 0
