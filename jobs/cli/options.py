"""The options more than one command takes, each declared once as an ``Annotated`` alias.

Each alias carries the option's spelling, its ``KLRANK_*`` environment variable and its help;
a command gives it its default (``id_col: IdCol = "id"``). Options of one command only are
declared in that command's module.
"""

from pathlib import Path
from typing import Annotated

import typer
from klrank._version import __version__
from klrank.cli.config_option import CONFIG_ENVVAR, load_config
from klrank.config import InputOptions, TruthOption
from klrank.pipeline.errors import ExitCode
from klrank.pipeline.layout import DEFAULT_BATCH_BYTES
from klrank.runtime.logs import LogFormat


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"klrank {__version__}")
        raise typer.Exit()


Version = Annotated[
    bool,
    typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar=CONFIG_ENVVAR,
        callback=load_config,
        is_eager=True,  # read before the other options, whose defaults it sets
        help="TOML file of option values: command line > KLRANK_* environment > file > defaults.",
        show_default=False,
    ),
]

# The inputs, as `run` and `validate` read them.
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
Truth = Annotated[
    TruthOption,
    typer.Option(
        "--truth",
        envvar="KLRANK_TRUTH",
        help="auto: soft when the labels hold a distribution (probabilities or logits); "
        "with soft truth a label column is the next token (nll, delta_p).",
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
        "\\[default: 0..K-1].",
        show_default=False,
    ),
]
WeightCol = Annotated[
    str | None,
    typer.Option(
        "--weight-col",
        envvar="KLRANK_WEIGHT_COL",
        help="Labels column of row weights (finite, >= 0): every mean becomes a weighted mean.",
        show_default=False,
    ),
]
ClusterBy = Annotated[
    str | None,
    typer.Option(
        "--cluster-by",
        envvar="KLRANK_CLUSTER_BY",
        help="Labels column naming each row's cluster (document, patient, user): standard errors, "
        "intervals and p-values become cluster-robust (CR1).",
        show_default=False,
    ),
]

BatchBytes = Annotated[
    int,
    typer.Option(
        "--batch-bytes",
        envvar="KLRANK_BATCH_BYTES",
        min=1,
        help="Rows per batch: as many as fit one rows x classes Float64 array in this many "
        "bytes (down to one row). Peak memory is a few times this; results do not depend on it.",
    ),
]

# How a command reports.
Json = Annotated[
    bool,
    typer.Option(
        "--json", envvar="KLRANK_JSON", help="Print a JSON summary to stdout instead of the table."
    ),
]
Debug = Annotated[
    bool,
    typer.Option(
        "--debug", envvar="KLRANK_DEBUG", help="Show Python tracebacks of internal errors."
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
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", envvar="KLRANK_QUIET", help="Log warnings and errors only; no progress."
    ),
]
LockTimeout = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        envvar="KLRANK_LOCK_TIMEOUT",
        min=0.0,
        help="Seconds to wait while another run publishes the same partition (0: fail at once); "
        f"then exit {int(ExitCode.LOCK_BUSY)}.",
    ),
]

LeaseTtl = Annotated[
    float,
    typer.Option(
        "--lease-ttl",
        envvar="KLRANK_LEASE_TTL",
        min=0.001,
        help="An s3://, az:// or gs:// --out: seconds a run's lease lives unrenewed; a lease unchanged this long "
        "belonged to a dead run, and the next run takes it over.",
    ),
]


def input_options(
    *,
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
    weight_col: str | None = None,
    cluster_by: str | None = None,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> InputOptions:
    """The :class:`InputOptions` of the input options above, as the command line gave them."""
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
        weight_col=weight_col,
        cluster_by=cluster_by,
        batch_bytes=batch_bytes,
    )
