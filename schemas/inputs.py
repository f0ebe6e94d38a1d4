"""Pandera schemas of the two inputs: labels (hard or soft truth) and model predictions.

The column names and class set vary per run, so each schema is declared by a function of them.
A schema declares every used column's dtype (no coercion, ``strict=True`` on the selected
columns; other columns in the files are ignored) and the **row rules** of the contract: one named
Polars expression per (column, check), true where a row passes. Pandera runs the rules as one
fused check, so validating a batch is one pass over it however many classes there are; when it
fails, :func:`row_rules` tells which rule failed for which rows. The rules that span rows (unique
keys, each model covering the label ids) are checked across batches in ``klrank.pipeline.validation``.

Which dtype of an accepted set a column declares is taken from the data (``accepted_dtype``),
so Float16, Float32 and Float64 all pass while a probability stored as a string fails the dtype
check. Every sum and comparison is made in Float64.
"""

import math
from collections.abc import Sequence

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

FLOAT_DTYPES: tuple[pl.DataType, ...] = (pl.Float16(), pl.Float32(), pl.Float64())
INTEGER_DTYPES: tuple[pl.DataType, ...] = (
    pl.Int8(), pl.Int16(), pl.Int32(), pl.Int64(),
    pl.UInt8(), pl.UInt16(), pl.UInt32(), pl.UInt64(),
)  # fmt: skip
KEY_DTYPES: tuple[pl.DataType, ...] = (*INTEGER_DTYPES, pl.String())

# Check names, as they appear in messages and in the failure cases.
NOT_NULLABLE = "not_nullable"
IN_RANGE = "in_range(0.0, 1.0)"
ROWS_SUM_TO_ONE = "rows_sum_to_one"
KNOWN_LABEL = "known_label"
FINITE = "finite"  # logits: no NaN or +inf (−inf is a probability of 0)
SOME_LOGIT_FINITE = "some_logit_finite"  # a row of logits that are all −inf has no distribution
LIST_LENGTH = "list_length"
WEIGHT_RULE = "weight_finite_non_negative"
WEIGHT_DTYPES: tuple[pl.DataType, ...] = (*FLOAT_DTYPES, *INTEGER_DTYPES)
ROW_RULES = "row_rules"
# Beyond this many per-class columns the fused check tests them as one array.
MAX_RULE_COLUMNS = 64

# A rule: (column or None for a whole-row rule, check name) -> expression true where rows pass.
Rules = dict[tuple[str | None, str], pl.Expr]


def accepted_dtype(
    actual: pl.DataType | None, accepted: Sequence[pl.DataType], default: pl.DataType
) -> pl.DataType:
    """The dtype a column should declare: its own if accepted, else ``default`` (which fails)."""
    return actual if actual is not None and actual in accepted else default


def _present(column: str, dtype: pl.DataType | None) -> pl.Expr:
    value = pl.col(column)
    if dtype is not None and dtype.is_float():
        return value.is_not_null() & value.is_not_nan()  # NaN is a missing value here too
    return value.is_not_null()


def array_dtypes(width: int) -> tuple[pl.DataType, ...]:
    """The accepted dtypes of a distribution held in one column: float Arrays or Lists."""
    return (
        *(pl.Array(dtype, width) for dtype in (pl.Float64, pl.Float32, pl.Float16)),
        *(pl.List(dtype) for dtype in (pl.Float64, pl.Float32, pl.Float16)),
    )


def is_array(dtype: pl.DataType | None) -> bool:
    """Whether a column holds a whole distribution (an Array or a List)."""
    return isinstance(dtype, pl.Array | pl.List)


class _Elements:
    """Row-wise min, max, sum, null and NaN tests and length of an Array or List column.

    Min and max are taken in the column's own float dtype (exact, and without a Float64 copy
    of the batch); the sum in Float64, like all arithmetic here: a Float32 sum of a thousand
    values drifts.
    """

    def __init__(self, expr: pl.Expr, dtype: pl.DataType | None) -> None:
        self.native = expr
        if isinstance(dtype, pl.Array):
            expr = expr.cast(pl.Array(pl.Float64, dtype.size))
        elif isinstance(dtype, pl.List):
            expr = expr.cast(pl.List(pl.Float64))
        self.namespace = expr.arr if isinstance(dtype, pl.Array) else expr.list
        self.native_namespace = self.native.arr if isinstance(dtype, pl.Array) else self.native.list
        self.column, self.is_list = expr, isinstance(dtype, pl.List)
        self.width = dtype.size if isinstance(dtype, pl.Array) else 0

    def has_null(self) -> pl.Expr:
        """Whether a row holds a null element (false for a null row)."""
        if self.is_list:
            return self.namespace.contains(None).fill_null(False)
        # An Array's elements lie flat in row order: one vectorised test instead of a search.
        flat = self.native.reshape((-1,))
        return flat.is_null().reshape((-1, self.width)).arr.any().fill_null(False)

    def has_nan(self) -> pl.Expr:
        """Whether a row holds a NaN element (false for a null row)."""
        if self.is_list:  # NaN shows in the sum (min and max skip it)
            return self.namespace.sum().is_nan().fill_null(False)
        flat = self.native.reshape((-1,))
        return flat.is_nan().reshape((-1, self.width)).arr.any().fill_null(False)

    def min(self) -> pl.Expr:
        """Each row's smallest element, NaN and nulls skipped."""
        return self.native_namespace.min()

    def max(self) -> pl.Expr:
        """Each row's largest element, NaN and nulls skipped."""
        return self.native_namespace.max()

    def summary(self) -> pl.Expr:
        """Text showing a row's range and sum, for failure messages."""
        ns = self.namespace
        return pl.format("min {} max {} sum {}", ns.min(), ns.max(), ns.sum())


def _array_rules(
    column: str,
    dtype: pl.DataType | None,
    width: int,
    kind: str,
    tolerance: float,
) -> Rules:
    # Per-row min and max test every element at once, NaN is looked for on its own (min and
    # max skip it), and only probabilities are summed. Nulls inside a row fail not_nullable;
    # other rules pass on null rows.
    elements = _Elements(pl.col(column), dtype)
    no_nan = ~elements.has_nan()
    rules: Rules = {
        (column, NOT_NULLABLE): elements.native.is_not_null() & ~elements.has_null() & no_nan
    }
    if elements.is_list:
        rules[(column, LIST_LENGTH)] = (elements.namespace.len() == width).fill_null(True)
    if kind == "logit":
        rules[(column, FINITE)] = ((elements.max() < math.inf) & no_nan).fill_null(True)
        rules[(column, SOME_LOGIT_FINITE)] = (elements.max() > -math.inf).fill_null(True)
        return rules
    in_range = (elements.min() >= 0.0) & (elements.max() <= 1.0) & no_nan
    rules[(column, IN_RANGE)] = in_range.fill_null(True)
    total = elements.namespace.sum()
    rules[(None, ROWS_SUM_TO_ONE)] = ((total - 1.0).abs() <= tolerance).fill_null(True)
    return rules


def failing_value(column: str, dtype: pl.DataType | None) -> pl.Expr:
    """How a failing cell is shown: its value, or for a whole distribution its range and sum."""
    if is_array(dtype):
        return _Elements(pl.col(column), dtype).summary()
    return pl.col(column).cast(pl.String)


def _probability_rules(
    schema: pl.Schema, columns: Sequence[str], width: int, tolerance: float
) -> Rules:
    if len(columns) == 1 and is_array(schema.get(columns[0])):
        return _array_rules(columns[0], schema.get(columns[0]), width, "prob", tolerance)
    rules: Rules = {}
    for c in columns:
        rules[(c, NOT_NULLABLE)] = _present(c, schema.get(c))
        # A null is reported once, by not_nullable; NaN fails both (it is not in [0, 1]).
        rules[(c, IN_RANGE)] = pl.col(c).is_between(0.0, 1.0).fill_null(True)
    total = pl.sum_horizontal([pl.col(c).cast(pl.Float64) for c in columns])
    rules[(None, ROWS_SUM_TO_ONE)] = ((total - 1.0).abs() <= tolerance).fill_null(True)
    return rules


def label_rules(
    schema: pl.Schema,
    *,
    id_col: str,
    prob_cols: Sequence[str] = (),
    label_col: str | None = None,
    classes: Sequence[str] = (),
    label_is_index: bool = False,
    tolerance: float = 1e-6,
    weight_col: str | None = None,
    cluster_col: str | None = None,
    logit_cols: Sequence[str] = (),
) -> Rules:
    """Row rules of the labels: a present id, a valid soft distribution and/or a known label.

    A soft distribution is probabilities (``prob_cols``, the rules of predictions'
    probabilities) or logits (``logit_cols``: present and finite, as predictions' logits). A
    label names a class (string) or indexes one (integer: ``k`` is class ``"k"``, or the k-th of
    ``classes`` with ``label_is_index``, when the predictions are arrays); with a distribution
    it is the token that came next. A weight is present, finite and >= 0; a cluster key is
    present.
    """
    rules: Rules = {(id_col, NOT_NULLABLE): _present(id_col, schema.get(id_col))}
    if weight_col is not None:
        rules[(weight_col, NOT_NULLABLE)] = _present(weight_col, schema.get(weight_col))
        weight = pl.col(weight_col).cast(pl.Float64)
        rules[(weight_col, WEIGHT_RULE)] = (weight.is_finite() & (weight >= 0)).fill_null(True)
    if cluster_col is not None:
        rules[(cluster_col, NOT_NULLABLE)] = _present(cluster_col, schema.get(cluster_col))
    if label_col is not None:
        rules[(label_col, NOT_NULLABLE)] = _present(label_col, schema.get(label_col))
        label = pl.col(label_col)
        label_dtype = schema.get(label_col)
        if label_is_index and label_dtype is not None and label_dtype.is_integer():
            known = (label >= 0) & (label < len(classes))
        else:
            known = label.cast(pl.String).is_in(sorted(classes))
        rules[(label_col, KNOWN_LABEL)] = known.fill_null(True)
    if logit_cols:
        rules |= _logit_rules(schema, logit_cols, len(classes), tolerance)
    elif prob_cols:
        rules |= _probability_rules(schema, prob_cols, len(classes), tolerance)
    return rules


def _logit_rules(schema: pl.Schema, columns: Sequence[str], width: int, tolerance: float) -> Rules:
    if len(columns) == 1 and is_array(schema.get(columns[0])):
        return _array_rules(columns[0], schema.get(columns[0]), width, "logit", tolerance)
    rules: Rules = {}
    for c in columns:
        rules[(c, NOT_NULLABLE)] = _present(c, schema.get(c))
        rules[(c, FINITE)] = (pl.col(c) < math.inf).fill_null(True)  # NaN is not < inf
    rules[(None, SOME_LOGIT_FINITE)] = (pl.max_horizontal(columns) > -math.inf).fill_null(True)
    return rules


def prediction_rules(
    schema: pl.Schema,
    *,
    id_col: str,
    model_col: str,
    prob_cols: Sequence[str] = (),
    logit_cols: Sequence[str] = (),
    width: int = 0,
    tolerance: float = 1e-6,
) -> Rules:
    """Row rules of the predictions: present id and model, and valid probabilities or finite logits.

    ``width`` is the number of classes, which an Array/List distribution column must hold.
    """
    rules: Rules = {
        (id_col, NOT_NULLABLE): _present(id_col, schema.get(id_col)),
        (model_col, NOT_NULLABLE): _present(model_col, schema.get(model_col)),
    }
    if logit_cols:
        rules |= _logit_rules(schema, logit_cols, width, tolerance)
    else:
        rules |= _probability_rules(schema, prob_cols, width, tolerance)
    return rules


def _compact(rules: Rules, columns: Sequence[str], kind: str, tolerance: float) -> Rules:
    """The same rules for many per-class columns, tested by row reductions.

    Thousands of per-column rules make a fused check thousands of expressions wide; this one
    passes exactly where they all pass. The per-column rules still name what failed.
    Horizontal reductions, not the columns gathered into one array first: that gather cost
    five times the check itself at 1,000 columns.
    """
    if len(columns) <= MAX_RULE_COLUMNS:
        return rules
    cells = [pl.col(c).cast(pl.Float64) for c in columns]
    kept = {k: v for k, v in rules.items() if k[0] is not None and k[0] not in columns}
    if kind == "logit":
        # Huge finite logits can overflow a row sum (even to NaN, polars not adding left to
        # right), clipped ones cannot: the sum is a number exactly when every cell is one, not
        # null or NaN. Then the largest cell tells +inf, and a row of −inf only.
        clipped = pl.sum_horizontal([c.clip(-1.0, 1.0) for c in cells], ignore_nulls=False)
        largest = pl.max_horizontal(cells)
        valid = clipped.is_not_nan() & (largest < math.inf) & (largest > -math.inf)
        return kept | {("classes", FINITE): valid.fill_null(False)}
    # Probabilities cannot overflow a sum: it is null or NaN where a cell is (min and max skip
    # both), and without nulls it is the per-row rule's sum (polars may add in another order,
    # so a sum within an ulp or two of the tolerance could be judged differently).
    total = pl.sum_horizontal(cells, ignore_nulls=False)
    in_range = (pl.min_horizontal(cells) >= 0.0) & (pl.max_horizontal(cells) <= 1.0)
    sums_to_one = (total - 1.0).abs() <= tolerance
    return kept | {("classes", IN_RANGE): (in_range & sums_to_one).fill_null(False)}


def _fused(rules: Rules) -> pa.Check:
    passes = pl.all_horizontal(list(rules.values())).alias(ROW_RULES)

    def check(data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(passes)

    return pa.Check(check, name=ROW_RULES)


def rows_only(schema: pa.DataFrameSchema) -> pa.DataFrameSchema:
    """The row rules of ``schema`` without its column declarations.

    For batches whose columns and dtypes were already checked: Pandera's per-column work on
    every batch costs seconds with a thousand class columns.
    """
    return pa.DataFrameSchema(checks=schema.checks, coerce=False, name=schema.name)


def _key_column(actual: pl.DataType | None) -> pa.Column:
    return pa.Column(accepted_dtype(actual, KEY_DTYPES, pl.Int64()), nullable=True)


def _distribution_column(actual: pl.DataType | None, width: int, whole: bool) -> pa.Column:
    """A probability or logit column: one class (a float), or all of them (a float array)."""
    if whole:
        dtype = accepted_dtype(actual, array_dtypes(width), pl.Array(pl.Float64, width))
    else:
        dtype = accepted_dtype(actual, FLOAT_DTYPES, pl.Float64())
    return pa.Column(dtype, nullable=True)


def labels_schema(
    schema: pl.Schema,
    *,
    id_col: str,
    prob_cols: Sequence[str] = (),
    label_col: str | None = None,
    classes: Sequence[str] = (),
    slice_cols: Sequence[str] = (),
    label_is_index: bool = False,
    tolerance: float = 1e-6,
    weight_col: str | None = None,
    cluster_col: str | None = None,
    logit_cols: Sequence[str] = (),
) -> pa.DataFrameSchema:
    """Labels: an integer or string key, soft ``prob_cols`` or ``logit_cols``, a ``label_col``.

    Parameters
    ----------
    schema
        The dtypes found in the data, used to pick each column's accepted dtype.
    id_col
        The key; unique across all rows (checked across batches).
    prob_cols
        Soft truth: one probability column per class, each in [0, 1], rows summing to 1 (or
        one Array/List column of them).
    label_col
        Hard truth, or with soft truth the token that came next: a class name (string) or
        class index (integer) that must be in ``classes``.
    classes
        The predictions' classes, in order (also the width of an array of soft labels).
    slice_cols
        Columns the report is broken down by; any dtype, nulls allowed.
    label_is_index
        Integer hard labels index ``classes`` (array predictions) rather than name ``"k"``.
    tolerance
        Allowed distance of a row sum from 1.
    weight_col
        Row weights: an integer or float column, each weight finite and >= 0 (that they do not
        all sum to 0 is checked across batches).
    cluster_col
        Cluster keys: any dtype but a list, no nulls.
    logit_cols
        Soft truth as logits: one finite logit column per class (or one Array/List column),
        turned into probabilities by a log-softmax.
    """
    columns: dict[str, pa.Column] = {id_col: _key_column(schema.get(id_col))}
    if label_col is not None:
        columns[label_col] = _key_column(schema.get(label_col))
    distribution = [*prob_cols, *logit_cols]
    whole = len(distribution) == 1 and is_array(schema.get(distribution[0]))
    for c in distribution:
        columns[c] = _distribution_column(schema.get(c), len(classes), whole)
    if weight_col is not None:
        weight_dtype = accepted_dtype(schema.get(weight_col), WEIGHT_DTYPES, pl.Float64())
        columns.setdefault(weight_col, pa.Column(weight_dtype, nullable=True))
    for c in [*slice_cols, *([cluster_col] if cluster_col else [])]:
        # A slice or cluster may be a column declared above (the label, say).
        columns.setdefault(c, pa.Column(schema.get(c), nullable=True))
    rules = label_rules(
        schema,
        id_col=id_col,
        prob_cols=prob_cols,
        label_col=label_col,
        classes=classes,
        label_is_index=label_is_index,
        tolerance=tolerance,
        weight_col=weight_col,
        cluster_col=cluster_col,
        logit_cols=logit_cols,
    )
    kind = "logit" if logit_cols else "prob"
    fused = _fused(_compact(rules, distribution if not whole else (), kind, tolerance))
    return pa.DataFrameSchema(columns, checks=[fused], strict=True, coerce=False, name="labels")


def predictions_schema(
    schema: pl.Schema,
    *,
    id_col: str,
    model_col: str,
    prob_cols: Sequence[str] = (),
    logit_cols: Sequence[str] = (),
    width: int = 0,
    tolerance: float = 1e-6,
) -> pa.DataFrameSchema:
    """Predictions: key and model name, and per class a probability or a logit.

    Probabilities obey the same rules as soft labels; logits must be finite (a log-softmax of
    them is taken, so their rows need not sum to anything). Each (id, model) must be unique and
    each model must cover the label ids exactly (checked across batches).
    """
    columns: dict[str, pa.Column] = {
        id_col: _key_column(schema.get(id_col)),
        model_col: pa.Column(pl.String(), nullable=True),
    }
    distribution = [*prob_cols, *logit_cols]
    whole = len(distribution) == 1 and is_array(schema.get(distribution[0]))
    for c in distribution:
        columns[c] = _distribution_column(schema.get(c), width, whole)
    rules = prediction_rules(
        schema,
        id_col=id_col,
        model_col=model_col,
        prob_cols=prob_cols,
        logit_cols=logit_cols,
        width=width,
        tolerance=tolerance,
    )
    kind = "logit" if logit_cols else "prob"
    fused = _fused(_compact(rules, distribution if not whole else (), kind, tolerance))
    return pa.DataFrameSchema(
        columns, checks=[fused], strict=True, coerce=False, name="predictions"
    )
