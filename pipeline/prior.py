"""The prior: the model every model must beat, which predicts a slice's mean label distribution.

For the rows of a slice, the prior predicts P̄ = Σ w·P / Σ w (the class frequencies, for hard
labels) for every row, so its KL on a row is D(P ‖ P̄), −log P̄(label) for a hard label. Its mean
over the slice is H(P̄) − mean H(P), which the class states give for free
(:func:`klrank.pipeline.aggregate.finalize`); the paired comparison of a model with it needs the
prior's KL row by row, so P̄ must be known before the rows are measured: an engine first sums the
labels (:func:`label_sums`, :func:`add_label_sums`), then adds each row's D(P ‖ P̄) for every
slice it is in to the prepared labels (:func:`with_prior_kl`).
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
from klrank.pipeline import arrays, divergence
from klrank.pipeline.aggregate import ALL_ROWS, slice_key_columns, slice_parts
from klrank.pipeline.layout import WEIGHT, Layout, log_p_col, p_col, prepare_labels, unit_columns

# slice label -> (Σ w, Σ w·p per class) of the label rows summed so far
LabelSums = dict[str, tuple[float, np.ndarray]]

# slice label -> log P̄ per class, in nats (-inf for a class no row of the slice has)
LogMeans = Mapping[str, Sequence[float]]


def prior_column(dimension: int) -> str:
    """The prepared labels' column of D(P‖P̄) for slice dimension ``dimension`` (0: ``ALL``)."""
    return f"_prior{dimension}"


def prior_columns(layout: Layout) -> list[str]:
    """The prior columns of a run: ``ALL`` first, then one per slice column."""
    return [prior_column(j) for j in range(len(layout.slice_cols) + 1)]


def _probabilities(batch: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """The slice keys, the weight and P of valid label rows (the column layout): ``_p{i}``."""
    keys = slice_key_columns(layout.slice_cols)
    columns = [p_col(i) for i in range(len(layout.classes))]
    weight = [WEIGHT] if layout.weight_col else []
    # Selected before collecting: the logs and entropies of prepare_labels are not computed.
    return (
        prepare_labels(batch.lazy(), layout, "e")
        .with_columns(**keys)
        .select(*keys, *weight, *columns)
        .collect()
    )


def _array_label_sums(batch: pl.DataFrame, layout: Layout) -> LabelSums:
    """Per slice: Σ w and Σ w·p per class, P read as arrays (a hard label by index)."""
    keys = slice_key_columns(layout.slice_cols)
    frame = batch.select(*unit_columns(layout), **keys)
    groups = arrays.row_groups(frame, list(keys), layout.weight_col is not None)
    sums = arrays.label_class_sums(batch, layout, groups)
    out: LabelSums = {}
    for name, index, weights in groups:
        total = (
            weights.sum()
            if weights is not None
            else (batch.height if index is None else index.size)
        )
        out[name] = (float(total), np.asarray(sums[name], dtype=np.float64))
    return out


def label_sums(batch: pl.DataFrame, layout: Layout) -> LabelSums:
    """Per slice of a batch of valid label rows: Σ w, and Σ w·p per class."""
    if layout.uses_arrays:
        return _array_label_sums(batch, layout)
    frame = _probabilities(batch, layout)
    weight = pl.col(WEIGHT) if layout.weight_col is not None else pl.lit(1.0)
    found: LabelSums = {}
    for name, part in slice_parts(frame, list(slice_key_columns(layout.slice_cols))):
        row = part.select((pl.col(p_col(i)) * weight).sum() for i in range(len(layout.classes)))
        total = part.select(pl.len() if layout.weight_col is None else weight.sum()).item()
        found[name] = (float(total), row.to_numpy().reshape(-1).astype(np.float64))
    return found


def add_label_sums(into: LabelSums, sums: LabelSums) -> None:
    """Add the label sums of another batch of rows to ``into``, in place.

    The sums of a slice are numpy arrays, added batch after batch: a slice takes K values
    whatever the number of batches (at K = 128,000, merging them as frames by a group-by took
    more time than summing the labels).
    """
    for name, (total, values) in sums.items():
        if name in into:
            kept_total, kept = into[name]
            np.add(kept, values, out=kept)
            into[name] = (kept_total + total, kept)
        else:
            into[name] = (total, values.copy())


def log_means(sums: LabelSums) -> dict[str, list[float]]:
    """Log P̄ per slice (nats) from the labels' sums; a slice of total weight 0 is left out."""
    out: dict[str, list[float]] = {}
    for name, (total, values) in sums.items():
        if not total > 0:
            continue
        means = [value / total for value in values.tolist()]
        out[name] = [math.log(m) if m > 0 else -math.inf for m in means]
    return out


def weightless(sums: LabelSums) -> list[str]:
    """The slices whose weights add up to 0 in the labels' sums: their means are undefined."""
    return [name for name, (total, _) in sums.items() if not total > 0]


def _slice_names(layout: Layout) -> list[str]:
    return list(slice_key_columns(layout.slice_cols))


def with_prior_kl(
    prepared: pl.DataFrame,
    layout: Layout,
    means: LogMeans,
    base: str,
    truth: arrays.Truth | None = None,
) -> pl.DataFrame:
    """``prepared`` labels with each row's D(P‖P̄) (in ``base`` units) per slice dimension.

    ``prepared`` holds the slice key columns and P, log P (columns or arrays, as
    :func:`klrank.pipeline.layout.prepare_labels` and :func:`klrank.pipeline.arrays.prepare_labels`
    make them; for arrays, ``truth`` holds P). Column :func:`prior_column` ``(0)`` uses the ``ALL`` slice's P̄, column ``j`` the
    P̄ of the row's value of the j-th slice column.

    Notes
    -----
    The terms follow D(P‖Q)'s conventions: 0·log(0/q) = 0, p > 0 against P̄ = 0 is +inf (only
    possible on a row of weight 0, which no mean counts).
    """
    keys = [None, *_slice_names(layout)]
    if layout.uses_arrays:
        assert truth is not None, "array labels need their truth"
        return _with_prior_kl_arrays(prepared, truth, means, base, keys)
    n = len(layout.classes)
    p = [pl.col(p_col(i)) for i in range(n)]
    log_p = [pl.col(log_p_col(i)) for i in range(n)]
    columns = []
    for j, key in enumerate(keys):
        if key is None:
            log_q = [pl.lit(means.get(ALL_ROWS, [math.nan] * n)[i]) for i in range(n)]
        else:
            names = [s for s in means if s != ALL_ROWS]
            log_q = [
                pl.col(key).replace_strict(
                    names, [means[s][i] for s in names], default=math.nan, return_dtype=pl.Float64
                )
                for i in range(n)
            ]
        kl = divergence.kl_divergence(p, log_p, log_q)
        columns.append(divergence.to_base(kl, base).alias(prior_column(j)))
    return prepared.with_columns(columns)


def _with_prior_kl_arrays(
    prepared: pl.DataFrame,
    truth: arrays.Truth,
    means: LogMeans,
    base: str,
    keys: Sequence[str | None],
) -> pl.DataFrame:
    names = list(means)
    table = np.array([means[s] for s in names], dtype=np.float64).reshape(len(names), truth.width)
    columns = []
    for j, key in enumerate(keys):
        if key is None:
            everything = names.index(ALL_ROWS) if ALL_ROWS in names else -1
            row_of = np.full(prepared.height, everything, dtype=np.int64)
        else:
            row_of = (
                prepared.get_column(key)
                .replace_strict(names, range(len(names)), default=-1, return_dtype=pl.Int64)
                .to_numpy()
            )
        kl = arrays.prior_kl(truth, table, row_of)
        columns.append(
            pl.Series(
                prior_column(j), kl if base == "e" else kl / math.log(divergence.LOG_BASES[base])
            )
        )
    return prepared.with_columns(columns)
