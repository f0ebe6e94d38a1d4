"""The local engine: the batch loop that reads the inputs and folds them, in bounded memory.

Every model is brought into the labels' row order, so a batch of label rows pairs with the same
batch of each model's rows and no join is needed:

* **positional** — a model's predictions already list the label ids in the labels' order (what
  batch inference usually writes): checked by comparing the id columns, then streamed;
* **joined** — any other order: the model's rows are put in label order by a join, in memory.

Each input is read once in batches, plus once more for its id column (and, for a joined model,
once whole). Every batch is validated (Pandera, one fused pass) before it is measured; after the
first failure the remaining batches are only validated, so all failures are collected.
Label-only quantities (log p, entropy, argmax) are computed once per label row, not once per
model. What is done to each batch is the pure fold of :mod:`klrank.pipeline.fold`.

The same loop runs on one partition of the rows (:func:`evaluate_partition`, the rows of some ids
in every input, as the Ray engine splits them).
"""

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import Any

import polars as pl
from klrank.io import reading
from klrank.io.reading import ParquetInput
from klrank.pipeline import aggregate, arrays, prior
from klrank.pipeline.fold import (
    MODEL_RANK,
    Measures,
    ModelState,
    Outcome,
    Partition,
    RowsSink,
    comparable_ids,
    empty_inputs,
    gather_worst_rows,
    kept_label_columns,
    measure_batch,
    ranked_report,
    replicate_inputs,
    replicate_states,
    slices,
    sorted_failures,
    weightless_slices,
)
from klrank.pipeline.layout import (
    DEFAULT_BATCH_BYTES,
    ROW,
    Layout,
    prepare_labels,
)
from klrank.pipeline.validation import (
    check_coverage,
    check_label_keys,
    check_rows,
    label_columns,
    no_failures,
    prediction_columns,
)
from klrank.runtime import events


@dataclass(frozen=True)
class ModelInput:
    """One model's prediction rows (with their ``ROW`` positions), in the files' order."""

    name: str | None  # None: the rows whose model is null
    frame: pl.LazyFrame
    window: reading.Window  # the query for some of the rows of ``frame``, by position
    files: tuple[reading.ParquetFile, ...]  # those ``frame`` reads (checked after a read)


class _Stopwatch:
    """Adds up the time spent in the calls it runs."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, check: Callable[..., pl.DataFrame], *args: Any) -> pl.DataFrame:
        start = time.perf_counter()
        try:
            return check(*args)
        finally:
            self.seconds += time.perf_counter() - start


def model_inputs(
    predictions: ParquetInput, layout: Layout, names: Sequence[str] | None = None
) -> list[ModelInput]:
    """Split the predictions by model: by file where each file holds one model, else by filter.

    ``names``: the models to expect (a partition of the rows lists every model of the whole
    input, also those with no rows in it, whose coverage must still be checked).
    """
    selected = [*prediction_columns(layout), ROW, *([MODEL_RANK] if names is not None else [])]
    column = pl.col(layout.model_col)
    if names is None:
        by_file: dict[str, list[reading.ParquetFile]] = {}
        for file in predictions.files:
            model = file.constant(layout.model_col)
            if model is None:
                break
            by_file.setdefault(model, []).append(file)
        else:
            if by_file:
                return [
                    ModelInput(
                        name,
                        predictions.subset(files).select(selected),
                        predictions.windows(selected, files),
                        tuple(files),
                    )
                    for name, files in sorted(by_file.items())
                ]
        found = reading.collect(predictions.frame.select(column.unique()), predictions)
        names = sorted(found.get_column(layout.model_col).drop_nulls().to_list())
        has_null = bool(found.get_column(layout.model_col).null_count())
    else:
        nulls = predictions.frame.select(column.is_null().any())
        has_null = bool(reading.collect(nulls, predictions).item())
    inputs = [
        _filtered(name, predictions.frame.filter(column == name).select(selected), predictions)
        for name in sorted(names)
    ]
    if has_null:
        nulls_frame = predictions.frame.filter(column.is_null()).select(selected)
        inputs.append(_filtered(None, nulls_frame, predictions))
    return inputs


def _filtered(name: str | None, frame: pl.LazyFrame, predictions: ParquetInput) -> ModelInput:
    # The rows before a window are only known by filtering them all: a window is a slice, of
    # the whole input, whose files are checked against the scan as a window's are.
    return ModelInput(
        name, frame, reading.checked(frame.slice, predictions.files), predictions.files
    )


def batch_rows(n_classes: int, batch_bytes: int = DEFAULT_BATCH_BYTES) -> int:
    """Rows per batch: as many as fit one N × K Float64 array in ``batch_bytes``, at least one.

    The default, 80 MB, is 10 million values: 1,000 rows at 10,000 classes, 78 rows at 128,000;
    a single row once one row's K·8 bytes pass the budget. A batch of every input is read at a
    time (and the next one ahead), plus the label batch's P and log P: peak memory is a few
    times ``batch_bytes``, whatever the number of rows.
    """
    return max(1, batch_bytes // (8 * max(n_classes, 1)))


def evaluate(
    labels: ParquetInput,
    predictions: ParquetInput,
    layout: Layout,
    measures: Measures,
    rows_sink: RowsSink | None = None,
    compute: bool = True,
) -> Outcome:
    """Validate everything and, if it is all valid and ``compute``, build the ranked report."""
    part = evaluate_partition(
        labels, predictions, layout, measures, rows_sink, compute, threads=os.cpu_count() or 1
    )
    failures = [part.failures, *empty_inputs(labels.n_rows, part.models_found)]
    all_failures = sorted_failures(pl.concat(failures))
    if all_failures.height or not compute:
        return Outcome(all_failures, None, part.alignment, part.validation_seconds)
    slice_keys = list(aggregate.slice_key_columns(layout.slice_cols))
    report, contributions, ecdf, quantiles = ranked_report(
        part.models, part.key_batches, slice_keys, layout, measures, part.replicates
    )
    worst = gather_worst_rows(part.models, layout) if measures.worst_rows else None
    return Outcome(
        all_failures,
        report,
        part.alignment,
        part.validation_seconds,
        contributions,
        ecdf,
        worst,
        quantiles,
    )


def evaluate_partition(
    labels: ParquetInput,
    predictions: ParquetInput,
    layout: Layout,
    measures: Measures,
    rows_sink: RowsSink | None = None,
    compute: bool = True,
    models: Sequence[str] | None = None,
    prior_means: prior.LogMeans | None = None,
    threads: int = 1,
) -> Partition:
    """Validate the label rows and every model's rows for them, and measure them if all is valid.

    ``prior_means``: log P̄ per slice of the whole labels (:func:`label_means`), given for a
    partition of the rows; the whole inputs find them first by a pass over the labels.

    ``labels`` and ``predictions`` may be the whole inputs or one partition of their rows (the
    rows of some ids, carrying their ``ROW`` positions in the whole inputs, and predictions a
    ``MODEL_RANK`` column, each row's position among its model's rows); a partition names
    ``models``, all the models of the whole input. Empty inputs are left to the caller
    (:func:`empty_inputs`): a partition may hold no rows.

    In a partition a model is "positional" when its rows sit at the same positions as their
    labels in the whole inputs, which this partition's rows can only confirm for themselves: so
    its coverage is checked all the same, and :func:`merge_partials` drops those cases for a
    model positional in every partition, as the whole-input check would never have made them.

    ``threads``: models measured side by side, each batch (the array measures are numpy, which
    lets go of the GIL); 1 in a Ray task, which has one CPU.
    """
    with ExitStack() as streams:  # every reader thread ends with the evaluation
        return _evaluate(
            labels,
            predictions,
            layout,
            measures,
            rows_sink,
            compute,
            streams,
            models,
            prior_means,
            threads,
        )


def label_means(
    labels: ParquetInput, layout: Layout, measures: Measures, checked: _Stopwatch | None = None
) -> tuple[prior.LogMeans | None, pl.DataFrame]:
    """Log P̄ per slice, the prior's prediction, from one pass over valid labels.

    Each batch is validated first (in ``checked``'s time); at the first that fails, None: the
    labels are invalid, and the evaluation reports why. Also the failures of the slices whose
    weights sum to 0 (:func:`klrank.pipeline.fold.weightless_slices`).
    """
    checks = checked or _Stopwatch()
    selected = [*label_columns(layout), ROW]
    size = reading.aligned_rows(batch_rows(len(layout.classes), measures.batch_bytes), labels.files)
    sums: prior.LabelSums = {}
    with closing(reading.batches(labels.windows(selected), labels, size)) as batches:
        for batch in batches:
            if checks(check_rows, batch, "labels", layout, measures.tolerance).height:
                return None, no_failures()
            prior.add_label_sums(sums, prior.label_sums(batch, layout))
    empty = prior.weightless(sums) if layout.weight_col is not None else []
    return prior.log_means(sums), weightless_slices(empty, layout)


def _label_keys(labels: ParquetInput, frame: pl.LazyFrame, layout: Layout) -> pl.DataFrame:
    if not labels.files:  # a partition of the rows: each carries its position
        return comparable_ids(reading.collect(frame.select(layout.id_col, ROW), labels), layout)
    # Read whole from the files, so a row's position is its index: no need to read ROW.
    keys = comparable_ids(reading.collect(frame.select(layout.id_col), labels), layout)
    return keys.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))


def _evaluate(
    labels: ParquetInput,
    predictions: ParquetInput,
    layout: Layout,
    measures: Measures,
    rows_sink: RowsSink | None,
    compute: bool,
    streams: ExitStack,
    names: Sequence[str] | None,
    means: prior.LogMeans | None,
    threads: int = 1,
) -> Partition:
    def read(window: reading.Window, source: ParquetInput) -> reading.Batches:
        return streams.enter_context(closing(reading.batches(window, source, size)))

    # Batches of every input are paired row for row, so all are cut alike: on row group
    # boundaries where all the files agree on them.
    size = reading.aligned_rows(
        batch_rows(len(layout.classes), measures.batch_bytes), [*labels.files, *predictions.files]
    )
    label_selected = [*label_columns(layout), ROW]
    label_frame = labels.frame.select(label_selected)
    checked = _Stopwatch()
    label_keys = _label_keys(labels, label_frame, layout)
    failures = [checked(check_label_keys, label_keys, layout)]  # failures[0]: duplicate ids
    labels_checked = False  # whether label_means has validated every label row already
    # A partition is given the whole labels' means; validating alone needs the weights' sums.
    if (compute or layout.weight_col is not None) and means is None and names is None:
        means, weightless = label_means(labels, layout, measures, checked)
        labels_checked = means is not None
        failures.append(weightless)

    label_batches = read(labels.windows(label_selected), labels)  # starts reading now
    aligned: list[ModelState] = []
    # Read only after the paired loop, so they do not each hold a batch through it.
    validate_only: list[reading.Window] = []
    alignment: dict[str, str] = {}
    inputs = model_inputs(predictions, layout, names)
    partition = names is not None
    for source in inputs:
        frame = source.frame.drop(MODEL_RANK) if partition else source.frame
        window = frame.slice if partition else source.window  # a partition is in memory
        if source.name is None:
            validate_only.append(window)
            continue
        ranks = [MODEL_RANK] if partition else []
        ids = comparable_ids(
            reading.collect(source.frame.select(layout.id_col, *ranks), predictions), layout
        )
        positional = ids.get_column(layout.id_col).equals(
            label_keys.get_column(layout.id_col), null_equal=True
        ) and (not partition or ids.get_column(MODEL_RANK).equals(label_keys.get_column(ROW)))
        # In a partition, a model positional here has duplicate pairs only where the labels
        # have duplicate ids; with none, its coverage check would find nothing.
        if positional and (not partition or not failures[0].height):
            alignment[source.name] = "positional"
            aligned.append(ModelState(source.name, read(window, predictions)))
            continue
        del ids  # at 20M rows the ids weigh 160 MB a model
        keys = comparable_ids(
            reading.collect(frame.select(layout.id_col, ROW), predictions), layout
        )
        coverage = checked(check_coverage, label_keys, source.name, keys, layout)
        failures.append(coverage)
        if positional:  # in a partition: see the docstring of evaluate_partition
            alignment[source.name] = "positional"
            aligned.append(ModelState(source.name, read(window, predictions)))
            continue
        # A null id matches no label: only validating every row of the model reports it.
        if coverage.height or keys.get_column(layout.id_col).null_count():
            validate_only.append(window)
            continue
        alignment[source.name] = "joined"
        rows = comparable_ids(reading.collect(frame, predictions, source.files), layout)
        in_label_order = label_keys.select(layout.id_col).join(
            rows, on=layout.id_col, how="left", maintain_order="left"
        )
        aligned.append(ModelState(source.name, slices(in_label_order, size)))

    def failed() -> bool:
        return any(f.height for f in failures)

    slice_keys = aggregate.slice_key_columns(layout.slice_cols)
    # Scratch arrays reused by every batch (the label batch's P and log P among them: each
    # batch's are written over the last one's, measured by then), and one set a model thread.
    workspace = arrays.Workspace()
    scratch = threading.local()
    side_by_side = None
    if threads > 1 and layout.uses_arrays:
        side_by_side = streams.enter_context(ThreadPoolExecutor(threads, "klrank-measure"))
    key_batches: list[pl.DataFrame] = []
    replicates: list[pl.DataFrame] = []
    bootstrapping = streams.enter_context(ThreadPoolExecutor(1, "klrank-bootstrap"))
    pending: Future[pl.DataFrame] | None = None
    n_batches = -(-labels.n_rows // size)
    for done, label_batch in enumerate(label_batches, start=1):
        if not labels_checked:
            failures.append(checked(check_rows, label_batch, "labels", layout, measures.tolerance))
        prepared, truth = None, None
        if compute and means is not None and not failed():
            if layout.uses_arrays:
                prepared, truth = arrays.prepare_labels(
                    label_batch, layout, measures.base, workspace
                )
            else:
                prepared = prepare_labels(label_batch.lazy(), layout, measures.base).collect()
            prepared = prepared.with_columns(**slice_keys)
            prepared = prior.with_prior_kl(prepared, layout, means, measures.base, truth)
            if measures.worst_rows:  # label row positions: the worst rows' tie-break and `row`
                prepared = prepared.with_columns(label_batch.get_column(ROW))
            key_batches.append(kept_label_columns(prepared, layout))
        if prepared is not None and failed():
            prepared = None  # only validated from here on
        if truth is not None and prepared is not None:  # what every model shares, first
            arrays.share(truth, prepared, layout, list(slice_keys))
        batches = [next(model.batches) for model in aligned]
        n = len(aligned)

        def check_and_measure(
            model: ModelState,
            batch: pl.DataFrame,
            prepared: pl.DataFrame | None,
            truth: arrays.Truth | None,
        ) -> list[pl.DataFrame]:
            found = checked(check_rows, batch, "predictions", layout, measures.tolerance)
            written: list[pl.DataFrame] = []
            if prepared is not None and not found.height:
                sink = written.append if rows_sink is not None else None
                work = scratch.__dict__.setdefault("workspace", arrays.Workspace())
                measure_batch(
                    model, prepared, batch, layout, measures, list(slice_keys), sink, truth, work
                )
            failures.append(found)
            return written

        # Side by side where the measures are numpy's; rows.parquet in model order all the same.
        if side_by_side is not None and len(aligned) > 1:
            done_models = list(
                side_by_side.map(check_and_measure, aligned, batches, [prepared] * n, [truth] * n)
            )
        else:
            done_models = [
                check_and_measure(m, b, prepared, truth)
                for m, b in zip(aligned, batches, strict=True)
            ]
        del batches
        for written in done_models:
            for model_rows in written:
                assert rows_sink is not None
                rows_sink(model_rows)
        if prepared is not None and measures.bootstrap and not failed():
            # The bootstrap's sums (numpy, which lets go of the GIL) run beside the next batch;
            # one batch at most waits for them, so they hold no more than one batch's inputs.
            if pending is not None:
                replicates.append(pending.result())
            sampled = replicate_inputs(prepared, aligned, layout, measures, list(slice_keys))
            pending = bootstrapping.submit(replicate_states, sampled, measures.bootstrap)
        events.progress("batches", done, n_batches)
    if pending is not None:
        replicates.append(pending.result())
    for window in validate_only:
        for batch in read(window, predictions):
            failures.append(checked(check_rows, batch, "predictions", layout, measures.tolerance))

    return Partition(
        pl.concat([no_failures(), *failures]),
        aligned,
        alignment,
        key_batches,
        checked.seconds,
        models_found=len(inputs),
        replicates=replicates,
    )
