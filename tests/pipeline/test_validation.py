"""Row checks of many per-class columns: the fused check (row reductions) must fail exactly
where a per-cell rule fails, and the failures must name the rule and the row.

A fused check that passed a bad row would hide it (no failure at all); one that failed a good
row would only cost a pass of the per-cell rules, which find nothing, so its verdict is also
checked on its own.
"""

import math
import re
from pathlib import Path

import pandera.errors
import polars as pl
import pytest
from cli_helpers import expect, inputs, invoke
from klrank.pipeline.layout import ROW, Layout, resolve_layout
from klrank.pipeline.validation import (
    FAILURE_SCHEMA,
    STRUCTURE_COLUMNS,
    _batch_schema,
    check_rows,
    check_structure,
    summarise,
)
from klrank.schemas.inputs import (
    FINITE,
    IN_RANGE,
    MAX_RULE_COLUMNS,
    NOT_NULLABLE,
    ROWS_SUM_TO_ONE,
    SOME_LOGIT_FINITE,
)

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
    "minus_inf": (-math.inf, set()),  # a probability of 0
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


def test_a_wide_row_of_logits_that_are_all_minus_inf_fails_as_having_no_distribution() -> None:
    frame = _frame("logit_", model="m").with_columns(
        pl.when(pl.col(ROW) == BAD_ROW)
        .then(-math.inf)
        .otherwise(pl.col(f"logit_{k}"))
        .alias(f"logit_{k}")
        for k in range(N_CLASSES)
    )
    assert _check("predictions", frame, kind="logit") == {(SOME_LOGIT_FINITE, BAD_ROW)}


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


def test_summarise_keeps_each_failed_check_on_one_line() -> None:
    # What broke: an id with a newline forged a line of the message on stderr.
    failures = pl.DataFrame(
        {
            "dataset": ["predictions", "predictions", "labels"],
            "check": ["missing_ids", "missing_ids", "known_label"],
            "column": ["id", "id", "label\nX"],
            "row": [None, None, 7],
            "id": ["2\nklrank: forged", "3\x1b[2J", "8"],
            "model": ["m\u2028n", "m\u2028n", None],
            "value": ["label id without a prediction", "label id without a prediction", "c\rd"],
        },
        schema=FAILURE_SCHEMA,
    )
    assert summarise(failures) == [
        "predictions column 'id' model 'm\\u2028n': label ids without a prediction "
        "[missing_ids]: 2 cases; e.g. id=2\\nklrank: forged: label id without a prediction; "
        "id=3\\x1b[2J: label id without a prediction",
        "labels column 'label\\nX': label is not a class of the predictions [known_label]: "
        "1 case; e.g. id=8 row 7: c\\rd",
    ]


def test_validate_with_hostile_ids_and_values_writes_one_stderr_line_per_check(
    tmp_path: Path,
) -> None:
    ids = ["1", "2\nklrank: forged line", "3\x1b[31m", "4\u2028x"]
    labels = pl.DataFrame({"id": ids, "label": ["a", "b", "<b>z|\n# x</b>", "a"]})
    predictions = pl.DataFrame(
        {
            "id": ids[:1] + ids[2:],  # the id with a newline has no prediction
            "model": ["m\nklrank: forged model"] * 3,
            "prob_a": [0.5, 0.5, 0.5],
            "prob_b": [0.5, 0.5, 0.5],
        }
    )
    failures = tmp_path / "fail\nures.parquet"
    result = invoke(
        "validate", *inputs(tmp_path, labels, predictions), "--failures", failures, "--quiet"
    )
    expect(result, 1)
    cases = pl.read_parquet(failures)  # the cases themselves, unescaped, from the file
    assert set(cases.get_column("id")) == {ids[1], ids[2]}
    n_checks = cases.select("dataset", "check", "column", "model").unique().height
    assert n_checks == 2  # known_label, missing_ids
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"\S+Z error +validation\.failed .*", lines[0]), lines[0]
    assert lines[1] == f"klrank: validation failed: {n_checks} failed checks"
    assert [line.split(" ")[0] for line in lines[2:-1]] == ["labels", "predictions"]
    assert lines[-1] == f"all {cases.height} failure cases: {tmp_path}/fail\\nures.parquet"
    assert len(lines) == 3 + n_checks
    assert "\x1b" not in result.stderr and "\u2028" not in result.stderr
    assert "id=2\\nklrank: forged line" in lines[3]
    assert "id=3\\x1b[31m row 2: <b>z|\\n# x</b>" in lines[2]
