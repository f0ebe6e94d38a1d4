"""Orchestration of ``klrank validate`` and ``klrank run``: options in, a summary out.

Nothing here prints or exits; errors are raised as :mod:`pipeline.errors` classes and the CLI
maps them to exit codes.
"""

import datetime as dt
import json
import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import polars as pl
from klrank._version import __version__
from klrank.config import InputOptions, RunOptions
from klrank.engines.local import evaluate
from klrank.engines.ray import RayOptions, evaluate_on_ray
from klrank.io import plotly_bundle, publishing, reading, targets, writing
from klrank.nightly import Baseline, load_baseline
from klrank.pipeline import aggregate, sketch
from klrank.pipeline.baseline import compare_with_baseline
from klrank.pipeline.divergence import UNITS
from klrank.pipeline.errors import InvalidDataError, StorageError
from klrank.pipeline.fold import Measures, Outcome
from klrank.pipeline.gates import GateResult, evaluate_gates
from klrank.pipeline.html import report_html
from klrank.pipeline.layout import MODEL, Layout, resolve_layout
from klrank.pipeline.summary import baseline_section, gates_section, ranked_summary
from klrank.pipeline.text import one_line
from klrank.pipeline.validation import check_structure, summarise
from klrank.runtime import events
from klrank.runtime.lock import run_lock
from klrank.schemas.outputs import (
    CONTRIBUTIONS_FILE,
    FAILURES_MARKER,
    HTML_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    ROWS_FILE,
    SUMMARY_FILE,
    WORST_FILE,
)
from klrank.schemas.report import REPORT_COLUMNS, REPORT_SCHEMA, REPORT_SCHEMA_VERSION


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
class OpenedInputs:
    """Both inputs scanned, their layout resolved and their structure checked."""

    layout: Layout
    labels: reading.ParquetInput
    predictions: reading.ParquetInput

    def manifest(self) -> dict[str, dict[str, Any]]:
        """Path, file count and row count of each input."""
        return {
            name: {"path": source.path, "files": len(source.files), "rows": source.n_rows}
            for name, source in (("labels", self.labels), ("predictions", self.predictions))
        }


@dataclass(frozen=True)
class ValidationSummary:
    """What ``klrank validate`` found valid."""

    inputs: OpenedInputs
    models: list[str]
    alignment: dict[str, str]


@dataclass(frozen=True)
class RunSummary:
    """What a successful run published."""

    target: Path
    report: pl.DataFrame
    summary: str
    manifest: dict[str, Any]
    gates: tuple[GateResult, ...] = ()

    @property
    def failed_gates(self) -> list[GateResult]:
        """The gates that failed; the report was published all the same."""
        return [g for g in self.gates if g.failed]


def _write_failures(failures: pl.DataFrame, failures_path: Path) -> str:
    """Write the failure cases; the line saying where they are, or why they could not be written.

    A failure to write them must not hide the failed checks: the data is still invalid (exit 1).
    """
    metadata = {FAILURES_MARKER: "1"}
    try:
        writing.write_atomically(
            failures_path, lambda path: writing.write_parquet(failures, path, metadata)
        )
    except StorageError as error:
        events.emit("failures.unwritten", logging.ERROR, path=str(failures_path), error=str(error))
        return f"the {failures.height} failure cases were not written: {one_line(str(error))}"
    return f"all {failures.height} failure cases: {one_line(str(failures_path))}"


def _fail_if_any(failures: pl.DataFrame, failures_path: Path | None) -> None:
    if failures.height == 0:
        return
    lines = summarise(failures)
    n_checks = len(lines)
    checks = sorted(set(failures.get_column("check").to_list()))
    events.emit("validation.failed", logging.ERROR, checks=checks, cases=failures.height)
    if failures_path is not None:
        lines.append(_write_failures(failures, failures_path))
    raise InvalidDataError(
        f"validation failed: {n_checks} failed check{'' if n_checks == 1 else 's'}\n"
        + "\n".join(lines),
        failures,
    )


def _list_widths(source: reading.ParquetInput, options: InputOptions) -> dict[str, int]:
    """The length of the first row of each List distribution column (Arrays carry theirs)."""
    widths = {}
    schema = source.frame.collect_schema()
    for prefix in (options.prob_prefix, options.logit_prefix):
        name = prefix.rstrip("_")
        if isinstance(schema.get(name), pl.List):
            first = source.frame.select(pl.col(name).list.len()).drop_nulls().head(1)
            lengths = reading.collect(first, source).get_column(name)
            widths[name] = int(lengths[0]) if lengths.len() else 0
    return widths


def open_inputs(
    options: InputOptions, failures_path: Path | None, timings: Timings
) -> OpenedInputs:
    """Scan both inputs, resolve which columns hold what, and check columns and dtypes.

    Raises
    ------
    UsageError
        A path is missing or not Parquet, or no distribution columns are found.
    InvalidDataError
        A required column is missing or has the wrong dtype, or the class sets differ.
    """
    with timings.phase("scan"):
        labels = reading.scan_parquet(options.labels)
        predictions = reading.scan_parquet(options.predictions)
        label_schema = labels.frame.collect_schema()
        prediction_schema = predictions.frame.collect_schema()
        layout = resolve_layout(
            label_schema,
            prediction_schema,
            id_col=options.id_col,
            model_col=options.model_col,
            label_col=options.label_col,
            truth=options.truth,
            prob_prefix=options.prob_prefix,
            logit_prefix=options.logit_prefix,
            slice_by=options.slice_by,
            classes=options.classes,
            label_list_width=_list_widths(labels, options),
            prediction_list_width=_list_widths(predictions, options),
        )
        with timings.phase("validate_structure"):  # inside scan: columns and dtypes
            structure = check_structure(labels.frame, predictions.frame, layout)
        _fail_if_any(structure, failures_path)
    opened = OpenedInputs(layout, labels, predictions)
    events.emit("inputs.scanned", **opened.manifest(), seconds=timings.seconds["scan"])
    return opened


def _evaluate(
    inputs: OpenedInputs,
    measures: Measures,
    timings: Timings,
    failures_path: Path | None,
    rows: writing.RowsWriter | None = None,
    compute: bool = True,
    ray: RayOptions | None = None,
    rows_dir: Path | None = None,
) -> Outcome:
    with timings.phase("evaluate"):
        if ray is not None:
            evaluation = evaluate_on_ray(  # imports Ray itself only now
                inputs.labels,
                inputs.predictions,
                inputs.layout,
                measures,
                ray,
                rows_dir=rows_dir,
                compute=compute,
            )
        else:
            evaluation = evaluate(
                inputs.labels,
                inputs.predictions,
                inputs.layout,
                measures,
                rows_sink=rows.write if rows is not None else None,
                compute=compute,
            )
    timings.seconds["validate"] = round(evaluation.validation_seconds, 4)
    if ray is None:  # on Ray, the checks of tasks side by side add up to more than the wall time
        timings.seconds["compute"] = round(
            timings.seconds["evaluate"] - evaluation.validation_seconds, 4
        )
    events.emit(
        "validation.done",
        seconds=timings.seconds["validate"],
        failures=evaluation.failures.height,
    )
    _fail_if_any(evaluation.failures, failures_path)
    if compute:
        events.emit(
            "evaluation.done",
            rows=inputs.labels.n_rows * len(evaluation.alignment),
            models=len(evaluation.alignment),
            seconds=timings.seconds["evaluate"],
        )
    return evaluation


def validate(
    options: InputOptions, failures_path: Path | None, timings: Timings
) -> ValidationSummary:
    """Run every check of the input contract on both inputs; compute nothing.

    Raises
    ------
    UsageError
        A path is missing or not Parquet, or no distribution columns are found.
    InvalidDataError
        Any check failed; the message has one line per failed check, and the full failure
        cases are written to ``failures_path`` (when given).
    """
    events.emit("validate.started", options=asdict(options))
    if failures_path is not None:
        targets.check_failures(failures_path, _input_paths(options))
    inputs = open_inputs(options, failures_path, timings)
    measures = Measures(tolerance=options.tolerance)
    evaluation = _evaluate(inputs, measures, timings, failures_path, compute=False)
    return ValidationSummary(inputs, sorted(evaluation.alignment), evaluation.alignment)


def _published_report(
    report: pl.DataFrame, base: str, baseline: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The report in its published column and row order, checked against its schema."""
    ordered = report.with_columns(pl.lit(UNITS[base]).alias("unit")).sort(
        pl.col(aggregate.SLICE) != aggregate.ALL_ROWS, aggregate.SLICE, "rank", MODEL
    )
    published = compare_with_baseline(ordered, baseline).select(list(REPORT_COLUMNS))
    REPORT_SCHEMA.validate(published)
    return published


def _published_contributions(
    contributions: pl.DataFrame, report: pl.DataFrame, unit: str
) -> pl.DataFrame:
    """Class contributions in the report's row order, classes in class order within each."""
    order = report.select(aggregate.SLICE, MODEL).with_row_index("_order")
    return (
        contributions.with_row_index("_class_order")
        .join(order, on=[aggregate.SLICE, MODEL], how="left")
        .sort("_order", "_class_order")
        .select(
            aggregate.SLICE,
            MODEL,
            aggregate.CLASS,
            "contribution",
            "mean_p",
            "mean_q",
            pl.lit(unit).alias("unit"),
        )
    )


def _html_details(inputs: OpenedInputs, options: RunOptions) -> list[str]:
    # Nothing from the clock: the same inputs and options give the same page.
    lines = [
        f"labels: {inputs.labels.path} ({inputs.labels.n_rows} rows); "
        f"predictions: {inputs.predictions.path} ({inputs.predictions.n_rows} rows); "
        f"{len(inputs.layout.classes)} classes, {inputs.layout.truth} truth",
        f"klrank {__version__}"
        + (f", run date {options.run_date.isoformat()}" if options.run_date else ""),
    ]
    return lines


def _versions() -> dict[str, str]:
    packages = ("polars", "pyarrow", "pandera", "typer")
    return {"klrank": __version__, "python": platform.python_version()} | {
        p: version(p) for p in packages
    }


def run(options: RunOptions) -> RunSummary:
    """Validate, compute and publish the report atomically under ``options.target``.

    The whole run holds the partition's lock (:mod:`pipeline.lock`), so two runs aimed at the
    same target never interleave; the second waits up to ``options.lock_timeout`` seconds.

    Raises
    ------
    LockBusyError
        Another run still held the partition's lock after ``options.lock_timeout`` seconds.
    """
    out = targets.real(options.out)
    if out != options.out.absolute():  # a link: publish into the folder it names
        options = replace(options, out=out)
    _check_publishable(options)
    events.emit("run.started", target=str(options.target), options=options.recorded())
    # Missing inputs, wrong columns or dtypes fail here, before any folder or lock file is made.
    timings = Timings()
    inputs = open_inputs(options.inputs, options.failures_path, timings)
    with run_lock(options.out, options.target, options.lock_timeout):
        _check_publishable(options)  # again: another run may have published meanwhile
        return _run(options, inputs, timings)


def _input_paths(options: InputOptions) -> dict[str, str]:
    return {"labels": options.labels, "predictions": options.predictions}


def _check_publishable(options: RunOptions) -> None:
    targets.check_publishable(
        options.out,
        options.target,
        dated=options.run_date is not None,
        inputs=_input_paths(options.inputs),
        failures=options.failures_path,
    )


def _run(options: RunOptions, inputs: OpenedInputs, timings: Timings) -> RunSummary:
    started, clock = dt.datetime.now(dt.UTC), time.perf_counter()
    measures = Measures(
        options.base,
        options.epsilon,
        options.rank_by,
        options.inputs.tolerance,
        worst_rows=options.worst,
    )
    unit = UNITS[options.base]
    quantile_method = sketch.METHOD if options.engine == "ray" else "exact"
    baseline: Baseline | None = None
    if options.baseline is not None:  # read before publishing: the target may be the baseline
        baseline = load_baseline(options.baseline, options.out, options.run_date, unit)
    recorded = options.recorded()
    manifest: dict[str, Any] = {
        "status": "success",
        "klrank_version": __version__,
        "report_schema_version": REPORT_SCHEMA_VERSION,
        "started_at": started.isoformat(),
        "inputs": inputs.manifest(),
        "truth": inputs.layout.truth,
        "prediction_kind": inputs.layout.prediction_kind,
        "classes": list(inputs.layout.classes),
        "unit": unit,
        "engine": options.engine,
        "quantiles": quantile_method,
        "options": recorded,
        "baseline": baseline.recorded() if baseline is not None else None,
        "outputs": [
            REPORT_FILE,
            *([ROWS_FILE] if options.write_rows else []),
            CONTRIBUTIONS_FILE,
            *([WORST_FILE] if options.worst else []),
            *([HTML_FILE] if options.write_html else []),
            SUMMARY_FILE,
            MANIFEST_FILE,
        ],
        "versions": _versions(),
    }
    published: dict[str, Any] = {}

    def write(staging: Path) -> None:
        if options.engine == "ray":  # the parts write rows.parquet/part-*.parquet themselves
            rows_dir = staging / ROWS_FILE if options.write_rows else None
            ray = RayOptions(options.ray_address, options.partitions)
            evaluation = _evaluate(
                inputs, measures, timings, options.failures_path, ray=ray, rows_dir=rows_dir
            )
        else:
            rows = writing.RowsWriter(staging / ROWS_FILE) if options.write_rows else None
            try:
                evaluation = _evaluate(inputs, measures, timings, options.failures_path, rows)
            finally:
                if rows is not None:  # also on failure: no write may outlive the staging folder
                    rows.close()
        assert evaluation.report is not None
        with timings.phase("write"):
            report = _published_report(
                evaluation.report, options.base, baseline.report if baseline else None
            )
            gates = evaluate_gates(
                report, options.gates, unit, baseline is not None and baseline.report is not None
            )
            failed = [g for g in gates if g.failed]
            summary = ranked_summary(report, unit, options.rank_by)
            if baseline is not None:
                summary += baseline_section(
                    report,
                    unit,
                    None if baseline.path is None else str(baseline.path),
                    str(options.out),
                )
            summary += gates_section(gates)
            writing.write_parquet(
                report,
                staging / REPORT_FILE,
                {
                    "klrank.report_schema_version": REPORT_SCHEMA_VERSION,
                    "klrank.options": json.dumps(recorded, sort_keys=True),
                    "klrank.unit": unit,
                    "klrank.quantiles": quantile_method,
                },
            )
            writing.write_text(summary, staging / SUMMARY_FILE)
            assert evaluation.contributions is not None and evaluation.ecdf is not None
            contributions = _published_contributions(evaluation.contributions, report, unit)
            writing.write_parquet(contributions, staging / CONTRIBUTIONS_FILE)
            if evaluation.worst_rows is not None:
                writing.write_parquet(evaluation.worst_rows, staging / WORST_FILE)
        if options.write_html:
            with timings.phase("html"):
                page = report_html(
                    report,
                    contributions,
                    evaluation.ecdf,
                    unit=unit,
                    rank_by=options.rank_by,
                    details=_html_details(inputs, options),
                    failed_gates=[g.message for g in failed],
                    plotly_js=plotly_bundle.plotly_js(),
                )
                writing.write_text(page, staging / HTML_FILE)
        manifest["gates"] = [g.recorded() for g in gates]
        if failed:
            manifest["status"] = "gate_failed"
        manifest["models"] = sorted(evaluation.alignment)
        manifest["alignment"] = evaluation.alignment
        manifest["timings_s"] = timings.seconds
        manifest["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
        writing.write_json(manifest, staging / MANIFEST_FILE)
        published.update(report=report, summary=summary, gates=tuple(gates))

    publishing.publish(options.target, options.out, write)
    events.emit(
        "published", target=str(options.target), seconds=round(time.perf_counter() - clock, 4)
    )
    if targets.is_failures_file(options.failures_path):  # a stale record of an earlier failed run
        writing.remove_file(options.failures_path)
    return RunSummary(
        options.target, published["report"], published["summary"], manifest, published["gates"]
    )
