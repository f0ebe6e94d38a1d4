"""Row checks of many per-class columns: the fused check (row reductions) must fail exactly
where a per-cell rule fails, and the failures must name the rule and the row.

A fused check that passed a bad row would hide it (no failure at all); one that failed a good
row would only cost a pass of the per-cell rules, which find nothing, so its verdict is also
checked on its own.
"""

import math

import pandera.errors
import polars as pl
import pytest

from pipeline.io import ROW
from pipeline.layout import Layout, resolve_layout
from pipeline.validation import STRUCTURE_COLUMNS, _batch_schema, check_rows, check_structure
from schemas.inputs import FINITE, IN_RANGE, MAX_RULE_COLUMNS, NOT_NULLABLE, ROWS_SUM_TO_ONE

N_CLASSES = MAX_RULE_COLUMNS + 36  # past the point where the rules are fused by row reductions
N_ROWS = 5
BAD_ROW = 3


def _frame(
    prefix: str, cell: float | None = None, column: int = 7, **extra: object
) -> pl.DataFrame:
    """Uniform rows (each sums to 1 within 1e-15), with ``cell`` put at row BAD_ROW, ``column``."""
    columns = {}
    for k in range(N_CLASSES):
        values: list[float | None] = [1.0 / N_CLASSES] * N_ROWS
        if k == column:
            values[BAD_ROW] = cell
        columns[f"{prefix}{k}"] = pl.Series(values, dtype=pl.Float64)
    ids = {"id": list(range(N_ROWS)), **{k: [v] * N_ROWS for k, v in extra.items()}}
    return pl.DataFrame(ids).hstack(pl.DataFrame(columns)).with_row_index(ROW)


def _soft_layout(labels: pl.Schema, predictions: pl.Schema) -> Layout:
    return resolve_layout(
        labels,
        predictions,
        id_col="id",
        model_col="model",
        label_col="label",
        truth="soft",
        prob_prefix="prob_",
        logit_prefix="logit_",
        slice_by=(),
    )


def _check(dataset: str, frame: pl.DataFrame, kind: str = "prob") -> set[tuple[str, int]]:
    labels = _frame("prob_", 1.0 / N_CLASSES).drop(ROW)
    predictions = (
        frame.drop(ROW) if dataset == "predictions" else _frame(f"{kind}_", 0.0, model="m")
    )
    layout = _soft_layout(
        labels.schema if dataset == "predictions" else frame.drop(ROW).schema, predictions.schema
    )
    failures = set(check_rows(frame, dataset, layout, 1e-6).select("check", "row").iter_rows())
    data = frame.drop(ROW)
    try:
        _batch_schema(dataset, layout, tuple(data.schema.items()), 1e-6).validate(data)
        fused_passes = True
    except pandera.errors.SchemaError:
        fused_passes = False
    assert fused_passes == (not failures), "the fused check disagrees with the per-cell rules"
    return failures


UNIFORM = 1.0 / N_CLASSES
BAD_PROBABILITIES = {
    # cell value at (BAD_ROW, column 7) -> the checks that must fail on that row
    # A null is left out of the row sum, which is then 1/N short; NaN counts as missing too.
    "null": (None, {NOT_NULLABLE, ROWS_SUM_TO_ONE}),
    "nan": (math.nan, {NOT_NULLABLE, IN_RANGE, ROWS_SUM_TO_ONE}),
    "plus_inf": (math.inf, {IN_RANGE, ROWS_SUM_TO_ONE}),
    "negative": (-UNIFORM, {IN_RANGE, ROWS_SUM_TO_ONE}),
    "above_one": (1.5, {IN_RANGE, ROWS_SUM_TO_ONE}),
    "sum_off_by_1e-3": (UNIFORM + 1e-3, {ROWS_SUM_TO_ONE}),
    "sum_off_by_1e-7_is_within_tolerance": (UNIFORM + 1e-7, set()),
}


@pytest.mark.parametrize("dataset", ["labels", "predictions"])
@pytest.mark.parametrize("case", BAD_PROBABILITIES.values(), ids=BAD_PROBABILITIES.keys())
def test_wide_probability_rows_fail_exactly_where_a_cell_does(
    dataset: str, case: tuple[float | None, set[str]]
) -> None:
    cell, expected = case
    extra = {"model": "m"} if dataset == "predictions" else {}
    found = _check(dataset, _frame("prob_", cell, **extra))
    assert found == {(check, BAD_ROW) for check in expected}


def test_wide_valid_rows_pass() -> None:
    assert _check("labels", _frame("prob_", UNIFORM)) == set()


BAD_LOGITS = {
    "null": (None, {NOT_NULLABLE}),
    "nan": (math.nan, {NOT_NULLABLE, FINITE}),
    "plus_inf": (math.inf, {FINITE}),
    "minus_inf": (-math.inf, {FINITE}),
    "huge_but_finite": (1e308, set()),
    "huge_but_finite_far_apart": (-1e308, set()),
}


@pytest.mark.parametrize("case", BAD_LOGITS.values(), ids=BAD_LOGITS.keys())
def test_wide_logit_rows_fail_exactly_where_a_cell_does(
    case: tuple[float | None, set[str]],
) -> None:
    cell, expected = case
    # Huge logits overflow a row sum to ±inf, or to NaN when both signs are there (in whatever
    # order polars adds them): that must not read as a non-finite cell.
    frame = _frame("logit_", cell, model="m")
    if cell is not None and abs(cell) == 1e308:
        bad_row = pl.int_range(pl.len()) == BAD_ROW
        frame = frame.with_columns(
            *[
                pl.when(bad_row).then(value).otherwise(pl.col(name)).alias(name)
                for name, value in [
                    ("logit_0", 1e308),
                    ("logit_1", 1e308),
                    ("logit_98", -1e308),
                    ("logit_99", -1e308),
                ]
            ]
        )
    found = _check("predictions", frame, kind="logit")
    assert found == {(check, BAD_ROW) for check in expected}


def test_wide_structure_failures_are_found_in_every_group_of_columns() -> None:
    # Pandera checks the columns a hundred at a time: a wrong dtype in the first hundred and in
    # the second must both be reported, and nothing else.
    n = STRUCTURE_COLUMNS + 50
    good = {f"prob_{k}": [1.0 / n] for k in range(n)}
    labels = pl.DataFrame({"id": [0], **good}).with_columns(
        pl.col("prob_3").cast(pl.String), pl.col(f"prob_{n - 2}").cast(pl.String)
    )
    predictions = pl.DataFrame({"id": [0], "model": ["m"], **good})
    layout = _soft_layout(labels.schema, predictions.schema)
    failures = check_structure(labels.lazy(), predictions.lazy(), layout)
    assert set(failures.select("dataset", "column").iter_rows()) == {
        ("labels", "prob_3"),
        ("labels", f"prob_{n - 2}"),
    }
