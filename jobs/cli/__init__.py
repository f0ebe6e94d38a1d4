"""The ``klrank`` command line: options in, exit codes out.

Exit codes: 0 success, 1 the data failed validation, 2 usage error (bad option, missing or
unreadable path, corrupt Parquet, no distribution columns, an ``--out`` that would replace what
klrank did not write), 3 a gate failed (``--max-mean-kl``, ``--max-regression``,
``--expect-best``: the report is published all the same and the manifest says why), 69 the Ray
engine failed (cluster unreachable, a task still failing after its retries; nothing published),
70 internal error (a bug: rerun with ``--debug`` for the traceback), 74 the machine refused an
I/O step (no space, read-only, permission, a name too long, a folder where a file is needed), 75
another run holds the output partition's lock (``--lock-timeout``), 130/143 stopped by
SIGINT/SIGTERM (128 + the signal's number). Every option can also be set as an environment variable, named in
``--help`` (``KLRANK_LABELS``, ``KLRANK_OUT``, ...), or in a ``--config`` TOML file (see
:mod:`jobs.cli_ops`).
"""

import datetime as dt
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from klrank._version import __version__
from klrank.cli import ops as cli_ops
from klrank.config import Engine, InputOptions, RunOptions, TruthOption
from klrank.nightly import HistoryOptions, history
from klrank.pipeline.aggregate import RankMetric
from klrank.pipeline.divergence import Base
from klrank.pipeline.errors import (
    EngineError,
    Interrupted,
    InvalidDataError,
    KlrankError,
    LockBusyError,
    StorageError,
    UsageError,
    storage_error,
)
from klrank.pipeline.gates import Gates
from klrank.pipeline.history import history_markdown
from klrank.pipeline.text import one_line
from klrank.run import Timings, run, validate
from klrank.runtime import events, interrupts, logs
from typer._click.exceptions import ClickException
from typer.exceptions import Abort

EXIT_OK, EXIT_INVALID_DATA, EXIT_USAGE, EXIT_GATE_FAILED, EXIT_INTERNAL = 0, 1, 2, 3, 70
EXIT_LOCKED = cli_ops.EXIT_LOCKED
EXIT_ENGINE = 69  # sysexits' EX_UNAVAILABLE: the cluster, not the data or the command
EXIT_IO = 74  # sysexits' EX_IOERR: the machine (disk, permissions), not the data or a bug
EXIT_SIGNAL_BASE = 128  # + the signal's number, as a shell reports a process a signal ended

app = typer.Typer(
    name="klrank",
    help="Rank models by the KL divergence of their predicted distributions from the truth.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


# Options shared by `run` and `validate`.
Labels = Annotated[
    str,
    typer.Option(
        "--labels",
        "-l",
        envvar="KLRANK_LABELS",
        help="Labels: a Parquet file, a directory (read recursively) or a glob.",
        show_default=False,
    ),
]
Predictions = Annotated[
    str,
    typer.Option(
        "--predictions",
        "-p",
        envvar="KLRANK_PREDICTIONS",
        help="Predictions: file, directory (hive model=<name>/ folders allowed) or glob.",
        show_default=False,
    ),
]
IdCol = Annotated[
    str, typer.Option("--id-col", envvar="KLRANK_ID_COL", help="Row key column, in both inputs.")
]
LabelCol = Annotated[
    str,
    typer.Option(
        "--label-col", envvar="KLRANK_LABEL_COL", help="Hard-label column (class name or index)."
    ),
]
ModelCol = Annotated[
    str,
    typer.Option(
        "--model-col",
        envvar="KLRANK_MODEL_COL",
        help="Model-name column (or hive key) of the predictions.",
    ),
]
ProbPrefix = Annotated[
    str,
    typer.Option(
        "--prob-prefix", envvar="KLRANK_PROB_PREFIX", help="Prefix of probability columns."
    ),
]
LogitPrefix = Annotated[
    str,
    typer.Option("--logit-prefix", envvar="KLRANK_LOGIT_PREFIX", help="Prefix of logit columns."),
]
TruthOpt = Annotated[
    TruthOption,
    typer.Option(
        "--truth",
        envvar="KLRANK_TRUTH",
        help="auto: soft when the labels have probability columns.",
    ),
]
Tolerance = Annotated[
    float,
    typer.Option(
        "--tolerance",
        envvar="KLRANK_TOLERANCE",
        min=0.0,
        help="Allowed |row sum - 1| of probabilities.",
    ),
]
SliceBy = Annotated[
    list[str] | None,
    typer.Option(
        "--slice-by",
        envvar="KLRANK_SLICE_BY",
        help="Also rank per value of this label column (repeatable).",
    ),
]
Classes = Annotated[
    str | None,
    typer.Option(
        "--classes",
        envvar="KLRANK_CLASSES",
        help="Comma-separated class names of the positions of Array/List distribution columns "
        "[default: 0..K-1].",
        show_default=False,
    ),
]
Debug = Annotated[
    bool,
    typer.Option(
        "--debug", envvar="KLRANK_DEBUG", help="Show Python tracebacks of internal errors."
    ),
]
JsonOut = Annotated[
    bool,
    typer.Option(
        "--json", envvar="KLRANK_JSON", help="Print a JSON summary to stdout instead of the table."
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"klrank {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    config: cli_ops.ConfigOption = None,
) -> None:
    """Rank models by the KL divergence of their predicted distributions from the truth."""


def _fail(code: int, status: str, message: str, as_json: bool) -> NoReturn:
    if logs.structured():  # stderr holds JSON lines only
        events.emit("failed", logging.ERROR, status=status, exit_code=code, message=message)
    else:
        typer.echo(f"klrank: {message}", err=True)
    if as_json:
        typer.echo(json.dumps({"status": status, "exit_code": code, "message": message}))
    raise typer.Exit(code)


def _guarded(action: Callable[[], Any], *, debug: bool, as_json: bool) -> Any:
    """Run ``action``, turning klrank's errors into exit codes and messages."""
    try:
        return action()
    except InvalidDataError as error:
        _fail(EXIT_INVALID_DATA, "invalid_data", str(error), as_json)
    except UsageError as error:
        _fail(EXIT_USAGE, "usage_error", str(error), as_json)
    except LockBusyError as error:
        _fail(EXIT_LOCKED, "locked", str(error), as_json)
    except EngineError as error:
        _fail(EXIT_ENGINE, "engine_failed", str(error), as_json)
    except StorageError as error:
        _fail(EXIT_IO, "io_error", str(error), as_json)
    except OSError as error:  # the operating system's, wherever it was raised: not a bug
        if debug:
            raise
        _fail(EXIT_IO, "io_error", str(storage_error(error, "use")), as_json)
    except Interrupted as stop:
        _fail(
            EXIT_SIGNAL_BASE + stop.signum,
            "interrupted",
            cli_ops.stopped_message(stop.signum),
            as_json,
        )
    except KlrankError as error:  # a subclass without its own code is still not a crash
        _fail(EXIT_INTERNAL, "error", str(error), as_json)
    except Exception as error:
        if debug:
            raise
        _fail(
            EXIT_INTERNAL,
            "internal_error",
            # One line: the error's text may quote data (a Polars frame, a value with a newline).
            f"internal error: {type(error).__name__}: {one_line(str(error))} "
            "(rerun with --debug for the traceback)",
            as_json,
        )


def _inputs(
    labels: str,
    predictions: str,
    id_col: str,
    label_col: str,
    model_col: str,
    prob_prefix: str,
    logit_prefix: str,
    truth: TruthOption,
    tolerance: float,
    slice_by: list[str] | None,
    classes: str | None,
) -> InputOptions:
    return InputOptions(
        labels=labels,
        predictions=predictions,
        id_col=id_col,
        label_col=label_col,
        model_col=model_col,
        prob_prefix=prob_prefix,
        logit_prefix=logit_prefix,
        truth=truth,
        tolerance=tolerance,
        slice_by=tuple(slice_by or ()),
        classes=tuple(c.strip() for c in classes.split(",")) if classes else (),
    )


@app.command("run")
def run_command(
    labels: Labels,
    predictions: Predictions,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            envvar="KLRANK_OUT",
            help="Output directory of the report.",
            show_default=False,
        ),
    ],
    id_col: IdCol = "id",
    label_col: LabelCol = "label",
    model_col: ModelCol = "model",
    prob_prefix: ProbPrefix = "prob_",
    logit_prefix: LogitPrefix = "logit_",
    truth: TruthOpt = "auto",
    tolerance: Tolerance = 1e-6,
    slice_by: SliceBy = None,
    classes: Classes = None,
    base: Annotated[
        Base,
        typer.Option("--base", envvar="KLRANK_BASE", help="Log base: 2 bits, e nats, 10 bans."),
    ] = "2",
    epsilon: Annotated[
        float,
        typer.Option(
            "--epsilon",
            envvar="KLRANK_EPSILON",
            min=0.0,
            max=0.999999,
            help="Additive smoothing q'=(q+E)/(1+K·E); 0 = none.",
        ),
    ] = 0.0,
    rank_by: Annotated[
        RankMetric,
        typer.Option(
            "--rank-by",
            envvar="KLRANK_RANK_BY",
            help="Metric the ranking uses.",
        ),
    ] = "mean_kl",
    run_date: Annotated[
        dt.datetime | None,
        typer.Option(
            "--run-date",
            envvar="KLRANK_RUN_DATE",
            formats=["%Y-%m-%d"],
            help="Publish to OUT/run_date=YYYY-MM-DD/.",
            show_default=False,
        ),
    ] = None,
    rows: Annotated[
        bool,
        typer.Option(
            "--rows/--no-rows",
            envvar="KLRANK_ROWS",
            help="Write rows.parquet with the per-row measures.",
        ),
    ] = True,
    failures: Annotated[
        Path | None,
        typer.Option(
            "--failures",
            envvar="KLRANK_FAILURES",
            help="Where failure cases go [default: OUT/_failures/[run_date=.../]failures.parquet].",
            show_default=False,
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            envvar="KLRANK_BASELINE",
            help="Compare with an earlier report: auto (the latest earlier --run-date night "
            "under OUT), a report.parquet or a run folder.",
            show_default=False,
        ),
    ] = None,
    max_mean_kl: Annotated[
        float | None,
        typer.Option(
            "--max-mean-kl",
            envvar="KLRANK_MAX_MEAN_KL",
            help="Gate: every model's mean KL (ALL rows) must be at most this; else exit 3.",
            show_default=False,
        ),
    ] = None,
    max_regression: Annotated[
        float | None,
        typer.Option(
            "--max-regression",
            envvar="KLRANK_MAX_REGRESSION",
            min=0.0,
            help="Gate (needs --baseline): no model's mean KL may rise by more than this "
            "percentage with p < --alpha; else exit 3.",
            show_default=False,
        ),
    ] = None,
    alpha: Annotated[
        float,
        typer.Option(
            "--alpha",
            envvar="KLRANK_ALPHA",
            help="Significance level of --max-regression, in (0, 1).",
        ),
    ] = 0.05,
    expect_best: Annotated[
        str | None,
        typer.Option(
            "--expect-best",
            envvar="KLRANK_EXPECT_BEST",
            help="Gate: this model must rank 1 on ALL rows; else exit 3.",
            show_default=False,
        ),
    ] = None,
    write_html: Annotated[
        bool,
        typer.Option(
            "--html/--no-html",
            envvar="KLRANK_HTML",
            help="Write report.html, a self-contained page with the tables and plots.",
        ),
    ] = True,
    worst: Annotated[
        int,
        typer.Option(
            "--worst",
            envvar="KLRANK_WORST",
            min=0,
            help="Rows per model in worst_rows.parquet, highest KL first; 0 = no file.",
        ),
    ] = 20,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            envvar="KLRANK_ENGINE",
            help="local: this machine. ray: a Ray cluster (pip install 'klrank[ray]'); "
            "quantiles then come from a sketch within 0.1 %.",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            envvar="RAY_ADDRESS",
            help="--engine ray: the cluster to join (host:port); without it a local Ray "
            "instance is started on 127.0.0.1.",
        ),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            envvar="KLRANK_PARTITIONS",
            min=1,
            help="--engine ray: parts the rows are split into by id (default: 4 per CPU, "
            "at most one per 250,000 label rows).",
        ),
    ] = None,
    as_json: JsonOut = False,
    debug: Debug = False,
    lock_timeout: cli_ops.LockTimeoutOption = 600.0,
    log_format: cli_ops.LogFormatOption = "text",
    quiet: cli_ops.QuietOption = False,
    config: cli_ops.ConfigOption = None,
) -> None:
    """Validate the inputs, compute the divergences and publish the ranked report atomically.

    Exits 3 when a gate failed: the report is published, and manifest.json lists every gate.
    """
    cli_ops.setup(log_format, quiet)

    def action() -> Any:
        options = RunOptions(
            inputs=_inputs(
                labels,
                predictions,
                id_col,
                label_col,
                model_col,
                prob_prefix,
                logit_prefix,
                truth,
                tolerance,
                slice_by,
                classes,
            ),
            out=out,
            base=base,
            epsilon=epsilon,
            rank_by=rank_by,
            run_date=run_date.date() if run_date else None,
            write_rows=rows,
            failures=failures,
            baseline=baseline,
            gates=Gates(max_mean_kl, max_regression, alpha, expect_best),
            lock_timeout=lock_timeout,
            write_html=write_html,
            worst=worst,
            engine=engine,
            ray_address=ray_address if engine == "ray" else None,
            partitions=partitions,
        )
        summary = run(options)
        failed = summary.failed_gates
        if as_json:
            extra: dict[str, Any] = {"target": str(summary.target)}
            if failed:
                extra["exit_code"] = EXIT_GATE_FAILED
            typer.echo(json.dumps(summary.manifest | extra))
        else:
            typer.echo(summary.summary, nl=False)
        cli_ops.notice(f"published {one_line(str(summary.target))}", quiet)
        for gate in failed:  # even with --quiet: a failed gate is the reason for exit 3
            if logs.structured():
                events.emit(
                    "gate.failed",
                    logging.ERROR,
                    gate=gate.gate,
                    model=gate.model,
                    message=gate.message,
                )
            else:
                typer.echo(f"klrank: gate failed: {gate.message}", err=True)
        return summary

    # Exit outside the guard: typer.Exit is an exception the guard would call a crash.
    if _guarded(action, debug=debug, as_json=as_json).failed_gates:
        raise typer.Exit(EXIT_GATE_FAILED)


@app.command("validate")
def validate_command(
    labels: Labels,
    predictions: Predictions,
    id_col: IdCol = "id",
    label_col: LabelCol = "label",
    model_col: ModelCol = "model",
    prob_prefix: ProbPrefix = "prob_",
    logit_prefix: LogitPrefix = "logit_",
    truth: TruthOpt = "auto",
    tolerance: Tolerance = 1e-6,
    slice_by: SliceBy = None,
    classes: Classes = None,
    failures: Annotated[
        Path | None,
        typer.Option(
            "--failures",
            envvar="KLRANK_FAILURES",
            help="Write all failure cases to this Parquet file.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOut = False,
    debug: Debug = False,
    log_format: cli_ops.LogFormatOption = "text",
    quiet: cli_ops.QuietOption = False,
    config: cli_ops.ConfigOption = None,
) -> None:
    """Check the inputs against the contract without computing or publishing anything."""
    cli_ops.setup(log_format, quiet)

    def action() -> None:
        options = _inputs(
            labels,
            predictions,
            id_col,
            label_col,
            model_col,
            prob_prefix,
            logit_prefix,
            truth,
            tolerance,
            slice_by,
            classes,
        )
        timings = Timings()
        summary = validate(options, failures, timings)
        layout = summary.inputs.layout
        result = {
            "status": "valid",
            "inputs": summary.inputs.manifest(),
            "models": summary.models,
            "alignment": summary.alignment,
            "classes": list(layout.classes),
            "truth": layout.truth,
            "prediction_kind": layout.prediction_kind,
            "timings_s": timings.seconds,
        }
        if as_json:
            typer.echo(json.dumps(result))
        else:
            typer.echo(
                f"valid: {summary.inputs.labels.n_rows} label rows, "
                f"{summary.inputs.predictions.n_rows} prediction rows, {len(summary.models)} models, "
                f"{len(layout.classes)} classes ({layout.truth} truth, {layout.prediction_kind} predictions)"
            )

    _guarded(action, debug=debug, as_json=as_json)


@app.command("history")
def history_command(
    root: Annotated[
        Path,
        typer.Argument(
            help="Output directory of nightly runs (holding run_date=YYYY-MM-DD/ folders).",
            show_default=False,
        ),
    ],
    slice_name: Annotated[
        str,
        typer.Option("--slice", envvar="KLRANK_SLICE", help="ALL, or COL=value."),
    ] = "ALL",
    chart: Annotated[
        Path | None,
        typer.Option(
            # Not --out: a config file's top-level `out` (the reports folder) must not land here.
            "--chart",
            envvar="KLRANK_HISTORY_CHART",
            help="Where the chart goes (a self-contained HTML file); default DIR/history.html.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOut = False,
    debug: Debug = False,
    log_format: cli_ops.LogFormatOption = "text",
    quiet: cli_ops.QuietOption = False,
    config: cli_ops.ConfigOption = None,
) -> None:
    """Every night's mean KL per model with its 95% CI, as a table and an HTML chart."""
    cli_ops.setup(log_format, quiet)

    def action() -> None:
        summary = history(HistoryOptions(root, slice_name, chart))
        if as_json:
            rows = [
                r | {"run_date": r["run_date"].isoformat()}
                for r in summary.table.iter_rows(named=True)
            ]
            for row in rows:  # JSON has no infinity: null, and n_infinite says why
                for key, value in row.items():
                    if isinstance(value, float) and not math.isfinite(value):
                        row[key] = None
            document = {
                "status": "success",
                "root": str(root),
                "slice": slice_name,
                "unit": summary.unit,
                "nights": summary.nights,
                "chart": str(summary.chart),
                "rows": rows,
            }
            typer.echo(json.dumps(document))
        else:
            typer.echo(history_markdown(summary.table, summary.unit, slice_name), nl=False)
        cli_ops.notice(f"chart written to {one_line(str(summary.chart))}", quiet)

    _guarded(action, debug=debug, as_json=as_json)


app.add_typer(cli_ops.config_app, name="config")


def _wants_json(args: list[str]) -> bool:
    """Whether the command line (or KLRANK_JSON) asked for a JSON summary on stdout."""
    flag = os.environ.get("KLRANK_JSON", "").lower() in ("1", "true", "yes", "on")
    return flag or "--json" in args


def run_cli() -> int:
    """Parse the command line, run the command and return its exit code."""
    try:
        code = app(prog_name="klrank", standalone_mode=False)
    except Interrupted as stop:  # outside a command's work: while parsing options, say
        typer.echo(f"klrank: {cli_ops.stopped_message(stop.signum)}", err=True)
        return EXIT_SIGNAL_BASE + stop.signum
    except ClickException as error:  # the option parser's own errors, config-file values too
        error.show()
        if _wants_json(sys.argv[1:]):  # a scheduler reading stdout still gets one JSON object
            message = error.format_message()
            status = "usage_error" if error.exit_code == EXIT_USAGE else "error"
            typer.echo(
                json.dumps({"status": status, "exit_code": error.exit_code, "message": message})
            )
        return error.exit_code
    except Abort:  # not 1: that means invalid data, which a scheduler does not retry
        typer.echo("Aborted!", err=True)
        return EXIT_INTERNAL
    return code if isinstance(code, int) else EXIT_OK


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
        code = EXIT_INTERNAL
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
