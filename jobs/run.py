"""Orchestration of ``klrank validate`` and ``klrank run``: options in, a summary out.

Nothing here prints or exits; errors are raised as :mod:`pipeline.errors` classes and the CLI
maps them to exit codes.
"""

import datetime as dt
import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import polars as pl

from jobs import __version__
from jobs.config import InputOptions, RunOptions
from pipeline import aggregate, io
from pipeline.divergence import UNITS
from pipeline.errors import InvalidDataError
from pipeline.layout import (
    ID,
    MODEL,
    ROW_COLUMNS,
    Layout,
    prepare_labels,
    prepare_predictions,
    resolve_layout,
    row_measures,
)
from pipeline.summary import ranked_summary
from pipeline.validation import (
    check_data,
    check_structure,
    label_columns,
    prediction_columns,
    summarise,
)
from schemas.report import REPORT_COLUMNS, REPORT_SCHEMA, REPORT_SCHEMA_VERSION

REPORT_FILE, ROWS_FILE, SUMMARY_FILE, MANIFEST_FILE = (
    "report.parquet",
    "rows.parquet",
    "summary.md",
    "manifest.json",
)


@dataclass
class Timings:
    """Seconds spent per phase, in the order the phases ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 4)


@dataclass(frozen=True)
class ValidatedInputs:
    """Inputs that passed every check, loaded into memory, with their layout."""

    layout: Layout
    labels: pl.DataFrame
    predictions: pl.DataFrame
    sources: dict[str, io.ParquetInput]

    @property
    def models(self) -> list[str]:
        """The model names, sorted."""
        return sorted(self.predictions.get_column(self.layout.model_col).unique().to_list())


@dataclass(frozen=True)
class RunSummary:
    """What a successful run published."""

    target: Path
    report: pl.DataFrame
    summary: str
    manifest: dict[str, Any]


def _fail_if_any(failures: pl.DataFrame, failures_path: Path | None) -> None:
    if failures.height == 0:
        return
    lines = summarise(failures)
    if failures_path is not None:
        io.write_atomically(failures_path, lambda path: io.write_parquet(failures, path))
        lines.append(f"all {failures.height} failure cases: {failures_path}")
    n_checks = len(lines) - (failures_path is not None)
    raise InvalidDataError(
        f"validation failed: {n_checks} failed check{'' if n_checks == 1 else 's'}\n"
        + "\n".join(lines),
        failures,
    )


def validate(
    options: InputOptions, failures_path: Path | None, timings: Timings
) -> ValidatedInputs:
    """Read both inputs and run every check of the input contract.

    Raises
    ------
    UsageError
        A path is missing or not Parquet, or no distribution columns are found.
    InvalidDataError
        Any check failed; the message has one line per failed check, and the full failure
        cases are written to ``failures_path`` (when given).
    """
    with timings.phase("scan"):
        sources = {
            "labels": io.scan_parquet(options.labels),
            "predictions": io.scan_parquet(options.predictions),
        }
        labels, predictions = sources["labels"].frame, sources["predictions"].frame
        layout = resolve_layout(
            labels.collect_schema().names(),
            predictions.collect_schema().names(),
            id_col=options.id_col,
            model_col=options.model_col,
            label_col=options.label_col,
            truth=options.truth,
            prob_prefix=options.prob_prefix,
            logit_prefix=options.logit_prefix,
            slice_by=options.slice_by,
        )
    with timings.phase("validate"):
        _fail_if_any(check_structure(labels, predictions, layout), failures_path)
        label_frame = io.collect(labels.select(label_columns(layout)), sources["labels"])
        prediction_frame = io.collect(
            predictions.select(prediction_columns(layout)), sources["predictions"]
        )
        _fail_if_any(
            check_data(label_frame, prediction_frame, layout, options.tolerance), failures_path
        )
    return ValidatedInputs(layout, label_frame, prediction_frame, sources)


def _common_key(frame: pl.LazyFrame) -> pl.LazyFrame:
    # Integer ids of any width join as Int64; string ids stay strings (validation has matched kinds).
    dtype = frame.collect_schema()[ID]
    return frame.with_columns(pl.col(ID).cast(pl.Int64)) if dtype.is_integer() else frame


def compute_report(
    inputs: ValidatedInputs, options: RunOptions
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The validated, ranked report and the per-row measures."""
    layout = inputs.layout
    n_classes = len(layout.classes)
    labels = _common_key(prepare_labels(inputs.labels.lazy(), layout))
    predictions = _common_key(
        prepare_predictions(inputs.predictions.lazy(), layout, options.epsilon)
    )
    # Every model's rows in the labels' order: sums over a model's rows then do not depend on
    # the order its predictions arrived in, so label-only means (entropy) agree to the last bit.
    rows = (
        labels.join(predictions, on=ID, how="inner", maintain_order="left")
        .sort(MODEL, maintain_order=True)
        .with_columns(row_measures(n_classes, options.base))
        .collect()
    )
    keys = aggregate.slice_keys(layout.slice_cols)
    states = aggregate.merge_states(
        pl.concat(aggregate.partial_states(rows, key, n_classes) for key in keys), n_classes
    )
    quantiles = pl.concat(aggregate.quantiles(rows, key) for key in keys)
    ranked = aggregate.finalize(states, quantiles, n_classes, options.base, options.rank_by)
    best = aggregate.best_models(ranked)
    paired = pl.concat(aggregate.paired_states(rows, key, best) for key in keys)
    report = (
        aggregate.with_paired_comparison(ranked, paired)
        .with_columns(pl.lit(UNITS[options.base]).alias("unit"))
        .sort(
            pl.col(aggregate.SLICE) != aggregate.ALL_ROWS,
            aggregate.SLICE,
            "rank",
            MODEL,
        )
        .select(list(REPORT_COLUMNS))
    )
    REPORT_SCHEMA.validate(report)
    return report, rows.select(*ROW_COLUMNS, *layout.slice_cols)


def _versions() -> dict[str, str]:
    packages = ("polars", "pyarrow", "pandera", "typer")
    return {"klrank": __version__, "python": platform.python_version()} | {
        p: version(p) for p in packages
    }


def run(options: RunOptions) -> RunSummary:
    """Validate, compute and publish the report atomically under ``options.target``."""
    started = dt.datetime.now(dt.UTC)
    io.check_publishable(options.target)
    timings = Timings()
    inputs = validate(options.inputs, options.failures_path, timings)
    with timings.phase("compute"):
        report, rows = compute_report(inputs, options)
    unit = UNITS[options.base]
    summary = ranked_summary(report, unit, options.rank_by)
    recorded = options.recorded()
    metadata = {
        "klrank.report_schema_version": REPORT_SCHEMA_VERSION,
        "klrank.options": json.dumps(recorded, sort_keys=True),
        "klrank.unit": unit,
    }
    manifest: dict[str, Any] = {
        "status": "success",
        "klrank_version": __version__,
        "report_schema_version": REPORT_SCHEMA_VERSION,
        "started_at": started.isoformat(),
        "inputs": {
            name: {"path": source.path, "files": len(source.files), "rows": source.n_rows}
            for name, source in inputs.sources.items()
        },
        "truth": inputs.layout.truth,
        "prediction_kind": inputs.layout.prediction_kind,
        "models": inputs.models,
        "classes": list(inputs.layout.classes),
        "unit": unit,
        "options": recorded,
        "outputs": [
            REPORT_FILE,
            *([ROWS_FILE] if options.write_rows else []),
            SUMMARY_FILE,
            MANIFEST_FILE,
        ],
        "versions": _versions(),
    }

    def write(staging: Path) -> None:
        with timings.phase("write"):
            io.write_parquet(report, staging / REPORT_FILE, metadata)
            if options.write_rows:
                io.write_parquet(rows, staging / ROWS_FILE)
            io.write_text(summary, staging / SUMMARY_FILE)
        manifest["timings_s"] = timings.seconds
        manifest["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
        io.write_json(manifest, staging / MANIFEST_FILE)

    io.publish(options.target, write)
    io.remove_file(options.failures_path)  # a stale record of an earlier failed run
    return RunSummary(target=options.target, report=report, summary=summary, manifest=manifest)
