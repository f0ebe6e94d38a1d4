"""The operational side of the ``klrank`` command: config files, logging, locks and signals.

Kept apart from :mod:`jobs.cli` so that its options apply to every command the same way:

* ``--config PATH`` (or ``KLRANK_CONFIG``) reads a TOML file (:mod:`jobs.config_file`) into
  click's ``default_map``, so the precedence is click's own: command line, then ``KLRANK_*``
  environment variables, then the file, then the defaults. Any option a command declares is
  covered, including options added later, with no code here.
* ``--log-format``, ``--quiet``: events of :mod:`pipeline.events` on stderr (:mod:`jobs.logs`).
* ``--lock-timeout``: how long ``run`` waits for another run of the same partition.
* ``klrank config show``: the merged options and where each came from.
"""

import datetime as dt
import json
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from klrank import config_file
from klrank.pipeline.errors import UsageError
from klrank.pipeline.text import one_line
from klrank.runtime import logs
from klrank.runtime.logs import LogFormat
from typer import _click
from typer._click.core import ParameterSource
from typer._click.exceptions import BadParameter, MissingParameter
from typer.core import TyperGroup, TyperOption

EXIT_LOCKED = 75  # EX_TEMPFAIL (sysexits.h): another run holds the partition; retry later
CONFIG_ENVVAR = "KLRANK_CONFIG"
_META_KEY = "klrank.config"  # ctx.meta entry: (path, default maps per command)
_SOURCES = {
    ParameterSource.COMMANDLINE: "command line",
    ParameterSource.ENVIRONMENT: "environment",
    ParameterSource.DEFAULT_MAP: "config file",
    ParameterSource.DEFAULT: "default",
}


def _leaf_commands(ctx: typer.Context) -> dict[str, _click.Command]:
    """Every command of the application that runs something (``run``, ``validate``, ...)."""
    root = ctx.find_root().command
    commands: Mapping[str, _click.Command] = getattr(root, "commands", {})
    return {n: c for n, c in commands.items() if not isinstance(c, TyperGroup)}


def _option_keys(command: _click.Command) -> dict[str, str]:
    """Normalised long option names of ``command`` -> parameter names (``--config`` excluded)."""
    keys = {}
    for param in command.params:
        if param.name is None or param.name == "config" or not isinstance(param, TyperOption):
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                keys[config_file.normalise(opt)] = param.name
    return keys


def _check_values(
    ctx: typer.Context,
    commands: Mapping[str, _click.Command],
    maps: Mapping[str, Mapping[str, Any]],
    path: Path,
) -> None:
    """Convert every value of the file as its option would, so a bad one names the file.

    Left to click, a bad value from ``default_map`` is reported as if it came from the option's
    environment variable, even when that is not set.
    """
    for name, values in maps.items():
        params = {p.name: p for p in commands[name].params} if name in commands else {}
        for key, raw in values.items():
            param = params.get(key)
            if not isinstance(param, TyperOption):
                continue
            try:
                param.get_runtime_param().coerce(raw, param=param, ctx=ctx)
            except BadParameter as error:
                option = param.opts[0] if param.opts else key
                raise typer.BadParameter(
                    f"{one_line(str(path))}: {option.removeprefix('--')} = {raw!r} "
                    f"({option} of {name}): {one_line(error.message)}"
                ) from None


def _load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """Read ``--config`` and make its values the defaults of this command (or of every one)."""
    if value is None or ctx.resilient_parsing:
        return value
    if ctx.get_parameter_source("config") == ParameterSource.ENVIRONMENT and _META_KEY in ctx.meta:
        return value  # `klrank --config F run`: F, read by the root, beats KLRANK_CONFIG
    commands = _leaf_commands(ctx)
    try:
        maps = config_file.default_maps(
            config_file.read(value),
            {name: _option_keys(command) for name, command in commands.items()},
            str(value),
        )
    except UsageError as error:
        raise typer.BadParameter(str(error)) from None
    _check_values(ctx, commands, maps, value)
    ctx.meta[_META_KEY] = (value, maps)
    if ctx.parent is None:  # the root: each command's context takes its own table
        ctx.default_map = dict(maps)
    elif ctx.info_name in maps:
        ctx.default_map = maps[ctx.info_name]
    return value


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar=CONFIG_ENVVAR,
        callback=_load_config,
        is_eager=True,  # read before the other options, whose defaults it sets
        help="TOML file of option values: command line > KLRANK_* environment > file > defaults.",
        show_default=False,
    ),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="KLRANK_LOG_FORMAT",
        help="Events on stderr as text lines or one JSON object a line.",
    ),
]
QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", envvar="KLRANK_QUIET", help="Log warnings and errors only; no progress."
    ),
]
LockTimeoutOption = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        envvar="KLRANK_LOCK_TIMEOUT",
        min=0.0,
        help="Seconds to wait while another run publishes the same partition (0: fail at once); "
        f"then exit {EXIT_LOCKED}.",
    ),
]


def setup(log_format: LogFormat, quiet: bool) -> None:
    """Show events on stderr as asked; call first in every command."""
    logs.configure(log_format, quiet, sys.stderr)


def notice(message: str, quiet: bool) -> None:
    """``klrank: message`` on stderr for a person reading text; JSON logs carry it as an event."""
    if not quiet and not logs.structured():
        typer.echo(f"klrank: {message}", err=True)


def stopped_message(signum: int) -> str:
    """The one line that says a signal stopped the run."""
    name = signal.Signals(signum).name
    return f"stopped by {name} before the run finished; its temporary files were removed"


# ---------------------------------------------------------------------------------------------
# klrank config show

config_app = typer.Typer(
    help="Inspect the options a command would run with.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # inf and nan are TOML too
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dt.datetime):  # a --run-date: a TOML local date
        return value.date().isoformat()
    return json.dumps(str(value))


def _json(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


MISSING = object()  # the value of a required option that nothing sets


def merged_options(
    name: str, command: _click.Command, default_map: Mapping[str, Any] | None
) -> list[tuple[str, Any, str]]:
    """(option, value, source) for every option of ``command``, resolved as a run would.

    The value is :data:`MISSING` for a required option that nothing sets.
    """
    ctx = command.make_context(name, [], resilient_parsing=True, default_map=default_map)
    merged = []
    for param in command.params:
        if param.name is None or param.name == "config" or not isinstance(param, TyperOption):
            continue
        if param.name == "help" or not param.opts[0].startswith("--"):
            continue
        long = next(o for o in param.opts if o.startswith("--"))
        value, source = param.consume_value(ctx, {})
        try:
            value = param.process_value(ctx, value)
        except MissingParameter:
            value = MISSING
        where = _SOURCES.get(source, "default")
        if source == ParameterSource.ENVIRONMENT and isinstance(param.envvar, str):
            where = f"environment {param.envvar}"
        merged.append((long.removeprefix("--"), value, where))
    return merged


@config_app.command("show")
def show(
    ctx: typer.Context,
    command: Annotated[
        str | None,
        typer.Argument(
            help="The command whose options to show [default: every one].", show_default=False
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML.")] = False,
) -> None:
    """Print the options each command would run with: command line > env > file > defaults.

    The TOML it prints, notes aside, is itself a valid ``--config`` file.
    """
    commands = _leaf_commands(ctx)
    if command is not None and command not in commands:
        raise typer.BadParameter(
            f"no command {command!r}; one of: {', '.join(commands)}", param_hint="COMMAND"
        )
    path, maps = ctx.meta.get(_META_KEY, (None, {}))
    names = [command] if command else list(commands)
    resolved = {n: merged_options(n, commands[n], maps.get(n)) for n in names}
    if as_json:
        document = {
            n: {k: {"value": None if v is MISSING else _json(v), "source": s} for k, v, s in opts}
            for n, opts in resolved.items()
        }
        typer.echo(json.dumps({"config": str(path) if path else None} | document, indent=2))
        return
    lines = [
        "# klrank options: command line > KLRANK_* environment > config file > defaults",
        f"# config file: {one_line(str(path)) if path else '(none)'}",  # a comment: one line
    ]
    for name, options in resolved.items():
        lines.append(f"\n[{name}]")
        width = max((len(k) + len(_toml(v)) for k, v, _ in options if v is not None), default=0)
        for key, value, source in options:
            if value is MISSING:
                lines.append(f"# {key} = ...  # required, not set")
            elif value is None:
                lines.append(f"# {key} is not set  # {source}")
            else:
                text = f"{key} = {_toml(value)}"
                lines.append(f"{text:<{width + 3}}  # {source}")
    typer.echo("\n".join(lines))
