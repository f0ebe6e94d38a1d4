"""The Ray engine: the local engine's validation and measures, run on co-partitions of the rows.

1. **Split** (one Ray task per chunk of an input: up to a batch of rows, from up to
   ``CHUNK_FILES`` consecutive files): read the chunk's columns, in the whole
   input's dtypes, with each row's position in its input and among its model's rows, and split
   the rows into ``n`` parts by a hash of the id (:func:`klrank.pipeline.partitions.split`); the
   pieces stay in Ray's object store. Inputs already bucketed alike (``bucket=`` folders, see
   :func:`buckets`) skip this step: each bucket is a part and reads its own files.
2. **Evaluate** (one task per part): the part's label rows and every model's rows for the same
   ids go through :func:`klrank.engines.local.evaluate_partition`, the same Pandera checks and
   Polars expressions as the local engine; all rows of an id are in one part, so duplicate ids
   and coverage are checked globally. The task writes its per-row output as one part file of
   the ``rows.parquet`` dataset and returns mergeable states (:class:`klrank.pipeline.fold.Partial`).
3. **Merge** (the driver): :func:`klrank.pipeline.fold.merge_partials` builds the report; quantiles
   and the ECDF come from a mergeable sketch (:mod:`klrank.pipeline.sketch`).

Ray is an optional dependency, imported only here and only when this engine runs. A task whose
worker dies is retried by Ray (``TASK_RETRIES`` times); a part file is written under a temporary
name and renamed, so a retried task leaves one complete file. A task that keeps failing ends the
run with :class:`klrank.pipeline.errors.EngineError` and nothing is published.
"""

import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl
from klrank.engines.local import batch_rows, evaluate_partition, label_means
from klrank.io import reading, storage, writing
from klrank.pipeline import partitions, prior
from klrank.pipeline.errors import EngineError, UsageError
from klrank.pipeline.fold import (
    MODEL_RANK,
    Measures,
    Outcome,
    Partial,
    RowsSink,
    merge_partials,
    partial,
    sorted_failures,
)
from klrank.pipeline.layout import ROW, Layout
from klrank.pipeline.text import one_line
from klrank.pipeline.validation import label_columns, no_failures, prediction_columns
from klrank.runtime import interrupts

TASK_RETRIES = 3
# Most files one task reads: thousands of one-row part files make a few tasks, not thousands,
# yet enough that the cores share them.
CHUNK_FILES = 1_000
# Default parts: PARTS_PER_CPU per CPU of the cluster, but at most one per MIN_PART_ROWS label
# rows (at 2M rows × 10 classes on 2 cores, 8 parts ran in 3.5 s against 3.9 s for 4).
PARTS_PER_CPU = 4
MIN_PART_ROWS = 250_000
# Fault injection for tests (KLRANK_RAY_FAULT): "once:DIR" kills the worker of part 0 the first
# time (DIR records that it did), "always" every time, "hang" makes part 0 sleep for 10 minutes.
FAULT_ENV = "KLRANK_RAY_FAULT"
INSTALL_HINT = "the Ray engine needs Ray: pip install 'klrank[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where the cluster is (None: start a local instance on 127.0.0.1) and how many parts."""

    address: str | None = None
    partitions: int | None = None  # None: PARTS_PER_CPU a CPU, at most one per MIN_PART_ROWS


@dataclass(frozen=True)
class _PartSpec:
    """What every part's task needs besides its rows."""

    layout: Layout
    measures: Measures
    models: tuple[str, ...]
    label_schema: pl.Schema  # the columns read, with ROW, in the whole input's dtypes
    prediction_schema: pl.Schema
    offsets: list[dict[str, int]]  # per chunk (or file) of the predictions: rows per model before
    rows_dir: str | None
    compute: bool
    fault: str | None
    prior_means: prior.LogMeans | None  # log P̄ per slice of the whole labels


def import_ray() -> ModuleType:
    """Ray, or a usage error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class _Chunk:
    """Rows ``[start, start + length)`` of some consecutive files of an input."""

    files: tuple[reading.ParquetFile, ...]
    start: int
    length: int


def _chunks(files: Sequence[reading.ParquetFile], rows: int, max_files: int) -> list[_Chunk]:
    """The rows of ``files`` in order, in chunks of at most ``rows`` rows and ``max_files`` files.

    Files without rows add nothing and are left out.
    """
    chunks: list[_Chunk] = []
    current: list[reading.ParquetFile] = []
    start = taken = 0
    for file in files:
        done = 0  # rows of this file in earlier chunks
        while done < file.n_rows:
            if not current:
                start = done
            current.append(file)
            take = min(file.n_rows - done, rows - taken)
            done, taken = done + take, taken + take
            if taken == rows or len(current) == max_files:
                chunks.append(_Chunk(tuple(current), start, taken))
                current, taken = [], 0
    if current:
        chunks.append(_Chunk(tuple(current), start, taken))
    return chunks


def _read(source: str, files: Sequence[reading.ParquetFile], schema: pl.Schema) -> pl.DataFrame:
    """The rows of whole files in the columns and dtypes of the whole input (``schema``)."""
    return _read_chunk(source, _Chunk(tuple(files), 0, sum(f.n_rows for f in files)), schema)


def _read_chunk(source: str, chunk: _Chunk, schema: pl.Schema) -> pl.DataFrame:
    """The rows of a chunk in the columns and dtypes of the whole input (``schema``).

    A file may lack a column (nulls there) or hold a narrower type, as the local engine's
    combined scan allows; ids must hash alike in every file, so they take the input's type.
    """
    columns = [c for c in schema if c != ROW]
    if not chunk.files:
        return pl.DataFrame(schema=schema)
    rows = reading.read_rows(source, chunk.files, columns, chunk.start, chunk.length)
    return pl.concat([pl.DataFrame(schema=schema), rows], how="diagonal_relaxed").select(
        [pl.col(c).cast(dtype) for c, dtype in schema.items()]
    )


def _ranked(rows: pl.DataFrame, model_col: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """Each row's position among its model's rows in ``rows``, and the rows per model."""
    model = pl.col(model_col)
    ranked = rows.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over(model).alias(MODEL_RANK))
    counts = rows.group_by(model_col).len().drop_nulls(model_col)
    return ranked, dict(counts.select(model.cast(pl.String), "len").iter_rows())


def _split(
    source: str,
    chunk: _Chunk,
    schema: pl.Schema,
    id_col: str,
    n_parts: int,
    model_col: str | None,
) -> tuple[Any, ...]:
    """One chunk of an input split into parts; last, its rows per model (predictions)."""
    rows = _read_chunk(source, chunk, schema)
    counts: dict[str, int] = {}
    if model_col is not None:
        rows, counts = _ranked(rows, model_col)
    # Arrow tables travel through Ray's object store without a copy; polars frames are pickled.
    return (*[part.to_arrow() for part in partitions.split(rows, id_col, n_parts)], counts)


def _offsets(counts: Sequence[dict[str, int]]) -> list[dict[str, int]]:
    """Per chunk (in input order), each model's rows in the chunks before it."""
    offsets, seen = [], dict[str, int]()
    for chunk in counts:
        offsets.append(dict(seen))
        for model, n in chunk.items():
            seen[model] = seen.get(model, 0) + n
    return offsets


def _with_offsets(piece: pl.DataFrame, offsets: dict[str, int], model_col: str) -> pl.DataFrame:
    """A chunk's model ranks made ranks in the whole input."""
    before = (
        pl.col(model_col).cast(pl.String).replace_strict(offsets, default=0, return_dtype=pl.Int64)
    )
    return piece.with_columns(pl.col(MODEL_RANK) + before)


def _inject_fault(fault: str | None, part: int) -> None:
    if fault is None or part != 0:
        return
    if fault == "always":
        os._exit(1)
    if fault == "hang":
        time.sleep(600)
        return
    marker = Path(fault.removeprefix("once:")) / "failed-part-0"
    if not marker.exists():
        marker.touch()
        os._exit(1)


def _evaluate_part(spec: _PartSpec, part: int, n_label_pieces: int, *pieces: Any) -> Partial:
    """Validate and measure one part from the split's pieces (Arrow tables) of every chunk."""
    _inject_fault(spec.fault, part)
    frames = [pl.DataFrame(piece) for piece in pieces]
    model_col = spec.layout.model_col
    predictions = [
        _with_offsets(piece, offsets, model_col)
        for piece, offsets in zip(frames[n_label_pieces:], spec.offsets, strict=True)
    ]
    return _evaluate_frames(spec, part, frames[:n_label_pieces], predictions)


def _evaluate_bucket(
    spec: _PartSpec,
    part: int,
    labels: tuple[str, list[reading.ParquetFile]],
    predictions: tuple[str, list[reading.ParquetFile], list[int]],
) -> Partial:
    """Validate and measure one bucket of inputs bucketed already: its files, read whole.

    ``predictions``: the input's path, the bucket's files, and each file's index in the input.
    """
    _inject_fault(spec.fault, part)
    label_path, label_files = labels
    prediction_path, prediction_files, indexes = predictions
    label_rows = [_read(label_path, label_files, spec.label_schema)]
    # One read of all the files (one query costs what a file alone would), then file by file.
    rows = _read(prediction_path, prediction_files, spec.prediction_schema)
    prediction_rows, position = [], 0
    for file, index in zip(prediction_files, indexes, strict=True):
        ranked, _ = _ranked(rows.slice(position, file.n_rows), spec.layout.model_col)
        prediction_rows.append(_with_offsets(ranked, spec.offsets[index], spec.layout.model_col))
        position += file.n_rows
    return _evaluate_frames(spec, part, label_rows, prediction_rows)


def _model_counts(source: str, chunk: _Chunk, model_col: str) -> list[dict[str, int]]:
    """The rows per model in each file of a chunk of the predictions (its rows in the chunk)."""
    rows = reading.read_rows(source, chunk.files, [model_col], chunk.start, chunk.length)
    counts, position = [], 0
    for i, file in enumerate(chunk.files):
        n = file.n_rows - (chunk.start if i == 0 else 0)
        n = min(n, rows.height - position)
        counts.append(_ranked(rows.slice(position, n), model_col)[1])
        position += n
    return counts


def _evaluate_frames(
    spec: _PartSpec,
    part: int,
    label_pieces: Sequence[pl.DataFrame],
    prediction_pieces: Sequence[pl.DataFrame],
) -> Partial:
    """The local engine's code on the rows of some ids: validate, measure, write the rows' part."""

    def combined(frames: Sequence[pl.DataFrame], schema: pl.Schema) -> pl.DataFrame:
        return pl.concat([pl.DataFrame(schema=schema), *frames]).sort(ROW)

    ranked = pl.Schema([*spec.prediction_schema.items(), (MODEL_RANK, pl.Int64())])
    labels = reading.in_memory(combined(label_pieces, spec.label_schema), "labels")
    predictions = reading.in_memory(combined(prediction_pieces, ranked), "predictions")

    def evaluated(rows_sink: RowsSink | None) -> Partial:
        part_ = evaluate_partition(
            labels,
            predictions,
            spec.layout,
            spec.measures,
            rows_sink,
            spec.compute,
            spec.models,
            spec.prior_means,
        )
        return partial(part_, spec.layout)

    if spec.rows_dir is None:  # also when only validating
        return evaluated(None)
    result: list[Partial] = []

    def write(path: Path) -> None:
        writer = writing.RowsWriter(path)
        try:
            result.append(evaluated(writer.write))
        finally:
            writer.close()

    name = f"part-{part:05d}.parquet"
    if storage.is_remote(spec.rows_dir):  # a bucket's staging prefix: each part uploads its own
        writing.write_to(f"{spec.rows_dir}/{name}", write, optional=True)
        return result[0]
    # No rows when validation failed; no folder made: once a run fails, its staging folder is
    # removed, and a task still running then must not make it again.
    writing.write_atomically(Path(spec.rows_dir) / name, write, optional=True, make_parent=False)
    return result[0]


def _connect(ray: ModuleType, options: RayOptions) -> bool:
    """Join the cluster or start a local instance; True when this call started Ray."""
    if ray.is_initialized():
        return False
    # ray.init installs its own SIGTERM handler, which would end the run with exit 1 and skip
    # the cleanup: klrank's (klrank.runtime.interrupts) is put back.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if options.address:
            ray.init(address=options.address, log_to_driver=False)
        else:
            ray.init(
                address="local",  # a new instance, even where `ray start` left a cluster file
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                log_to_driver=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = options.address or "a local instance"
        raise EngineError(
            f"cannot start or join the Ray cluster ({one_line(where)}): {one_line(str(error))}"
        ) from None
    if threading.current_thread() is threading.main_thread():
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
    return True


def _n_parts(ray: ModuleType, options: RayOptions, n_label_rows: int) -> int:
    if options.partitions is not None:
        return options.partitions
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(PARTS_PER_CPU * cpus, math.ceil(n_label_rows / MIN_PART_ROWS)))


def evaluate_on_ray(
    labels: reading.ParquetInput,
    predictions: reading.ParquetInput,
    layout: Layout,
    measures: Measures,
    options: RayOptions,
    rows_dir: Path | str | None = None,
    compute: bool = True,
) -> Outcome:
    """Validate and, if all is valid and ``compute``, build the report on a Ray cluster.

    With ``rows_dir`` every part writes ``rows_dir/part-NNNNN.parquet``; the folder reads as one
    table (``pl.scan_parquet(rows_dir)``, DuckDB ``read_parquet('rows_dir/*.parquet')``, Spark
    ``spark.read.parquet(rows_dir)``). It must be on storage every node can write.

    Raises
    ------
    UsageError
        Ray is not installed, or an input cannot be read.
    EngineError
        The cluster cannot be reached, or a task still failed after its retries.
    """
    ray = import_ray()
    started = _connect(ray, options)
    try:
        return _evaluate(ray, labels, predictions, layout, measures, options, rows_dir, compute)
    finally:
        if started:
            ray.shutdown()


BUCKET_KEY = "bucket"


def buckets(
    labels: reading.ParquetInput, predictions: reading.ParquetInput
) -> list[tuple[list[reading.ParquetFile], list[reading.ParquetFile]]] | None:
    """The files of each ``bucket=`` folder, when both inputs are bucketed alike; else None.

    Both inputs must have every file under a ``bucket=VALUE`` folder and the same set of
    values: the bucketing (whatever hash made it) is then trusted to put all rows of an id in
    one bucket, in both inputs, and the split is skipped.
    """

    def by_bucket(source: reading.ParquetInput) -> dict[str, list[reading.ParquetFile]] | None:
        found: dict[str, list[reading.ParquetFile]] = {}
        for file in source.files:
            if BUCKET_KEY not in file.hive:
                return None
            found.setdefault(file.hive[BUCKET_KEY], []).append(file)
        return found

    label_buckets, prediction_buckets = by_bucket(labels), by_bucket(predictions)
    if not label_buckets or not prediction_buckets or set(label_buckets) != set(prediction_buckets):
        return None
    return [(label_buckets[b], prediction_buckets[b]) for b in sorted(label_buckets)]


@dataclass(frozen=True)
class _Run:
    """One evaluation's inputs and settings, as the driver's steps share them."""

    labels: reading.ParquetInput
    predictions: reading.ParquetInput
    layout: Layout
    measures: Measures
    rows_dir: Path | str | None
    compute: bool
    prior_means: prior.LogMeans | None

    def schema(self, source: reading.ParquetInput, columns: list[str]) -> pl.Schema:
        """The columns read from ``source``, with ROW, in the whole input's dtypes."""
        whole = source.frame.collect_schema()
        return pl.Schema([(c, whole[c]) for c in [*columns, ROW]])

    def spec(self, counts: Sequence[dict[str, int]]) -> _PartSpec:
        """What every task needs, from the rows per model of each chunk (or file)."""
        found = {model for chunk in counts for model in chunk}
        constants = [f.constant(self.layout.model_col) for f in self.predictions.files]
        if all(c is not None for c in constants):  # as the local engine: model=NAME folders
            found |= {c for c in constants if c is not None}
        return _PartSpec(
            self.layout,
            self.measures,
            tuple(sorted(found)),
            self.schema(self.labels, label_columns(self.layout)),
            self.schema(self.predictions, prediction_columns(self.layout)),
            _offsets(counts),
            str(self.rows_dir) if self.rows_dir is not None and self.compute else None,
            self.compute,
            os.environ.get(FAULT_ENV) or None,
            self.prior_means,
        )


def _evaluate(
    ray: ModuleType,
    labels: reading.ParquetInput,
    predictions: reading.ParquetInput,
    layout: Layout,
    measures: Measures,
    options: RayOptions,
    rows_dir: Path | str | None,
    compute: bool,
) -> Outcome:
    # The prior's P̄ needs the whole labels: one pass here, before the parts are measured.
    means, weightless = None, no_failures()
    if compute or layout.weight_col is not None:
        means, weightless = label_means(labels, layout, measures)
    run = _Run(labels, predictions, layout, measures, rows_dir, compute, means)
    if isinstance(rows_dir, Path):  # a bucket's prefix needs no folder
        rows_dir.mkdir(parents=True, exist_ok=True)
    bucketed = buckets(labels, predictions)
    if bucketed is not None:
        spec, refs = _evaluate_buckets(ray, run, bucketed)
    else:
        spec, refs = _split_and_evaluate(ray, run, options)
    partials: list[Partial] = _get(ray, refs)
    if isinstance(rows_dir, Path):
        for leftover in rows_dir.glob(".*.tmp"):  # from attempts whose worker died
            leftover.unlink(missing_ok=True)
    models_found = len(spec.models) or int(predictions.n_rows > 0)  # > 0: null model rows
    outcome = merge_partials(partials, layout, measures, labels.n_rows, models_found)
    if weightless.height:  # found by the driver's pass over the labels: no report
        failures = sorted_failures(pl.concat([outcome.failures, weightless]))
        return Outcome(failures, None, outcome.alignment, outcome.validation_seconds)
    return outcome


def _evaluate_buckets(
    ray: ModuleType,
    run: _Run,
    bucketed: list[tuple[list[reading.ParquetFile], list[reading.ParquetFile]]],
) -> tuple[_PartSpec, list[Any]]:
    """One evaluation task a bucket, reading the bucket's files."""
    files = run.predictions.files
    count = ray.remote(max_retries=TASK_RETRIES)(_model_counts)
    chunks = _chunks(files, batch_rows(1), CHUNK_FILES)  # one column read
    chunk_counts = _get(
        ray, [count.remote(run.predictions.path, c, run.layout.model_col) for c in chunks]
    )
    index = {file.path: i for i, file in enumerate(files)}
    counts: list[dict[str, int]] = [{} for _ in files]  # per file; a file may span two chunks
    for chunk, per_file in zip(chunks, chunk_counts, strict=True):
        for file, found in zip(chunk.files, per_file, strict=True):
            total = counts[index[file.path]]
            for model, n in found.items():
                total[model] = total.get(model, 0) + n
    spec = run.spec(counts)
    spec_ref = ray.put(spec)
    evaluate_bucket = ray.remote(max_retries=TASK_RETRIES)(_evaluate_bucket)
    refs = [
        evaluate_bucket.remote(
            spec_ref,
            part,
            (run.labels.path, label_files),
            (run.predictions.path, prediction_files, [index[f.path] for f in prediction_files]),
        )
        for part, (label_files, prediction_files) in enumerate(bucketed)
    ]
    return spec, refs


def _split_and_evaluate(
    ray: ModuleType, run: _Run, options: RayOptions
) -> tuple[_PartSpec, list[Any]]:
    """Split every input by id into parts, then start one evaluation task a part."""
    layout = run.layout
    n_parts = _n_parts(ray, options, run.labels.n_rows)
    chunk = batch_rows(len(layout.classes), run.measures.batch_bytes)
    split = ray.remote(max_retries=TASK_RETRIES)(_split)

    def split_input(
        source: reading.ParquetInput, columns: list[str], model_col: str | None
    ) -> tuple[list[list[Any]], list[Any]]:
        schema = run.schema(source, columns)
        pieces: list[list[Any]] = [[] for _ in range(n_parts)]
        counts = []
        for piece in _chunks(source.files, chunk, CHUNK_FILES):
            refs = split.options(num_returns=n_parts + 1).remote(
                source.path, piece, schema, layout.id_col, n_parts, model_col
            )
            for part in range(n_parts):
                pieces[part].append(refs[part])
            counts.append(refs[n_parts])
        return pieces, counts

    label_pieces, _ = split_input(run.labels, label_columns(layout), None)
    prediction_pieces, count_refs = split_input(
        run.predictions, prediction_columns(layout), layout.model_col
    )
    spec = run.spec(_get(ray, count_refs))
    spec_ref = ray.put(spec)
    evaluate_part = ray.remote(max_retries=TASK_RETRIES)(_evaluate_part)
    refs = [
        evaluate_part.remote(
            spec_ref, part, len(label_pieces[part]), *label_pieces[part], *prediction_pieces[part]
        )
        for part in range(n_parts)
    ]
    return spec, refs


def _get(ray: ModuleType, refs: list[Any]) -> list[Any]:
    """The tasks' results, or the first failure (or a stop signal) once every task is cancelled.

    klrank's own errors (a damaged file) and bugs pass through as the local engine would raise
    them; Ray's own failures (a worker that kept dying, a lost node) become EngineError.
    """
    try:
        pending = list(refs)
        while pending:
            # Ray's own waiting code must not have a Python exception raised inside it (the
            # signal would surface as a SystemError): signals wait for the end of each short
            # wait, and a failed task ends the run as soon as it is seen.
            with interrupts.deferred():
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
                ray.get(done)
        return list(ray.get(refs))
    except BaseException as error:
        for ref in refs:  # nothing may write into the staging folder once it is removed
            ray.cancel(ref, force=True)
        if not isinstance(error, ray.exceptions.RayError):
            raise  # Interrupted: SIGTERM or SIGINT
        if isinstance(error, ray.exceptions.RayTaskError):
            cause = error.cause
            if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
                raise cause from None
        raise EngineError(
            f"a Ray task still failed after {TASK_RETRIES} retries: {type(error).__name__}: "
            # Ray's first line may carry ANSI colours: escaped, as any text on stderr.
            f"{one_line(str(error).splitlines()[0]) if str(error) else ''}"
        ) from None
