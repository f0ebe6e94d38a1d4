"""Which columns of the inputs hold what, and the prepared frames the measures are computed on.

Class columns are found by prefix (``prob_<class>``, ``logit_<class>``); the classes are put in one
canonical order (integer-like names numerically, then the rest as strings) so that the order of
columns in the files never matters. Internally the class at position ``i`` lives in ``_p{i}``,
``_lp{i}`` (log p), ``_q{i}`` and ``_lq{i}`` (log q).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl
from klrank.pipeline import divergence
from klrank.pipeline.errors import UsageError
from klrank.schemas.outputs import MEASURE_COLUMNS as MEASURE_COLUMNS
from klrank.schemas.outputs import ROW_COLUMNS as ROW_COLUMNS
from klrank.schemas.outputs import TOKEN_COLUMNS as TOKEN_COLUMNS
from klrank.schemas.outputs import WORST_ROW_COLUMNS as WORST_ROW_COLUMNS

Truth = Literal["hard", "soft"]
PredictionKind = Literal["prob", "logit"]

ID, MODEL = "id", "model"
ROW = "__klrank_row"  # 0-based position of a row in its input
WEIGHT = "_w"  # a prepared label row's weight (Float64), with --weight-col
CLUSTER = "_cluster"  # a prepared label row's cluster key, with --cluster-by
# Above this many classes the measures run on arrays: one expression per class stops paying.
MAX_CLASS_COLUMNS = 64
# Bytes of one N × K Float64 array of a batch (--batch-bytes): 10 million values.
DEFAULT_BATCH_BYTES = 80_000_000


def p_col(i: int) -> str:
    """Internal column of the true probability of class ``i``."""
    return f"_p{i}"


def log_p_col(i: int) -> str:
    """Internal column of log p for class ``i``."""
    return f"_lp{i}"


def q_col(i: int) -> str:
    """Internal column of the predicted probability of class ``i``."""
    return f"_q{i}"


def log_q_col(i: int) -> str:
    """Internal column of log q for class ``i``."""
    return f"_lq{i}"


def kl_term_col(i: int) -> str:
    """Internal column of class ``i``'s term p·(log p − log q) of D(P‖Q), in nats."""
    return f"_kt{i}"


@dataclass(frozen=True)
class Layout:
    """Where the id, model, truth, prediction and slice columns are, and the classes, in order."""

    id_col: str
    model_col: str
    truth: Truth
    label_col: str | None
    label_prefix: str
    label_classes: tuple[str, ...]
    prediction_kind: PredictionKind
    prediction_prefix: str
    classes: tuple[str, ...]
    slice_cols: tuple[str, ...]
    label_array: str | None = None  # soft labels as one Array/List column, class = position
    prediction_array: str | None = None  # predictions as one Array/List column
    weight_col: str | None = None  # a labels column of row weights (--weight-col)
    cluster_col: str | None = None  # a labels column of cluster keys (--cluster-by)
    label_kind: PredictionKind = "prob"  # soft labels given as probabilities or as logits
    token_col: str | None = None  # soft truth's labels column of the token that came next

    @property
    def label_prob_cols(self) -> list[str]:
        """The soft-label columns in the files (the array column, or one per class).

        Probabilities or logits (``label_kind``), despite the name.
        """
        if self.truth != "soft":
            return []
        if self.label_array is not None:
            return [self.label_array]
        return [self.label_prefix + c for c in self.label_classes]

    @property
    def label_index_col(self) -> str | None:
        """The labels column naming one class per row: the hard label, or soft truth's token."""
        return self.label_col if self.truth == "hard" else self.token_col

    @property
    def prediction_cols(self) -> list[str]:
        """The prediction columns in the files (the array column, or one per class in order)."""
        if self.prediction_array is not None:
            return [self.prediction_array]
        return [self.prediction_prefix + c for c in self.classes]

    @property
    def uses_arrays(self) -> bool:
        """Whether the measures run on class arrays.

        For an array input, more classes than :data:`MAX_CLASS_COLUMNS`, soft labels given as
        logits, or soft truth with a token column (the token measures exist only there).
        """
        return (
            self.label_array is not None
            or self.prediction_array is not None
            or len(self.classes) > MAX_CLASS_COLUMNS
            or self.label_kind == "logit"
            or self.token_col is not None
        )


def class_order(classes: Sequence[str]) -> tuple[str, ...]:
    """Canonical class order: integer-like names by value, then the others as strings."""

    def key(name: str) -> tuple[int, int, str]:
        try:
            return (0, int(name), "")
        except ValueError:
            return (1, 0, name)

    return tuple(sorted(set(classes), key=key))


def classes_with_prefix(columns: Sequence[str], prefix: str) -> tuple[str, ...]:
    """Class names of the columns named ``<prefix><class>``, in canonical order."""
    return class_order(
        [c[len(prefix) :] for c in columns if c.startswith(prefix) and len(c) > len(prefix)]
    )


def _array_column(schema: Mapping[str, pl.DataType], prefix: str) -> str | None:
    """The ``prob``/``logit`` column (the prefix without its trailing ``_``) if it is a list."""
    name = prefix.rstrip("_")
    dtype = schema.get(name)
    return name if dtype is not None and isinstance(dtype, pl.Array | pl.List) else None


def _array_classes(
    dtype: pl.DataType, name: str, classes: Sequence[str] | None, list_width: Mapping[str, int]
) -> tuple[str, ...]:
    width = dtype.size if isinstance(dtype, pl.Array) else list_width.get(name, 0)
    if classes:
        if isinstance(dtype, pl.Array) and width != len(classes):
            raise UsageError(f"--classes names {len(classes)} classes but {name!r} holds {width}")
        return tuple(classes)
    return tuple(str(i) for i in range(width))


def resolve_layout(
    label_schema: Mapping[str, pl.DataType],
    prediction_schema: Mapping[str, pl.DataType],
    *,
    id_col: str,
    model_col: str,
    label_col: str,
    truth: Literal["auto", "hard", "soft"],
    prob_prefix: str,
    logit_prefix: str,
    slice_by: Sequence[str],
    classes: Sequence[str] | None = None,
    label_list_width: Mapping[str, int] | None = None,
    prediction_list_width: Mapping[str, int] | None = None,
    weight_col: str | None = None,
    cluster_col: str | None = None,
) -> Layout:
    """Decide from the columns and dtypes what kind of truth and predictions the inputs hold.

    Distributions are either one column per class (``prob_<class>``, ``logit_<class>``) or one
    Array/List column named like the prefix without its ``_`` (``prob``, ``logit``), where a
    class is a position, named by ``classes`` or ``"0"``..``"K-1"``. ``*_list_width`` give the
    length of each List column's first row, per input (an Array's width is in its dtype).

    Raises
    ------
    UsageError
        When no distribution columns are found, the predictions hold both probabilities and
        logits, or a slice, weight or cluster column is missing or clashes with an output
        column.
    """
    label_columns, prediction_columns = list(label_schema), list(prediction_schema)
    prob_array = _array_column(prediction_schema, prob_prefix)
    logit_array = _array_column(prediction_schema, logit_prefix)
    prob_classes = classes_with_prefix(prediction_columns, prob_prefix)
    logit_classes = classes_with_prefix(prediction_columns, logit_prefix)
    found = [
        bool(prob_classes),
        bool(logit_classes),
        prob_array is not None,
        logit_array is not None,
    ]
    if sum(found) > 1:
        raise UsageError(
            f"predictions hold more than one kind of distribution ({prob_prefix}*, "
            f"{logit_prefix}*, array columns); keep one"
        )
    if not any(found):
        raise UsageError(
            f"no distribution columns found in predictions: expected {prob_prefix}<class> "
            f"or {logit_prefix}<class> columns, or one {prob_prefix.rstrip('_')!r} or "
            f"{logit_prefix.rstrip('_')!r} Array/List column (see --prob-prefix, --logit-prefix)"
        )
    kind: PredictionKind = "prob" if prob_classes or prob_array else "logit"
    prediction_array = prob_array or logit_array
    if prediction_array is not None:
        prediction_classes = _array_classes(
            prediction_schema[prediction_array],
            prediction_array,
            classes,
            prediction_list_width or {},
        )
    else:
        prediction_classes = prob_classes or logit_classes

    label_kind, label_prefix, label_array, soft_classes = _label_distribution(
        label_schema, prob_prefix, logit_prefix, classes, label_list_width or {}
    )
    if truth == "auto":
        truth = "soft" if soft_classes else "hard"
    if truth == "soft" and not soft_classes:
        raise UsageError(
            f"no distribution columns found in labels: expected {prob_prefix}<class> or "
            f"{logit_prefix}<class> columns or a {prob_prefix.rstrip('_')!r} or "
            f"{logit_prefix.rstrip('_')!r} array for soft labels, or --truth hard with a "
            f"{label_col!r} column"
        )
    if truth == "hard" and label_col not in label_columns:
        raise UsageError(
            f"labels have no {label_col!r} column for hard labels (see --label-col) and no "
            f"{prob_prefix}<class> or {logit_prefix}<class> columns for soft labels"
        )
    token_col = label_col if truth == "soft" and label_col in label_columns else None
    if token_col is not None and isinstance(label_schema[token_col], pl.List | pl.Array):
        raise UsageError(f"labels column {token_col!r} is a list: it must name one class a row")
    published = (*ROW_COLUMNS, *WORST_ROW_COLUMNS, *(TOKEN_COLUMNS if token_col else ()))

    for name in slice_by:
        if name not in label_columns:
            raise UsageError(f"--slice-by {name!r}: no such column in the labels")
        if isinstance(label_schema[name], pl.List | pl.Array):
            raise UsageError(f"--slice-by {name!r}: a list column cannot name a slice")
        if name in published or name.startswith("_"):
            raise UsageError(f"--slice-by {name!r}: the name clashes with an output column")
    for option, unit_col in (("--weight-col", weight_col), ("--cluster-by", cluster_col)):
        if unit_col is None:
            continue
        if unit_col not in label_columns:
            raise UsageError(f"{option} {unit_col!r}: no such column in the labels")
        if isinstance(label_schema[unit_col], pl.List | pl.Array):
            raise UsageError(f"{option} {unit_col!r}: a list column cannot be used")

    return Layout(
        id_col=id_col,
        model_col=model_col,
        truth=truth,
        label_col=label_col if truth == "hard" else None,
        label_prefix=label_prefix,
        label_classes=soft_classes if truth == "soft" else (),
        prediction_kind=kind,
        prediction_prefix=prob_prefix if kind == "prob" else logit_prefix,
        classes=prediction_classes,
        slice_cols=tuple(dict.fromkeys(slice_by)),
        label_array=label_array if truth == "soft" else None,
        prediction_array=prediction_array,
        weight_col=weight_col,
        cluster_col=cluster_col,
        label_kind=label_kind if truth == "soft" else "prob",
        token_col=token_col,
    )


def _label_distribution(
    schema: Mapping[str, pl.DataType],
    prob_prefix: str,
    logit_prefix: str,
    classes: Sequence[str] | None,
    list_width: Mapping[str, int],
) -> tuple[PredictionKind, str, str | None, tuple[str, ...]]:
    """The labels' distribution: its kind, prefix, array column (if one) and classes.

    Probabilities or logits, one column per class or one Array/List column, as predictions
    hold them; no classes when the labels hold none.

    Raises
    ------
    UsageError
        When the labels hold more than one kind of distribution.
    """
    found: list[tuple[PredictionKind, str, str | None, tuple[str, ...]]] = []
    kinds: tuple[tuple[PredictionKind, str], ...] = (("prob", prob_prefix), ("logit", logit_prefix))
    for kind, prefix in kinds:
        array = _array_column(schema, prefix)
        if array is not None:
            found.append(
                (kind, prefix, array, _array_classes(schema[array], array, classes, list_width))
            )
        named = classes_with_prefix(list(schema), prefix)
        if named:
            found.append((kind, prefix, None, named))
    if len(found) > 1:
        raise UsageError(
            f"labels hold more than one kind of distribution ({prob_prefix}*, {logit_prefix}*, "
            "array columns); keep one"
        )
    return found[0] if found else ("prob", prob_prefix, None, ())


ENTROPY, ARGMAX_P = "entropy", "_argmax_p"
LOG_SUM = "_log_sum"  # log Σ exp(z − max z) of a row of logits


def prepare_labels(labels: pl.LazyFrame, layout: Layout, base: str) -> pl.LazyFrame:
    """Per label row, everything that does not depend on a model, computed once.

    ``id``, the slice columns, p and log p per class (Float64), the entropy H(P) in ``base``
    units and the position of P's most likely class.
    """
    if layout.truth == "hard":
        assert layout.label_col is not None
        label = pl.col(layout.label_col).cast(pl.String)
        p = [(label == c).cast(pl.Float64) for c in layout.classes]
    else:
        p = [pl.col(layout.label_prefix + c).cast(pl.Float64) for c in layout.classes]
    n = len(p)
    p_cols = [pl.col(p_col(i)) for i in range(n)]
    log_p_cols = [pl.col(log_p_col(i)) for i in range(n)]
    return (
        labels.select(
            pl.col(layout.id_col).alias(ID),
            *[pl.col(c) for c in layout.slice_cols],
            *unit_columns(layout),
            *[pi.alias(p_col(i)) for i, pi in enumerate(p)],
        )
        .with_columns(pl.col(p_col(i)).log().alias(log_p_col(i)) for i in range(n))
        .with_columns(
            divergence.to_base(divergence.entropy(p_cols, log_p_cols), base).alias(ENTROPY),
            divergence.argmax_index(p_cols).alias(ARGMAX_P),
        )
    )


def unit_columns(layout: Layout) -> list[pl.Expr]:
    """A label row's weight (``WEIGHT``) and cluster key (``CLUSTER``), where the run has them."""
    columns = []
    if layout.weight_col is not None:
        columns.append(pl.col(layout.weight_col).cast(pl.Float64).alias(WEIGHT))
    if layout.cluster_col is not None:
        columns.append(pl.col(layout.cluster_col).alias(CLUSTER))
    return columns


def prepare_predictions(predictions: pl.LazyFrame, layout: Layout, epsilon: float) -> pl.LazyFrame:
    """Q and log Q per class, in Float64, smoothed only if ``epsilon`` > 0."""
    columns = [pl.col(c).cast(pl.Float64) for c in layout.prediction_cols]
    if layout.prediction_kind == "logit":
        # divergence.log_softmax in three steps, each its own columns: as one expression per
        # class, every class repeats the row's max and log-sum (K² terms a row, and K³ nodes
        # for the optimiser, seconds per batch at 64 classes), which polars does not share.
        log_q = [pl.col(log_q_col(i)) for i in range(len(columns))]
        predictions = (
            predictions.select(
                s.alias(log_q_col(i)) for i, s in enumerate(divergence.shifted_logits(columns))
            )
            .with_columns(divergence.log_sum_exp_of_shifted(log_q).alias(LOG_SUM))
            .select(lq - pl.col(LOG_SUM) for lq in log_q)
        )
        q = [lq.exp() for lq in log_q]
    else:
        q, log_q = columns, [qi.log() for qi in columns]
    if epsilon > 0:
        q = divergence.smoothed(q, epsilon)
        log_q = [qi.log() for qi in q]
    return predictions.select(
        *[qi.alias(q_col(i)) for i, qi in enumerate(q)],
        *[lq.alias(log_q_col(i)) for i, lq in enumerate(log_q)],
    )


def kl_terms(layout: Layout) -> list[pl.Expr]:
    """Each class's term of D(P‖Q) in nats, as its own column (:func:`kl_term_col`).

    :func:`row_measures` sums these into ``kl``, and the per-class sums over rows are the
    classes' contributions to the mean KL, so the two agree to the last bit of each term.
    """
    n = len(layout.classes)
    terms = divergence.kl_terms(
        [pl.col(p_col(i)) for i in range(n)],
        [pl.col(log_p_col(i)) for i in range(n)],
        [pl.col(log_q_col(i)) for i in range(n)],
    )
    return [term.alias(kl_term_col(i)) for i, term in enumerate(terms)]


def row_measures(layout: Layout, base: str) -> list[pl.Expr]:
    """The per-model measures of a row, in ``base`` units, from prepared label and prediction columns.

    ``kl`` is the sum of the :func:`kl_terms` columns, which must exist already; cross-entropy
    follows from these (:func:`cross_entropy`).
    """
    n = len(layout.classes)
    p = [pl.col(p_col(i)) for i in range(n)]
    log_p = [pl.col(log_p_col(i)) for i in range(n)]
    q = [pl.col(q_col(i)) for i in range(n)]
    log_q = [pl.col(log_q_col(i)) for i in range(n)]
    # The same fold over the same terms as divergence.kl_divergence: the same floats.
    kl = divergence.sum_terms([pl.col(kl_term_col(i)) for i in range(n)])
    reverse = divergence.reverse_kl_divergence(
        q, log_q, log_p, q_has_full_support=layout.prediction_kind == "logit"
    )
    return [
        divergence.to_base(kl, base).alias("kl"),
        divergence.to_base(reverse, base).alias("reverse_kl"),
        divergence.to_base(divergence.jensen_shannon_divergence(p, log_p, q, log_q), base).alias(
            "js"
        ),
        (divergence.argmax_index(log_q) == pl.col(ARGMAX_P)).alias("top1_match"),
    ]


def cross_entropy() -> pl.Expr:
    """H(P,Q) = H(P) + D(P‖Q), from the columns :func:`row_measures` and the labels made.

    A sum of two non-negative terms loses nothing; it is the other way round, D = H(P,Q) − H(P),
    that cancels badly when D is much smaller than H.
    """
    return (pl.col(ENTROPY) + pl.col("kl")).alias("cross_entropy")
