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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal, get_args

import polars as pl
from klrank.pipeline import divergence
from klrank.pipeline.layout import MODEL, kl_term_col, p_col, q_col
from klrank.pipeline.stats import student_t_ppf, two_sided_p_value

SLICE = "slice"
ALL_ROWS = "ALL"
NULL_SLICE_VALUE = "(null)"
KEYS = (SLICE, MODEL)
QUANTILES = {"median_kl": 0.5, "p90_kl": 0.9, "p95_kl": 0.95, "p99_kl": 0.99}
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


def _moments(value: pl.Expr, prefix: str) -> list[pl.Expr]:
    # Count, sum and centred second moment of the finite values; non-finite ones are counted apart.
    finite = value.filter(value.is_finite())
    return [
        finite.len().cast(pl.Int64).alias(f"{prefix}_n"),
        finite.sum().alias(f"{prefix}_sum"),
        (finite.var(ddof=0).fill_null(0.0) * finite.len()).alias(f"{prefix}_m2"),
        (value == math.inf).sum().cast(pl.Int64).alias(f"{prefix}_n_pos_inf"),
        (value == -math.inf).sum().cast(pl.Int64).alias(f"{prefix}_n_neg_inf"),
        value.is_nan().sum().cast(pl.Int64).alias(f"{prefix}_n_nan"),
    ]


def _merged_moments(prefix: str) -> list[pl.Expr]:
    n, total, m2 = pl.col(f"{prefix}_n"), pl.col(f"{prefix}_sum"), pl.col(f"{prefix}_m2")
    grand_mean = total.sum() / n.sum()
    part_mean = pl.when(n > 0).then(total / n).otherwise(grand_mean)
    return [
        n.sum(),
        total.sum(),
        (m2.sum() + (n * (part_mean - grand_mean) ** 2).sum()).fill_nan(0.0),
        *[pl.col(f"{prefix}_{count}").sum() for count in ("n_pos_inf", "n_neg_inf", "n_nan")],
    ]


# rows -> per-class sums of P, Q and the KL terms (nats), as three lists in class order
ClassSums = Callable[[pl.DataFrame], tuple[Sequence[float], Sequence[float], Sequence[float]]]
CLASS = "class"


def _aggregations() -> list[pl.Expr]:
    return [
        pl.len().cast(pl.Int64).alias("n_rows"),
        *_moments(pl.col("kl"), "kl"),
        pl.col("kl").min().alias("kl_min"),
        pl.col("kl").max().alias("kl_max"),
        *[pl.col(m).sum().alias(f"{m}_sum") for m in MEANS],
        pl.col("top1_match").sum().cast(pl.Int64).alias("top1_sum"),
    ]


def column_class_sums(n_classes: int) -> ClassSums:
    """Per-class sums of P, Q (for marginal_kl) and KL terms (contributions), one column a class."""
    p = [pl.col(p_col(i)).sum() for i in range(n_classes)]
    q = [pl.col(q_col(i)).sum() for i in range(n_classes)]
    k = [pl.col(kl_term_col(i)).sum() for i in range(n_classes)]

    def sums(rows: pl.DataFrame) -> tuple[Sequence[float], Sequence[float], Sequence[float]]:
        values = rows.select(
            pl.concat_list(p).alias("p"), pl.concat_list(q).alias("q"), pl.concat_list(k)
        ).row(0)
        return values[0], values[1], values[2]

    return sums


def partial_states(
    rows: pl.DataFrame, model: str, slice_keys: Sequence[str], class_sums: ClassSums
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """States per slice of one model's rows (measures, P, Q and KL terms, and slice key columns).

    ``slice_keys`` name columns holding ``COL=value`` strings, one per ``--slice-by`` column;
    ``class_sums`` sums P, Q and the KL terms per class (:func:`column_class_sums`,
    ``arrays.class_sums``).
    Returns the scalar states, one row per slice, and the class states, one row per slice and
    class (``p_sum``, ``q_sum``, ``kl_term_sum`` in nats: long, so a thousand classes are a
    thousand rows, not columns).
    """
    scalars, classes = [], []
    for name, part in slice_parts(rows, slice_keys):
        keys = [pl.lit(name).alias(SLICE), pl.lit(model).alias(MODEL)]
        scalars.append(part.select(*keys, *_aggregations()))
        p, q, k = class_sums(part)
        sums = pl.DataFrame(
            {CLASS: range(len(p)), "p_sum": p, "q_sum": q, "kl_term_sum": k},
            schema_overrides={CLASS: pl.Int32},
        )
        classes.append(sums.select(*keys, pl.all()))
    return pl.concat(scalars), pl.concat(classes)


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
    sums = [f"{m}_sum" for m in MEANS] + ["n_rows", "top1_sum"]
    return (
        states.lazy()
        .group_by(KEYS, maintain_order=True)
        .agg(
            *_merged_moments("kl"),
            pl.col("kl_min").min(),
            pl.col("kl_max").max(),
            *[pl.col(c).sum() for c in sums],
        )
        .collect(engine="in-memory")
    )


def slice_parts(
    frame: pl.DataFrame, slice_keys: Sequence[str]
) -> Iterator[tuple[str, pl.DataFrame]]:
    """The rows of every slice: all of them, then one part per value of each slice key column."""
    yield ALL_ROWS, frame
    for key in slice_keys:
        for (value,), part in frame.partition_by(key, as_dict=True, maintain_order=True).items():
            yield str(value), part


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


def distributions(
    parts: Sequence[tuple[str, pl.DataFrame]], kl_columns: Mapping[str, str], points: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Exact quantiles per (slice, model), and each model's ECDF over all rows (:func:`ecdf_points`).

    ``kl_columns`` maps each model to its kl column. One sort per (slice, model) serves all the
    quantiles and the ECDF. Returns the quantiles and the ECDF points (``model``, ``kl``,
    ``ecdf``; empty when ``points`` is 0).
    """
    rows, ecdfs = [], []
    for name, part in parts:
        for model, column in kl_columns.items():
            ordered = part.get_column(column).sort()
            values = {label: _linear_quantile(ordered, q) for label, q in QUANTILES.items()}
            rows.append({SLICE: name, MODEL: model} | values)
            if name == ALL_ROWS and points:
                curve = ecdf_points(ordered, points)
                ecdfs.append(curve.select(pl.lit(model).alias(MODEL), pl.all()))
    quantile_frame = pl.DataFrame(
        rows, schema={SLICE: pl.String, MODEL: pl.String} | dict.fromkeys(QUANTILES, pl.Float64)
    )
    empty = pl.DataFrame(schema={MODEL: pl.String, "kl": pl.Float64, "ecdf": pl.Float64})
    return quantile_frame, pl.concat([empty, *ecdfs])


def paired_states(
    parts: Sequence[tuple[str, pl.DataFrame]], kl_columns: Mapping[str, str], best: pl.DataFrame
) -> pl.DataFrame:
    """States of d = kl − kl_best per (slice, model); the rows of a part are the same ids."""
    best_of = dict(zip(best.get_column(SLICE), best.get_column(MODEL), strict=True))
    rows = []
    for name, part in parts:
        best_column = pl.col(kl_columns[best_of[name]])
        for model, column in kl_columns.items():
            state = part.select(_moments(pl.col(column) - best_column, "delta"))
            rows.append(state.with_columns(pl.lit(name).alias(SLICE), pl.lit(model).alias(MODEL)))
    return pl.concat(rows).select(*KEYS, pl.exclude(*KEYS))


VERSUS = "versus"  # the other model of a pair, in paired_states_all


def paired_states_all(
    parts: Sequence[tuple[str, pl.DataFrame]], kl_columns: Mapping[str, str]
) -> pl.DataFrame:
    """States of d = kl − kl_other per (slice, model, other) for every pair of models.

    What :func:`paired_states` computes for the best model, for each model that may turn out
    best once partitions are merged (:func:`merge_paired_states`). M models: M² states a slice.
    """
    rows = []
    for name, part in parts:
        for other, other_column in kl_columns.items():
            for model, column in kl_columns.items():
                state = part.select(_moments(pl.col(column) - pl.col(other_column), "delta"))
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


def marginal_kl(class_states: pl.DataFrame, states: pl.DataFrame, base: str) -> pl.DataFrame:
    """D(mean P ‖ mean Q) per (slice, model), with the conventions of the per-row divergence."""
    mean = class_states.join(states.select(*KEYS, "n_rows"), on=list(KEYS)).select(
        *KEYS,
        (pl.col("p_sum") / pl.col("n_rows")).alias("p"),
        (pl.col("q_sum") / pl.col("n_rows")).alias("q"),
    )
    p, q = pl.col("p"), pl.col("q")
    term = divergence.kl_divergence([p], [p.log()], [q.log()])  # one class a row: the term
    return mean.group_by(KEYS, maintain_order=True).agg(
        divergence.to_base(term.sum(), base).alias("marginal_kl")
    )


def class_contributions(
    class_states: pl.DataFrame, states: pl.DataFrame, base: str
) -> pl.DataFrame:
    """How much each class adds to the mean KL, per (slice, model): Σ_rows p_c·log(p_c/q_c) / n.

    Returns ``slice``, ``model``, ``class`` (position), ``contribution`` in ``base`` units, and
    ``mean_p``, ``mean_q`` (the class's mean true and predicted probability).

    Notes
    -----
    The contributions of a (slice, model) add up to its ``mean_kl`` (to rounding). One can be
    negative (a class predicted more often than it occurs) and is +inf when some row has
    p_c > 0 and q_c = 0; terms are never -inf or NaN.
    """
    n_rows = pl.col("n_rows")
    return class_states.join(
        states.select(*KEYS, "n_rows"), on=list(KEYS), maintain_order="left"
    ).select(
        *KEYS,
        CLASS,
        divergence.to_base(pl.col("kl_term_sum") / n_rows, base).alias("contribution"),
        (pl.col("p_sum") / n_rows).alias("mean_p"),
        (pl.col("q_sum") / n_rows).alias("mean_q"),
    )


def _interval(m2: float, n: int) -> tuple[float | None, float | None, float | None]:
    """Sample standard deviation, standard error and 95% t half-width; None when n < 2."""
    if n < 2:
        return None, None, None
    std = math.sqrt(m2 / (n - 1))
    sem = std / math.sqrt(n)
    return std, sem, student_t_ppf(0.975, n - 1) * sem


def _summary_stats(states: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """Mean, std, sem, 95% CI half-width and t-test p-value (mean = 0) from moment states.

    With infinite values the mean is that infinity (None when both signs or NaN occur) and the
    spread statistics are None: they are undefined, and a number there would mislead.
    """
    out = []
    for row in states.iter_rows(named=True):
        pos, neg, nan = (row[f"{prefix}_{c}"] for c in ("n_pos_inf", "n_neg_inf", "n_nan"))
        n = row[f"{prefix}_n"] + pos + neg + nan
        std = sem = half_width = p_value = None
        mean: float | None
        if nan or (pos and neg) or n == 0:
            mean = None
        elif pos or neg:
            mean = math.inf if pos else -math.inf
        else:
            mean = row[f"{prefix}_sum"] / n
            std, sem, half_width = _interval(row[f"{prefix}_m2"], n)
            if sem is not None:
                p_value = (
                    (1.0 if mean == 0 else 0.0)
                    if sem == 0
                    else two_sided_p_value(mean / sem, n - 1)
                )
        out.append(
            {"mean": mean, "std": std, "sem": sem, "half_width": half_width, "p_value": p_value}
        )
    return pl.DataFrame(
        out, schema=dict.fromkeys(("mean", "std", "sem", "half_width", "p_value"), pl.Float64)
    )


def finalize(
    states: pl.DataFrame,
    class_states: pl.DataFrame,
    quantile_frame: pl.DataFrame,
    base: str,
    rank_by: str,
) -> pl.DataFrame:
    """Report rows (without the paired comparison) from merged states and quantiles, ranked."""
    stats = _summary_stats(states, "kl")
    frame = (
        pl.concat([states, stats], how="horizontal")
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
        *[(pl.col(f"{m}_sum") / pl.col("n_rows")).alias(f"mean_{m}") for m in MEANS],
        "marginal_kl",
        (pl.col("top1_sum") / pl.col("n_rows")).alias("top1_agreement"),
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


def with_paired_comparison(report: pl.DataFrame, paired: pl.DataFrame) -> pl.DataFrame:
    """Add delta_vs_best, its standard error and the two-sided paired t-test p-value."""
    stats = _summary_stats(paired, "delta")
    deltas = pl.concat([paired.select(KEYS), stats], how="horizontal").select(
        *KEYS,
        pl.col("mean").alias("delta_vs_best"),
        pl.col("sem").alias("delta_vs_best_sem"),
        pl.col("p_value").alias("p_value_vs_best"),
    )
    best = best_models(report).with_columns(is_best=pl.lit(True))
    return (
        report.join(deltas, on=list(KEYS), how="left")
        .join(best, on=list(KEYS), how="left")
        .with_columns(
            pl.when(pl.col("is_best"))
            .then(0.0)
            .otherwise(pl.col("delta_vs_best"))
            .alias("delta_vs_best"),
            pl.when(pl.col("is_best"))
            .then(0.0)
            .otherwise(pl.col("delta_vs_best_sem"))
            .alias("delta_vs_best_sem"),
            pl.when(pl.col("is_best"))
            .then(None)
            .otherwise(pl.col("p_value_vs_best"))
            .alias("p_value_vs_best"),
        )
        .drop("is_best")
    )
