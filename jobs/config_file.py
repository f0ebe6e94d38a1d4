"""Options from a TOML file, as defaults below the command line and the environment.

Top-level keys apply to every command that has the option; a ``[run]`` or ``[validate]`` table
applies to that command and wins over the top level. Keys are the long option names, with ``-``
or ``_`` (``id-col`` or ``id_col``; ``rows = false`` for ``--no-rows``). Values are TOML values:
strings, numbers, booleans, dates (``run-date = 2026-01-02``) and arrays for repeatable options.
The ``[storage]`` table is no command's: it configures object stores
(:func:`klrank.io.storage.configure`).

>>> options = {"run": {"out": "out", "base": "base"}, "validate": {}}
>>> default_maps({"base": "e", "run": {"out": "reports"}}, options, "klrank.toml")
{'run': {'base': 'e', 'out': 'reports'}, 'validate': {}}
"""

import datetime as dt
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from klrank.pipeline.errors import UsageError
from klrank.pipeline.text import one_line

STORAGE_TABLE = "storage"  # object stores' settings, not options: klrank.io.storage.configure
# command name -> (key as written in a file, normalised) -> parameter name
OptionNames = Mapping[str, Mapping[str, str]]


def normalise(key: str) -> str:
    """A key or option name as compared: ``--id-col``, ``id-col`` and ``id_col`` are one."""
    return key.removeprefix("--").replace("-", "_")


def read(path: Path) -> dict[str, Any]:
    """Parse the TOML file at ``path``.

    Raises
    ------
    UsageError
        The file is missing, unreadable, not UTF-8 or not valid TOML.
    """
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"config file {str(path)!r} does not exist") from None
    except OSError as error:
        raise UsageError(f"cannot read config file {str(path)!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8
        raise UsageError(
            f"config file {str(path)!r} is not UTF-8 text (byte {error.start}: "
            f"{error.object[error.start : error.start + 1]!r}); save it as UTF-8"
        ) from None


def _value(value: Any, where: str) -> Any:
    """A TOML value as the command line parser takes it (dates as ISO text)."""
    if isinstance(value, dict):
        raise UsageError(f"{one_line(where)}: a table is not an option value")
    if isinstance(value, list):
        return [_value(v, where) for v in value]
    if isinstance(value, dt.date | dt.time):  # dt.datetime is a dt.date
        return value.isoformat()
    return value


def default_maps(
    document: Mapping[str, Any], options: OptionNames, source: str
) -> dict[str, dict[str, Any]]:
    """Per command, the parameter values ``document`` sets.

    Raises
    ------
    UsageError
        A key names no option of any command (top level) or of its table's command, or a table
        names no command.
    """
    maps: dict[str, dict[str, Any]] = {command: {} for command in options}
    tables = {k: v for k, v in document.items() if isinstance(v, dict) and k != STORAGE_TABLE}
    for key, value in document.items():
        if key == STORAGE_TABLE:
            if not isinstance(value, dict):
                raise UsageError(f"config file {source!r}: {key} must be a table ([{key}])")
            continue
        if key in tables:
            if key not in options:
                raise UsageError(
                    f"config file {source!r}: unknown table [{key}]; "
                    f"tables: {', '.join(f'[{c}]' for c in (*options, STORAGE_TABLE))}"
                )
            continue
        known = [c for c in options if normalise(key) in options[c]]
        if not known:
            raise UsageError(f"config file {source!r}: unknown option {key!r}")
        for command in known:
            maps[command][options[command][normalise(key)]] = _value(value, f"{source}: {key}")
    for command, table in tables.items():
        for key, value in table.items():
            name = options[command].get(normalise(key))
            if name is None:
                raise UsageError(
                    f"config file {source!r}: unknown option {key!r} in [{command}] "
                    f"(see klrank {command} --help)"
                )
            maps[command][name] = _value(value, f"{source}: [{command}] {key}")
    return maps
