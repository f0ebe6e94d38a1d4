"""``--config PATH``: a TOML file of option values, as click's ``default_map``.

The file (:mod:`klrank.config_file`) becomes the defaults of the command, so the precedence is
click's own: command line, then ``KLRANK_*`` environment variables, then the file, then the
defaults. Any option a command declares is covered, including options added later, with no code
here. Its ``[storage]`` table sets the object stores' variables the environment lacks. ``klrank config show`` (:mod:`klrank.cli.config_command`) prints the result.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from klrank import config_file
from klrank.cli._compat import Command, ParameterSource
from klrank.io import storage
from klrank.pipeline.errors import UsageError
from klrank.pipeline.text import one_line
from typer.core import TyperGroup, TyperOption

CONFIG_ENVVAR = "KLRANK_CONFIG"
META_KEY = "klrank.config"
"""The ``ctx.meta`` entry of the file read: ``(path, {command: default map})``."""


def leaf_commands(ctx: typer.Context) -> dict[str, Command]:
    """Every command of the application that runs something (``run``, ``validate``, ...)."""
    root = ctx.find_root().command
    commands: Mapping[str, Command] = getattr(root, "commands", {})
    return {n: c for n, c in commands.items() if not isinstance(c, TyperGroup)}


def _option_keys(command: Command) -> dict[str, str]:
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
    commands: Mapping[str, Command],
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
                # Conversion and range checks; the options a file may set have no callback.
                param.process_value(ctx, raw)
            except typer.BadParameter as error:
                option = param.opts[0] if param.opts else key
                raise typer.BadParameter(
                    f"{one_line(str(path))}: {option.removeprefix('--')} = {raw!r} "
                    f"({option} of {name}): {one_line(error.message)}"
                ) from None


def load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """Read ``--config`` and make its values the defaults of this command (or of every one)."""
    if value is None or ctx.resilient_parsing:
        return value
    if ctx.get_parameter_source("config") == ParameterSource.ENVIRONMENT and META_KEY in ctx.meta:
        return value  # `klrank --config F run`: F, read by the root, beats KLRANK_CONFIG
    commands = leaf_commands(ctx)
    try:
        document = config_file.read(value)
        maps = config_file.default_maps(
            document,
            {name: _option_keys(command) for name, command in commands.items()},
            str(value),
        )
        storage.configure(document.get(config_file.STORAGE_TABLE, {}), str(value))
    except UsageError as error:
        raise typer.BadParameter(str(error)) from None
    _check_values(ctx, commands, maps, value)
    ctx.meta[META_KEY] = (value, maps)
    if ctx.parent is None:  # the root: each command's context takes its own table
        ctx.default_map = dict(maps)
    elif ctx.info_name in maps:
        ctx.default_map = maps[ctx.info_name]
    return value
