"""The Ray engine: the local engine's validation and measures, run on co-partitions of the rows.

1. **Split** (one Ray task per chunk of each input file): read the chunk's columns with their row
   positions and split the rows into ``n`` parts by a hash of the id
   (:func:`pipeline.partitions.split`); the parts stay in Ray's object store.
2. **Evaluate** (one task per part): the part's label rows and every model's rows for the same
   ids go through :func:`pipeline.evaluate.evaluate_partition`, the same Pandera checks and
   Polars expressions as the local engine; all rows of an id are in one part, so duplicate ids
   and coverage are checked globally. The task writes its per-row output as one part file of
   the ``rows.parquet`` dataset and returns mergeable states (:class:`pipeline.evaluate.Partial`).
3. **Merge** (the driver): :func:`pipeline.evaluate.merge_partials` builds the report; quantiles
   and the ECDF come from a mergeable sketch (:mod:`pipeline.sketch`).

Ray is an optional dependency, imported only here and only when this engine runs. A task whose
worker dies is retried by Ray (``TASK_RETRIES`` times); a part file is written under a temporary
name and renamed, so a retried task leaves one complete file. A task that keeps failing ends the
run with :class:`pipeline.errors.EngineError` and nothing is published.
"""

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl

from pipeline import io, partitions
from pipeline.errors import EngineError, KlrankError, UsageError
from pipeline.evaluate import (
    Evaluation,
    Measures,
    Partial,
    batch_rows,
    evaluate_partition,
    merge_partials,
    partial,
)
from pipeline.layout import Layout
from pipeline.validation import label_columns, prediction_columns

TASK_RETRIES = 3
# Default parts: PARTS_PER_CPU per CPU of the cluster, each with at least MIN_PART_ROWS label
# rows (at 2M rows × 10 classes on 2 cores, 8 parts ran in 3.5 s against 3.9 s for 4).
PARTS_PER_CPU = 4
MIN_PART_ROWS = 250_000
# Fault injection for tests (KLRANK_RAY_FAULT): "once:DIR" kills the worker of part 0 the first
# time (DIR records that it did), "always" every time.
FAULT_ENV = "KLRANK_RAY_FAULT"
INSTALL_HINT = "the Ray engine needs Ray: pip install 'klrank[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where the cluster is (None: start a local instance on 127.0.0.1) and how many parts."""

    address: str | None = None
    partitions: int | None = None  # None: MIN_PART_ROWS label rows a part, PARTS_PER_CPU a CPU


@dataclass(frozen=True)
class _PartSpec:
    """What every part's task needs besides its rows."""

    layout: Layout
    measures: Measures
    models: tuple[str, ...]
    label_schema: pl.Schema
    prediction_schema: pl.Schema
    rows_dir: str | None
    compute: bool
    fault: str | None


def import_ray() -> ModuleType:
    """Ray, or a usage error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def _split(
    source: str,
    file: io.ParquetFile,
    columns: list[str],
    start: int,
    length: int,
    id_col: str,
    n_parts: int,
    model_col: str | None,
) -> tuple[Any, ...]:
    """One chunk of a file, split into parts; last, the model names it holds (predictions)."""
    rows = io.read_rows(source, file, columns, start, length)
    names: list[str] = []
    if model_col is not None and model_col in rows.columns:
        names = rows.get_column(model_col).drop_nulls().unique().cast(pl.String).to_list()
    # Arrow tables travel through Ray's object store without a copy; polars frames are pickled.
    return (*[part.to_arrow() for part in partitions.split(rows, id_col, n_parts)], names)


def _inject_fault(fault: str | None, part: int) -> None:
    if fault is None or part != 0:
        return
    if fault == "always":
        os._exit(1)
    marker = Path(fault.removeprefix("once:")) / "failed-part-0"
    if not marker.exists():
        marker.touch()
        os._exit(1)


def _evaluate_part(spec: _PartSpec, part: int, n_label_pieces: int, *pieces: Any) -> Partial:
    """Validate and measure one part from the split's pieces (Arrow tables) of every chunk."""
    _inject_fault(spec.fault, part)
    frames = [pl.DataFrame(piece) for piece in pieces]
    return _evaluate_frames(spec, part, frames[:n_label_pieces], frames[n_label_pieces:])


def _evaluate_bucket(
    spec: _PartSpec,
    part: int,
    labels: tuple[str, list[io.ParquetFile]],
    predictions: tuple[str, list[io.ParquetFile]],
) -> Partial:
    """Validate and measure one bucket of inputs bucketed already: its files, read whole."""
    _inject_fault(spec.fault, part)

    def read(source: tuple[str, list[io.ParquetFile]], columns: list[str]) -> list[pl.DataFrame]:
        path, files = source
        return [io.read_rows(path, file, columns, 0, file.n_rows) for file in files]

    layout = spec.layout
    return _evaluate_frames(
        spec,
        part,
        read(labels, label_columns(layout)),
        read(predictions, prediction_columns(layout)),
    )


def _model_names(source: str, file: io.ParquetFile, model_col: str) -> list[str]:
    """The model names in one predictions file."""
    names = io.read_rows(source, file, [model_col], 0, file.n_rows).get_column(model_col)
    return names.drop_nulls().unique().cast(pl.String).to_list()


def _evaluate_frames(
    spec: _PartSpec,
    part: int,
    label_pieces: Sequence[pl.DataFrame],
    prediction_pieces: Sequence[pl.DataFrame],
) -> Partial:
    """The local engine's code on the rows of some ids: validate, measure, write the rows' part."""

    def combined(
        frames: Sequence[pl.DataFrame], columns: list[str], schema: pl.Schema
    ) -> pl.DataFrame:
        # The columns and dtypes of the whole input, whichever files this part's rows came from.
        empty = pl.DataFrame(schema={c: schema[c] for c in [*columns, io.ROW]})
        return pl.concat([empty, *frames], how="diagonal_relaxed").sort(io.ROW)

    layout = spec.layout
    labels = io.in_memory(
        combined(label_pieces, label_columns(layout), spec.label_schema), "labels"
    )
    predictions = io.in_memory(
        combined(prediction_pieces, prediction_columns(layout), spec.prediction_schema),
        "predictions",
    )
    if spec.rows_dir is None or not spec.compute:
        evaluated = evaluate_partition(
            labels, predictions, spec.layout, spec.measures, None, spec.compute, spec.models
        )
        return partial(evaluated, spec.layout)
    target = Path(spec.rows_dir) / f"part-{part:05d}.parquet"
    result: list[Partial] = []

    def write(path: Path) -> None:
        writer = io.RowsWriter(path)
        try:
            evaluated = evaluate_partition(
                labels, predictions, spec.layout, spec.measures, writer.write, True, spec.models
            )
        finally:
            writer.close()
        result.append(partial(evaluated, spec.layout))

    io.write_atomically(target, write, optional=True)  # no rows when validation failed
    return result[0]


def _connect(ray: ModuleType, options: RayOptions) -> bool:
    """Join the cluster or start a local instance; True when this call started Ray."""
    if ray.is_initialized():
        return False
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
        raise EngineError(f"cannot start or join the Ray cluster ({where}): {error}") from None
    return True


def _n_parts(ray: ModuleType, options: RayOptions, n_label_rows: int) -> int:
    if options.partitions is not None:
        return options.partitions
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(PARTS_PER_CPU * cpus, math.ceil(n_label_rows / MIN_PART_ROWS)))


def evaluate_on_ray(
    labels: io.ParquetInput,
    predictions: io.ParquetInput,
    layout: Layout,
    measures: Measures,
    options: RayOptions,
    rows_dir: Path | None = None,
    compute: bool = True,
) -> Evaluation:
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
    labels: io.ParquetInput, predictions: io.ParquetInput
) -> list[tuple[list[io.ParquetFile], list[io.ParquetFile]]] | None:
    """The files of each ``bucket=`` folder, when both inputs are bucketed alike; else None.

    Both inputs must have every file under a ``bucket=VALUE`` folder and the same set of
    values: the bucketing (whatever hash made it) is then trusted to put all rows of an id in
    one bucket, in both inputs, and the split is skipped.
    """

    def by_bucket(source: io.ParquetInput) -> dict[str, list[io.ParquetFile]] | None:
        found: dict[str, list[io.ParquetFile]] = {}
        for file in source.files:
            if BUCKET_KEY not in file.hive:
                return None
            found.setdefault(file.hive[BUCKET_KEY], []).append(file)
        return found

    label_buckets, prediction_buckets = by_bucket(labels), by_bucket(predictions)
    if not label_buckets or not prediction_buckets or set(label_buckets) != set(prediction_buckets):
        return None
    return [(label_buckets[b], prediction_buckets[b]) for b in sorted(label_buckets)]


def _evaluate(
    ray: ModuleType,
    labels: io.ParquetInput,
    predictions: io.ParquetInput,
    layout: Layout,
    measures: Measures,
    options: RayOptions,
    rows_dir: Path | None,
    compute: bool,
) -> Evaluation:
    def spec(models: Iterable[str]) -> Any:
        return ray.put(
            _PartSpec(
                layout,
                measures,
                tuple(sorted(models)),
                labels.frame.collect_schema(),
                predictions.frame.collect_schema(),
                str(rows_dir) if rows_dir is not None and compute else None,
                compute,
                os.environ.get(FAULT_ENV) or None,
            )
        )

    if rows_dir is not None:
        rows_dir.mkdir(parents=True, exist_ok=True)
    bucketed = buckets(labels, predictions)
    if bucketed is not None:
        names = ray.remote(max_retries=TASK_RETRIES)(_model_names)
        name_refs = [names.remote(predictions.path, f, layout.model_col) for f in predictions.files]
        spec_ref = spec({name for found in _get(ray, name_refs) for name in found})
        evaluate_bucket = ray.remote(max_retries=TASK_RETRIES)(_evaluate_bucket)
        refs = [
            evaluate_bucket.remote(
                spec_ref, part, (labels.path, label_files), (predictions.path, prediction_files)
            )
            for part, (label_files, prediction_files) in enumerate(bucketed)
        ]
    else:
        refs = _split_and_evaluate(ray, labels, predictions, layout, options, spec)
    partials: list[Partial] = _get(ray, refs)
    if rows_dir is not None:
        for leftover in rows_dir.glob(".*.tmp"):  # from attempts whose worker died
            leftover.unlink(missing_ok=True)
    return merge_partials(partials, layout, measures, labels.n_rows, predictions.n_rows)


def _split_and_evaluate(
    ray: ModuleType,
    labels: io.ParquetInput,
    predictions: io.ParquetInput,
    layout: Layout,
    options: RayOptions,
    spec: Callable[[Iterable[str]], Any],
) -> list[Any]:
    """Split every input by id into parts, then start one evaluation task a part."""
    n_parts = _n_parts(ray, options, labels.n_rows)
    chunk = batch_rows(len(layout.classes))
    split = ray.remote(max_retries=TASK_RETRIES)(_split)

    def split_input(
        source: io.ParquetInput, columns: list[str], model_col: str | None
    ) -> tuple[list[list[Any]], list[Any]]:
        pieces: list[list[Any]] = [[] for _ in range(n_parts)]
        names = []
        for file in source.files:
            for start in range(0, max(file.n_rows, 1), chunk):
                refs = split.options(num_returns=n_parts + 1).remote(
                    source.path, file, columns, start, chunk, layout.id_col, n_parts, model_col
                )
                for part in range(n_parts):
                    pieces[part].append(refs[part])
                names.append(refs[n_parts])
        return pieces, names

    label_pieces, _ = split_input(labels, label_columns(layout), None)
    prediction_pieces, name_refs = split_input(
        predictions, prediction_columns(layout), layout.model_col
    )
    spec_ref = spec({name for names in _get(ray, name_refs) for name in names})
    evaluate_part = ray.remote(max_retries=TASK_RETRIES)(_evaluate_part)
    return [
        evaluate_part.remote(
            spec_ref, part, len(label_pieces[part]), *label_pieces[part], *prediction_pieces[part]
        )
        for part in range(n_parts)
    ]


def _get(ray: ModuleType, refs: list[Any]) -> list[Any]:
    """The tasks' results; klrank's own errors pass through, Ray's become EngineError."""
    try:
        return list(ray.get(refs))
    except ray.exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, KlrankError):
            raise cause from None
        raise EngineError(f"a Ray task failed: {cause!r}") from None
    except ray.exceptions.RayError as error:
        raise EngineError(
            f"a Ray task still failed after {TASK_RETRIES} retries: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from None
