"""``klrank config show``: the options each command would run with, and where each came from."""

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from klrank.cli._compat import Command, MissingParameter, ParameterSource
from klrank.cli.config_option import META_KEY, leaf_commands
from klrank.cli.options import Config
from klrank.io import storage
from klrank.pipeline.text import one_line
from typer.core import TyperOption

config_app = typer.Typer(
    help="Inspect the options a command would run with.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

_SOURCES = {
    ParameterSource.COMMANDLINE: "command line",
    ParameterSource.ENVIRONMENT: "environment",
    ParameterSource.DEFAULT_MAP: "config file",
    ParameterSource.DEFAULT: "default",
}
MISSING = object()
"""The value of a required option that nothing sets."""


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


def merged_options(
    name: str, command: Command, default_map: Mapping[str, Any] | None
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


def _as_toml(path: object, resolved: Mapping[str, list[tuple[str, Any, str]]]) -> str:
    """The options as a ``--config`` file, each value's source in a comment."""
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
    stores = storage.configured()
    if stores:
        lines.append("\n[storage]  # secrets shown as ***")
        width = max(len(k) + len(_toml(v)) for k, v, _ in stores)
        for key, value, source in stores:
            text = f"{key} = {_toml(value)}"
            lines.append(f"{text:<{width + 3}}  # {source}")
    return "\n".join(lines)


@config_app.command("show")
def show(
    ctx: typer.Context,
    command: Annotated[
        str | None,
        typer.Argument(
            help="The command whose options to show \\[default: every one].", show_default=False
        ),
    ] = None,
    config: Config = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML.")] = False,
) -> None:
    """Print the options each command would run with: command line > env > file > defaults.

    The TOML it prints, notes aside, is itself a valid ``--config`` file.
    """
    commands = leaf_commands(ctx)
    if command is not None and command not in commands:
        raise typer.BadParameter(
            f"no command {command!r}; one of: {', '.join(commands)}", param_hint="COMMAND"
        )
    path, maps = ctx.meta.get(META_KEY, (None, {}))
    names = [command] if command else list(commands)
    resolved = {n: merged_options(n, commands[n], maps.get(n)) for n in names}
    if as_json:
        document: dict[str, dict[str, dict[str, Any]]] = {
            n: {k: {"value": None if v is MISSING else _json(v), "source": s} for k, v, s in opts}
            for n, opts in resolved.items()
        }
        stores = {k: {"value": v, "source": s} for k, v, s in storage.configured()}
        document |= {"storage": stores} if stores else {}  # secrets shown as ***
        typer.echo(json.dumps({"config": str(path) if path else None} | document, indent=2))
        return
    typer.echo(_as_toml(path, resolved))
