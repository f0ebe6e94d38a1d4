"""The measures on class arrays: for Array/List inputs, and for more classes than columns pay.

With one expression per class, a thousand classes make expressions a thousand terms deep. Here
each batch's distributions become ``Array(Float64, K)`` columns (``_P``, ``_Q`` and their logs),
the element-wise terms are computed on the flattened N·K values by the same builders as the
column layout (:mod:`klrank.pipeline.divergence`, applied to one flat "class"), and each row's sum is
taken by reshaping back to N × K. The conventions are the same; the results match the column
layout to rounding.
"""

import polars as pl
from klrank.pipeline import divergence
from klrank.pipeline.aggregate import ClassSums
from klrank.pipeline.layout import ARGMAX_P, ENTROPY, ID, Layout, unit_columns

P, LOG_P, Q, LOG_Q = "_P", "_LP", "_Q", "_LQ"
KL_TERMS = "_KT"  # each class's term p·(log p − log q) of D(P‖Q), in nats


def _array(frame: pl.DataFrame, columns: list[str], width: int) -> pl.Series:
    """One Array(Float64, width) Series from an Array/List column or from one column per class."""
    if len(columns) == 1 and isinstance(frame.schema[columns[0]], pl.Array | pl.List):
        values = frame.get_column(columns[0])
        if isinstance(values.dtype, pl.List):
            values = values.list.to_array(width)  # validation has checked every length
        return values.cast(pl.Array(pl.Float64, width))
    return frame.select(pl.concat_arr([pl.col(c).cast(pl.Float64) for c in columns])).to_series()


def broadcast(values: pl.Series, width: int) -> pl.Series:
    """Each row's value once per class: the flat, row-major companion of an N × width array."""
    return values.gather(pl.int_range(0, values.len() * width, eager=True) // width)


def row_sums(flat: pl.Series, width: int) -> pl.Series:
    """The sum of each row of a flat, row-major N × width array."""
    return flat.reshape((-1, width)).arr.sum()


def label_values(batch: pl.DataFrame, layout: Layout) -> pl.Series:
    """P flattened row by row, in the order of ``layout.classes``."""
    width = len(layout.classes)
    if layout.truth == "hard":
        assert layout.label_col is not None
        label = batch.get_column(layout.label_col)
        if layout.prediction_array is not None and label.dtype.is_integer():
            index = label.cast(pl.Int64)
        else:
            names = list(layout.classes)
            index = label.cast(pl.String).replace_strict(names, range(width), return_dtype=pl.Int64)
        position = pl.int_range(0, batch.height * width, eager=True) % width
        return (position == broadcast(index, width)).cast(pl.Float64)
    columns = layout.label_prob_cols
    if layout.label_array is None:  # one column per class, read in class order
        columns = [layout.label_prefix + c for c in layout.classes]
    values = _array(batch, columns, width)
    if layout.label_array is not None and layout.label_classes != layout.classes:
        order = [layout.label_classes.index(c) for c in layout.classes]
        values = (
            values.to_frame()
            .select(pl.concat_arr([pl.col(values.name).arr.get(i) for i in order]))
            .to_series()
        )
    return values.reshape((-1,))


def prepare_labels(batch: pl.DataFrame, layout: Layout, base: str) -> pl.DataFrame:
    """Per label row, once: ``id``, slice columns, P and log P arrays, entropy and argmax of P."""
    width = len(layout.classes)
    p = label_values(batch, layout)
    log_p = p.log()
    entropy = pl.DataFrame({"p": p, "lp": log_p}).select(
        divergence.entropy([pl.col("p")], [pl.col("lp")])
    )
    probabilities = p.reshape((-1, width))
    return batch.select(
        pl.col(layout.id_col).alias(ID),
        *[pl.col(c) for c in layout.slice_cols],
        *unit_columns(layout),
    ).with_columns(
        probabilities.alias(P),
        log_p.reshape((-1, width)).alias(LOG_P),
        divergence.to_base(pl.lit(row_sums(entropy.to_series(), width)), base).alias(ENTROPY),
        probabilities.arr.arg_max().cast(pl.Int32).alias(ARGMAX_P),
    )


def prepare_predictions(batch: pl.DataFrame, layout: Layout, epsilon: float) -> pl.DataFrame:
    """Q and log Q arrays, from probabilities or from logits by a shifted log-softmax.

    Notes
    -----
    log q = (z − m) − log Σ exp(z − m), m the row maximum, as
    :func:`klrank.pipeline.divergence.log_softmax`: no exp overflows, and the log-sum is subtracted
    from the shifted logit, not added to m, where it would be lost for a large m.
    """
    width = len(layout.classes)
    values = _array(batch, layout.prediction_cols, width)
    flat = values.reshape((-1,))
    if layout.prediction_kind == "logit":
        shifted = flat - broadcast(values.arr.max(), width)
        log_sum = row_sums(shifted.exp(), width).log()
        log_q = shifted - broadcast(log_sum, width)
        q = log_q.exp()
    else:
        q, log_q = flat, flat.log()
    if epsilon > 0:
        q = (q + epsilon) / (1.0 + width * epsilon)
        log_q = q.log()
    return pl.DataFrame({Q: q.reshape((-1, width)), LOG_Q: log_q.reshape((-1, width))})


def row_measures(
    labels: pl.DataFrame, predictions: pl.DataFrame, layout: Layout, base: str
) -> pl.DataFrame:
    """The label columns and arrays with kl, reverse_kl, js, cross_entropy and top1_match added.

    ``KL_TERMS`` keeps the per-class terms of kl (in nats) for the per-class contributions.
    """
    width = len(layout.classes)
    flat = pl.DataFrame(
        {
            "p": labels.get_column(P).reshape((-1,)),
            "lp": labels.get_column(LOG_P).reshape((-1,)),
            "q": predictions.get_column(Q).reshape((-1,)),
            "lq": predictions.get_column(LOG_Q).reshape((-1,)),
        }
    )
    p, lp, q, lq = ([pl.col(c)] for c in ("p", "lp", "q", "lq"))
    terms = (
        flat.lazy()
        .select(
            divergence.kl_divergence(p, lp, lq).alias("kl"),
            divergence.kl_divergence(q, lq, lp).alias("reverse_kl"),
            divergence.jensen_shannon_divergence(p, lp, q, lq).alias("js"),
        )
        .collect()
    )
    sums = {name: row_sums(terms.get_column(name), width) for name in terms.columns}
    reverse = pl.lit(sums["reverse_kl"])
    if layout.prediction_kind == "logit":  # softmax is never 0: D(Q‖P) = inf wherever some p = 0
        reverse = pl.when(pl.col(P).arr.min() == 0).then(float("inf")).otherwise(reverse)
    return (
        pl.concat([labels, predictions], how="horizontal")
        .with_columns(
            divergence.to_base(pl.lit(sums["kl"]), base).alias("kl"),
            divergence.to_base(reverse, base).alias("reverse_kl"),
            divergence.to_base(pl.lit(sums["js"]), base).alias("js"),
            (pl.col(LOG_Q).arr.arg_max().cast(pl.Int32) == pl.col(ARGMAX_P)).alias("top1_match"),
            terms.get_column("kl").reshape((-1, width)).alias(KL_TERMS),
        )
        .with_columns((pl.col(ENTROPY) + pl.col("kl")).alias("cross_entropy"))
    )


def column_sums(values: pl.Series, width: int) -> list[float]:
    """Per-class sums of an Array(width) column, summing halves of the rows pairwise.

    Each step adds the second half of the remaining rows to the first, as whole vectors, so the
    K sums take log2(N) vectorised additions (and pairwise summation is the accurate kind).
    """
    flat = values.reshape((-1,))
    rows = values.len()
    leftover = pl.Series(values=[0.0] * width, dtype=pl.Float64)
    while rows > 1:
        if rows % 2:
            leftover = leftover + flat.slice((rows - 1) * width, width)
            rows -= 1
        half = rows // 2
        flat = flat.slice(0, half * width) + flat.slice(half * width, half * width)
        rows = half
    if rows == 1:
        leftover = leftover + flat.slice(0, width)
    return leftover.to_list()


def class_sums(n_classes: int, weight: str | None = None) -> ClassSums:
    """Per-class (weighted) sums of P, Q (marginal_kl) and the KL terms (contributions), by array."""

    def total(rows: pl.DataFrame, column: str) -> list[float]:
        values = rows.get_column(column)
        if weight is not None:
            values = rows.select(pl.col(column) * pl.col(weight)).to_series()
        return column_sums(values, n_classes)

    def sums(rows: pl.DataFrame) -> tuple[list[float], list[float], list[float]]:
        return total(rows, P), total(rows, Q), total(rows, KL_TERMS)

    return sums
