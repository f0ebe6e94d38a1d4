"""``klrank run``: validate, compute and publish the ranked report (:func:`klrank.run.run`)."""

import datetime as dt
import json
import logging
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
    LeaseTtl,
    LockTimeout,
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
from klrank.config import DEFAULT_BOOTSTRAP, DEFAULT_QUANTILES, Engine, RunOptions, parse_quantiles
from klrank.io.buckets import LEASE_TTL_S
from klrank.pipeline.aggregate import RankMetric
from klrank.pipeline.divergence import Base
from klrank.pipeline.errors import ExitCode
from klrank.pipeline.gates import Gates
from klrank.pipeline.layout import DEFAULT_BATCH_BYTES
from klrank.pipeline.text import one_line
from klrank.run import RunSummary, run
from klrank.runtime import events, logs

Out = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        envvar="KLRANK_OUT",
        help="Output directory of the report, or an s3://, az:// or gs:// URL (klrank.io.buckets).",
        show_default=False,
    ),
]
LogBase = Annotated[
    Base, typer.Option("--base", envvar="KLRANK_BASE", help="Log base: 2 bits, e nats, 10 bans.")
]
Epsilon = Annotated[
    float,
    typer.Option(
        "--epsilon",
        envvar="KLRANK_EPSILON",
        min=0.0,
        max=0.999999,
        help="Additive smoothing q'=(q+E)/(1+K·E); 0 = none.",
    ),
]
RankBy = Annotated[
    RankMetric, typer.Option("--rank-by", envvar="KLRANK_RANK_BY", help="Metric the ranking uses.")
]
RunDate = Annotated[
    dt.datetime | None,
    typer.Option(
        "--run-date",
        envvar="KLRANK_RUN_DATE",
        formats=["%Y-%m-%d"],
        help="Publish to OUT/run_date=YYYY-MM-DD/.",
        show_default=False,
    ),
]
Rows = Annotated[
    bool,
    typer.Option(
        "--rows/--no-rows",
        envvar="KLRANK_ROWS",
        help="Write rows.parquet with the per-row measures.",
    ),
]
Failures = Annotated[
    Path | None,
    typer.Option(
        "--failures",
        envvar="KLRANK_FAILURES",
        help="Where failure cases go [default: OUT/_failures/[run_date=.../]failures.parquet].",
        show_default=False,
    ),
]
Baseline = Annotated[
    str | None,
    typer.Option(
        "--baseline",
        envvar="KLRANK_BASELINE",
        help="Compare with an earlier report: auto (the latest earlier --run-date night "
        "under OUT), a report.parquet or a run folder.",
        show_default=False,
    ),
]
MaxMeanKl = Annotated[
    float | None,
    typer.Option(
        "--max-mean-kl",
        envvar="KLRANK_MAX_MEAN_KL",
        help="Gate: every model's mean KL (ALL rows) must be at most this; else exit 3.",
        show_default=False,
    ),
]
MaxRegression = Annotated[
    float | None,
    typer.Option(
        "--max-regression",
        envvar="KLRANK_MAX_REGRESSION",
        min=0.0,
        help="Gate (needs --baseline): no model's mean KL may rise by more than this "
        "percentage with p < --alpha; else exit 3.",
        show_default=False,
    ),
]
Alpha = Annotated[
    float,
    typer.Option(
        "--alpha", envvar="KLRANK_ALPHA", help="Significance level of --max-regression, in (0, 1)."
    ),
]
ExpectBest = Annotated[
    str | None,
    typer.Option(
        "--expect-best",
        envvar="KLRANK_EXPECT_BEST",
        help="Gate: this model must rank 1 on ALL rows; else exit 3.",
        show_default=False,
    ),
]
ExpectBeatsPrior = Annotated[
    bool,
    typer.Option(
        "--expect-beats-prior",
        envvar="KLRANK_EXPECT_BEATS_PRIOR",
        help="Gate: every model's mean KL (ALL rows) must be below the prior's, which predicts "
        "the mean label distribution, with paired p < --alpha; else exit 3.",
    ),
]
Bootstrap = Annotated[
    int,
    typer.Option(
        "--bootstrap",
        envvar="KLRANK_BOOTSTRAP",
        min=0,
        help="Poisson bootstrap replicates for p_best and the rank interval (0: none).",
    ),
]
Seed = Annotated[
    int,
    typer.Option("--seed", envvar="KLRANK_SEED", help="Seed of the bootstrap's weights."),
]
DEFAULT_QUANTILES_TEXT = ",".join(map(str, DEFAULT_QUANTILES))
Quantiles = Annotated[
    str,
    typer.Option(
        "--quantiles",
        envvar="KLRANK_QUANTILES",
        help="Probabilities in [0, 1], comma-separated, of the per-row KL (and Δp) quantiles in "
        "quantiles.parquet.",
    ),
]
Html = Annotated[
    bool,
    typer.Option(
        "--html/--no-html",
        envvar="KLRANK_HTML",
        help="Write report.html, a self-contained page with the tables and plots.",
    ),
]
Worst = Annotated[
    int,
    typer.Option(
        "--worst",
        envvar="KLRANK_WORST",
        min=0,
        help="Rows per model in worst_rows.parquet, highest KL first; 0 = no file.",
    ),
]
EngineOption = Annotated[
    Engine,
    typer.Option(
        "--engine",
        envvar="KLRANK_ENGINE",
        help="local: this machine. ray: a Ray cluster (pip install 'klrank\\[ray]'); "
        "quantiles then come from a sketch within 0.1 %.",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="--engine ray: the cluster to join (host:port); without it a local Ray "
        "instance is started on 127.0.0.1.",
    ),
]
Partitions = Annotated[
    int | None,
    typer.Option(
        "--partitions",
        envvar="KLRANK_PARTITIONS",
        min=1,
        help="--engine ray: parts the rows are split into by id (default: 4 per CPU, "
        "at most one per 250,000 label rows).",
    ),
]

MlflowExperiment = Annotated[
    str | None,
    typer.Option(
        "--mlflow-experiment",
        envvar="KLRANK_MLFLOW_EXPERIMENT",
        help="Log the night to this MLflow experiment at MLFLOW_TRACKING_URI: a run with the "
        "options and files, a nested run per model with its ALL-slice metrics (pip install "
        "'klrank\\[mlflow]'). A failure to log is a warning, recorded in manifest.json.",
        show_default=False,
    ),
]


def run_command(
    labels: Labels,
    predictions: Predictions,
    out: Out,
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
    base: LogBase = "2",
    epsilon: Epsilon = 0.0,
    rank_by: RankBy = "mean_kl",
    run_date: RunDate = None,
    rows: Rows = True,
    failures: Failures = None,
    baseline: Baseline = None,
    max_mean_kl: MaxMeanKl = None,
    max_regression: MaxRegression = None,
    alpha: Alpha = 0.05,
    expect_best: ExpectBest = None,
    expect_beats_prior: ExpectBeatsPrior = False,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    seed: Seed = 0,
    quantiles: Quantiles = DEFAULT_QUANTILES_TEXT,
    write_html: Html = True,
    worst: Worst = 20,
    engine: EngineOption = "local",
    ray_address: RayAddress = None,
    partitions: Partitions = None,
    mlflow_experiment: MlflowExperiment = None,
    as_json: Json = False,
    debug: Debug = False,
    lock_timeout: LockTimeout = 600.0,
    lease_ttl: LeaseTtl = LEASE_TTL_S,
    log_format: LogFormatOption = "text",
    quiet: Quiet = False,
    config: Config = None,
) -> None:
    """Validate the inputs, compute the divergences and publish the ranked report atomically.

    Exits 3 when a gate failed: the report is published, and manifest.json lists every gate.
    """
    output.setup(log_format, quiet)

    def action() -> RunSummary:
        summary = run(
            RunOptions(
                inputs=input_options(
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
                ),
                out=out,
                base=base,
                epsilon=epsilon,
                rank_by=rank_by,
                run_date=run_date.date() if run_date else None,
                write_rows=rows,
                failures=failures,
                baseline=baseline,
                gates=Gates(
                    max_mean_kl=max_mean_kl,
                    max_regression_pct=max_regression,
                    alpha=alpha,
                    expect_best=expect_best,
                    expect_beats_prior=expect_beats_prior,
                ),
                lock_timeout=lock_timeout,
                lease_ttl=lease_ttl,
                write_html=write_html,
                worst=worst,
                engine=engine,
                ray_address=ray_address if engine == "ray" else None,
                partitions=partitions,
                bootstrap=bootstrap,
                seed=seed,
                quantiles=parse_quantiles(quantiles),
                mlflow_experiment=mlflow_experiment,
            )
        )
        _report(summary, as_json=as_json, quiet=quiet)
        return summary

    # Exit outside the guard: typer.Exit is an exception the guard would call a crash.
    if guarded(action, debug=debug, as_json=as_json).failed_gates:
        raise typer.Exit(ExitCode.GATE_FAILED)


def _report(summary: RunSummary, *, as_json: bool, quiet: bool) -> None:
    """The ranked table (or the manifest as JSON) on stdout, where it went and failed gates."""
    failed = summary.failed_gates
    if as_json:
        extra: dict[str, Any] = {"target": str(summary.target)}
        if failed:
            extra["exit_code"] = int(ExitCode.GATE_FAILED)
        typer.echo(json.dumps(summary.manifest | extra))
    else:
        typer.echo(summary.summary, nl=False)
    output.notice(f"published {one_line(str(summary.target))}", quiet=quiet)
    for gate in failed:  # even with --quiet: a failed gate is the reason for exit 3
        if logs.structured():
            events.emit(
                "gate.failed", logging.ERROR, gate=gate.gate, model=gate.model, message=gate.message
            )
        else:
            typer.echo(f"klrank: gate failed: {gate.message}", err=True)
