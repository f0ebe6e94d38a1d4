"""Pandera schemas of the two inputs: labels (hard or soft truth) and model predictions.

The column names and class set vary per run, so each schema is declared by a function of them.
A schema declares every used column's dtype (no coercion, ``strict=True`` on the selected
columns; other columns in the files are ignored) and the **row rules** of the contract: one named
Polars expression per (column, check), true where a row passes. Pandera runs the rules as one
fused check, so validating a batch is one pass over it however many classes there are; when it
fails, :func:`row_rules` tells which rule failed for which rows. The rules that span rows (unique
keys, each model covering the label ids) are checked across batches in ``pipeline.validation``.

Which dtype of an accepted set a column declares is taken from the data (``accepted_dtype``),
so Float32 and Float64 both pass while a probability stored as a string fails the dtype check.
"""

from collections.abc import Iterable, Sequence

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

FLOAT_DTYPES: tuple[pl.DataType, ...] = (pl.Float32(), pl.Float64())
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
FINITE = "finite"
ROW_RULES = "row_rules"

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


def _probability_rules(schema: pl.Schema, columns: Sequence[str], tolerance: float) -> Rules:
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
    classes: Iterable[str] = (),
    tolerance: float = 1e-6,
) -> Rules:
    """Row rules of the labels: a present id, and a valid soft distribution or a known hard label."""
    rules: Rules = {(id_col, NOT_NULLABLE): _present(id_col, schema.get(id_col))}
    if label_col is not None:
        rules[(label_col, NOT_NULLABLE)] = _present(label_col, schema.get(label_col))
        known = pl.col(label_col).cast(pl.String).is_in(sorted(classes))
        rules[(label_col, KNOWN_LABEL)] = known.fill_null(True)
    else:
        rules |= _probability_rules(schema, prob_cols, tolerance)
    return rules


def prediction_rules(
    schema: pl.Schema,
    *,
    id_col: str,
    model_col: str,
    prob_cols: Sequence[str] = (),
    logit_cols: Sequence[str] = (),
    tolerance: float = 1e-6,
) -> Rules:
    """Row rules of the predictions: present id and model, and valid probabilities or finite logits."""
    rules: Rules = {
        (id_col, NOT_NULLABLE): _present(id_col, schema.get(id_col)),
        (model_col, NOT_NULLABLE): _present(model_col, schema.get(model_col)),
    }
    if logit_cols:
        for c in logit_cols:
            rules[(c, NOT_NULLABLE)] = _present(c, schema.get(c))
            rules[(c, FINITE)] = pl.col(c).is_finite().fill_null(True)
    else:
        rules |= _probability_rules(schema, prob_cols, tolerance)
    return rules


def _fused(rules: Rules) -> pa.Check:
    passes = pl.all_horizontal(list(rules.values())).alias(ROW_RULES)

    def check(data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(passes)

    return pa.Check(check, name=ROW_RULES)


def _key_column(actual: pl.DataType | None) -> pa.Column:
    return pa.Column(accepted_dtype(actual, KEY_DTYPES, pl.Int64()), nullable=True)


def _float_column(actual: pl.DataType | None) -> pa.Column:
    return pa.Column(accepted_dtype(actual, FLOAT_DTYPES, pl.Float64()), nullable=True)


def labels_schema(
    schema: pl.Schema,
    *,
    id_col: str,
    prob_cols: Sequence[str] = (),
    label_col: str | None = None,
    classes: Iterable[str] = (),
    slice_cols: Sequence[str] = (),
    tolerance: float = 1e-6,
) -> pa.DataFrameSchema:
    """Labels: an integer or string key, and either soft ``prob_cols`` or a hard ``label_col``.

    Parameters
    ----------
    schema
        The dtypes found in the data, used to pick each column's accepted dtype.
    id_col
        The key; unique across all rows (checked across batches).
    prob_cols
        Soft truth: one probability column per class, each in [0, 1], rows summing to 1.
    label_col
        Hard truth: a class name (string) or class index (integer) that must be in ``classes``.
    classes
        The predictions' classes, for hard labels.
    slice_cols
        Columns the report is broken down by; any dtype, nulls allowed.
    tolerance
        Allowed distance of a row sum from 1.
    """
    columns: dict[str, pa.Column] = {id_col: _key_column(schema.get(id_col))}
    if label_col is not None:
        columns[label_col] = _key_column(schema.get(label_col))
    for c in prob_cols:
        columns[c] = _float_column(schema.get(c))
    for c in slice_cols:
        columns[c] = pa.Column(schema.get(c), nullable=True)
    rules = label_rules(
        schema,
        id_col=id_col,
        prob_cols=prob_cols,
        label_col=label_col,
        classes=classes,
        tolerance=tolerance,
    )
    return pa.DataFrameSchema(
        columns, checks=[_fused(rules)], strict=True, coerce=False, name="labels"
    )


def predictions_schema(
    schema: pl.Schema,
    *,
    id_col: str,
    model_col: str,
    prob_cols: Sequence[str] = (),
    logit_cols: Sequence[str] = (),
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
    for c in (*prob_cols, *logit_cols):
        columns[c] = _float_column(schema.get(c))
    rules = prediction_rules(
        schema,
        id_col=id_col,
        model_col=model_col,
        prob_cols=prob_cols,
        logit_cols=logit_cols,
        tolerance=tolerance,
    )
    return pa.DataFrameSchema(
        columns, checks=[_fused(rules)], strict=True, coerce=False, name="predictions"
    )
