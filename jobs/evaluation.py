"""One evaluation: inputs opened, validated and folded into the report, then published on request.

:func:`evaluate` is the Python entry point (``klrank.evaluate``); ``klrank run`` builds the same
:class:`Evaluation` inside its staging folder (:func:`klrank.run.run`), so both publish the same
files through :meth:`Evaluation.write`. Nothing here prints or exits; errors are raised as
:mod:`klrank.pipeline.errors` classes, which carry their exit codes.
"""

import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import polars as pl
from klrank import tracking
from klrank._version import __version__
from klrank.config import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_QUANTILES,
    Engine,
    InputOptions,
    RunOptions,
    TruthOption,
)
from klrank.engines.local import evaluate as evaluate_locally
from klrank.engines.ray import RayOptions, evaluate_on_ray
from klrank.io import buckets, oserrors, publishing, reading, storage, targets, writing
from klrank.nightly import Baseline, load_baseline
from klrank.pipeline import sketch
from klrank.pipeline.divergence import UNITS
from klrank.pipeline.errors import InvalidDataError, StorageError, UsageError
from klrank.pipeline.fold import BOOTSTRAP_METRICS, Measures, Outcome
from klrank.pipeline.gates import GateResult, Gates, evaluate_gates
from klrank.pipeline.html import report_html
from klrank.pipeline.layout import DEFAULT_BATCH_BYTES, ROW, Layout, resolve_layout
from klrank.pipeline.published import (
    published_contributions,
    published_quantiles,
    published_report,
    ranking_record,
)
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
    QUANTILES_FILE,
    REPORT_FILE,
    ROWS_FILE,
    RUN_DATE_KEY,
    SUMMARY_FILE,
    WORST_FILE,
)
from klrank.schemas.report import REPORT_SCHEMA_VERSION

Source = str | os.PathLike[str] | pl.DataFrame | pl.LazyFrame
"""An input: a Parquet file, folder or glob, or the rows themselves as a polars frame."""


@dataclass
class Timings:
    """Seconds spent per phase, in the order the phases first ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under ``name``, added to what ``name`` took before."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 4)


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


def _write_failures(failures: pl.DataFrame, failures_path: Path | str) -> str:
    """Write the failure cases; the line saying where they are, or why they could not be written.

    A failure to write them must not hide the failed checks: the data is still invalid (exit 1).
    """
    metadata = {FAILURES_MARKER: "1"}
    try:
        writing.write_to(
            failures_path, lambda path: writing.write_parquet(failures, path, metadata)
        )
    except StorageError as error:
        events.emit("failures.unwritten", logging.ERROR, path=str(failures_path), error=str(error))
        return f"the {failures.height} failure cases were not written: {one_line(str(error))}"
    return f"all {failures.height} failure cases: {one_line(str(failures_path))}"


def _fail_if_any(failures: pl.DataFrame, failures_path: Path | str | None) -> None:
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


def _in_memory(frame: pl.DataFrame | pl.LazyFrame, name: str) -> reading.ParquetInput:
    """Rows given as a frame, as an input: each row's position is its index."""
    rows = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    if ROW in rows.columns:
        raise UsageError(f"the {name} frame has a column named {ROW!r}, which klrank uses itself")
    positioned = rows.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
    return reading.in_memory(positioned, f"<{name}: polars.DataFrame>")


def _scanned(spec: Source, name: str) -> reading.ParquetInput:
    if isinstance(spec, pl.DataFrame | pl.LazyFrame):
        return _in_memory(spec, name)
    return reading.scan_parquet(os.fspath(spec))


def open_inputs(
    options: InputOptions,
    failures_path: Path | str | None,
    timings: Timings,
    sources: tuple[Source, Source] | None = None,
) -> OpenedInputs:
    """Scan both inputs, resolve which columns hold what, and check columns and dtypes.

    ``sources`` replaces the paths of ``options`` (frames given in Python).

    Raises
    ------
    UsageError
        A path is missing or not Parquet, or no distribution columns are found.
    InvalidDataError
        A required column is missing or has the wrong dtype, or the class sets differ.
    """
    label_spec, prediction_spec = sources or (options.labels, options.predictions)
    with timings.phase("scan"):
        labels = _scanned(label_spec, "labels")
        predictions = _scanned(prediction_spec, "predictions")
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
            weight_col=options.weight_col,
            cluster_col=options.cluster_by,
        )
        with timings.phase("validate_structure"):  # inside scan: columns and dtypes
            structure = check_structure(labels.frame, predictions.frame, layout)
        _fail_if_any(structure, failures_path)
    opened = OpenedInputs(layout, labels, predictions)
    events.emit("inputs.scanned", **opened.manifest(), seconds=timings.seconds["scan"])
    return opened


def measure(
    inputs: OpenedInputs,
    measures: Measures,
    timings: Timings,
    failures_path: Path | str | None,
    *,
    rows: writing.RowsWriter | None = None,
    compute: bool = True,
    ray: RayOptions | None = None,
    rows_dir: Path | str | None = None,
) -> Outcome:
    """Validate every row and, unless only validating, fold them into the report's parts.

    Raises
    ------
    InvalidDataError
        Any check failed; the failure cases are written to ``failures_path`` (when given).
    """
    with timings.phase("evaluate"):
        if ray is not None:
            outcome = evaluate_on_ray(  # imports Ray itself only now
                inputs.labels,
                inputs.predictions,
                inputs.layout,
                measures,
                ray,
                rows_dir=rows_dir,
                compute=compute,
            )
        else:
            outcome = evaluate_locally(
                inputs.labels,
                inputs.predictions,
                inputs.layout,
                measures,
                rows_sink=rows.write if rows is not None else None,
                compute=compute,
            )
    timings.seconds["validate"] = round(outcome.validation_seconds, 4)
    if ray is None:  # on Ray, the checks of tasks side by side add up to more than the wall time
        timings.seconds["compute"] = round(
            timings.seconds["evaluate"] - outcome.validation_seconds, 4
        )
    events.emit(
        "validation.done",
        seconds=timings.seconds["validate"],
        failures=outcome.failures.height,
    )
    _fail_if_any(outcome.failures, failures_path)
    if compute:
        events.emit(
            "evaluation.done",
            rows=inputs.labels.n_rows * len(outcome.alignment),
            models=len(outcome.alignment),
            seconds=timings.seconds["evaluate"],
        )
    return outcome


def _versions() -> dict[str, str]:
    packages = ("polars", "pyarrow", "pandera", "typer")
    return {"klrank": __version__, "python": platform.python_version()} | {
        p: version(p) for p in packages
    }


def input_paths(options: InputOptions) -> dict[str, str]:
    """The inputs' paths, for the checks that an output is none of them."""
    return {"labels": options.labels, "predictions": options.predictions}


def check_publishable(options: RunOptions, inputs: dict[str, str]) -> None:
    """Refuse (UsageError) a target that klrank may not replace: see :mod:`klrank.io.targets`."""
    if isinstance(options.out, str):
        _check_bucket_publishable(options, inputs)
        return
    assert isinstance(options.target, Path)
    failures = options.failures_path
    if isinstance(failures, str):  # an s3:// file beside a local report
        _check_bucket_failures(failures, inputs, None)
    targets.check_publishable(
        options.out,
        options.target,
        dated=options.run_date is not None,
        inputs=inputs,
        failures=failures if isinstance(failures, Path) else None,
    )


def _below(url: str, root: str) -> bool:
    return url == root or url.startswith(root.rstrip("/") + "/")


def _check_bucket_failures(failures: str, inputs: dict[str, str], out: str | None) -> None:
    for name, spec in inputs.items():
        if storage.is_remote(spec) and _below(failures, spec.split("*")[0].rstrip("/")):
            raise UsageError(
                f"--failures: {failures!r} lies inside the {name} input {spec!r}; write the "
                "failure cases elsewhere"
            )
    if out is not None and _below(failures, out):
        inner = failures[len(out) :].strip("/").split("/")
        if not any(part.startswith(("_", ".")) for part in inner[:-1]):
            raise UsageError(
                f"--failures: {failures!r} lies in --out, where readers of the reports would "
                "read it; write the failure cases outside --out (or under OUT/_failures)"
            )
    if storage.kind(failures) != "none" and not _is_failures_object(failures):
        raise UsageError(
            f"--failures: {failures!r} exists and is not a failure-cases file of klrank; "
            "klrank replaces or deletes that file, so name another one"
        )


def _is_failures_object(url: str) -> bool:
    """Whether the ``s3://`` object at ``url`` is a failure-cases file klrank wrote."""
    try:
        metadata = storage.read_metadata(url).metadata or {}
    except (OSError, ValueError, StorageError):
        return False
    return FAILURES_MARKER.encode() in metadata


def _check_bucket_publishable(options: RunOptions, inputs: dict[str, str]) -> None:
    """The refusals of :func:`klrank.io.targets.check_publishable`, for an ``s3://`` --out."""
    out, target = str(options.out), str(options.target)
    for name, spec in inputs.items():
        root = spec.split("*")[0].rstrip("/")  # a glob's fixed part
        if storage.is_remote(spec) and (_below(out, root) or _below(root, out)):
            raise UsageError(
                f"--out: {out!r} is, holds or lies inside the {name} input {spec!r}; publish "
                "to a folder of its own, outside the inputs (e.g. s3://bucket/reports)"
            )
    failures = options.failures_path
    if isinstance(failures, str):
        _check_bucket_failures(failures, inputs, out)
    else:
        targets.check_failures(failures, inputs)
    if options.run_date is None:
        nights = [f for f in storage.folders(out) if f.startswith(f"{RUN_DATE_KEY}=")]
        if nights:
            raise UsageError(
                f"--out: {out!r} holds nightly partitions ({nights[0]!r}, ...): a run without "
                "--run-date would replace them all; give --run-date, or another --out"
            )
    foreign = buckets.foreign_key(buckets.place(target))
    if foreign is not None:
        raise UsageError(
            f"--out: {target!r} holds {foreign!r}, which klrank did not publish; publishing "
            "replaces what is there, so name a new or empty folder"
        )


@contextmanager
def publishing_into(options: RunOptions, inputs: dict[str, str], run_id: str) -> Iterator[Path]:
    """Lock the target, check it again, and stage: a folder to fill, published when the block ends.

    On disk: the run's locks and a staging folder swapped in whole (:mod:`klrank.io.publishing`).
    In a bucket: the target's lease, the recovery of killed runs, and the commit protocol
    (:mod:`klrank.io.buckets`).
    """
    if isinstance(options.out, Path):
        assert isinstance(options.target, Path)
        with run_lock(options.out, options.target, options.lock_timeout):
            check_publishable(options, inputs)  # again: another run may have published meanwhile
            with publishing.staging(options.target, options.out, run_id) as folder:
                yield folder
        return
    target, out = buckets.place(str(options.target)), buckets.place(options.out)
    with buckets.lease(target, ttl=options.lease_ttl, timeout=options.lock_timeout) as held:
        buckets.recover(target, out)
        check_publishable(options, inputs)
        with publishing.bucket_staging(target.url, out.url, run_id, held) as folder:
            yield folder


def rows_destination(options: RunOptions, folder: Path, run_id: str) -> Path | str | None:
    """Where the run's rows.parquet goes: into the staging folder, or into the bucket's staging.

    Into the bucket's staging prefix for the Ray engine with an ``s3://`` --out: each part
    uploads its own file, from whichever machine runs it.
    """
    if not options.write_rows:
        return None
    if isinstance(options.out, str) and options.engine == "ray":
        target, out = buckets.place(str(options.target)), buckets.place(options.out)
        return buckets.staging_place(target, out, run_id).child(ROWS_FILE).url
    return folder / ROWS_FILE


def measures_of(options: RunOptions) -> Measures:
    """What a run with ``options`` computes.

    The bootstrap ranks by a weighted mean (:data:`klrank.pipeline.fold.BOOTSTRAP_METRICS`); with
    another ``--rank-by`` it is left out, and a warning says so.
    """
    replicates = options.bootstrap
    if replicates and options.rank_by not in BOOTSTRAP_METRICS:
        events.emit(
            "bootstrap.skipped",
            logging.WARNING,
            message=f"--bootstrap ranks by a mean; --rank-by {options.rank_by} is not one: "
            "p_best, rank_low and rank_high are null",
        )
        replicates = 0
    return Measures(
        options.base,
        options.epsilon,
        options.rank_by,
        options.inputs.tolerance,
        worst_rows=options.worst,
        bootstrap=replicates,
        seed=options.seed,
        quantiles=options.quantiles,
        batch_bytes=options.inputs.batch_bytes,
    )


def find_baseline(options: RunOptions) -> Baseline | None:
    """The baseline ``options`` ask for, read and converted to the run's unit (None: none)."""
    if options.baseline is None:
        return None
    return load_baseline(options.baseline, options.out, options.run_date, UNITS[options.base])


class Evaluation:
    """What klrank found: the ranked report and its parts, ready to publish.

    Made by :func:`klrank.evaluate` (or by ``klrank run``, inside its staging folder). The frames
    are in the schemas of the files they are published as.

    Attributes
    ----------
    report
        ``report.parquet``: one row per (slice, model), ranked.
    class_contributions
        ``class_contributions.parquet``: each class's share of each model's mean KL.
    quantiles
        ``quantiles.parquet``: per (slice, model), the quantiles of each row measure (``kl``,
        and ``delta_p`` where the rows have it) at the ``quantiles`` probabilities.
    worst_rows
        ``worst_rows.parquet``: the ``worst`` highest-KL rows of each model; None with
        ``worst=0``.
    gates
        Every gate asked for and its outcome; ``failed_gates`` are those that failed.
    """

    def __init__(
        self,
        *,
        options: RunOptions,
        inputs: OpenedInputs,
        outcome: Outcome,
        baseline: Baseline | None,
        timings: Timings,
        started: dt.datetime,
        rows_path: Path | str | None,
        input_paths: dict[str, str],
    ) -> None:
        assert outcome.report is not None and outcome.contributions is not None
        assert outcome.quantiles is not None
        self._options = options
        self._inputs = inputs
        self._baseline = baseline
        self._timings = timings
        self._started = started
        self._rows_path = rows_path
        self._input_paths = input_paths
        self._ecdf = outcome.ecdf
        self._alignment = outcome.alignment
        unit = UNITS[options.base]
        with timings.phase("write"):
            self.report = published_report(
                outcome.report, options.base, baseline.report if baseline else None
            )
            self.gates = tuple(
                evaluate_gates(
                    self.report,
                    options.gates,
                    unit,
                    baseline is not None and baseline.report is not None,
                )
            )
            self.class_contributions = published_contributions(
                outcome.contributions, self.report, unit
            )
            self.quantiles = published_quantiles(outcome.quantiles, self.report)
            self.worst_rows = outcome.worst_rows
        self._finished = dt.datetime.now(dt.UTC)

    @property
    def failed_gates(self) -> list[GateResult]:
        """The gates that failed (the report is published all the same)."""
        return [g for g in self.gates if g.failed]

    @property
    def unit(self) -> str:
        """The unit of every divergence: bits, nats or bans."""
        return UNITS[self._options.base]

    @property
    def rows(self) -> pl.LazyFrame:
        """The per-row measures (``rows.parquet``): one row per (label row, model).

        A lazy frame over the Parquet file the evaluation wrote (for :func:`klrank.evaluate`, in
        a temporary folder removed with this object): it holds nothing in memory until
        collected, so it can be filtered or aggregated in bounded memory.

        Raises
        ------
        UsageError
            The evaluation kept no rows (``rows=False``).
        """
        if self._rows_path is None:
            raise UsageError("this evaluation kept no rows: evaluate it with rows=True")
        if isinstance(self._rows_path, str):  # the Ray engine's parts, in a bucket
            return pl.scan_parquet(
                f"{self._rows_path}/*.parquet",
                storage_options=storage.polars_options(self._rows_path),
            )
        if self._rows_path.is_dir():  # the Ray engine writes one part per task
            return pl.scan_parquet(self._rows_path / "*.parquet")
        return pl.scan_parquet(self._rows_path)

    @property
    def manifest(self) -> dict[str, Any]:
        """``manifest.json`` as an undated :meth:`publish` would write it, as of now."""
        return self._manifest(self._options, self._finished)

    def _manifest(self, options: RunOptions, finished: dt.datetime) -> dict[str, Any]:
        baseline = self._baseline
        failed = self.failed_gates
        return {
            "status": "gate_failed" if failed else "success",
            "klrank_version": __version__,
            "report_schema_version": REPORT_SCHEMA_VERSION,
            "started_at": self._started.isoformat(),
            "inputs": self._inputs.manifest(),
            "truth": self._inputs.layout.truth,
            "prediction_kind": self._inputs.layout.prediction_kind,
            "classes": list(self._inputs.layout.classes),
            "unit": self.unit,
            "engine": options.engine,
            "quantiles": self._quantiles,
            "options": options.recorded(),
            "baseline": baseline.recorded() if baseline is not None else None,
            "outputs": [
                REPORT_FILE,
                *([ROWS_FILE] if options.write_rows else []),
                CONTRIBUTIONS_FILE,
                QUANTILES_FILE,
                *([WORST_FILE] if options.worst else []),
                *([HTML_FILE] if options.write_html else []),
                SUMMARY_FILE,
                MANIFEST_FILE,
            ],
            "versions": _versions(),
            "gates": [g.recorded() for g in self.gates],
            "models": sorted(self._alignment),
            "ranking": ranking_record(self.report, options.rank_by),
            "alignment": self._alignment,
            "timings_s": dict(self._timings.seconds),
            "finished_at": finished.isoformat(),
        }

    @property
    def _quantiles(self) -> str:
        return sketch.METHOD if self._options.engine == "ray" else "exact"

    def summary(self, out: Path | str | None = None) -> str:
        """``summary.md``: the ranking as a Markdown table, the baseline and the gates."""
        summary = ranked_summary(
            self.report, self.unit, self._options.rank_by, self._options.gates.alpha
        )
        if self._baseline is not None:
            path = self._baseline.path
            where = str(out if out is not None else self._options.out)
            summary += baseline_section(
                self.report, self.unit, None if path is None else str(path), where
            )
        return summary + gates_section(list(self.gates))

    def _html_details(self, options: RunOptions) -> list[str]:
        # Nothing from the clock: the same inputs and options give the same page.
        inputs = self._inputs
        return [
            f"labels: {inputs.labels.path} ({inputs.labels.n_rows} rows); "
            f"predictions: {inputs.predictions.path} ({inputs.predictions.n_rows} rows); "
            f"{len(inputs.layout.classes)} classes, {inputs.layout.truth} truth",
            f"klrank {__version__}"
            + (f", run date {options.run_date.isoformat()}" if options.run_date else ""),
        ]

    def write(
        self,
        folder: Path,
        options: RunOptions,
        tracker: tracking.Tracker | None = None,
        *,
        run_id: str = "",
    ) -> tuple[str, dict[str, Any]]:
        """Write every published file but ``rows.parquet`` into ``folder``.

        Returns the summary and the manifest written. ``options`` are this evaluation's, with the ``--out`` and run date it is published to.
        With a ``tracker``, the files are logged to MLflow before the manifest is written, and
        the manifest records the outcome (:mod:`klrank.tracking`); ``rows.parquet``, if
        published, must be in ``folder`` already. ``run_id`` goes into the manifest, as the
        readers' rule of :mod:`klrank.io.buckets` asks (not into the report's footer: the same
        inputs and options give the same report bytes).
        """
        timings = self._timings
        with timings.phase("write"):
            writing.write_parquet(
                self.report,
                folder / REPORT_FILE,
                {
                    "klrank.report_schema_version": REPORT_SCHEMA_VERSION,
                    "klrank.options": json.dumps(options.recorded(), sort_keys=True),
                    "klrank.unit": self.unit,
                    "klrank.quantiles": self._quantiles,
                },
            )
            summary = self.summary(options.out)
            writing.write_text(summary, folder / SUMMARY_FILE)
            writing.write_parquet(self.class_contributions, folder / CONTRIBUTIONS_FILE)
            writing.write_parquet(
                self.quantiles,
                folder / QUANTILES_FILE,
                {"klrank.unit": self.unit, "klrank.quantiles": self._quantiles},
            )
            if self.worst_rows is not None:
                writing.write_parquet(self.worst_rows, folder / WORST_FILE)
        if options.write_html:
            assert self._ecdf is not None
            with timings.phase("html"):
                page = report_html(
                    self.report,
                    self.class_contributions,
                    self._ecdf,
                    unit=self.unit,
                    rank_by=options.rank_by,
                    details=self._html_details(options),
                    failed_gates=[g.message for g in self.failed_gates],
                    alpha=options.gates.alpha,
                )
                writing.write_text(page, folder / HTML_FILE)
        manifest = self._manifest(options, dt.datetime.now(dt.UTC)) | {"run_id": run_id}
        if tracker is None:
            writing.write_json(manifest, folder / MANIFEST_FILE)
        else:
            manifest = tracker.log(folder, options.target, manifest)
        return summary, manifest

    def publish(
        self,
        out: str | os.PathLike[str],
        run_date: dt.date | str | None = None,
        *,
        mlflow_experiment: str | None = None,
    ) -> Path | str:
        """Publish what ``klrank run --out OUT [--run-date D]`` publishes; the folder published.

        Atomic and locked as ``klrank run`` is: the same refusals (an ``out`` that is an input,
        a folder klrank did not write, ...), the same lock, the same files. With
        ``mlflow_experiment``, the night is also logged to that MLflow experiment at
        ``MLFLOW_TRACKING_URI``, as ``klrank run --mlflow-experiment`` logs it: a failure to log
        is a warning, recorded in the manifest's ``"mlflow"`` (:mod:`klrank.tracking`).

        Raises
        ------
        UsageError
            klrank may not publish there (see the refusals of ``klrank run``), or
            ``mlflow_experiment`` is given without MLflow's client or ``MLFLOW_TRACKING_URI``.
        LockBusyError
            Another run held the target past ``lock_timeout`` seconds.
        StorageError
            The machine refused a step; the target is untouched.
        """
        if isinstance(run_date, str):
            try:
                run_date = dt.date.fromisoformat(run_date)
            except ValueError:
                raise UsageError(f"run_date must be YYYY-MM-DD, got {run_date!r}") from None
        location = storage.output_location(out, "out")
        options = replace(
            self._options,
            out=targets.real(location) if isinstance(location, Path) else location,
            run_date=run_date,
            mlflow_experiment=mlflow_experiment,
        )
        check_publishable(options, self._input_paths)
        tracker = tracking.connect(mlflow_experiment) if mlflow_experiment is not None else None
        run_id = uuid.uuid4().hex
        with (
            tracking.finishing(tracker),
            publishing_into(options, self._input_paths, run_id) as folder,
        ):
            if options.write_rows and isinstance(self._rows_path, Path):
                _copy(self._rows_path, folder / ROWS_FILE)
            self.write(folder, options, tracker, run_id=run_id)
        events.emit("published", target=str(options.target))
        remove_stale_failures(options)
        return options.target


def remove_stale_failures(options: RunOptions) -> None:
    """Delete the failure cases an earlier failed run of this target left, if klrank wrote them."""
    failures = options.failures_path
    if isinstance(failures, str):
        if _is_failures_object(failures):
            buckets.delete_object(buckets.place(failures))
    elif targets.is_failures_file(failures):
        writing.remove_file(failures)


def _copy(source: Path, target: Path) -> None:
    with oserrors.storage(target):
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)


def evaluate_into(
    options: RunOptions,
    inputs: OpenedInputs,
    timings: Timings,
    *,
    rows_path: Path | str | None,
    failures_path: Path | str | None,
    input_paths: dict[str, str],
) -> Evaluation:
    """Validate and measure ``inputs``, writing the per-row measures to ``rows_path`` if given.

    Raises
    ------
    InvalidDataError
        Any check failed.
    """
    started = dt.datetime.now(dt.UTC)
    # Read before publishing: the target may be the baseline.
    baseline = find_baseline(options)
    measures = measures_of(options)
    if options.engine == "ray":  # the parts write rows.parquet/part-*.parquet themselves
        ray = RayOptions(options.ray_address, options.partitions)
        outcome = measure(inputs, measures, timings, failures_path, ray=ray, rows_dir=rows_path)
    else:
        assert not isinstance(rows_path, str), "only the Ray engine's parts write to a bucket"
        rows = writing.RowsWriter(rows_path) if rows_path is not None else None
        try:
            outcome = measure(inputs, measures, timings, failures_path, rows=rows)
        finally:
            if rows is not None:  # also on failure: no write may outlive its folder
                rows.close()
    return Evaluation(
        options=options,
        inputs=inputs,
        outcome=outcome,
        baseline=baseline,
        timings=timings,
        started=started,
        rows_path=rows_path,
        input_paths=input_paths,
    )


def evaluate(
    labels: Source,
    predictions: Source,
    *,
    id_col: str = "id",
    label_col: str = "label",
    model_col: str = "model",
    prob_prefix: str = "prob_",
    logit_prefix: str = "logit_",
    truth: TruthOption = "auto",
    tolerance: float = 1e-6,
    slice_by: Sequence[str] = (),
    classes: Sequence[str] = (),
    weight_col: str | None = None,
    cluster_by: str | None = None,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    base: str | int = "2",
    epsilon: float = 0.0,
    rank_by: str = "mean_kl",
    rows: bool = True,
    html: bool = True,
    worst: int = 20,
    baseline: str | os.PathLike[str] | None = None,
    max_mean_kl: float | None = None,
    max_regression: float | None = None,
    alpha: float = 0.05,
    expect_best: str | None = None,
    expect_beats_prior: bool = False,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    failures: str | os.PathLike[str] | None = None,
    lock_timeout: float = 600.0,
    engine: Engine = "local",
    ray_address: str | None = None,
    partitions: int | None = None,
) -> Evaluation:
    """Validate the inputs and rank the models, as ``klrank run`` does, without publishing.

    Parameters
    ----------
    labels, predictions
        A Parquet file, a folder of them (read recursively, ``key=value`` folders as columns) or
        a glob, as ``klrank run`` takes them; or the rows as a polars ``DataFrame`` or
        ``LazyFrame`` (a LazyFrame is collected) with the columns the files would have. Paths
        are read in batches, in the bounded memory of ``klrank run``.
    **options
        ``klrank run``'s options, with the same names (underscores for dashes) and defaults:
        ``base`` ``"2"`` (bits), ``"e"`` or ``"10"``; ``rows`` keeps the per-row measures
        (:attr:`Evaluation.rows`); ``html`` and ``lock_timeout`` apply to
        :meth:`Evaluation.publish`; ``baseline`` is a report.parquet or a run folder
        (``"auto"``, the night before the run date, needs the nights of ``klrank run``);
        ``failures`` is where the failure cases are written when the data is invalid (by default
        nowhere: they are on the error); ``quantiles`` are the probabilities of
        :attr:`Evaluation.quantiles` (numbers in [0, 1], ``--quantiles`` as a sequence).

    Returns
    -------
    Evaluation
        The report, its parts and the per-row measures; :meth:`Evaluation.publish` writes them.

    Raises
    ------
    InvalidDataError
        The inputs break the input contract; ``failures`` holds every failing case, in the
        columns of ``failures.parquet``.
    UsageError
        A bad option, a missing path, a file that is not Parquet.

    Examples
    --------
    >>> import klrank  # doctest: +SKIP
    >>> evaluation = klrank.evaluate("labels.parquet", "predictions/")  # doctest: +SKIP
    >>> evaluation.report.select("rank", "model", "mean_kl")  # doctest: +SKIP
    """
    if baseline is not None and os.fspath(baseline) == "auto":
        raise UsageError(
            "baseline='auto' picks the night before the run date among the nights of "
            "klrank run --out; in Python, pass that night's folder or its report.parquet"
        )
    paths: dict[str, str] = {}  # the inputs given as paths, not frames
    for name, spec in (("labels", labels), ("predictions", predictions)):
        if not isinstance(spec, pl.DataFrame | pl.LazyFrame):
            paths[name] = os.fspath(spec)
    if engine == "ray" and len(paths) < 2:
        raise UsageError("engine='ray' reads its inputs from files: pass paths, not frames")
    input_options = InputOptions(
        labels=paths.get("labels", "<labels: polars.DataFrame>"),
        predictions=paths.get("predictions", "<predictions: polars.DataFrame>"),
        id_col=id_col,
        label_col=label_col,
        model_col=model_col,
        prob_prefix=prob_prefix,
        logit_prefix=logit_prefix,
        truth=truth,
        tolerance=tolerance,
        slice_by=tuple(slice_by),
        classes=tuple(classes),
        weight_col=weight_col,
        cluster_by=cluster_by,
        batch_bytes=batch_bytes,
    )
    options = RunOptions(
        inputs=input_options,
        out=Path.cwd(),  # where publish() is told to publish
        base=str(base),
        epsilon=epsilon,
        rank_by=rank_by,
        write_rows=rows,
        failures=None if failures is None else Path(failures),
        baseline=None if baseline is None else os.fspath(baseline),
        gates=Gates(max_mean_kl, max_regression, alpha, expect_best, expect_beats_prior),
        lock_timeout=lock_timeout,
        write_html=html,
        worst=worst,
        engine=engine,
        ray_address=ray_address,
        partitions=partitions,
        bootstrap=bootstrap,
        seed=seed,
        quantiles=tuple(quantiles),
    )
    failures_path = options.failures
    if isinstance(failures_path, str):
        _check_bucket_failures(failures_path, paths, None)
    elif failures_path is not None:
        targets.check_failures(failures_path, paths)
    timings = Timings()
    inputs = open_inputs(input_options, failures_path, timings, (labels, predictions))
    rows_path = None
    if rows:
        folder = Path(tempfile.mkdtemp(prefix="klrank-rows-"))
        rows_path = folder / ROWS_FILE
    try:
        evaluation = evaluate_into(
            options,
            inputs,
            timings,
            rows_path=rows_path,
            failures_path=failures_path,
            input_paths=paths,
        )
    except BaseException:
        if rows_path is not None:
            shutil.rmtree(rows_path.parent, ignore_errors=True)
        raise
    if rows_path is not None:  # the rows live as long as the evaluation
        weakref.finalize(evaluation, shutil.rmtree, rows_path.parent, ignore_errors=True)
    return evaluation
