"""The prior: the model every model must beat, which predicts a slice's mean label distribution.

For the rows of a slice, the prior predicts P̄ = Σ w·P / Σ w (the class frequencies, for hard
labels) for every row, so its KL on a row is D(P ‖ P̄), −log P̄(label) for a hard label. Its mean
over the slice is H(P̄) − mean H(P), which the class states give for free
(:func:`klrank.pipeline.aggregate.finalize`); the paired comparison of a model with it needs the
prior's KL row by row, so P̄ must be known before the rows are measured: an engine first sums the
labels (:func:`label_sums`, :func:`merge_label_sums`), then adds each row's D(P ‖ P̄) for every
slice it is in to the prepared labels (:func:`with_prior_kl`).
"""

import math
from collections.abc import Mapping, Sequence

import polars as pl
from klrank.pipeline import arrays, divergence
from klrank.pipeline.aggregate import ALL_ROWS, CLASS, SLICE, slice_key_columns, slice_parts
from klrank.pipeline.layout import WEIGHT, Layout, log_p_col, p_col, prepare_labels

# Per (slice, class) the weighted sum of p; class -1 holds the slice's Σ w.
LABEL_SUMS_SCHEMA = pl.Schema({SLICE: pl.String, CLASS: pl.Int32, "p_sum": pl.Float64})
_WEIGHT_CLASS = -1

# slice label -> log P̄ per class, in nats (-inf for a class no row of the slice has)
LogMeans = Mapping[str, Sequence[float]]


def prior_column(dimension: int) -> str:
    """The prepared labels' column of D(P‖P̄) for slice dimension ``dimension`` (0: ``ALL``)."""
    return f"_prior{dimension}"


def prior_columns(layout: Layout) -> list[str]:
    """The prior columns of a run: ``ALL`` first, then one per slice column."""
    return [prior_column(j) for j in range(len(layout.slice_cols) + 1)]


def _probabilities(batch: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """The slice keys, the weight and P of valid label rows: columns ``_p{i}``, or ``arrays.P``."""
    keys = slice_key_columns(layout.slice_cols)
    if layout.uses_arrays:
        width = len(layout.classes)
        p = arrays.label_values(batch, layout).reshape((-1, width)).alias(arrays.P)
        frame = pl.DataFrame(p)
        if keys:
            frame = pl.concat([batch.select(**keys), frame], how="horizontal")
    else:
        columns = [p_col(i) for i in range(len(layout.classes))]
        weight = [WEIGHT] if layout.weight_col else []
        # Selected before collecting: the logs and entropies of prepare_labels are not computed.
        frame = (
            prepare_labels(batch.lazy(), layout, "e")
            .with_columns(**keys)
            .select(*keys, *weight, *columns)
            .collect()
        )
    if layout.weight_col is not None and WEIGHT not in frame.columns:
        frame = frame.with_columns(
            batch.get_column(layout.weight_col).cast(pl.Float64).alias(WEIGHT)
        )
    return frame


def label_sums(batch: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """Per slice of a batch of valid label rows: Σ w·p per class, and Σ w (class −1)."""
    frame = _probabilities(batch, layout)
    weight = pl.col(WEIGHT) if layout.weight_col is not None else pl.lit(1.0)
    sums = []
    for name, part in slice_parts(frame, list(slice_key_columns(layout.slice_cols))):
        if layout.uses_arrays:
            p = part.get_column(arrays.P)
            if layout.weight_col is not None:
                p = part.select(pl.col(arrays.P) * pl.col(WEIGHT)).to_series()
            values = arrays.column_sums(p, len(layout.classes))
        else:
            row = part.select(
                (pl.col(p_col(i)) * weight).sum() for i in range(len(layout.classes))
            ).row(0)
            values = list(row)
        total = part.select(pl.len() if layout.weight_col is None else weight.sum()).item()
        sums.append(
            pl.DataFrame(
                {
                    SLICE: name,
                    CLASS: [_WEIGHT_CLASS, *range(len(values))],
                    "p_sum": [float(total), *values],
                },
                schema=LABEL_SUMS_SCHEMA,
            )
        )
    return pl.concat([pl.DataFrame(schema=LABEL_SUMS_SCHEMA), *sums])


def merge_label_sums(sums: pl.DataFrame) -> pl.DataFrame:
    """Combine the label sums of disjoint batches."""
    return sums.group_by(SLICE, CLASS, maintain_order=True).agg(pl.col("p_sum").sum())


def log_means(sums: pl.DataFrame) -> dict[str, list[float]]:
    """Log P̄ per slice (nats) from merged label sums; a slice of total weight 0 is left out."""
    out = {}
    for (name,), part in merge_label_sums(sums).partition_by(SLICE, as_dict=True).items():
        ordered = part.sort(CLASS)
        total = ordered.get_column("p_sum")[0]
        if not total > 0:
            continue
        means = [value / total for value in ordered.get_column("p_sum").to_list()[1:]]
        out[str(name)] = [math.log(m) if m > 0 else -math.inf for m in means]
    return out


def weightless(sums: pl.DataFrame) -> list[str]:
    """The slices of merged label sums whose weights add up to 0: their means are undefined."""
    totals = merge_label_sums(sums).filter(pl.col(CLASS) == _WEIGHT_CLASS)
    return totals.filter(~(pl.col("p_sum") > 0)).get_column(SLICE).to_list()


def _slice_names(layout: Layout) -> list[str]:
    return list(slice_key_columns(layout.slice_cols))


def with_prior_kl(
    prepared: pl.DataFrame, layout: Layout, means: LogMeans, base: str
) -> pl.DataFrame:
    """``prepared`` labels with each row's D(P‖P̄) (in ``base`` units) per slice dimension.

    ``prepared`` holds the slice key columns and P, log P (columns or arrays, as
    :func:`klrank.pipeline.layout.prepare_labels` and :func:`klrank.pipeline.arrays.prepare_labels`
    make them). Column :func:`prior_column` ``(0)`` uses the ``ALL`` slice's P̄, column ``j`` the
    P̄ of the row's value of the j-th slice column.

    Notes
    -----
    The terms follow D(P‖Q)'s conventions: 0·log(0/q) = 0, p > 0 against P̄ = 0 is +inf (only
    possible on a row of weight 0, which no mean counts).
    """
    keys = [None, *_slice_names(layout)]
    if layout.uses_arrays:
        return _with_prior_kl_arrays(prepared, layout, means, base, keys)
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
    layout: Layout,
    means: LogMeans,
    base: str,
    keys: Sequence[str | None],
) -> pl.DataFrame:
    width = len(layout.classes)
    flat = pl.DataFrame(
        {
            "p": prepared.get_column(arrays.P).reshape((-1,)),
            "lp": prepared.get_column(arrays.LOG_P).reshape((-1,)),
        }
    )
    names = list(means)
    table = pl.Series([v for s in names for v in means[s]], dtype=pl.Float64)
    columns = []
    for j, key in enumerate(keys):
        if key is None:
            everything = names.index(ALL_ROWS) if ALL_ROWS in names else None
            row_of = pl.Series([everything] * prepared.height, dtype=pl.Int64)
        else:
            row_of = prepared.get_column(key).replace_strict(
                names, range(len(names)), default=None, return_dtype=pl.Int64
            )
        position = pl.int_range(0, prepared.height * width, eager=True)
        index = arrays.broadcast(row_of, width) * width + position % width
        log_q = table.gather(index).fill_null(math.nan)
        terms = flat.with_columns(log_q.alias("lq")).select(
            divergence.kl_divergence([pl.col("p")], [pl.col("lp")], [pl.col("lq")])
        )
        kl = arrays.row_sums(terms.to_series(), width)
        columns.append(divergence.to_base(pl.lit(kl), base).alias(prior_column(j)))
    return prepared.with_columns(columns)
