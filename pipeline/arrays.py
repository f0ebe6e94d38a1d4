"""The measures on class arrays: for Array/List inputs, and for more classes than columns pay.

With one expression per class, a thousand classes make expressions a thousand terms deep. Here a
batch's distributions are read as N × K numpy arrays (views of the Polars buffers where the
input is an Array column) and the measures are computed in numpy, a block of rows at a time:
each block's Float64 arrays are at most :data:`BLOCK_BYTES`, so they stay in the CPU's cache and
are reused from block to block and batch to batch (:class:`Workspace`) instead of being
allocated afresh. At 128,000 classes a block is one row. The conventions are those of
:mod:`klrank.pipeline.divergence`, element by element; the results match the column layout to
rounding.

Truth comes in three forms (:class:`Truth`): soft labels (probabilities or logits, turned into
P and log P once per label batch), hard labels (a class index a row: never expanded to one-hot,
the measures read q at the label), and soft labels with a token column, which add the token
measures ``nll``, ``delta_p`` and ``_label_nll`` (:data:`TOKEN_MEASURES`).

Per-class sums over rows (P, Q and the KL terms, for marginal_kl and the class contributions)
are summed per slice as the blocks go by (:func:`measure`), in Float64 and over every counted
row, so nothing N × K outlives the block it was computed for but the label batch's P and log P.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from klrank.pipeline import divergence
from klrank.pipeline.aggregate import ALL_ROWS, ClassSums, Floats
from klrank.pipeline.layout import ARGMAX_P, ENTROPY, ID, WEIGHT, Layout, unit_columns

# The most bytes one block's Float64 N × K array may take: a block fits in a core's L2 cache.
BLOCK_BYTES = 1 << 20
LOG_2 = math.log(2.0)
# With a token column: -log q(token) and q(token) - p(token) (published), and -log p(token)
# (internal: the base model's own nll, for the ratio of perplexities), in the run's unit.
TOKEN_MEASURES = ("nll", "delta_p", "_label_nll")

Float = np.dtype[np.float64]


class Workspace:
    """Named scratch arrays, allocated once and reused for every block and batch of a run.

    A fresh array of a few MB is mapped from the kernel and faulted in page by page on first
    touch; reusing one skips that (system time was half of a run's time before).

    Examples
    --------
    >>> work = Workspace()
    >>> a = work.array("q", (2, 3))
    >>> work.array("q", (1, 3)).base is a.base
    True
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, int], dtype: type = np.float64) -> np.ndarray:
        """An uninitialised array of ``shape``, sharing its memory with earlier ones of ``name``."""
        size = shape[0] * shape[1]
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = np.empty(max(size, 1), dtype=dtype)
            self._buffers[name] = buffer
        return buffer[:size].reshape(shape)


def block_rows(width: int) -> int:
    """Rows per block for ``width`` classes: :data:`BLOCK_BYTES` of Float64, at least one row."""
    return max(1, BLOCK_BYTES // (8 * max(width, 1)))


def matrix(frame: pl.DataFrame, columns: Sequence[str], width: int) -> np.ndarray:
    """The (N, width) values of an Array/List column or of one column per class, as stored.

    An Array column without nulls comes back as a read-only view of Polars' buffer in its own
    float dtype (Float16, Float32 or Float64); per-class columns are copied into Float64.
    Validation has checked the lengths and that no value is null.
    """
    if len(columns) == 1 and isinstance(frame.schema[columns[0]], pl.Array | pl.List):
        values = frame.get_column(columns[0])
        if isinstance(values.dtype, pl.List):
            values = values.list.to_array(width)
        out = values.to_numpy()
        return out.reshape(frame.height, width)
    out = np.empty((frame.height, width), dtype=np.float64)
    for i, name in enumerate(columns):
        out[:, i] = frame.get_column(name).cast(pl.Float64).to_numpy()
    return out


def label_index(batch: pl.DataFrame, layout: Layout) -> np.ndarray:
    """Each row's class position (int64) from the label column: an index, or a class name.

    Integers index the classes when the predictions are arrays, else name them (``3`` is class
    ``"3"``), as validation reads them (:func:`klrank.schemas.inputs.label_rules`).
    """
    column = layout.label_index_col
    assert column is not None
    label = batch.get_column(column)
    if layout.prediction_array is not None and label.dtype.is_integer():
        return label.cast(pl.Int64).to_numpy()
    names = list(layout.classes)
    index = label.cast(pl.String).replace_strict(names, range(len(names)), return_dtype=pl.Int64)
    return index.to_numpy()


def _distribution(
    values: np.ndarray, kind: str, prob: np.ndarray, log: np.ndarray, epsilon: float = 0.0
) -> np.ndarray:
    """Fill ``prob`` and ``log`` (Float64) with a block's distribution; return each row's argmax.

    The argmax is that of the values as given (logits or probabilities, exact in Float64),
    ties to the first class.

    Notes
    -----
    Logits: log q = (z − m) − log Σ exp(z − m), m the row maximum, as
    :func:`klrank.pipeline.divergence.log_softmax`: no exp overflows, and the log-sum is
    subtracted from the shifted logit, not added to m, where it would be lost for a large m.
    q = exp(z − m) / Σ exp(z − m), the exp already taken (it differs from exp(log q) by rounding
    only, and is the more accurate where log q is far below 0).

    Probabilities: log p = log(p), −inf where p = 0. With ``epsilon`` > 0 the distribution is
    smoothed, q' = (q + ε)/(1 + K·ε), and log q' = log(q').
    """
    top: np.ndarray = values.argmax(axis=1)  # in the values' own dtype: exact, and fewer bytes
    if kind == "prob":
        np.copyto(prob, values)  # exact: to Float64
    else:  # the maximum is at the argmax: one pass fewer than max(), and z − m cast on the way
        top_value = values[np.arange(values.shape[0]), top].astype(np.float64)
        np.subtract(values, top_value[:, None], out=log, dtype=np.float64)
        np.exp(log, out=prob)
        total = prob.sum(axis=1, keepdims=True)
        np.subtract(log, np.log(total), out=log)
        np.divide(prob, total, out=prob)
    if epsilon > 0:
        np.add(prob, epsilon, out=prob)
        np.divide(prob, 1.0 + prob.shape[1] * epsilon, out=prob)
    if kind == "prob" or epsilon > 0:
        np.log(prob, out=log)
    return top


def distribution(
    values: np.ndarray, kind: str, epsilon: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(P, log P) in Float64 of (N, K) probabilities or logits, as the measures take them."""
    prob, log = np.empty(values.shape), np.empty(values.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        _distribution(values, kind, prob, log, epsilon)
    return prob, log


def _in_base(nats: np.ndarray, base: str) -> np.ndarray:
    """As :func:`klrank.pipeline.divergence.to_base`, on numpy."""
    return nats if base == "e" else nats / math.log(divergence.LOG_BASES[base])


# A slice's counted rows of a batch: its name, the rows (None: all) and their weights (None: 1).
Group = tuple[str, np.ndarray | None, np.ndarray | None]


def row_groups(rows: pl.DataFrame, slice_keys: Sequence[str], weighted: bool) -> list[Group]:
    """The slices of a batch's rows as :func:`klrank.pipeline.aggregate.slice_parts` makes them.

    ``ALL`` first, then one group per value of each slice key column, named as there; with
    weights (``WEIGHT``), only the rows of positive weight, which the sums count.
    """
    weights = rows.get_column(WEIGHT).to_numpy() if weighted else None
    counted = np.flatnonzero(weights > 0) if weights is not None else None

    def group(name: str, index: np.ndarray | None) -> Group:
        if counted is not None:
            index = counted if index is None else np.intersect1d(index, counted)
        assert weights is None or index is not None
        return name, index, None if weights is None or index is None else weights[index]

    groups = [group(ALL_ROWS, None)]
    for key in slice_keys:
        parts = rows.select(pl.col(key)).with_row_index("_i").group_by(key, maintain_order=True)
        for value, index in parts.agg(pl.col("_i")).iter_rows():
            groups.append(group(str(value), np.asarray(index, dtype=np.int64)))
    return groups


def _group_sum(group: Group, start: int, stop: int, values: np.ndarray, total: np.ndarray) -> None:
    """Add the (weighted) column sums of a block's rows of ``group`` to ``total``."""
    _, index, weights = group
    if index is None:  # one row (a huge vocabulary) is added as it is, without a temporary
        total += values[0] if values.shape[0] == 1 else values.sum(axis=0)
        return
    low, high = np.searchsorted(index, (start, stop))
    if high == low:
        return
    rows = index[low:high] - start
    if weights is None:
        total += values[rows].sum(axis=0)
    else:
        total += weights[low:high] @ values[rows]


def _group_count(
    group: Group, start: int, stop: int, label: np.ndarray, value: np.ndarray, total: np.ndarray
) -> None:
    """Add each counted row's (weighted) ``value`` to ``total`` at its label's position."""
    _, index, weights = group
    rows: slice | np.ndarray
    scale: np.ndarray | None
    if index is None:
        rows, scale = slice(None), None
    else:
        low, high = np.searchsorted(index, (start, stop))
        rows, scale = index[low:high] - start, None if weights is None else weights[low:high]
    picked = value[rows] if scale is None else value[rows] * scale
    total += np.bincount(label[rows], weights=picked, minlength=total.size)


@dataclass
class Truth:
    """One label batch's truth for the measures: P and log P (soft), a class index (hard), or both.

    ``p`` and ``log_p`` are (N, K) Float64 arrays of the :class:`Workspace`, valid until the next
    label batch is prepared on it; ``label`` is each row's class (int64), None for soft truth
    without a token column. ``p_sums`` caches the per-slice class sums of P (the same for every
    model).
    """

    width: int
    p: np.ndarray | None = None
    log_p: np.ndarray | None = None
    label: np.ndarray | None = None
    some_p_zero: np.ndarray | None = None  # (N,) bool: the row has a class with p = 0
    p_sums: dict[str, np.ndarray] = field(default_factory=dict)
    groups: list[Group] | None = None  # the batch's slices, found by the first model

    @property
    def soft(self) -> bool:
        """Whether the truth is a distribution (else a class index only)."""
        return self.p is not None


def truth_of(
    batch: pl.DataFrame, layout: Layout, workspace: Workspace
) -> tuple[Truth, dict[str, np.ndarray]]:
    """The :class:`Truth` of a label batch, and per row its entropy (nats) and P's argmax.

    Notes
    -----
    Soft labels given as logits become P and log P by the same shifted log-softmax as
    predictions (:func:`_distribution`). H(P) = −Σ p·log p over p > 0 (0·log 0 = 0); 0 for a
    hard label. P's argmax is taken on the values as given (logits or probabilities, exact in
    Float64), ties to the first class.
    """
    width, n = len(layout.classes), batch.height
    label = label_index(batch, layout) if layout.label_index_col is not None else None
    if layout.truth == "hard":
        assert label is not None
        entropy = np.zeros(n)
        return Truth(width, label=label), {"entropy": entropy, "argmax": label.astype(np.int32)}
    values = _label_values(batch, layout)
    p = workspace.array("p", (n, width))
    log_p = workspace.array("log_p", (n, width))
    entropy, argmax = np.empty(n), np.empty(n, dtype=np.int32)
    some_zero = np.empty(n, dtype=bool)
    step = block_rows(width)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        for start in range(0, n, step):
            block = slice(start, min(start + step, n))
            b = block.stop - start
            argmax[block] = _distribution(values[block], layout.label_kind, p[block], log_p[block])
            zero = workspace.array("zero_p", (b, width), bool)
            # p = 0 exactly: log p = −inf (a logit of −inf), not a probability that underflowed.
            np.equal(log_p[block], -math.inf, out=zero)
            some_zero[block] = zero.any(axis=1)
            np.equal(p[block], 0.0, out=zero)
            terms = workspace.array("terms", (b, width))
            np.multiply(p[block], log_p[block], out=terms)
            np.copyto(terms, 0.0, where=zero)
            entropy[block] = -terms.sum(axis=1)
    truth = Truth(width, p=p, log_p=log_p, label=label, some_p_zero=some_zero)
    return truth, {"entropy": entropy, "argmax": argmax}


def _label_values(batch: pl.DataFrame, layout: Layout) -> np.ndarray:
    """The soft labels' (N, K) values in the predictions' class order."""
    width = len(layout.classes)
    if layout.label_array is None:  # one column per class, read in class order
        return matrix(batch, [layout.label_prefix + c for c in layout.classes], width)
    values = matrix(batch, [layout.label_array], width)
    if (
        layout.label_classes != layout.classes
    ):  # the same classes (validated), named in another order
        values = values[:, [layout.label_classes.index(c) for c in layout.classes]]
    return values


def prepare_labels(
    batch: pl.DataFrame, layout: Layout, base: str, workspace: Workspace | None = None
) -> tuple[pl.DataFrame, Truth]:
    """Per label row, once: ``id``, slice and unit columns, entropy and argmax of P; and the truth."""
    truth, per_row = truth_of(batch, layout, workspace or Workspace())
    frame = batch.select(
        pl.col(layout.id_col).alias(ID),
        *[pl.col(c) for c in layout.slice_cols],
        *unit_columns(layout),
    ).with_columns(
        pl.Series(ENTROPY, _in_base(per_row["entropy"], base)),
        pl.Series(ARGMAX_P, per_row["argmax"], dtype=pl.Int32),
    )
    return frame, truth


def label_class_sums(
    batch: pl.DataFrame, layout: Layout, groups: Sequence[Group], workspace: Workspace | None = None
) -> dict[str, np.ndarray]:
    """Per slice of a batch of valid label rows, Σ w·p per class (for the prior's P̄).

    P only, a block at a time: no entropy, and no batch-sized P kept.
    """
    width, work = len(layout.classes), workspace or Workspace()
    if layout.truth == "hard":
        return _p_sums(Truth(width, label=label_index(batch, layout)), groups)
    values = _label_values(batch, layout)
    sums = {name: np.zeros(width) for name, _, _ in groups}
    step = block_rows(width)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        for start in range(0, batch.height, step):
            stop = min(start + step, batch.height)
            p, log_p = (
                work.array("p_block", (stop - start, width)),
                work.array("log_p_block", (stop - start, width)),
            )
            _distribution(values[start:stop], layout.label_kind, p, log_p)
            for group in groups:
                _group_sum(group, start, stop, p, sums[group[0]])
    return sums


def _p_sums(truth: Truth, groups: Sequence[Group]) -> dict[str, np.ndarray]:
    """The per-slice class sums of P, computed once a label batch (:attr:`Truth.p_sums`)."""
    if truth.p_sums:
        return truth.p_sums
    sums = {name: np.zeros(truth.width) for name, _, _ in groups}
    if truth.p is None:
        assert truth.label is not None
        ones = np.ones(truth.label.size)
        for group in groups:
            _group_count(group, 0, truth.label.size, truth.label, ones, sums[group[0]])
    else:
        n = truth.p.shape[0]
        step = block_rows(truth.width)
        for start in range(0, n, step):
            stop = min(start + step, n)
            for group in groups:
                _group_sum(group, start, stop, truth.p[start:stop], sums[group[0]])
    truth.p_sums.update(sums)
    return truth.p_sums


def measure(
    truth: Truth,
    batch: pl.DataFrame,
    layout: Layout,
    epsilon: float,
    groups: Sequence[Group],
    workspace: Workspace | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """One model's batch against the truth: per-row measures (nats) and per-slice class sums.

    Returns ``kl``, ``reverse_kl``, ``js`` (nats), ``argmax_q`` and, with a token column,
    ``nll``, ``_label_nll`` (nats) and ``delta_p``; and per group name the class sums of P, Q
    and the KL terms p·(log p − log q) over its counted rows (weighted).

    Notes
    -----
    Element by element as :mod:`klrank.pipeline.divergence`: a term with x = 0 of
    x·(log x − log y) is 0 whatever y is, p > 0 with q = 0 is +inf; JS compares each side with
    log m = log(p + q) − log 2 and a class with p = q adds exactly 0; D(Q‖P) of logits is +inf
    wherever some p = 0 has a logit above −inf (:func:`_softmax_support`). A hard label is P
    one-hot at the label, read by index: D(P‖Q) = −log q(label), D(Q‖P) is +inf as soon as a
    class other than the label has q > 0 (a logit above −inf), and JS's terms are those of the
    one-hot P.

    The token measures read the row's label: nll = −log q(label), delta_p = q(label) − p(label),
    and the base's own −log p(label) (+inf where p(label) = 0).
    """
    work = workspace or Workspace()
    width, n = truth.width, batch.height
    values = matrix(batch, layout.prediction_cols, width)
    kind = layout.prediction_kind
    kl, reverse, js = np.empty(n), np.empty(n), np.empty(n)
    argmax_q = np.empty(n, dtype=np.int32)
    token = truth.label is not None and truth.soft
    q_at, log_q_at, p_at, log_p_at = (np.empty(n) for _ in range(4))
    p_sums = _p_sums(truth, groups)
    q_sums: dict[str, np.ndarray] = {name: np.zeros(width) for name, _, _ in groups}
    kl_sums: dict[str, np.ndarray] = {name: np.zeros(width) for name, _, _ in groups}
    step = block_rows(width)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        for start in range(0, n, step):
            stop = min(start + step, n)
            b, block = stop - start, slice(start, stop)
            q, log_q = work.array("q", (b, width)), work.array("log_q", (b, width))
            argmax_q[block] = _distribution(values[block], kind, q, log_q, epsilon)
            rows = np.arange(b)
            if truth.label is not None:
                at = truth.label[block]
                q_at[block], log_q_at[block] = q[rows, at], log_q[rows, at]
            if truth.soft:
                assert truth.p is not None and truth.log_p is not None
                p, log_p = truth.p[block], truth.log_p[block]
                kl[block], terms = _soft_block(p, log_p, q, log_q, work, reverse[block], js[block])
                if kind == "logit":
                    assert truth.some_p_zero is not None
                    _softmax_support(log_p, log_q, truth.some_p_zero[block], reverse[block])
                if token:
                    p_at[block], log_p_at[block] = p[rows, at], log_p[rows, at]
                for group in groups:
                    _group_sum(group, start, stop, terms, kl_sums[group[0]])
            else:
                q_zero = work.array("zero_q", (b, width), bool)
                np.equal(q, 0.0, out=q_zero)
                kl[block] = -log_q_at[block]
                _hard_block(
                    at, q_at[block], log_q_at[block], q, log_q, q_zero, work, kind,
                    reverse[block], js[block],
                )  # fmt: skip
                for group in groups:
                    _group_count(group, start, stop, at, kl[block], kl_sums[group[0]])
            for group in groups:
                _group_sum(group, start, stop, q, q_sums[group[0]])
    out: dict[str, np.ndarray] = {"kl": kl, "reverse_kl": reverse, "js": js, "argmax_q": argmax_q}
    if token:
        out |= {"nll": -log_q_at, "delta_p": q_at - p_at, "_label_nll": -log_p_at}
    sums = {name: (p_sums[name], q_sums[name], kl_sums[name]) for name, _, _ in groups}
    return out, sums


def _soft_block(
    p: np.ndarray,
    log_p: np.ndarray,
    q: np.ndarray,
    log_q: np.ndarray,
    work: Workspace,
    reverse: np.ndarray,
    js: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A block's row sums of D(P‖Q) (returned with its terms), D(Q‖P) and JS, in nats.

    Notes
    -----
    First without the x = 0 cases: a term x·(log x − log y) with x = 0 is 0·(finite) = 0 where
    log x is finite (a probability that underflowed from logits), and NaN only where log x or
    log y is infinite. Every other term is the same expression as the masked one, so a row
    without NaN has the masked row's value; the rows with a NaN (exact zeros in
    probabilities, say) are computed again with the masks (:func:`_masked_block`).
    """
    shape = p.shape
    terms, scratch = work.array("terms", shape), work.array("scratch", shape)
    np.subtract(log_p, log_q, out=scratch)
    np.multiply(scratch, p, out=terms)  # p·(log p − log q)
    np.multiply(scratch, q, out=scratch)  # −q·(log q − log p)
    reverse[:] = -scratch.sum(axis=1)  # −Σ(−x) is Σx exactly
    kl = terms.sum(axis=1)
    log_m = work.array("log_m", shape)
    np.add(p, q, out=log_m)
    np.log(log_m, out=log_m)
    np.subtract(log_m, LOG_2, out=log_m)
    np.subtract(log_p, log_m, out=scratch)  # p's side: p·(log p − log m)
    np.multiply(scratch, p, out=scratch)
    np.subtract(log_q, log_m, out=log_m)  # q's side: q·(log q − log m)
    np.multiply(log_m, q, out=log_m)
    np.add(scratch, log_m, out=scratch)
    same = work.array("same", shape, bool)
    np.equal(p, q, out=same)
    if same.any():  # a class with p = q adds exactly 0 (rare but for a model equal to P)
        np.copyto(scratch, 0.0, where=same)
    js[:] = scratch.sum(axis=1) * 0.5
    bad = np.flatnonzero(np.isnan(kl) | np.isnan(reverse) | np.isnan(js))
    if bad.size:
        masked = _masked_block(p[bad], log_p[bad], q[bad], log_q[bad])
        kl[bad], reverse[bad], js[bad] = masked[0], masked[1], masked[2]
        terms[bad] = masked[3]
    return kl, terms


def _softmax_support(
    log_p: np.ndarray, log_q: np.ndarray, some_p_zero: np.ndarray, reverse: np.ndarray
) -> None:
    """Set D(Q‖P) to +inf on a block's rows where Q from logits is above 0 at some p = 0.

    A softmax is 0 only at a logit of −inf (log q = −inf); elsewhere q > 0, even where it
    rounded to 0.0 in Float64, and a class with p = 0 then makes D(Q‖P) infinite. Only the rows
    with some p = 0 (``some_p_zero``) are looked at.
    """
    rows = np.flatnonzero(some_p_zero)
    if rows.size:
        supported = (log_p[rows] == -math.inf) & (log_q[rows] > -math.inf)
        reverse[rows[supported.any(axis=1)]] = math.inf


def _masked_block(
    p: np.ndarray, log_p: np.ndarray, q: np.ndarray, log_q: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows' D(P‖Q), D(Q‖P), JS and KL terms with every x = 0 term set to 0 (nats)."""
    p_zero, q_zero = p == 0.0, q == 0.0
    terms = np.where(p_zero, 0.0, p * (log_p - log_q))
    reverse = np.where(q_zero, 0.0, q * (log_q - log_p)).sum(axis=1)
    log_m = np.log(p + q) - LOG_2
    sides = np.where(p_zero, 0.0, p * (log_p - log_m)) + np.where(q_zero, 0.0, q * (log_q - log_m))
    js = np.where(p == q, 0.0, sides).sum(axis=1) * 0.5
    return terms.sum(axis=1), reverse, js, terms


def _hard_block(
    label: np.ndarray,
    q_at: np.ndarray,
    log_q_at: np.ndarray,
    q: np.ndarray,
    log_q: np.ndarray,
    q_zero: np.ndarray,
    work: Workspace,
    kind: str,
    reverse: np.ndarray,
    js: np.ndarray,
) -> None:
    """A block's D(Q‖P) and JS against one-hot P at ``label``, read by index (nats)."""
    if kind == "logit":  # a softmax is above 0 wherever the logit is above −inf
        elsewhere = (log_q > -math.inf).sum(axis=1) - (log_q_at > -math.inf)
    else:
        elsewhere = (~q_zero).sum(axis=1) - (q_at > 0)
    at_label = np.where(q_at > 0, q_at * log_q_at, 0.0)  # q·(log q − log 1)
    reverse[:] = np.where(elsewhere > 0, math.inf, at_label)
    # Off the label p = 0, so a term is q·(log q − log m) with log m = log q − log 2, or 0.
    scratch = work.array("scratch", q.shape)
    np.log(q, out=scratch)
    np.subtract(scratch, LOG_2, out=scratch)
    np.subtract(log_q, scratch, out=scratch)
    np.multiply(scratch, q, out=scratch)
    np.copyto(scratch, 0.0, where=q_zero)
    # At the label p = 1: (0 − log m) + q·(log q − log m), log m = log(1 + q) − log 2; 0 if q = 1.
    log_m = np.log(1.0 + q_at)
    log_m -= LOG_2
    own = np.where(q_at > 0, q_at * (log_q_at - log_m), 0.0)
    scratch[np.arange(label.size), label] = np.where(q_at == 1.0, 0.0, (0.0 - log_m) + own)
    js[:] = scratch.sum(axis=1) * 0.5


def share(truth: Truth, labels: pl.DataFrame, layout: Layout, slice_keys: Sequence[str]) -> None:
    """Find what every model's measures share (the slices, the class sums of P) once, up front.

    After this, :func:`row_measures` only reads ``truth``: models may be measured side by side.
    """
    if truth.groups is None:
        truth.groups = row_groups(labels, slice_keys, layout.weight_col is not None)
    _p_sums(truth, truth.groups)


def row_measures(
    labels: pl.DataFrame,
    truth: Truth,
    batch: pl.DataFrame,
    layout: Layout,
    *,
    base: str,
    epsilon: float,
    slice_keys: Sequence[str],
    workspace: Workspace | None = None,
) -> tuple[pl.DataFrame, ClassSums]:
    """The prepared label rows with a model's measures added, and its per-slice class sums.

    ``labels`` come from :func:`prepare_labels` with their slice key columns; the measures are
    kl, reverse_kl, js, cross_entropy (in ``base`` units) and top1_match, and with a token
    column :data:`TOKEN_MEASURES`. The class sums are for
    :func:`klrank.pipeline.aggregate.partial_states`, by slice name.
    """
    if truth.groups is None:
        truth.groups = row_groups(labels, slice_keys, layout.weight_col is not None)
    values, sums = measure(truth, batch, layout, epsilon, truth.groups, workspace)
    top1 = values.pop("argmax_q") == labels.get_column(ARGMAX_P).to_numpy()
    measured = [
        pl.Series(name, _in_base(values[name], base)) for name in ("kl", "reverse_kl", "js")
    ]
    measured.append(pl.Series("top1_match", top1))
    if "nll" in values:
        measured += [
            pl.Series("nll", _in_base(values["nll"], base)),
            pl.Series("delta_p", values["delta_p"]),
            pl.Series("_label_nll", _in_base(values["_label_nll"], base)),
        ]
    rows = labels.with_columns(measured).with_columns(
        (pl.col(ENTROPY) + pl.col("kl")).alias("cross_entropy")
    )

    def class_sums(name: str, rows: pl.DataFrame) -> tuple[Floats, Floats, Floats]:
        return sums[name]

    return rows, class_sums


def prior_kl(
    truth: Truth, table: np.ndarray, row_of: np.ndarray, workspace: Workspace | None = None
) -> np.ndarray:
    """Each row's D(P‖P̄) in nats, P̄ = ``table[row_of[i]]`` (log P̄ per class); NaN where -1.

    Notes
    -----
    The terms follow D(P‖Q)'s conventions: 0·log(0/q) = 0, p > 0 against P̄ = 0 is +inf. A hard
    label's is −log P̄(label), read by index.
    """
    known = row_of >= 0
    rows = np.where(known, row_of, 0)
    if truth.p is None or truth.log_p is None:
        assert truth.label is not None
        kl = -table[rows, truth.label] if table.size else np.full(row_of.size, math.nan)
        return np.where(known, kl, math.nan)
    work = workspace or Workspace()
    n, width = truth.p.shape
    kl = np.full(n, math.nan)
    step = block_rows(width)
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, n, step):
            stop = min(start + step, n)
            b = stop - start
            terms = work.array("terms", (b, width))
            zero = work.array("zero_p", (b, width), bool)
            np.subtract(truth.log_p[start:stop], table[rows[start:stop]], out=terms)
            np.multiply(terms, truth.p[start:stop], out=terms)
            np.equal(truth.p[start:stop], 0.0, out=zero)
            np.copyto(terms, 0.0, where=zero)
            kl[start:stop] = terms.sum(axis=1)
    return np.where(known, kl, math.nan)
