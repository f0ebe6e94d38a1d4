"""From per-row measures to the ranked report, through mergeable partial states.

A partial state is one row per (slice, model) of counts, sums, centred second moments and
per-class sums of P, Q and the KL terms p·(log p − log q). States of disjoint shards of the rows merge exactly (sums add, second
moments combine by Chan's formula), so a later step can compute them elsewhere and call
:func:`merge_states`. Quantiles are not mergeable and are computed from the rows, exactly.

Quantiles and the paired comparison with the best model (per row d = kl − kl_best on the same
id, summarised by the same kind of state) need every row's kl and the best model first; they are
computed at the end from each model's kl column, all in the labels' row order.
"""

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import polars as pl
from klrank.pipeline import divergence
from klrank.pipeline.layout import MODEL, kl_term_col, p_col, q_col
from klrank.pipeline.stats import student_t_ppf, two_sided_p_value
from klrank.schemas.outputs import QUANTILE_COLUMNS
from klrank.schemas.outputs import QUANTILE_MEASURES as QUANTILE_MEASURES

SLICE = "slice"
ALL_ROWS = "ALL"
NULL_SLICE_VALUE = "(null)"
KEYS = (SLICE, MODEL)
QUANTILES = {"median_kl": 0.5, "p90_kl": 0.9, "p95_kl": 0.95, "p99_kl": 0.99}
# quantiles.parquet: the probabilities by default (llama.cpp's KL-divergence printout, min and
# max aside: they are the report's min_kl and max_kl).
DEFAULT_QUANTILES = (0.001, 0.01, 0.05, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999)
MEASURE, QUANTILE, VALUE = QUANTILE_COLUMNS[2:]
QUANTILE_SCHEMA = pl.Schema(
    dict(
        zip(
            QUANTILE_COLUMNS, [pl.String, pl.String, pl.String, pl.Float64, pl.Float64], strict=True
        )
    )
)
MeasureColumns = Mapping[str, Mapping[str, str]]
"""Per measure of :data:`QUANTILE_MEASURES` present, each model's column of it in the parts."""
MEANS = ("reverse_kl", "js", "cross_entropy", "entropy")
# Metrics --rank-by accepts; all are "lower is better" except HIGHER_IS_BETTER.
RankMetric = Literal[
    "mean_kl", "median_kl", "p90_kl", "p95_kl", "p99_kl", "max_kl", "mean_reverse_kl",
    "mean_js", "mean_cross_entropy", "marginal_kl", "top1_agreement",
]  # fmt: skip
RANK_METRICS: tuple[str, ...] = get_args(RankMetric)
HIGHER_IS_BETTER = frozenset({"top1_agreement"})
# Points of each model's KL ECDF kept for the HTML report: a curve, not a copy of the rows.
ECDF_POINTS = 500


def _label_column(name: str) -> str:
    # A backslash escapes itself and "=", so the first "=" without one ends the column's name.
    return name.replace("\\", "\\\\").replace("=", "\\=")


def slice_label(column: str, value: str | None) -> str:
    r"""The ``slice`` label of the rows whose ``column`` holds ``value`` (None: null).

    ``COL=value``, written so that two different (column, value) pairs never share a label,
    and ordinary labels (``region=eu``, ``region=(null)`` for a null) stay as they always were:

    * in the column's name, a backslash and ``=`` get a backslash (``a=b`` is written ``a\=b``),
      so the first ``=`` without one ends the name;
    * a null is ``(null)``; a value that is the text ``(null)`` itself, or starts with a
      backslash, gets one backslash in front (``\(null)``);
    * any other value is written as it is (after ``cast(pl.String)``, for a column that is not
      a string), ``=`` included.

    :func:`parse_slice_label` reads a label back; ``ALL`` contains no ``=``, so no slice column
    can take its label either.

    Examples
    --------
    >>> slice_label("region", "eu"), slice_label("region", None)
    ('region=eu', 'region=(null)')
    >>> print(slice_label("a", "b=c"), slice_label("a=b", "c"), slice_label("r", "(null)"))
    a=b=c a\=b=c r=\(null)
    """
    if value is None:
        text = NULL_SLICE_VALUE
    elif value == NULL_SLICE_VALUE or value.startswith("\\"):
        text = "\\" + value
    else:
        text = value
    return f"{_label_column(column)}={text}"


def parse_slice_label(label: str) -> tuple[str, str | None]:
    r"""The (column, value) of a :func:`slice_label` label; value None for the null slice.

    Raises
    ------
    ValueError
        ``label`` is not a label :func:`slice_label` writes (``ALL`` among them).

    Examples
    --------
    >>> parse_slice_label("a\\=b=c"), parse_slice_label("r=(null)"), parse_slice_label("r=\\(null)")
    (('a=b', 'c'), ('r', None), ('r', '(null)'))
    """
    column: list[str] = []
    chars = iter(enumerate(label))
    for i, char in chars:
        if char == "\\":
            escaped = next(chars, (i, ""))[1]
            if escaped not in ("\\", "="):
                raise ValueError(f"not a slice label: {label!r}")
            column.append(escaped)
        elif char == "=":
            value = label[i + 1 :]
            if value == NULL_SLICE_VALUE:
                return "".join(column), None
            if value.startswith("\\"):
                if value[1:] != NULL_SLICE_VALUE and not value.startswith("\\\\"):
                    raise ValueError(f"not a slice label: {label!r}")
                value = value[1:]
            return "".join(column), value
        else:
            column.append(char)
    raise ValueError(f"not a slice label: {label!r}")


def slice_key_columns(slice_cols: Sequence[str]) -> dict[str, pl.Expr]:
    """One :func:`slice_label` string column per slice column, keyed by its internal name."""
    keys = {}
    for i, name in enumerate(slice_cols):
        text = pl.col(name).cast(pl.String)
        value = (
            pl.when(text.is_null())
            .then(pl.lit(NULL_SLICE_VALUE))
            .when((text == NULL_SLICE_VALUE) | text.str.starts_with("\\"))
            .then(pl.concat_str(pl.lit("\\"), text))
            .otherwise(text)
        )
        keys[f"_slice{i}"] = pl.concat_str(pl.lit(f"{_label_column(name)}="), value)
    return keys


# The moments of a mean's state (:func:`_moments`), after the prefix ("kl_n", "kl_w", ...).
MOMENTS = ("n", "w", "sum", "m2", "q", "r", "c")
INFINITE_COUNTS = ("n_pos_inf", "n_neg_inf", "n_nan")
WEIGHT_SUM = "w_sum"  # Σ w over a slice's rows (their number without weights)


def _moments(value: pl.Expr, prefix: str, weight: pl.Expr | None = None) -> list[pl.Expr]:
    """The mergeable state of a weighted mean and its standard error, over the finite values.

    Of the rows of positive weight with a finite value: their count ``n``, ``w`` = Σw,
    ``sum`` = Σwx, ``m2`` = Σw(x − x̄)², ``q`` = Σw²(x − x̄)², ``r`` = Σw²(x − x̄) and
    ``c`` = Σw², x̄ their weighted mean; the non-finite values of positive weight are counted
    apart. Without weights every w is 1: ``w`` = ``c`` = n, ``q`` = ``m2``, ``r`` = 0, which
    :func:`_unit_weights` adds to the state afterwards (computing them here cost a third more).
    """
    if weight is None:
        finite = value.filter(value.is_finite())
        return [
            finite.len().cast(pl.Int64).alias(f"{prefix}_n"),
            finite.sum().alias(f"{prefix}_sum"),
            (finite.var(ddof=0).fill_null(0.0) * finite.len()).alias(f"{prefix}_m2"),
            (value == math.inf).sum().cast(pl.Int64).alias(f"{prefix}_n_pos_inf"),
            (value == -math.inf).sum().cast(pl.Int64).alias(f"{prefix}_n_neg_inf"),
            value.is_nan().sum().cast(pl.Int64).alias(f"{prefix}_n_nan"),
        ]
    counted = value.is_finite() & (weight > 0)
    finite = value.filter(counted)
    n = finite.len()
    positive = weight > 0
    counts = [
        ((value == math.inf) & positive).sum().cast(pl.Int64).alias(f"{prefix}_n_pos_inf"),
        ((value == -math.inf) & positive).sum().cast(pl.Int64).alias(f"{prefix}_n_neg_inf"),
        (value.is_nan() & positive).sum().cast(pl.Int64).alias(f"{prefix}_n_nan"),
    ]
    w = weight.filter(counted)
    deviation = finite - (w * finite).sum() / w.sum()
    return [
        n.cast(pl.Int64).alias(f"{prefix}_n"),
        w.sum().alias(f"{prefix}_w"),
        (w * finite).sum().alias(f"{prefix}_sum"),
        (w * deviation**2).sum().alias(f"{prefix}_m2"),
        (w * w * deviation**2).sum().alias(f"{prefix}_q"),
        (w * w * deviation).sum().alias(f"{prefix}_r"),
        (w * w).sum().alias(f"{prefix}_c"),
        *counts,
    ]


def _moment_state(
    frame: pl.DataFrame, value: pl.Expr, prefix: str, weight: pl.Expr | None
) -> pl.DataFrame:
    """:func:`_moments` of ``value`` over ``frame``, in the columns :data:`MOMENTS` order."""
    state = frame.select(_moments(value, prefix, weight))
    return _unit_weights(state, prefix) if weight is None else state


def _unit_weights(state: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """An unweighted :func:`_moments` state with its weight moments: w = c = n, q = m2, r = 0."""
    n = pl.col(f"{prefix}_n").cast(pl.Float64)
    completed = state.with_columns(
        n.alias(f"{prefix}_w"),
        pl.col(f"{prefix}_m2").alias(f"{prefix}_q"),
        pl.lit(0.0).alias(f"{prefix}_r"),
        n.alias(f"{prefix}_c"),
    )
    others = [c for c in state.columns if not c.startswith(f"{prefix}_")]
    moments = [f"{prefix}_{m}" for m in (*MOMENTS, *INFINITE_COUNTS)]
    return completed.select(*others, *moments)


def _merged_moments(prefix: str) -> list[pl.Expr]:
    """:func:`_moments` of disjoint parts combined: each part's moments moved to the grand mean."""
    n, w, total, m2, q, r, c = (pl.col(f"{prefix}_{m}") for m in MOMENTS)
    grand_mean = total.sum() / w.sum()
    shift = pl.when(w > 0).then(total / w).otherwise(grand_mean) - grand_mean
    return [
        n.sum(),
        w.sum(),
        total.sum(),
        (m2 + w * shift**2).sum().fill_nan(0.0).alias(f"{prefix}_m2"),
        (q + 2.0 * shift * r + shift**2 * c).sum().fill_nan(0.0).alias(f"{prefix}_q"),
        (r + shift * c).sum().fill_nan(0.0).alias(f"{prefix}_r"),
        c.sum(),
        *[pl.col(f"{prefix}_{count}").sum() for count in INFINITE_COUNTS],
    ]


# (slice name, the slice's counted rows) -> per-class sums of P, Q and the KL terms (nats), as
# three lists in class order, or numpy arrays (the array measures' sums: Polars takes them whole).
Floats = Sequence[float] | np.ndarray
ClassSums = Callable[[str, pl.DataFrame], tuple[Floats, Floats, Floats]]
CLASS = "class"
CLASS_STATE_SCHEMA = pl.Schema(
    {
        SLICE: pl.String,
        MODEL: pl.String,
        CLASS: pl.Int32,
        "p_sum": pl.Float64,
        "q_sum": pl.Float64,
        "kl_term_sum": pl.Float64,
    }
)


def weighted(value: pl.Expr, weight: pl.Expr | None) -> pl.Expr:
    """``value`` times the row's weight (``value`` itself without weights)."""
    return value if weight is None else value * weight


# With soft truth and the token that came next, the token measures' moment states, by prefix:
# nll, ln p(token) − ln q(token) (the ln of PPL(Q)/PPL(P) per row; in the run's unit, as the
# rows' nll), Δp and Δp². Each gets a mean and a standard error, as kl does.
TOKEN_VALUES = {
    "nll": pl.col("nll"),
    "lnr": pl.col("nll") - pl.col("_label_nll"),
    "dp": pl.col("delta_p"),
    "dp2": pl.col("delta_p") ** 2,
}


def token_prefixes(columns: Sequence[str]) -> tuple[str, ...]:
    """The :data:`TOKEN_VALUES` prefixes of states or rows with ``columns`` (none without nll)."""
    return tuple(TOKEN_VALUES) if "nll" in columns or "nll_n" in columns else ()


def _aggregations(weight: pl.Expr | None, tokens: Sequence[str]) -> list[pl.Expr]:
    """The scalar state of rows of positive weight (``n_rows`` is added by the caller)."""
    return [
        *_moments(pl.col("kl"), "kl", weight),
        (pl.len().cast(pl.Float64) if weight is None else weight.sum()).alias(WEIGHT_SUM),
        *[weighted(pl.col(m), weight).sum().alias(f"{m}_sum") for m in MEANS],
        weighted(pl.col("top1_match").cast(pl.Float64), weight).sum().alias("top1_sum"),
        *[e for prefix in tokens for e in _moments(TOKEN_VALUES[prefix], prefix, weight)],
    ]


def column_class_sums(n_classes: int, weight: pl.Expr | None = None) -> ClassSums:
    """Per-class (weighted) sums of P, Q (marginal_kl) and KL terms (contributions), by column."""
    p = [weighted(pl.col(p_col(i)), weight).sum() for i in range(n_classes)]
    q = [weighted(pl.col(q_col(i)), weight).sum() for i in range(n_classes)]
    k = [weighted(pl.col(kl_term_col(i)), weight).sum() for i in range(n_classes)]

    def sums(name: str, rows: pl.DataFrame) -> tuple[Floats, Floats, Floats]:
        values = rows.select(
            pl.concat_list(p).alias("p"), pl.concat_list(q).alias("q"), pl.concat_list(k)
        ).row(0)
        return values[0], values[1], values[2]

    return sums


class ClassTotals:
    """One model's per-class sums of each slice (P, Q and KL terms), added up batch after batch.

    Numpy arrays of K values a slice, added in place: at K = 128,000 a batch's sums as a frame
    are 128,000 rows a slice, and merging such frames by a group-by (every 8 batches) took more
    time than the sums themselves. :meth:`frame` gives them as class states.
    """

    def __init__(self) -> None:
        self._sums: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def add(self, found: Sequence[tuple[str, tuple[Floats, Floats, Floats]]]) -> None:
        """Add a batch's sums, per slice (as :func:`partial_states` returns them)."""
        for name, sums in found:
            kept = self._sums.get(name)
            if kept is None:
                p, q, k = (np.array(values, dtype=np.float64) for values in sums)
                self._sums[name] = (p, q, k)
                continue
            for total, values in zip(kept, sums, strict=True):
                np.add(total, np.asarray(values, dtype=np.float64), out=total)

    def frame(self, model: str) -> pl.DataFrame:
        """The class states: a row per slice and class (``p_sum``, ``q_sum``, ``kl_term_sum``).

        Long, so a thousand classes are a thousand rows, not columns; the slices in the order
        they first came.
        """
        parts = [
            pl.DataFrame(
                {
                    SLICE: name,
                    MODEL: model,
                    CLASS: np.arange(len(p), dtype=np.int32),
                    "p_sum": p,
                    "q_sum": q,
                    "kl_term_sum": k,
                }
            )
            for name, (p, q, k) in self._sums.items()
        ]
        return pl.concat([pl.DataFrame(schema=CLASS_STATE_SCHEMA), *parts])


def partial_states(
    rows: pl.DataFrame,
    model: str,
    slice_keys: Sequence[str],
    class_sums: ClassSums,
    weight: str | None = None,
) -> tuple[pl.DataFrame, list[tuple[str, tuple[Floats, Floats, Floats]]]]:
    """States per slice of one model's rows (measures, P, Q and KL terms, and slice key columns).

    ``slice_keys`` name columns holding ``COL=value`` strings, one per ``--slice-by`` column;
    ``class_sums`` sums P, Q and the KL terms per class of a slice's counted rows
    (:func:`column_class_sums`, or the sums ``arrays.row_measures`` made as it measured),
    weighted by the ``weight`` column if there is one.
    Returns the scalar states, one row per slice, and per slice its sums per class of P, Q and
    the KL terms in nats (for :class:`ClassTotals`).

    Notes
    -----
    With weights, rows of weight 0 count in ``n_rows`` only: they add nothing to any sum, even
    where their kl is infinite (0·inf would be NaN).
    """
    scalars: list[pl.DataFrame] = []
    classes: list[tuple[str, tuple[Floats, Floats, Floats]]] = []
    w = pl.col(weight) if weight is not None else None
    tokens = token_prefixes(rows.columns)
    for name, part in slice_parts(rows, slice_keys):
        keys = [pl.lit(name).alias(SLICE), pl.lit(model).alias(MODEL)]
        counted = part if w is None else part.filter(w > 0)
        every_row = part.select(
            *keys,
            pl.len().cast(pl.Int64).alias("n_rows"),
            pl.col("kl").min().alias("kl_min"),  # over every row, as the quantiles are
            pl.col("kl").max().alias("kl_max"),
        )
        sums = counted.select(_aggregations(w, tokens))
        if w is None:
            for prefix in ("kl", *tokens):
                sums = _unit_weights(sums, prefix)
        scalars.append(pl.concat([every_row, sums], how="horizontal"))
        classes.append((name, class_sums(name, counted)))
    return pl.concat(scalars), classes


CLUSTER_KEY = "cluster"  # in cluster states: the cluster's key, as the labels hold it
PRIOR_SUM = "prior_sum"  # in cluster states: Σ w·D(P‖P̄) of the cluster's rows


def cluster_states(
    rows: pl.DataFrame,
    model: str,
    slice_keys: Sequence[str],
    cluster: str,
    weight: str | None,
    priors: Sequence[str],
) -> pl.DataFrame:
    """Per (slice, cluster): Σ w·kl (``kl_sum``, finite values), Σ w (``w_sum``) and the prior's.

    The cluster-robust errors need every cluster's sums over all its rows, wherever they are in
    the input, so these are kept per cluster (a row per slice and cluster a model) and merged by
    :func:`merge_cluster_states`. ``priors`` name the per-row D(P‖P̄) columns: the first for
    ``ALL``, then one per slice key column. Rows with the token measures add the finite sums of
    each :data:`TOKEN_VALUES` (``nll_sum``, ``lnr_sum``, ...).
    """
    w = pl.col(weight) if weight is not None else pl.lit(1.0)
    counted = rows if weight is None else rows.filter(pl.col(weight) > 0)
    values = {"kl": pl.col("kl")} | {
        prefix: TOKEN_VALUES[prefix] for prefix in token_prefixes(rows.columns)
    }

    def sums(prior: str) -> list[pl.Expr]:
        return [
            *[(w * x).filter(x.is_finite()).sum().alias(f"{p}_sum") for p, x in values.items()],
            (pl.len().cast(pl.Float64) if weight is None else w.sum()).alias(WEIGHT_SUM),
            (w * pl.col(prior)).filter(pl.col(prior).is_finite()).sum().alias(PRIOR_SUM),
        ]

    frames = [
        counted.group_by(pl.col(cluster).alias(CLUSTER_KEY)).agg(sums(priors[0]))
        .select(pl.lit(ALL_ROWS).alias(SLICE), pl.all())
    ]  # fmt: skip
    for key, prior in zip(slice_keys, priors[1:], strict=True):
        frames.append(
            counted.group_by(pl.col(key).alias(SLICE), pl.col(cluster).alias(CLUSTER_KEY)).agg(
                sums(prior)
            )
        )
    return pl.concat(frames).select(SLICE, pl.lit(model).alias(MODEL), pl.exclude(SLICE))


def merge_cluster_states(states: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Combine cluster states of disjoint shards into one row per (slice, model, cluster)."""
    return (
        states.lazy()
        .group_by([*KEYS, CLUSTER_KEY])
        .agg(pl.exclude(*KEYS, CLUSTER_KEY).sum())
        .collect(engine="in-memory")
    )


def cluster_meat(clusters: pl.DataFrame, means: pl.DataFrame, prefix: str = "kl") -> pl.DataFrame:
    """Per (slice, model): the clusters of positive weight ``n_clusters`` and Σ_g u_g² (``meat``).

    u_g = Σ_{i∈g} w_i (x_i − x̄) = ``{prefix}_sum`` − x̄·``w_sum``, x̄ the (slice, model)'s mean
    in ``means`` (column ``mean``): the middle of the sandwich variance of a weighted mean.
    """
    centred = clusters.join(means.select(*KEYS, "mean"), on=list(KEYS)).select(
        *KEYS,
        (pl.col(WEIGHT_SUM) > 0).alias("_counted"),
        (pl.col(f"{prefix}_sum") - pl.col("mean") * pl.col(WEIGHT_SUM)).alias("_u"),
    )
    return centred.group_by(KEYS).agg(
        pl.col("_counted").sum().cast(pl.Int64).alias("n_clusters"),
        (pl.col("_u") ** 2).filter(pl.col("_counted")).sum().alias("meat"),
    )


def merge_class_states(states: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Combine class states of disjoint shards into one row per (slice, model, class)."""
    return (
        states.lazy()
        .group_by([*KEYS, CLASS], maintain_order=True)
        .agg(pl.col("p_sum").sum(), pl.col("q_sum").sum(), pl.col("kl_term_sum").sum())
        .collect(engine="in-memory")
    )


def merge_states(states: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Combine partial states of disjoint shards into one state per (slice, model)."""
    sums = [f"{m}_sum" for m in MEANS] + ["n_rows", WEIGHT_SUM, "top1_sum"]
    tokens = token_prefixes(states.collect_schema().names())
    return (
        states.lazy()
        .group_by(KEYS, maintain_order=True)
        .agg(
            *_merged_moments("kl"),
            pl.col("kl_min").min(),
            pl.col("kl_max").max(),
            *[pl.col(c).sum() for c in sums],
            *[e for prefix in tokens for e in _merged_moments(prefix)],
        )
        .collect(engine="in-memory")
    )


def slice_parts(
    frame: pl.DataFrame, slice_keys: Sequence[str], priors: Sequence[str] = ()
) -> Iterator[tuple[str, pl.DataFrame]]:
    """The rows of every slice: all of them, then one part per value of each slice key column.

    ``priors``, when given, name the per-row D(P‖P̄) columns, one for ``ALL`` and one per slice
    key column: each part gets its own as ``PRIOR``.
    """

    def with_prior(part: pl.DataFrame, dimension: int) -> pl.DataFrame:
        return part.with_columns(pl.col(priors[dimension]).alias(PRIOR)) if priors else part

    yield ALL_ROWS, with_prior(frame, 0)
    for j, key in enumerate(slice_keys, start=1):
        for (value,), part in frame.partition_by(key, as_dict=True, maintain_order=True).items():
            yield str(value), with_prior(part, j)


def _linear_quantile(ordered: pl.Series, q: float) -> float | None:
    """The q-quantile of sorted values, interpolating linearly between order statistics."""
    if ordered.len() == 0:
        return None
    position = (ordered.len() - 1) * q
    low, high = math.floor(position), math.ceil(position)
    below, above = ordered[low], ordered[high]
    if below == above or position == low:  # also keeps inf from becoming inf - inf = NaN
        return float(below)
    return float(below + (position - low) * (above - below))


def ecdf_points(ordered: pl.Series, points: int) -> pl.DataFrame:
    """The exact empirical CDF of sorted kl values, at up to ``points`` of its finite values.

    The values are order statistics at evenly spaced ranks of the finite values (the smallest
    and the largest included), plus 0 when it lies within their range, so the share of rows
    with KL <= 0 is read exactly; ``ecdf`` is the share of *all* rows at or below ``kl``, so
    with infinite rows the curve ends below 1, at 1 − their share.

    Examples
    --------
    >>> ecdf_points(pl.Series([0.0, 1.0, 2.0, float("inf")]), 500).rows()
    [(0.0, 0.25), (1.0, 0.5), (2.0, 0.75)]
    """
    schema = {"kl": pl.Float64, "ecdf": pl.Float64}
    n_finite = ordered.len() - int((ordered == math.inf).sum())
    if n_finite == 0 or points < 1:
        return pl.DataFrame(schema=schema)
    steps = max(points - 1, 1)
    ranks = (pl.int_range(0, steps + 1, eager=True) * (n_finite - 1) / steps).round().cast(pl.Int64)
    values = ordered.gather(ranks.unique(maintain_order=True))
    if values[0] < 0 < values[-1]:
        values = pl.concat([values, pl.Series([0.0])]).sort()
    values = values.unique(maintain_order=True)
    counts = ordered.search_sorted(values, side="right").to_list()
    # In Python: polars may divide by multiplying with 1/n, which is off in the last bit.
    shares = [count / ordered.len() for count in counts]
    return pl.DataFrame({"kl": values, "ecdf": shares}, schema=schema)


def sorted_columns(
    parts: Sequence[tuple[str, pl.DataFrame]], columns: Iterable[str]
) -> list[tuple[str, dict[str, pl.Series]]]:
    """Each part's values of each of ``columns``, nulls left out, sorted ascending.

    What :func:`distributions` and :func:`quantile_table` read: one sort of a column serves the
    report's quantiles, ``quantiles.parquet`` and the ECDF (a sort of 2M values takes about
    60 ms of CPU time).
    """
    wanted = list(dict.fromkeys(columns))
    return [
        (name, {column: part.get_column(column).drop_nulls().sort() for column in wanted})
        for name, part in parts
    ]


def distributions(
    ordered: Sequence[tuple[str, Mapping[str, pl.Series]]],
    kl_columns: Mapping[str, str],
    points: int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Exact quantiles per (slice, model), and each model's ECDF over all rows (:func:`ecdf_points`).

    ``ordered`` holds each part's sorted columns (:func:`sorted_columns`) and ``kl_columns``
    maps each model to its kl column. Returns the quantiles and the ECDF points (``model``,
    ``kl``, ``ecdf``; empty when ``points`` is 0).
    """
    rows, ecdfs = [], []
    for name, columns in ordered:
        for model, column in kl_columns.items():
            values = {label: _linear_quantile(columns[column], q) for label, q in QUANTILES.items()}
            rows.append({SLICE: name, MODEL: model} | values)
            if name == ALL_ROWS and points:
                curve = ecdf_points(columns[column], points)
                ecdfs.append(curve.select(pl.lit(model).alias(MODEL), pl.all()))
    quantile_frame = pl.DataFrame(
        rows, schema={SLICE: pl.String, MODEL: pl.String} | dict.fromkeys(QUANTILES, pl.Float64)
    )
    empty = pl.DataFrame(schema={MODEL: pl.String, "kl": pl.Float64, "ecdf": pl.Float64})
    return quantile_frame, pl.concat([empty, *ecdfs])


def quantile_table(
    ordered: Sequence[tuple[str, Mapping[str, pl.Series]]],
    columns: MeasureColumns,
    probabilities: Sequence[float],
) -> pl.DataFrame:
    """Exact quantiles of each measure per (slice, model): the rows of ``quantiles.parquet``.

    ``ordered`` holds each part's sorted columns (:func:`sorted_columns`); ``columns`` maps
    each measure (``kl``, and ``delta_p`` where the rows carry it) to each model's column of it
    in the parts. One row per (slice, model, measure, probability), in the order of the parts,
    ``columns`` and ``probabilities``
    (:func:`klrank.pipeline.published.published_quantiles` orders them as published).

    Notes
    -----
    The same definition as the report's ``median_kl`` ... ``p99_kl``: the q-quantile of n values
    is linear interpolation between the order statistics at 0-based ranks ⌊(n − 1)q⌋ and
    ⌈(n − 1)q⌉ (numpy's default ``method="linear"``), unweighted, over every row of the slice
    (also rows of weight 0). Where the two order statistics are equal, or the rank is whole,
    that value is returned as it is, so +inf stays +inf rather than becoming inf − inf = NaN.
    Nulls are left out (a measure some rows lack); with no value left the quantile is null.

    Examples
    --------
    >>> part = pl.DataFrame({"_kl0": [0.0, 1.0, 2.0, 10.0]})
    >>> ordered = sorted_columns([("ALL", part)], ["_kl0"])
    >>> quantile_table(ordered, {"kl": {"m": "_kl0"}}, [0.5, 1.0]).rows()
    [('ALL', 'm', 'kl', 0.5, 1.5), ('ALL', 'm', 'kl', 1.0, 10.0)]
    """
    rows = []
    for name, sorted_values in ordered:
        for measure, of_model in columns.items():
            for model, column in of_model.items():
                values = sorted_values[column]
                rows += [
                    (name, model, measure, q, _linear_quantile(values, q)) for q in probabilities
                ]
    return pl.DataFrame(rows, schema=QUANTILE_SCHEMA, orient="row")


PRIOR = "_klprior"  # in a part of the kept rows: each row's D(P‖P̄), P̄ the slice's mean P


def _weight_of(weight: str | None) -> pl.Expr | None:
    return pl.col(weight) if weight is not None else None


def paired_states(
    parts: Sequence[tuple[str, pl.DataFrame]],
    kl_columns: Mapping[str, str],
    best: pl.DataFrame,
    weight: str | None = None,
) -> pl.DataFrame:
    """States of d = kl − kl_best per (slice, model); the rows of a part are the same ids."""
    best_of = dict(zip(best.get_column(SLICE), best.get_column(MODEL), strict=True))
    rows = []
    for name, part in parts:
        best_column = pl.col(kl_columns[best_of[name]])
        w = _weight_of(weight)
        for model, column in kl_columns.items():
            state = _moment_state(part, pl.col(column) - best_column, "delta", w)
            rows.append(state.with_columns(pl.lit(name).alias(SLICE), pl.lit(model).alias(MODEL)))
    return pl.concat(rows).select(*KEYS, pl.exclude(*KEYS))


def prior_states(
    parts: Sequence[tuple[str, pl.DataFrame]],
    kl_columns: Mapping[str, str],
    weight: str | None = None,
) -> pl.DataFrame:
    """States of d = kl − D(P‖P̄) per (slice, model): each model against the prior's rows.

    The parts carry the ``PRIOR`` column (see :func:`slice_parts`); merge with
    :func:`merge_prior_states`.
    """
    rows = []
    for name, part in parts:
        w = _weight_of(weight)
        for model, column in kl_columns.items():
            state = _moment_state(part, pl.col(column) - pl.col(PRIOR), "dprior", w)
            rows.append(state.with_columns(pl.lit(name).alias(SLICE), pl.lit(model).alias(MODEL)))
    return pl.concat(rows).select(*KEYS, pl.exclude(*KEYS))


def merge_prior_states(states: pl.DataFrame) -> pl.DataFrame:
    """Combine :func:`prior_states` of disjoint shards into one per (slice, model)."""
    return (
        states.lazy()
        .group_by(KEYS, maintain_order=True)
        .agg(*_merged_moments("dprior"))
        .collect(engine="in-memory")
    )


VERSUS = "versus"  # the other model of a pair, in paired_states_all


def paired_states_all(
    parts: Sequence[tuple[str, pl.DataFrame]],
    kl_columns: Mapping[str, str],
    weight: str | None = None,
) -> pl.DataFrame:
    """States of d = kl − kl_other per (slice, model, other) for every pair of models.

    What :func:`paired_states` computes for the best model, for each model that may turn out
    best once partitions are merged (:func:`merge_paired_states`). M models: M² states a slice.
    """
    rows = []
    for name, part in parts:
        w = _weight_of(weight)
        for other, other_column in kl_columns.items():
            for model, column in kl_columns.items():
                state = _moment_state(part, pl.col(column) - pl.col(other_column), "delta", w)
                rows.append(
                    state.with_columns(
                        pl.lit(name).alias(SLICE),
                        pl.lit(model).alias(MODEL),
                        pl.lit(other).alias(VERSUS),
                    )
                )
    return pl.concat(rows).select(*KEYS, VERSUS, pl.exclude(*KEYS, VERSUS))


def merge_paired_states(states: pl.DataFrame, best: pl.DataFrame) -> pl.DataFrame:
    """The merged :func:`paired_states_all` of disjoint partitions, against each slice's best."""
    against_best = states.join(best.rename({MODEL: VERSUS}), on=[SLICE, VERSUS], how="semi").drop(
        VERSUS
    )
    return (
        against_best.lazy()
        .group_by(KEYS, maintain_order=True)
        .agg(*_merged_moments("delta"))
        .collect(engine="in-memory")
    )


def cluster_deltas(clusters: pl.DataFrame, best: pl.DataFrame | None) -> pl.DataFrame:
    """Per (slice, model, cluster) the sums of d = kl − kl_best, or of kl − D(P‖P̄) (``best`` None).

    In the columns :func:`cluster_meat` reads (``kl_sum`` holding the sum of d).
    """
    if best is None:
        value = pl.col("kl_sum") - pl.col(PRIOR_SUM)
        return clusters.select(*KEYS, CLUSTER_KEY, value.alias("kl_sum"), WEIGHT_SUM)
    best_sums = clusters.join(best, on=list(KEYS), how="semi").select(
        SLICE, CLUSTER_KEY, pl.col("kl_sum").alias("_best_sum")
    )
    return clusters.join(best_sums, on=[SLICE, CLUSTER_KEY]).select(
        *KEYS, CLUSTER_KEY, (pl.col("kl_sum") - pl.col("_best_sum")).alias("kl_sum"), WEIGHT_SUM
    )


def marginal_kl(class_states: pl.DataFrame, states: pl.DataFrame, base: str) -> pl.DataFrame:
    """D(mean P ‖ mean Q) per (slice, model), with the conventions of the per-row divergence."""
    mean = class_states.join(states.select(*KEYS, WEIGHT_SUM), on=list(KEYS)).select(
        *KEYS,
        (pl.col("p_sum") / pl.col(WEIGHT_SUM)).alias("p"),
        (pl.col("q_sum") / pl.col(WEIGHT_SUM)).alias("q"),
    )
    p, q = pl.col("p"), pl.col("q")
    term = divergence.kl_divergence([p], [p.log()], [q.log()])  # one class a row: the term
    entropy = divergence.entropy([p], [p.log()])
    return mean.group_by(KEYS, maintain_order=True).agg(
        divergence.to_base(term.sum(), base).alias("marginal_kl"),
        divergence.to_base(entropy.sum(), base).alias("_entropy_of_mean"),
    )


def class_contributions(
    class_states: pl.DataFrame, states: pl.DataFrame, base: str
) -> pl.DataFrame:
    """How much each class adds to the mean KL, per (slice, model): Σ_rows w·p_c·log(p_c/q_c) / Σw.

    Returns ``slice``, ``model``, ``class`` (position), ``contribution`` in ``base`` units, and
    ``mean_p``, ``mean_q`` (the class's (weighted) mean true and predicted probability).

    Notes
    -----
    The contributions of a (slice, model) add up to its ``mean_kl`` (to rounding). One can be
    negative (a class predicted more often than it occurs) and is +inf when some row has
    p_c > 0 and q_c = 0; terms are never -inf or NaN.
    """
    total = pl.col(WEIGHT_SUM)
    return class_states.join(
        states.select(*KEYS, WEIGHT_SUM), on=list(KEYS), maintain_order="left"
    ).select(
        *KEYS,
        CLASS,
        divergence.to_base(pl.col("kl_term_sum") / total, base).alias("contribution"),
        (pl.col("p_sum") / total).alias("mean_p"),
        (pl.col("q_sum") / total).alias("mean_q"),
    )


STATS = ("mean", "std", "sem", "half_width", "p_value", "n_clusters")


def _summary_stats(
    states: pl.DataFrame, prefix: str, meat: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Mean, std, sem, 95% CI half-width and t-test p-value (mean = 0) from moment states.

    With infinite values the mean is that infinity (None when both signs or NaN occur) and the
    spread statistics are None: they are undefined, and a number there would mislead.

    Notes
    -----
    The weighted mean x̄ = Σwx / Σw of n rows has the sandwich (HC1) variance
    n/(n−1) · Σw²(x − x̄)² / (Σw)², and std = sqrt(n/(n−1) · Σw(x − x̄)² / Σw); without
    weights these are s²/n and the sample standard deviation s. With clusters (``meat``:
    ``n_clusters`` G and Σ_g u_g² per (slice, model), :func:`cluster_meat`) the variance is
    CR1's G/(G−1) · Σ_g u_g² / (Σw)², and the interval and p-value use Student's t with G − 1
    degrees of freedom instead of n − 1: what statsmodels gives for a regression on a constant
    with ``cov_type="cluster"`` and ``use_t=True`` (WLS with the weights).
    """
    clusters: dict[tuple[str, str], tuple[int, float]] = {}
    if meat is not None:
        for slice_name, model, groups, middle in meat.select(
            *KEYS, "n_clusters", "meat"
        ).iter_rows():
            clusters[(slice_name, model)] = (groups, middle)
    out = []
    for row in states.iter_rows(named=True):
        pos, neg, nan = (row[f"{prefix}_{c}"] for c in INFINITE_COUNTS)
        n = row[f"{prefix}_n"] + pos + neg + nan
        total = row[f"{prefix}_w"]
        std = sem = half_width = p_value = None
        mean: float | None
        groups = None
        if meat is not None:
            groups, middle = clusters.get((row[SLICE], row[MODEL]), (0, 0.0))
        if nan or (pos and neg) or n == 0 or (not pos and not neg and total == 0):
            mean = None
        elif pos or neg:
            mean = math.inf if pos else -math.inf
        else:
            mean = row[f"{prefix}_sum"] / total
            df: float | None = None
            if groups is not None:
                if groups >= 2:
                    df = groups - 1
                    sem = math.sqrt(groups / df * middle) / total
            elif n >= 2:
                df = n - 1
                sem = math.sqrt(n / df * row[f"{prefix}_q"]) / total
            if n >= 2:
                std = math.sqrt(n / (n - 1) * row[f"{prefix}_m2"] / total)
            if sem is not None and df is not None:
                half_width = student_t_ppf(0.975, df) * sem
                p_value = (
                    (1.0 if mean == 0 else 0.0) if sem == 0 else two_sided_p_value(mean / sem, df)
                )
        out.append(
            {
                "mean": mean,
                "std": std,
                "sem": sem,
                "half_width": half_width,
                "p_value": p_value,
                "n_clusters": groups,
            }
        )
    return pl.DataFrame(
        out, schema=dict.fromkeys(STATS[:-1], pl.Float64) | {"n_clusters": pl.Int64}
    )


# The report's token columns (schema version 4), null without a token column.
TOKEN_STATS = (
    "mean_nll", "mean_nll_sem", "ppl", "ppl_sem", "ln_ppl_ratio", "ln_ppl_ratio_sem",
    "ppl_ratio", "mean_delta_p", "mean_delta_p_sem", "rms_delta_p", "rms_delta_p_sem",
)  # fmt: skip


def token_stats(states: pl.DataFrame, base: str, clusters: pl.DataFrame | None) -> pl.DataFrame:
    """The :data:`TOKEN_STATS` of each row of ``states``, in their order (all null without nll).

    The means and errors are :func:`_summary_stats`' (clustered where ``clusters`` are given);
    ``mean_nll`` is in ``base``'s unit, PPL and the ln of its ratio in nats whatever the unit.
    ``ppl_sem`` and ``rms_delta_p_sem`` follow by the delta method: PPL · SE(mean nll in nats),
    and SE(mean Δp²) / (2 · RMS Δp).
    """
    if not token_prefixes(states.columns):
        return pl.DataFrame(
            {name: [None] * states.height for name in TOKEN_STATS},
            schema=dict.fromkeys(TOKEN_STATS, pl.Float64),
        )
    nats = divergence.nats_per_unit(base)
    stats = {}
    for prefix in TOKEN_VALUES:
        meat = None
        if clusters is not None:
            meat = cluster_meat(clusters, means_of(states, prefix), prefix)
        stats[prefix] = _summary_stats(states, prefix, meat).select(
            pl.col("mean").alias(f"{prefix}_mean"), pl.col("sem").alias(f"{prefix}_sem")
        )
    frame = pl.concat(list(stats.values()), how="horizontal")
    nll, nll_sem = pl.col("nll_mean"), pl.col("nll_sem")
    ln_ratio, ln_ratio_sem = pl.col("lnr_mean") * nats, pl.col("lnr_sem") * nats
    ppl = (nll * nats).exp()
    rms = pl.col("dp2_mean").sqrt()
    return frame.select(
        nll.alias("mean_nll"),
        nll_sem.alias("mean_nll_sem"),
        ppl.alias("ppl"),
        (ppl * nll_sem * nats).alias("ppl_sem"),
        ln_ratio.alias("ln_ppl_ratio"),
        ln_ratio_sem.alias("ln_ppl_ratio_sem"),
        ln_ratio.exp().alias("ppl_ratio"),
        pl.col("dp_mean").alias("mean_delta_p"),
        pl.col("dp_sem").alias("mean_delta_p_sem"),
        rms.alias("rms_delta_p"),
        # Undefined where every Δp is 0 (0/0): null, as an undefined error is elsewhere.
        pl.when(rms > 0).then(pl.col("dp2_sem") / (2.0 * rms)).alias("rms_delta_p_sem"),
    )


def means_of(states: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """Per (slice, model) the finite weighted mean of a moment state (``mean``), for the meat."""
    return states.select(*KEYS, (pl.col(f"{prefix}_sum") / pl.col(f"{prefix}_w")).alias("mean"))


def finalize(
    states: pl.DataFrame,
    class_states: pl.DataFrame,
    quantile_frame: pl.DataFrame,
    base: str,
    rank_by: str,
    clusters: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Report rows (without the comparisons) from merged states and quantiles, ranked.

    ``clusters``: the merged cluster states (:func:`merge_cluster_states`) of a clustered run.
    """
    meat = None if clusters is None else cluster_meat(clusters, means_of(states, "kl"))
    stats = _summary_stats(states, "kl", meat)
    total = pl.col(WEIGHT_SUM)
    frame = (
        pl.concat([states, stats, token_stats(states, base, clusters)], how="horizontal")
        .join(quantile_frame, on=list(KEYS), how="left")
        .join(marginal_kl(class_states, states, base), on=list(KEYS), how="left")
    )
    report = frame.select(
        SLICE,
        MODEL,
        "n_rows",
        pl.col("mean").alias("mean_kl"),
        pl.col("std").alias("std_kl"),
        pl.col("sem").alias("sem_kl"),
        (pl.col("mean") - pl.col("half_width")).alias("ci95_low"),
        (pl.col("mean") + pl.col("half_width")).alias("ci95_high"),
        pl.col("kl_min").alias("min_kl"),
        *QUANTILES,
        pl.col("kl_max").alias("max_kl"),
        pl.col("kl_n_pos_inf").alias("n_infinite"),
        *[(pl.col(f"{m}_sum") / total).alias(f"mean_{m}") for m in MEANS],
        "marginal_kl",
        (pl.col("top1_sum") / total).alias("top1_agreement"),
        "n_clusters",
        # H(P̄) − mean H(P) = the mean over rows of D(P‖P̄): the prior predicts the mean P.
        (pl.col("_entropy_of_mean") - pl.col("entropy_sum") / total).alias("prior_mean_kl"),
        # Filled by the bootstrap (klrank.pipeline.bootstrap), when the run asks for one.
        pl.lit(None, pl.Float64).alias("p_best"),
        pl.lit(None, pl.Int64).alias("rank_low"),
        pl.lit(None, pl.Int64).alias("rank_high"),
        *TOKEN_STATS,
    )
    descending = rank_by in HIGHER_IS_BETTER
    return report.with_columns(
        pl.col(rank_by)
        .rank(method="min", descending=descending)
        .over(SLICE)
        .cast(pl.Int64)
        .alias("rank")
    )


def best_models(report: pl.DataFrame) -> pl.DataFrame:
    """The best model per slice: rank 1, ties broken by model name."""
    return (
        report.filter(pl.col("rank") == 1)
        .sort(KEYS)
        .group_by(SLICE, maintain_order=True)
        .first()
        .select(KEYS)
    )


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of p-values; None stays None and is not counted.

    Examples
    --------
    >>> holm([0.01, 0.04, None, 0.03])
    [0.03, 0.06, None, 0.06]
    """
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


# A paired difference whose mean and standard error are both within this share of the KL it
# compares is rounding, not evidence: two models (or a model and the prior) that predict the same
# up to the last bits get p = 1, as identical ones do, not a p-value of the rounding noise.
ROUNDING = 1e-12


def _within_rounding(delta: str, sem: str, p_value: str, scale: pl.Expr) -> pl.Expr:
    """``p_value``, or 1 where the difference and its error are below ``ROUNDING`` of ``scale``."""
    bound = ROUNDING * scale.abs()
    rounding = (
        (pl.col(delta).abs() <= bound) & (pl.col(sem) <= bound) & pl.col(p_value).is_not_null()
    )
    return pl.when(rounding).then(1.0).otherwise(pl.col(p_value)).alias(p_value)


def with_paired_comparison(
    report: pl.DataFrame, paired: pl.DataFrame, clusters: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Add delta_vs_best, its standard error, the paired t-test p-value and its Holm adjustment.

    ``clusters``: the merged cluster states of a clustered run, for cluster-robust errors. Holm
    runs over the non-best models of each slice with a p-value.
    """
    best = best_models(report)
    meat = None
    if clusters is not None:
        meat = cluster_meat(cluster_deltas(clusters, best), means_of(paired, "delta"))
    stats = _summary_stats(paired, "delta", meat)
    deltas = pl.concat([paired.select(KEYS), stats], how="horizontal").select(
        *KEYS,
        pl.col("mean").alias("delta_vs_best"),
        pl.col("sem").alias("delta_vs_best_sem"),
        pl.col("p_value").alias("p_value_vs_best"),
    )
    is_best = pl.col("is_best")
    compared = (
        report.join(deltas, on=list(KEYS), how="left")
        .join(best.with_columns(is_best=pl.lit(True)), on=list(KEYS), how="left")
        .with_columns(
            pl.when(is_best).then(0.0).otherwise(pl.col("delta_vs_best")).alias("delta_vs_best"),
            pl.when(is_best)
            .then(0.0)
            .otherwise(pl.col("delta_vs_best_sem"))
            .alias("delta_vs_best_sem"),
            pl.when(is_best)
            .then(None)
            .otherwise(pl.col("p_value_vs_best"))
            .alias("p_value_vs_best"),
        )
        .with_columns(
            _within_rounding(
                "delta_vs_best", "delta_vs_best_sem", "p_value_vs_best", pl.col("mean_kl")
            )
        )
        .drop("is_best")
    )
    adjusted = [
        part.select(KEYS).with_columns(
            pl.Series(
                "p_value_vs_best_holm",
                holm(part.get_column("p_value_vs_best").to_list()),
                pl.Float64,
            )
        )
        for part in compared.partition_by(SLICE, maintain_order=True)
    ]
    return compared.join(pl.concat(adjusted), on=list(KEYS), how="left", maintain_order="left")


def with_prior_comparison(
    report: pl.DataFrame, prior: pl.DataFrame | None, clusters: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Add delta_vs_prior (mean kl − D(P‖P̄)), its standard error and paired p-value.

    ``prior``: the merged :func:`prior_states`; None (no prior rows were kept) gives nulls.
    """
    columns = ("delta_vs_prior", "delta_vs_prior_sem", "p_value_vs_prior")
    if prior is None:
        return report.with_columns(pl.lit(None, pl.Float64).alias(c) for c in columns)
    meat = None
    if clusters is not None:
        meat = cluster_meat(cluster_deltas(clusters, None), means_of(prior, "dprior"))
    stats = _summary_stats(prior, "dprior", meat)
    deltas = pl.concat([prior.select(KEYS), stats], how="horizontal").select(
        *KEYS,
        *(pl.col(s).alias(c) for s, c in zip(("mean", "sem", "p_value"), columns, strict=True)),
    )
    compared = report.join(deltas, on=list(KEYS), how="left", maintain_order="left")
    scale = pl.max_horizontal(pl.col("mean_kl").abs(), pl.col("prior_mean_kl").abs())
    return compared.with_columns(
        _within_rounding("delta_vs_prior", "delta_vs_prior_sem", "p_value_vs_prior", scale)
    )
