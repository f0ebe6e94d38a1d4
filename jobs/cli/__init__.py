"""The ``klrank`` command line: options in, exit codes out.

One module per command (``run_command``, ``validate_command``, ``history_command``,
``config_command``), the options they share in :mod:`klrank.cli.options`, and the exit codes of
:class:`klrank.pipeline.errors.ExitCode`, which each error carries (:mod:`klrank.cli.errors`).
Every option can also be set as an environment variable, named in ``--help`` (``KLRANK_LABELS``,
``KLRANK_OUT``, ...), or in a ``--config`` TOML file (:mod:`klrank.cli.config_option`).
"""

import logging
import os
import sys
import traceback
from typing import NoReturn

import typer
from klrank.cli import config_command, errors, history_command, run_command, validate_command
from klrank.cli._compat import ClickException
from klrank.cli.options import Config, Version
from klrank.pipeline.errors import ExitCode, Interrupted
from klrank.runtime import interrupts

app = typer.Typer(
    name="klrank",
    help="Rank models by the KL divergence of their predicted distributions from the truth.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(version: Version = False, config: Config = None) -> None:
    """Rank models by the KL divergence of their predicted distributions from the truth."""


# Each module is one command (dlt's cli/*_command.py), named for it here.
app.command("run")(run_command.run_command)
app.command("validate")(validate_command.validate_command)
app.command("history")(history_command.history_command)
app.add_typer(config_command.config_app, name="config")


def run_cli() -> int:
    """Parse the command line, run the command and return its exit code."""
    try:
        code = app(prog_name="klrank", standalone_mode=False)
    except Interrupted as stop:  # outside a command's work: while parsing options, say
        return errors.interrupted(stop)
    except ClickException as error:  # the option parser's own errors, config-file values too
        return errors.parser_error(error, as_json=errors.wants_json(sys.argv[1:]))
    except typer.Abort:  # not 1: that means invalid data, which a scheduler does not retry
        typer.echo("Aborted!", err=True)
        return ExitCode.INTERNAL
    return code if isinstance(code, int) else ExitCode.OK


def main() -> NoReturn:
    """Console-script entry point: :func:`run_cli`, then exit at once.

    Everything is published, closed and flushed by then; the interpreter's own teardown (freeing
    the frames, joining idle reader threads, unloading modules) would add about 0.3 s to every
    run and could let a late SIGTERM replace the exit code.
    """
    interrupts.install()  # SIGTERM/SIGINT unwind the run through its cleanup
    try:
        code = run_cli()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:  # --debug lets an internal error through: show its traceback
        traceback.print_exc()
        code = ExitCode.INTERNAL
    interrupts.ignore()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe (`klrank run | head`): nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
