"""What every command says on stderr besides its result: events, notices and failures.

stdout holds the result only (a table, or the JSON summary of ``--json``), so that a scheduler
or a pipe reads it unmixed.
"""

import logging
import sys
from typing import Any

import typer
from klrank.runtime import events, logs
from klrank.runtime.logs import LogFormat


def setup(log_format: LogFormat, quiet: bool) -> None:
    """Show events on stderr as asked; call first in every command."""
    logs.configure(log_format, quiet, sys.stderr)


def notice(message: str, *, quiet: bool) -> None:
    """``klrank: message`` on stderr for a person reading text; JSON logs carry it as an event."""
    if not quiet and not logs.structured():
        typer.echo(f"klrank: {message}", err=True)


def problem(event: str, message: str, **fields: Any) -> None:
    """An error on stderr even with ``--quiet``: ``klrank: message``, or a JSON ``event``."""
    if logs.structured():  # stderr holds JSON lines only
        events.emit(event, logging.ERROR, **fields, message=message)
    else:
        typer.echo(f"klrank: {message}", err=True)
