"""The ``klrank`` command line: options in, exit codes out.

Exit codes: 0 success, 1 the data failed validation, 2 usage error (bad option, missing or
unreadable path, corrupt Parquet, no distribution columns), 70 internal error (a bug: rerun with
``--debug`` for the traceback). Every option can also be set as an environment variable, named in
``--help`` (``KLRANK_LABELS``, ``KLRANK_OUT``, ...).
"""

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from jobs import __version__
from jobs.config import InputOptions, RunOptions, TruthOption
from jobs.run import Timings, run, validate
from pipeline.aggregate import RankMetric
from pipeline.divergence import Base
from pipeline.errors import InvalidDataError, KlrankError, UsageError

EXIT_OK, EXIT_INVALID_DATA, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70

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
) -> None:
    """Rank models by the KL divergence of their predicted distributions from the truth."""


def _fail(code: int, status: str, message: str, as_json: bool) -> NoReturn:
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
    except KlrankError as error:  # a subclass without its own code is still not a crash
        _fail(EXIT_INTERNAL, "error", str(error), as_json)
    except Exception as error:
        if debug:
            raise
        _fail(
            EXIT_INTERNAL,
            "internal_error",
            f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
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
    as_json: JsonOut = False,
    debug: Debug = False,
) -> None:
    """Validate the inputs, compute the divergences and publish the ranked report atomically."""

    def action() -> None:
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
            write_html=write_html,
            worst=worst,
        )
        summary = run(options)
        if as_json:
            typer.echo(json.dumps(summary.manifest | {"target": str(summary.target)}))
        else:
            typer.echo(summary.summary, nl=False)
        typer.echo(f"klrank: published {summary.target}", err=True)

    _guarded(action, debug=debug, as_json=as_json)


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
) -> None:
    """Check the inputs against the contract without computing or publishing anything."""

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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="klrank")


if __name__ == "__main__":
    main()
