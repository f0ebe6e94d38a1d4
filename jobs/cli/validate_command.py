"""``klrank validate``: check the inputs against the contract (:func:`klrank.run.validate`)."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from klrank.cli import output
from klrank.cli.errors import guarded
from klrank.cli.options import (
    BatchBytes,
    Classes,
    ClusterBy,
    Config,
    Debug,
    IdCol,
    Json,
    LabelCol,
    Labels,
    LogFormatOption,
    LogitPrefix,
    ModelCol,
    Predictions,
    ProbPrefix,
    Quiet,
    SliceBy,
    Tolerance,
    Truth,
    WeightCol,
    input_options,
)
from klrank.pipeline.layout import DEFAULT_BATCH_BYTES
from klrank.run import Timings, ValidationSummary, validate

Failures = Annotated[
    Path | None,
    typer.Option(
        "--failures",
        envvar="KLRANK_FAILURES",
        help="Write all failure cases to this Parquet file.",
        show_default=False,
    ),
]


def validate_command(
    labels: Labels,
    predictions: Predictions,
    id_col: IdCol = "id",
    label_col: LabelCol = "label",
    model_col: ModelCol = "model",
    prob_prefix: ProbPrefix = "prob_",
    logit_prefix: LogitPrefix = "logit_",
    truth: Truth = "auto",
    tolerance: Tolerance = 1e-6,
    slice_by: SliceBy = None,
    classes: Classes = None,
    weight_col: WeightCol = None,
    cluster_by: ClusterBy = None,
    batch_bytes: BatchBytes = DEFAULT_BATCH_BYTES,
    failures: Failures = None,
    as_json: Json = False,
    debug: Debug = False,
    log_format: LogFormatOption = "text",
    quiet: Quiet = False,
    config: Config = None,
) -> None:
    """Check the inputs against the contract without computing or publishing anything."""
    output.setup(log_format, quiet)

    def action() -> None:
        options = input_options(
            labels=labels,
            predictions=predictions,
            id_col=id_col,
            label_col=label_col,
            model_col=model_col,
            prob_prefix=prob_prefix,
            logit_prefix=logit_prefix,
            truth=truth,
            tolerance=tolerance,
            slice_by=slice_by,
            classes=classes,
            weight_col=weight_col,
            cluster_by=cluster_by,
            batch_bytes=batch_bytes,
        )
        timings = Timings()
        _report(validate(options, failures, timings), timings, as_json=as_json)

    guarded(action, debug=debug, as_json=as_json)


def _report(summary: ValidationSummary, timings: Timings, *, as_json: bool) -> None:
    """What was checked, as one line or as the JSON summary."""
    layout = summary.inputs.layout
    if as_json:
        result: dict[str, Any] = {
            "status": "valid",
            "inputs": summary.inputs.manifest(),
            "models": summary.models,
            "alignment": summary.alignment,
            "classes": list(layout.classes),
            "truth": layout.truth,
            "prediction_kind": layout.prediction_kind,
            "timings_s": timings.seconds,
        }
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"valid: {summary.inputs.labels.n_rows} label rows, "
        f"{summary.inputs.predictions.n_rows} prediction rows, {len(summary.models)} models, "
        f"{len(layout.classes)} classes ({layout.truth} truth, {layout.prediction_kind} predictions)"
    )
