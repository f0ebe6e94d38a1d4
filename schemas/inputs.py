"""Pandera schemas of the two inputs: labels (hard or soft truth) and model predictions.

The column names and class set vary per run, so each schema is declared by a function of them.
Inputs are validated after selecting the columns klrank uses, with ``strict=True`` and no
coercion: other columns in the files are ignored, the used ones must have an accepted dtype.
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

ROWS_SUM_TO_ONE = "rows_sum_to_one"
KNOWN_LABEL = "known_label"
FINITE = "finite"


def accepted_dtype(
    actual: pl.DataType | None, accepted: Sequence[pl.DataType], default: pl.DataType
) -> pl.DataType:
    """The dtype a column should declare: its own if accepted, else ``default`` (which fails)."""
    return actual if actual is not None and actual in accepted else default


def _rows_sum_to_one(columns: Sequence[str], tolerance: float) -> pa.Check:
    def check(data: PolarsData) -> pl.LazyFrame:
        total = pl.sum_horizontal([pl.col(c).cast(pl.Float64) for c in columns])
        return data.lazyframe.select(((total - 1.0).abs() <= tolerance).alias(ROWS_SUM_TO_ONE))

    return pa.Check(check, name=ROWS_SUM_TO_ONE)


def _known_label(classes: Iterable[str]) -> pa.Check:
    names = sorted(classes)

    def check(data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).cast(pl.String).is_in(names))

    return pa.Check(check, name=KNOWN_LABEL)


def _finite() -> pa.Check:
    def check(data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).is_finite())

    return pa.Check(check, name=FINITE)


def _key_column(actual: pl.DataType | None, unique: bool) -> pa.Column:
    return pa.Column(accepted_dtype(actual, KEY_DTYPES, pl.Int64()), nullable=False, unique=unique)


def _probability_columns(
    schema: pl.Schema, columns: Sequence[str], tolerance: float
) -> tuple[dict[str, pa.Column], list[pa.Check]]:
    declared = {
        c: pa.Column(
            accepted_dtype(schema.get(c), FLOAT_DTYPES, pl.Float64()),
            nullable=False,
            checks=[pa.Check.in_range(0.0, 1.0)],
        )
        for c in columns
    }
    return declared, [_rows_sum_to_one(columns, tolerance)]


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
    """Labels: a unique non-null key, and either soft ``prob_cols`` or a hard ``label_col``.

    Parameters
    ----------
    schema
        The dtypes found in the data, used to pick each column's accepted dtype.
    prob_cols
        Soft truth: one probability column per class, each in [0, 1], rows summing to 1.
    label_col
        Hard truth: a class name (string) or class index (integer) that must be in ``classes``.
    slice_cols
        Columns the report is broken down by; any dtype, nulls allowed.
    """
    columns: dict[str, pa.Column] = {id_col: _key_column(schema.get(id_col), unique=True)}
    checks: list[pa.Check] = []
    if label_col is not None:
        label_dtype = accepted_dtype(schema.get(label_col), KEY_DTYPES, pl.String())
        columns[label_col] = pa.Column(label_dtype, nullable=False, checks=[_known_label(classes)])
    else:
        prob_columns, checks = _probability_columns(schema, prob_cols, tolerance)
        columns |= prob_columns
    for c in slice_cols:
        columns[c] = pa.Column(schema.get(c), nullable=True)
    return pa.DataFrameSchema(columns, checks=checks, strict=True, coerce=False, name="labels")


def predictions_schema(
    schema: pl.Schema,
    *,
    id_col: str,
    model_col: str,
    prob_cols: Sequence[str] = (),
    logit_cols: Sequence[str] = (),
    tolerance: float = 1e-6,
) -> pa.DataFrameSchema:
    """Predictions: (id, model) unique and non-null, and per class a probability or a logit.

    Probabilities obey the same checks as soft labels; logits must be finite (a log-softmax of
    them is taken, so their rows need not sum to anything).
    """
    columns: dict[str, pa.Column] = {
        id_col: _key_column(schema.get(id_col), unique=False),
        model_col: pa.Column(pl.String(), nullable=False),
    }
    checks: list[pa.Check] = []
    if logit_cols:
        for c in logit_cols:
            dtype = accepted_dtype(schema.get(c), FLOAT_DTYPES, pl.Float64())
            columns[c] = pa.Column(dtype, nullable=False, checks=[_finite()])
    else:
        prob_columns, checks = _probability_columns(schema, prob_cols, tolerance)
        columns |= prob_columns
    return pa.DataFrameSchema(
        columns,
        checks=checks,
        unique=[id_col, model_col],
        strict=True,
        coerce=False,
        name="predictions",
    )
