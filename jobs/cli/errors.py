"""Errors to exit codes: each klrank error names its :class:`ExitCode`, the CLI exits with it.

With ``--json``, stdout also gets one object, ``{"status", "exit_code", "message"}``, so that a
scheduler reading stdout learns what happened without parsing stderr.
"""

import json
import os
import signal
from collections.abc import Callable
from typing import NoReturn, TypeVar

import polars as pl
import typer
from klrank.cli import output
from klrank.cli._compat import ClickException
from klrank.pipeline.errors import ExitCode, Interrupted, KlrankError, storage_error
from klrank.pipeline.text import one_line
from klrank.runtime.interrupts import STOP_SIGNALS

T = TypeVar("T")

_STATUS = {
    ExitCode.INVALID_DATA: "invalid_data",
    ExitCode.USAGE: "usage_error",
    ExitCode.ENGINE: "engine_failed",
    ExitCode.INTERNAL: "error",  # a KlrankError without a code of its own (a crash: below)
    ExitCode.STORAGE: "io_error",
    ExitCode.LOCK_BUSY: "locked",
} | {ExitCode.for_signal(signum): "interrupted" for signum in STOP_SIGNALS}
"""The JSON summary's ``status`` of each failing exit code."""


def stopped_message(signum: int) -> str:
    """The one line that says a signal stopped the run."""
    name = signal.Signals(signum).name
    return f"stopped by {name} before the run finished; its temporary files were removed"


def _summary(code: ExitCode | int, status: str, message: str) -> str:
    return json.dumps({"status": status, "exit_code": int(code), "message": message})


def _fail(code: ExitCode, message: str, *, as_json: bool, status: str | None = None) -> NoReturn:
    status = status or _STATUS[code]
    output.problem("failed", message, status=status, exit_code=int(code))
    if as_json:
        typer.echo(_summary(code, status, message))
    raise typer.Exit(code)


def guarded(action: Callable[[], T], *, debug: bool, as_json: bool) -> T:
    """Run ``action``; a klrank error, an OS error or a signal ends the command with its code.

    Any other exception is a bug: exit :attr:`ExitCode.INTERNAL`, or with ``debug`` the
    exception itself, for its traceback. So is a panic in Polars' Rust code, which reaches
    Python as a ``BaseException`` that ``except Exception`` lets through (a traceback, exit 1).
    """
    try:
        return action()
    except KlrankError as error:
        _fail(error.exit_code, str(error), as_json=as_json)
    except OSError as error:  # the operating system's, wherever it was raised: not a bug
        if debug:
            raise
        stored = storage_error(error, "use")
        _fail(stored.exit_code, str(stored), as_json=as_json)
    except Interrupted as stop:
        _fail(stop.exit_code, stopped_message(stop.signum), as_json=as_json)
    except (Exception, pl.exceptions.PanicException) as error:  # a panic is a BaseException
        if debug:
            raise
        # One line: the error's text may quote data (a Polars frame, a value with a newline).
        message = (
            f"internal error: {type(error).__name__}: {one_line(str(error))} "
            "(rerun with --debug for the traceback)"
        )
        _fail(ExitCode.INTERNAL, message, as_json=as_json, status="internal_error")


def wants_json(args: list[str]) -> bool:
    """Whether the command line (or ``KLRANK_JSON``) asked for a JSON summary on stdout."""
    flag = os.environ.get("KLRANK_JSON", "").lower() in ("1", "true", "yes", "on")
    return flag or "--json" in args


def parser_error(error: ClickException, *, as_json: bool) -> int:
    """Show an error of the option parser (a config-file value's too); return its exit code."""
    error.show()
    if as_json:  # a scheduler reading stdout still gets one JSON object
        status = "usage_error" if error.exit_code == ExitCode.USAGE else "error"
        typer.echo(_summary(error.exit_code, status, error.format_message()))
    return error.exit_code


def interrupted(stop: Interrupted) -> ExitCode:
    """Say that a signal stopped klrank outside a command's work; return its exit code."""
    typer.echo(f"klrank: {stopped_message(stop.signum)}", err=True)
    return stop.exit_code
