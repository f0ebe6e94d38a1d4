"""``klrank validate`` and ``klrank run``: options in, a summary out.

A run reads top to bottom: refuse a target klrank may not replace, open the inputs, take the
locks, and inside a staging folder evaluate (the per-row measures streamed straight into it) and
write the rest; the folder then replaces the target whole. Nothing here prints or exits; errors
are raised as :mod:`klrank.pipeline.errors` classes, which carry their exit codes.
"""

import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
from klrank import tracking
from klrank.config import InputOptions, RunOptions
from klrank.evaluation import (
    OpenedInputs,
    check_publishable,
    evaluate_into,
    input_paths,
    measure,
    open_inputs,
    publishing_into,
    remove_stale_failures,
    rows_destination,
)
from klrank.evaluation import Timings as Timings  # the CLI times validate with it
from klrank.io import targets
from klrank.pipeline.fold import Measures
from klrank.pipeline.gates import GateResult
from klrank.runtime import events


@dataclass(frozen=True)
class ValidationSummary:
    """What ``klrank validate`` found valid."""

    inputs: OpenedInputs
    models: list[str]
    alignment: dict[str, str]


@dataclass(frozen=True)
class RunSummary:
    """What a successful run published."""

    target: Path | str  # a folder, or an s3:// prefix
    report: pl.DataFrame
    summary: str
    manifest: dict[str, Any]
    gates: tuple[GateResult, ...] = ()

    @property
    def failed_gates(self) -> list[GateResult]:
        """The gates that failed; the report was published all the same."""
        return [g for g in self.gates if g.failed]


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
        targets.check_failures(failures_path, input_paths(options))
    inputs = open_inputs(options, failures_path, timings)
    measures = Measures(tolerance=options.tolerance, batch_bytes=options.batch_bytes)
    outcome = measure(inputs, measures, timings, failures_path, compute=False)
    return ValidationSummary(inputs, sorted(outcome.alignment), outcome.alignment)


def run(options: RunOptions) -> RunSummary:
    """Validate, compute and publish the report atomically under ``options.target``.

    The whole run holds the partition's lock (:mod:`klrank.runtime.lock`), so two runs aimed at
    the same target never interleave; the second waits up to ``options.lock_timeout`` seconds.
    With ``options.mlflow_experiment``, the night is logged to MLflow from the staging folder
    before it replaces the target (:mod:`klrank.tracking`); a failure to log is a warning.

    Raises
    ------
    LockBusyError
        Another run still held the partition's lock after ``options.lock_timeout`` seconds.
    UsageError
        ``options.mlflow_experiment`` is set without MLflow's client or ``MLFLOW_TRACKING_URI``
        (and the refusals of :func:`check_publishable`).
    """
    if isinstance(options.out, Path):
        out = targets.real(options.out)
        if out != options.out.absolute():  # a link: publish into the folder it names
            options = replace(options, out=out)
    paths = input_paths(options.inputs)
    check_publishable(options, paths)
    # A missing MLflow client or tracking URI fails before any work; the server is not asked yet.
    tracker = tracking.connect(options.mlflow_experiment) if options.mlflow_experiment else None
    run_id = uuid.uuid4().hex
    events.emit(
        "run.started", target=str(options.target), run_id=run_id, options=options.recorded()
    )
    # Missing inputs, wrong columns or dtypes fail here, before any folder or lock file is made.
    timings = Timings()
    inputs = open_inputs(options.inputs, options.failures_path, timings)
    clock = time.perf_counter()
    # The night is logged to MLflow from the staging folder, then published; its MLflow runs are
    # ended once it is (klrank.tracking).
    with tracking.finishing(tracker), publishing_into(options, paths, run_id) as folder:
        evaluation = evaluate_into(
            options,
            inputs,
            timings,
            rows_path=rows_destination(options, folder, run_id),
            failures_path=options.failures_path,
            input_paths=paths,
        )
        summary, manifest = evaluation.write(folder, options, tracker, run_id=run_id)
    events.emit(
        "published", target=str(options.target), seconds=round(time.perf_counter() - clock, 4)
    )
    remove_stale_failures(options)
    return RunSummary(options.target, evaluation.report, summary, manifest, evaluation.gates)
