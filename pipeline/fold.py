"""The pure fold of batches into the ranked report: measures, mergeable states, worst rows.

An engine (:mod:`klrank.engines.local`, :mod:`klrank.engines.ray`) reads the inputs and hands
every pair of a label batch and a model batch to :func:`measure_batch`. Per batch and model, the
measures feed mergeable states (per-class sums of the KL terms among them, for the class
contributions) and a bounded top-N of the highest-KL rows; each model's kl column is kept (8 bytes
a row) for exact quantiles, the ECDF and the paired comparison at the end (:func:`report`).
:func:`partial` sums a partition of the rows up in mergeable states and :func:`merge_partials`
makes the report from all of them, with the quantiles from merged sketches
(:mod:`klrank.pipeline.sketch`) instead of a sort.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from klrank.pipeline import aggregate, arrays, bootstrap, prior, sketch
from klrank.pipeline.layout import (
    CLUSTER,
    DEFAULT_BATCH_BYTES,
    ID,
    MEASURE_COLUMNS,
    MODEL,
    ROW,
    ROW_COLUMNS,
    TOKEN_COLUMNS,
    WEIGHT,
    Layout,
    cross_entropy,
    kl_terms,
    log_p_col,
    log_q_col,
    prepare_predictions,
    row_measures,
)
from klrank.pipeline.validation import PAIR_UNIQUENESS, failure, no_failures

# In a partition's predictions: each row's 0-based position among its model's rows, in the whole
# input (see evaluate_partition).
MODEL_RANK = "__klrank_model_rank"


RowsSink = Callable[[pl.DataFrame], None]


@dataclass(frozen=True)
class Measures:
    """What a run computes: units, smoothing, ranking metric, and the row sums' tolerance.

    And ``batch_bytes``, how many rows a batch holds: as many as fit one N × K Float64 array in
    that many bytes, at least one (``klrank.engines.local.batch_rows``). The results do not
    depend on it beyond the order of floating-point additions.
    """

    base: str = "2"
    epsilon: float = 0.0
    rank_by: str = "mean_kl"
    tolerance: float = 1e-6
    worst_rows: int = 20  # highest-KL rows kept per model (0: none)
    bootstrap: int = 0  # Poisson bootstrap replicates of the ranking (0: none)
    seed: int = 0  # of the bootstrap's weights
    quantiles: tuple[float, ...] = aggregate.DEFAULT_QUANTILES  # of quantiles.parquet
    batch_bytes: int = DEFAULT_BATCH_BYTES  # a batch's rows × classes Float64 values, in bytes


@dataclass
class Outcome:
    """The outcome: failure cases, the report when there were none, and what was seen."""

    failures: pl.DataFrame
    report: pl.DataFrame | None
    alignment: dict[str, str]  # model -> "positional" or "joined"
    validation_seconds: float  # the share of the time spent in checks
    # With the report: per (slice, model, class) contributions to the mean KL
    # (aggregate.class_contributions, classes by name), each model's KL ECDF over all rows
    # (aggregate.ecdf_points) and its worst rows (model, rank, id, measures, row, slices).
    contributions: pl.DataFrame | None = None
    ecdf: pl.DataFrame | None = None
    worst_rows: pl.DataFrame | None = None
    # quantiles.parquet: per (slice, model, measure, quantile), in the report's row order.
    quantiles: pl.DataFrame | None = None


def comparable_ids(frame: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """``frame`` with its id column in a type that compares across inputs."""
    # Integer ids of any width compare as one type (Int128 holds every UInt64); validation has
    # matched string against string.
    key = pl.col(layout.id_col)
    dtype = frame.schema[layout.id_col]
    if not dtype.is_integer():
        return frame
    return frame.with_columns(key.cast(pl.Int128 if dtype == pl.UInt64 else pl.Int64))


def slices(frame: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    """``frame`` in consecutive slices of ``size`` rows (an in-memory model's batches)."""
    for start in range(0, frame.height, size):
        yield frame.slice(start, size)


@dataclass
class ModelState:
    """One model's batches still to come and what its measured batches added up to so far."""

    name: str
    batches: Iterator[pl.DataFrame]
    states: list[pl.DataFrame] = field(default_factory=list)
    class_totals: aggregate.ClassTotals = field(default_factory=aggregate.ClassTotals)
    cluster_states: list[pl.DataFrame] = field(default_factory=list)  # with --cluster-by
    kl: list[pl.Series] = field(default_factory=list)
    # The other measures of quantiles.parquet the rows carry (delta_p), batch by batch, as kl.
    other_measures: dict[str, list[pl.Series]] = field(default_factory=dict)
    ranked_values: pl.Series | None = None  # the last batch's --rank-by row values (bootstrap)
    worst: pl.DataFrame | None = None  # the highest-KL rows so far, at most Measures.worst_rows


@dataclass
class Partition:
    """What validating and measuring some label rows (all, or one partition) with every model found.

    The failure cases, and for each model measured (in name order): its partial states, its kl
    column and its worst rows; the slice key columns of the label rows, batch by batch.
    """

    failures: pl.DataFrame
    models: list[ModelState]
    alignment: dict[str, str]  # model -> "positional" or "joined"
    key_batches: list[pl.DataFrame]
    validation_seconds: float
    replicates: list[pl.DataFrame] = field(default_factory=list)  # replicate_states per batch
    models_found: int = 0  # models in the predictions, a null model counted


def empty_inputs(n_label_rows: int, models_found: int) -> list[pl.DataFrame]:
    """The failures of labels without rows and of predictions without a model.

    A model named by its folders (``model=NAME``) counts even when its files hold no rows: its
    coverage check then reports every label id it misses.
    """
    failures = []
    if n_label_rows == 0:
        failures.append(failure("labels", "not_empty", value="zero rows"))
    if models_found == 0:
        failures.append(failure("predictions", "not_empty", value="zero rows"))
    return failures


def sorted_failures(failures: pl.DataFrame) -> pl.DataFrame:
    """Failure cases in one order whatever found them first: by dataset, model, check, row, id."""
    return failures.sort(
        pl.col("dataset") != "labels", "model", "check", "column", "row", "id", nulls_last=True
    )


def measure_batch(
    model: ModelState,
    labels: pl.DataFrame,
    batch: pl.DataFrame,
    layout: Layout,
    measures: Measures,
    slice_keys: Sequence[str],
    rows_sink: RowsSink | None,
    truth: arrays.Truth | None = None,
    workspace: arrays.Workspace | None = None,
) -> None:
    """Measure one batch of a model against its label rows and fold it into ``model``.

    ``labels`` are the prepared label rows with their slice keys and prior columns
    (:func:`klrank.pipeline.prior.with_prior_kl`); where the measures run on arrays, ``truth``
    is the label batch's :class:`klrank.pipeline.arrays.Truth` (and ``workspace`` the run's
    scratch arrays).
    """
    n_classes = len(layout.classes)
    weight = WEIGHT if layout.weight_col is not None else None
    if layout.uses_arrays:
        assert truth is not None, "array measures need the label batch's truth"
        rows, class_sums = arrays.row_measures(
            labels,
            truth,
            batch,
            layout,
            base=measures.base,
            epsilon=measures.epsilon,
            slice_keys=slice_keys,
            workspace=workspace,
        )
    else:
        # One lazy query per batch: the streaming engine shares subexpressions (log(p + q) in
        # JS) and spreads the rows over the cores, about three times faster than eager here.
        rows = (
            pl.concat(
                [labels.lazy(), prepare_predictions(batch.lazy(), layout, measures.epsilon)],
                how="horizontal",
            )
            .with_columns(kl_terms(layout))
            .with_columns(row_measures(layout, measures.base))
            .with_columns(cross_entropy())
            # Only what the states, the kept kl and rows.parquet read: the logs stay per morsel
            # instead of filling a batch-sized column each.
            .drop(
                *[log_p_col(i) for i in range(n_classes)], *[log_q_col(i) for i in range(n_classes)]
            )
            .collect()
        )
        class_sums = aggregate.column_class_sums(n_classes, pl.col(WEIGHT) if weight else None)
    states, found = aggregate.partial_states(rows, model.name, slice_keys, class_sums, weight)
    model.states.append(states)
    model.class_totals.add(found)  # K values a slice, however many batches come
    if layout.cluster_col is not None:
        model.cluster_states.append(
            aggregate.cluster_states(
                rows, model.name, slice_keys, CLUSTER, weight, prior.prior_columns(layout)
            )
        )
    model.kl.append(rows.get_column("kl"))
    for measure in aggregate.QUANTILE_MEASURES[1:]:
        if measure in rows.columns:
            model.other_measures.setdefault(measure, []).append(rows.get_column(measure))
    if measures.bootstrap:
        model.ranked_values = rows.get_column(BOOTSTRAP_METRICS[measures.rank_by])
    if measures.worst_rows:
        _keep_worst(model, rows, layout, measures.worst_rows)
    if rows_sink is not None:
        output = rows.with_columns(pl.lit(model.name).alias(MODEL))
        rows_sink(output.select(*ROW_COLUMNS, *token_columns(layout), *layout.slice_cols))


def token_columns(layout: Layout) -> tuple[str, ...]:
    """The token measures published with a row (:data:`TOKEN_COLUMNS`), where the run has them."""
    return TOKEN_COLUMNS if layout.token_col is not None else ()


# --rank-by metrics the bootstrap can rank by: a weighted mean of this row measure.
BOOTSTRAP_METRICS = {
    "mean_kl": "kl",
    "mean_reverse_kl": "reverse_kl",
    "mean_js": "js",
    "mean_cross_entropy": "cross_entropy",
    "top1_agreement": "top1_match",
}
REPLICATE = "replicate"
# Per (slice, model, replicate) of the bootstrap: Σ v·w·x over finite x, Σ v·w over rows with
# x = +inf, and Σ v·w (v the row's Poisson weight in the replicate, w its weight).
REPLICATE_SCHEMA = pl.Schema(
    {
        aggregate.SLICE: pl.String,
        MODEL: pl.String,
        REPLICATE: pl.Int32,
        "x_sum": pl.Float64,
        "inf_sum": pl.Float64,
        aggregate.WEIGHT_SUM: pl.Float64,
    }
)


def _unit_keys(labels: pl.DataFrame, layout: Layout) -> pl.Series:
    """Each row's bootstrap unit: its cluster, or its id (integer ids as Int64 whatever the file)."""
    if layout.cluster_col is not None:
        return labels.get_column(CLUSTER)
    ids = labels.get_column(ID)
    return ids.cast(pl.Int64) if ids.dtype.is_integer() and ids.dtype != pl.UInt64 else ids


@dataclass(frozen=True)
class ReplicateInputs:
    """What the bootstrap needs of one batch of label rows, taken while the batch is current.

    ``values`` holds, per row, its weight w, then per model w·x (0 where x is not finite) and,
    where the model has an infinite x in the batch, w·[x = +inf] (``infinite`` says which).
    """

    hashes: np.ndarray  # uint64: each row's unit (bootstrap.unit_hashes)
    values: np.ndarray  # float64 (rows, columns)
    models: tuple[str, ...]
    infinite: tuple[bool, ...]  # per model: whether it has an indicator column
    groups: tuple[tuple[str, np.ndarray | None], ...]  # slice label -> its rows (None: all)


def replicate_inputs(
    labels: pl.DataFrame,
    models: Sequence[ModelState],
    layout: Layout,
    measures: Measures,
    slice_keys: Sequence[str],
) -> ReplicateInputs | None:
    """The bootstrap's inputs of one batch, from each model's ``ranked_values`` (then cleared).

    ``ranked_values`` are a model's row values of the ``--rank-by`` measure on these rows; None
    when no model was measured on them.
    """
    measured = [m for m in models if m.ranked_values is not None]
    if not measured:
        return None
    hashes = bootstrap.unit_hashes(_unit_keys(labels, layout), measures.seed)
    weight = (
        labels.get_column(WEIGHT).to_numpy()
        if layout.weight_col is not None
        else np.ones(labels.height)
    )
    columns, infinite = [weight], []
    for m in measured:
        assert m.ranked_values is not None
        x = m.ranked_values.cast(pl.Float64).to_numpy()
        m.ranked_values = None
        finite = np.isfinite(x)
        columns.append(np.where(finite, x, 0.0) * weight)
        infinite.append(not finite.all())
        if infinite[-1]:  # most batches have none: no column of zeros to multiply
            columns.append(np.where(x == np.inf, weight, 0.0))
    groups: list[tuple[str, np.ndarray | None]] = [(aggregate.ALL_ROWS, None)]
    for key in slice_keys:
        parts = labels.select(pl.col(key)).with_row_index("_i").group_by(key, maintain_order=True)
        for value, rows in parts.agg(pl.col("_i")).iter_rows():
            groups.append((str(value), np.asarray(rows, dtype=np.int64)))
    return ReplicateInputs(
        hashes,
        np.column_stack(columns),
        tuple(m.name for m in measured),
        tuple(infinite),
        tuple(groups),
    )


def replicate_states(inputs: ReplicateInputs | None, replicates: int) -> pl.DataFrame:
    """The bootstrap's sums of one batch of label rows, for every model measured on it.

    A row's Poisson weight in a replicate follows from its unit's key (its id, or its cluster's
    key), the replicate and the seed alone (:mod:`klrank.pipeline.bootstrap`), so the states of
    any split of the rows add up to the same sums. Pure numpy on ``inputs``: an engine may run
    it beside the next batch.
    """
    if inputs is None:
        return pl.DataFrame(schema=REPLICATE_SCHEMA)
    frames = []
    for name, rows in inputs.groups:
        sums = bootstrap.replicate_sums(
            inputs.hashes if rows is None else inputs.hashes[rows],
            inputs.values if rows is None else inputs.values[rows],
            replicates,
        )
        column = 1
        for model, infinite in zip(inputs.models, inputs.infinite, strict=True):
            inf_sum = sums[:, column + 1] if infinite else np.zeros(replicates)
            frames.append(
                pl.DataFrame(
                    {
                        aggregate.SLICE: name,
                        MODEL: model,
                        REPLICATE: np.arange(replicates, dtype=np.int32),
                        "x_sum": sums[:, column],
                        "inf_sum": inf_sum,
                        aggregate.WEIGHT_SUM: sums[:, 0],
                    },
                    schema=REPLICATE_SCHEMA,
                )
            )
            column += 2 if infinite else 1
    return pl.concat(frames)


def with_rank_uncertainty(
    report: pl.DataFrame, replicates: Sequence[pl.DataFrame], measures: Measures
) -> pl.DataFrame:
    """``report`` with ``p_best``, ``rank_low`` and ``rank_high`` from the bootstrap's states.

    Nulls without a bootstrap (or with a ``--rank-by`` it cannot rank by, a quantile or
    marginal_kl). A replicate's value of a model is its weighted mean of the ``--rank-by``
    measure over the replicate's draws: +inf when it draws a row of infinite value, undefined
    when it draws no row of positive weight.
    """
    if not measures.bootstrap or not replicates:
        return report
    merged = (
        pl.concat(replicates)
        .group_by(aggregate.SLICE, MODEL, REPLICATE)
        .agg(pl.col("x_sum").sum(), pl.col("inf_sum").sum(), pl.col(aggregate.WEIGHT_SUM).sum())
    )
    values = merged.select(
        aggregate.SLICE,
        MODEL,
        REPLICATE,
        pl.when(pl.col("inf_sum") > 0)
        .then(float("inf"))
        .when(pl.col(aggregate.WEIGHT_SUM) > 0)
        .then(pl.col("x_sum") / pl.col(aggregate.WEIGHT_SUM))
        .otherwise(None)
        .alias("value"),
    )
    ranks = bootstrap.rank_uncertainty(values, measures.rank_by in aggregate.HIGHER_IS_BETTER)
    return report.drop("p_best", "rank_low", "rank_high").join(
        ranks.select(aggregate.SLICE, MODEL, "p_best", "rank_low", "rank_high"),
        on=list(aggregate.KEYS),
        how="left",
        maintain_order="left",
    )


def _highest_kl(rows: pl.DataFrame, n: int) -> pl.DataFrame:
    """The n rows with the highest kl, ties by label row order, sorted that way."""
    if rows.height > n:
        # A threshold from the kl column alone, then a filter: six times cheaper than top_k
        # on two keys. Rows tied at the threshold all pass; if many do, select among them.
        cut = rows.get_column("kl").top_k(n).min()
        rows = rows.filter(pl.col("kl") >= cut)
        if rows.height > 4 * n:
            rows = rows.top_k(n, by=["kl", ROW], reverse=[False, True])
    return rows.sort("kl", ROW, descending=[True, False]).head(n)


def _keep_worst(model: ModelState, rows: pl.DataFrame, layout: Layout, n: int) -> None:
    """Merge this batch's n highest-KL rows into the model's: a selection, not a sort."""
    columns = [ID, *MEASURE_COLUMNS, *token_columns(layout), ROW, *layout.slice_cols]
    worst = _highest_kl(rows.select(columns), n)
    if model.worst is not None:
        worst = _highest_kl(pl.concat([model.worst, worst]), n)
    model.worst = worst


def gather_worst_rows(models: Sequence[ModelState], layout: Layout) -> pl.DataFrame:
    """Every model's worst rows, ordered by model and rank.

    Columns: ``model``, ``rank`` (1 = highest KL; ties by label row order), ``id``, the
    measures, ``row`` (0-based position in the labels) and the slice columns.
    """
    frames = []
    for m in models:
        if m.worst is None:
            continue
        frames.append(
            m.worst.select(
                pl.lit(m.name, pl.String).alias(MODEL),
                pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("rank"),
                pl.exclude(ROW, *layout.slice_cols),
                pl.col(ROW).alias("row"),
                *layout.slice_cols,
            )
        )
    return pl.concat(frames).sort(MODEL, "rank")


def kept_label_columns(prepared: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """What the end of a run needs of each label row: slice keys, weight and prior columns."""
    weight = [WEIGHT] if layout.weight_col is not None else []
    slice_keys = list(aggregate.slice_key_columns(layout.slice_cols))
    return prepared.select(*slice_keys, *weight, *prior.prior_columns(layout))


def _kl_parts(
    models: Sequence[ModelState],
    key_batches: Sequence[pl.DataFrame],
    slice_keys: Sequence[str],
    layout: Layout,
) -> tuple[dict[str, dict[str, str]], list[tuple[str, pl.DataFrame]]]:
    """Each model's column of each measure kept (their names in the parts), and every slice's rows.

    The measures are ``kl`` and those of :data:`klrank.pipeline.aggregate.QUANTILE_MEASURES`
    every model's rows carried (``delta_p``). ``key_batches`` are the :func:`kept_label_columns`
    of the label batches, in order.
    """
    others = [
        measure
        for measure in aggregate.QUANTILE_MEASURES[1:]
        if models and all(measure in m.other_measures for m in models)
    ]
    names = {
        measure: {m.name: f"_{measure}{j}" for j, m in enumerate(models)}
        for measure in ("kl", *others)
    }
    columns = []
    for m in models:
        kept = {"kl": m.kl} | {measure: m.other_measures[measure] for measure in others}
        for measure, batches in kept.items():
            values = pl.concat(batches) if batches else pl.Series(dtype=pl.Float64)
            columns.append(values.alias(names[measure][m.name]))
            batches.clear()  # the batches' copies, no longer needed
        m.other_measures.clear()
    frame = pl.DataFrame(columns)
    if key_batches:
        frame = pl.concat([pl.concat(key_batches), frame], how="horizontal")
    priors = prior.prior_columns(layout) if key_batches else []
    return names, list(aggregate.slice_parts(frame, slice_keys, priors))


def ranked_report(
    models: Sequence[ModelState],
    key_batches: Sequence[pl.DataFrame],
    slice_keys: Sequence[str],
    layout: Layout,
    measures: Measures,
    replicates: Sequence[pl.DataFrame] = (),
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The ranked report, the class contributions, the KL ECDFs and the quantile table (exact).

    ``replicates``: the :func:`replicate_states` of every label batch (with a bootstrap).
    """
    states = aggregate.merge_states(pl.concat(s for m in models for s in m.states))
    # One model's totals hold each of its slices and classes once: no merge.
    class_states = pl.concat(m.class_totals.frame(m.name) for m in models)
    clusters = None
    if layout.cluster_col is not None:
        clusters = aggregate.merge_cluster_states(
            pl.concat(s for m in models for s in m.cluster_states)
        )
    weight = WEIGHT if layout.weight_col is not None else None
    measure_columns, parts = _kl_parts(models, key_batches, slice_keys, layout)
    kl_columns = measure_columns["kl"]
    ordered = aggregate.sorted_columns(
        parts, [c for m in measure_columns.values() for c in m.values()]
    )
    quantiles, ecdf = aggregate.distributions(ordered, kl_columns, aggregate.ECDF_POINTS)
    table = aggregate.quantile_table(ordered, measure_columns, measures.quantiles)
    del ordered
    ranked = aggregate.finalize(
        states, class_states, quantiles, measures.base, measures.rank_by, clusters
    )
    paired = aggregate.paired_states(parts, kl_columns, aggregate.best_models(ranked), weight)
    report = aggregate.with_paired_comparison(ranked, paired, clusters)
    against_prior = aggregate.prior_states(parts, kl_columns, weight)
    report = aggregate.with_prior_comparison(report, against_prior, clusters)
    report = with_rank_uncertainty(report, replicates, measures)
    contributions = _contributions(class_states, states, layout, measures)
    return report, contributions, ecdf, table


def weightless_slices(empty: Sequence[str], layout: Layout) -> pl.DataFrame:
    """The failure of every slice whose rows' weights sum to 0 (its means are undefined)."""
    return pl.concat(
        [
            no_failures(),
            *[
                failure(
                    "labels",
                    "weight_sum_positive",
                    column=layout.weight_col,
                    value=f"slice {name}: every weight is 0",
                )
                for name in empty
            ],
        ]
    )


def _contributions(
    class_states: pl.DataFrame, states: pl.DataFrame, layout: Layout, measures: Measures
) -> pl.DataFrame:
    contributions = aggregate.class_contributions(class_states, states, measures.base)
    return contributions.with_columns(
        pl.col(aggregate.CLASS).replace_strict(
            range(len(layout.classes)), list(layout.classes), return_dtype=pl.String
        )
    )


@dataclass
class Partial:
    """What one partition of the rows adds to a report: mergeable states, no rows.

    Failure cases, alignment and validation time; with no failures, per (slice, model) the
    scalar and class states, the kl sketch's bin counts (:mod:`klrank.pipeline.sketch`) and the states
    of kl differences against every other model (the best one is known only after merging)
    and against the prior, the cluster states of a clustered run, and each model's worst rows.
    """

    failures: pl.DataFrame
    alignment: dict[str, str]
    validation_seconds: float
    states: pl.DataFrame | None = None
    class_states: pl.DataFrame | None = None
    sketches: pl.DataFrame | None = None  # per (slice, model, measure): SKETCH_KEYS
    extrema: pl.DataFrame | None = None  # per (slice, model, measure): min, max (non-null values)
    paired: pl.DataFrame | None = None
    against_prior: pl.DataFrame | None = None
    cluster_states: pl.DataFrame | None = None
    replicates: pl.DataFrame | None = None
    worst: dict[str, pl.DataFrame] = field(default_factory=dict)


# The keys of a partial's sketches and extrema: one sketch per measure of quantiles.parquet.
SKETCH_KEYS = (*aggregate.KEYS, aggregate.MEASURE)
_MIN, _MAX = "_min", "_max"


def _sketches(
    parts: Sequence[tuple[str, pl.DataFrame]], columns: aggregate.MeasureColumns
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The sketch bins and the extrema of each measure's non-null values, per (slice, model)."""
    counts, extrema = [], []
    for name, rows in parts:
        for measure, of_model in columns.items():
            for model, column in of_model.items():
                keys = [
                    pl.lit(name).alias(aggregate.SLICE),
                    pl.lit(model).alias(MODEL),
                    pl.lit(measure).alias(aggregate.MEASURE),
                ]
                values = rows.select(*keys, column).drop_nulls(column)
                counts.append(sketch.bin_counts(values, column, list(SKETCH_KEYS)))
                extrema.append(
                    values.select(
                        *keys,
                        pl.col(column).min().cast(pl.Float64).alias(_MIN),
                        pl.col(column).max().cast(pl.Float64).alias(_MAX),
                    )
                )
    return pl.concat(counts), pl.concat(extrema)


def sketched_quantiles(
    counts: pl.DataFrame, extrema: pl.DataFrame, probabilities: Sequence[float]
) -> pl.DataFrame:
    """The quantile table from merged sketches, as :func:`aggregate.quantile_table` from rows.

    ``counts`` are merged bin counts and ``extrema`` the merged min and max per
    :data:`SKETCH_KEYS`; a (slice, model, measure) with no value has null quantiles.

    Notes
    -----
    Each value is within ``sketch.RELATIVE_ACCURACY`` · max(|x_lo|, |x_hi|) of the exact
    one, x_lo and x_hi the two order statistics it interpolates between; 0 and ±inf are exact,
    and so are the quantiles 0 and 1 (the min and the max, kept exactly).
    """
    bins_of = counts.partition_by(list(SKETCH_KEYS), as_dict=True)
    empty = counts.clear()
    rows = []
    for name, model, measure, low, high in extrema.select(*SKETCH_KEYS, _MIN, _MAX).iter_rows():
        values = sketch.Sketch(bins_of.get((name, model, measure), empty), low, high)
        for q in probabilities:
            value = low if q == 0 else high if q == 1 else values.quantile(q)
            rows.append((name, model, measure, q, value))
    return pl.DataFrame(rows, schema=aggregate.QUANTILE_SCHEMA, orient="row")


def partial(part: Partition, layout: Layout) -> Partial:
    """The mergeable summary of a :class:`Partition` (:func:`merge_partials` combines them)."""
    result = Partial(part.failures, part.alignment, part.validation_seconds)
    measured = [m for m in part.models if m.states]
    if part.failures.height or not measured:
        return result
    result.states = pl.concat(s for m in measured for s in m.states)
    result.class_states = pl.concat(m.class_totals.frame(m.name) for m in measured)
    result.worst = {m.name: m.worst for m in measured if m.worst is not None}
    slice_keys = list(aggregate.slice_key_columns(layout.slice_cols))
    if layout.cluster_col is not None:
        result.cluster_states = pl.concat(s for m in measured for s in m.cluster_states)
    measure_columns, parts = _kl_parts(measured, part.key_batches, slice_keys, layout)
    kl_columns = measure_columns["kl"]
    result.sketches, result.extrema = _sketches(parts, measure_columns)
    weight = WEIGHT if layout.weight_col is not None else None
    result.paired = aggregate.paired_states_all(parts, kl_columns, weight)
    result.against_prior = aggregate.prior_states(parts, kl_columns, weight)
    if part.replicates:
        result.replicates = pl.concat(part.replicates)
    return result


def merge_partials(
    partials: Sequence[Partial],
    layout: Layout,
    measures: Measures,
    n_label_rows: int,
    models_found: int,
) -> Outcome:
    """One evaluation from the partials of disjoint partitions that together hold every row.

    ``models_found``: the models of the whole predictions (a null model counted).

    Everything but the quantiles and the ECDF is what :func:`evaluate` gives, up to the order
    of floating-point additions; those two come from the merged sketches, within
    ``sketch.RELATIVE_ACCURACY`` of the exact values.
    """
    alignment: dict[str, str] = {}
    aligned_everywhere = (
        set.intersection(*[set(p.alignment) for p in partials]) if partials else set()
    )
    for p in partials:
        for model, how in p.alignment.items():
            if model in aligned_everywhere:
                alignment[model] = "joined" if "joined" in (how, alignment.get(model)) else how
    # The whole-input check of a positional model checks no coverage (see evaluate_partition).
    positional = [m for m, how in alignment.items() if how == "positional"]
    coverage_of_positional = (
        (pl.col("dataset") == "predictions")
        & pl.col("model").is_in(positional)
        & pl.col("check").is_in([PAIR_UNIQUENESS, "extra_ids", "missing_ids"])
    )
    failures = [p.failures.filter(~coverage_of_positional) for p in partials]
    failures += empty_inputs(n_label_rows, models_found)
    all_failures = sorted_failures(pl.concat([no_failures(), *failures]))
    seconds = sum(p.validation_seconds for p in partials)
    if all_failures.height:
        return Outcome(all_failures, None, dict(sorted(alignment.items())), seconds)
    measured = [p for p in partials if p.states is not None]
    states = aggregate.merge_states(pl.concat(p.states for p in measured if p.states is not None))
    class_states = aggregate.merge_class_states(
        pl.concat(p.class_states for p in measured if p.class_states is not None)
    )
    keys = list(aggregate.KEYS)
    all_counts = sketch.merge(
        pl.concat(p.sketches for p in measured if p.sketches is not None), list(SKETCH_KEYS)
    )
    extrema = (
        pl.concat(p.extrema for p in measured if p.extrema is not None)
        .group_by(SKETCH_KEYS, maintain_order=True)
        .agg(pl.col(_MIN).min(), pl.col(_MAX).max())
    )
    table = sketched_quantiles(all_counts, extrema, measures.quantiles)
    counts = all_counts.filter(pl.col(aggregate.MEASURE) == "kl").drop(aggregate.MEASURE)
    bins_of = counts.partition_by(keys, as_dict=True)
    quantiles, ecdfs = [], []
    for row in states.select(*keys, "kl_min", "kl_max").iter_rows(named=True):
        bins = bins_of[(row[aggregate.SLICE], row[MODEL])]
        values = sketch.Sketch(bins, row["kl_min"], row["kl_max"])
        quantiles.append(
            {k: row[k] for k in keys}
            | {label: values.quantile(q) for label, q in aggregate.QUANTILES.items()}
        )
        if row[aggregate.SLICE] == aggregate.ALL_ROWS:
            curve = values.ecdf(aggregate.ECDF_POINTS)
            ecdfs.append(curve.select(pl.lit(row[MODEL]).alias(MODEL), pl.all()))
    quantile_frame = pl.DataFrame(
        quantiles,
        schema={aggregate.SLICE: pl.String, MODEL: pl.String}
        | dict.fromkeys(aggregate.QUANTILES, pl.Float64),
    )
    clusters = None
    if layout.cluster_col is not None:
        clusters = aggregate.merge_cluster_states(
            pl.concat(p.cluster_states for p in measured if p.cluster_states is not None)
        )
    ranked = aggregate.finalize(
        states, class_states, quantile_frame, measures.base, measures.rank_by, clusters
    )
    paired = aggregate.merge_paired_states(
        pl.concat(p.paired for p in measured if p.paired is not None),
        aggregate.best_models(ranked),
    )
    report = aggregate.with_paired_comparison(ranked, paired, clusters)
    against_prior = aggregate.merge_prior_states(
        pl.concat(p.against_prior for p in measured if p.against_prior is not None)
    )
    report = aggregate.with_prior_comparison(report, against_prior, clusters)
    replicates = [p.replicates for p in measured if p.replicates is not None]
    report = with_rank_uncertainty(report, replicates, measures)
    worst_of = []
    for name in sorted(alignment):
        frames = [p.worst[name] for p in measured if name in p.worst]
        merged = ModelState(name, iter(()))
        if frames:
            merged.worst = _highest_kl(pl.concat(frames), measures.worst_rows)
        worst_of.append(merged)
    worst = gather_worst_rows(worst_of, layout) if measures.worst_rows else None
    ecdf = pl.concat(
        [pl.DataFrame(schema={MODEL: pl.String, "kl": pl.Float64, "ecdf": pl.Float64}), *ecdfs]
    )
    contributions = _contributions(class_states, states, layout, measures)
    return Outcome(
        all_failures,
        report,
        dict(sorted(alignment.items())),
        seconds,
        contributions,
        ecdf,
        worst,
        table,
    )
