"""Checks of the input contract, collecting every failure as rows of one failure-cases frame.

The frame has the columns of ``FAILURE_SCHEMA``: which dataset and check failed, on which column,
at which row (0-based position in the dataset as read, files in path order), for which id and
model, and the failing value as text. Three kinds of checks feed it:

* structure (:func:`check_structure`): columns, dtypes, class sets, key dtypes; Pandera on the
  lazy frames, so no data is read;
* row rules (:func:`check_rows`): Pandera on each in-memory batch, one fused pass; on failure the
  individual rules of ``schemas.inputs`` say which rows broke which rule;
* keys across batches (:func:`check_label_keys`, :func:`check_coverage`): unique label ids, and
  every model predicting each label id exactly once.
"""

import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import pandera.errors
import pandera.polars as pa
import polars as pl
from klrank.pipeline.layout import ROW, Layout
from klrank.pipeline.text import one_line
from klrank.schemas.inputs import (
    Rules,
    failing_value,
    label_rules,
    labels_schema,
    prediction_rules,
    predictions_schema,
    rows_only,
)
from pandera.config import ValidationDepth, config_context

FAILURE_SCHEMA = pl.Schema(
    {
        "dataset": pl.String,
        "check": pl.String,
        "column": pl.String,
        "row": pl.Int64,
        "id": pl.String,
        "model": pl.String,
        "value": pl.String,
    }
)
FIELD_UNIQUENESS = "field_uniqueness"
PAIR_UNIQUENESS = "multiple_fields_uniqueness"

# What the check names mean, for people reading the error.
_CHECK_DESCRIPTIONS = {
    "column_in_dataframe": "required column is missing",
    "not_nullable": "null or NaN values",
    FIELD_UNIQUENESS: "duplicate values",
    PAIR_UNIQUENESS: "duplicate (id, model) pairs",
    "in_range(0.0, 1.0)": "probability outside [0, 1]",
    "rows_sum_to_one": "probabilities do not sum to 1 within the tolerance",
    "class_set": "labels and predictions have different class sets",
    "id_dtype": "labels and predictions have different id dtypes",
    "not_empty": "no rows",
    "extra_ids": "predictions for ids that are not in the labels",
    "missing_ids": "label ids without a prediction",
    "known_label": "label is not a class of the predictions",
    "finite": "NaN or +inf logit",
    "some_logit_finite": "every logit of the row is -inf: no distribution",
    "list_length": "the list does not hold one value per class",
    "column_not_in_schema": "unexpected column",
    "weight_finite_non_negative": "weight is negative, NaN or infinite",
    "weight_sum_positive": "the weights of these rows sum to 0",
}


def describe_check(check: str) -> str:
    """A reader's description of a check name, falling back to the name itself."""
    if check.startswith("dtype("):
        return (
            "wrong dtype (probabilities and logits: Float16, Float32 or Float64; id and label: integer "
            "or String; model: String)"
        )
    return _CHECK_DESCRIPTIONS.get(check, check)


def no_failures() -> pl.DataFrame:
    """An empty failure-cases frame."""
    return pl.DataFrame(schema=FAILURE_SCHEMA)


def failure(
    dataset: str,
    check: str,
    *,
    column: str | None = None,
    ids: Sequence[str | None] = (None,),
    model: str | None = None,
    value: str | None = None,
) -> pl.DataFrame:
    """Failure cases of a check that is not tied to row positions (one row per example id)."""
    n = len(ids)
    return pl.DataFrame(
        {
            "dataset": [dataset] * n,
            "check": [check] * n,
            "column": [column] * n,
            "row": [None] * n,
            "id": list(ids),
            "model": [model] * n,
            "value": [value] * n,
        },
        schema=FAILURE_SCHEMA,
    )


def label_columns(layout: Layout) -> list[str]:
    """The label columns klrank reads (and validates), in order."""
    index = [layout.label_index_col] if layout.label_index_col is not None else []
    truth = [*layout.label_prob_cols, *index]
    units = [c for c in (layout.weight_col, layout.cluster_col) if c is not None]
    # A slice, weight or cluster column may be one of the others (the label, say).
    return list(dict.fromkeys([layout.id_col, *truth, *layout.slice_cols, *units]))


def prediction_columns(layout: Layout) -> list[str]:
    """The prediction columns klrank reads (and validates), in order."""
    return [layout.id_col, layout.model_col, *layout.prediction_cols]


def _label_kwargs(layout: Layout) -> dict[str, Any]:
    logits = layout.label_kind == "logit"
    return {
        "id_col": layout.id_col,
        "prob_cols": [] if logits else layout.label_prob_cols,
        "logit_cols": layout.label_prob_cols if logits else [],
        "label_col": layout.label_index_col,
        "classes": layout.label_classes if layout.truth == "soft" else layout.classes,
        "label_is_index": layout.prediction_array is not None,
        "weight_col": layout.weight_col,
        "cluster_col": layout.cluster_col,
    }


def _label_schema(layout: Layout, schema: pl.Schema, tolerance: float) -> pa.DataFrameSchema:
    return labels_schema(
        schema, slice_cols=layout.slice_cols, tolerance=tolerance, **_label_kwargs(layout)
    )


def _prediction_kwargs(layout: Layout) -> dict[str, Any]:
    is_logit = layout.prediction_kind == "logit"
    return {
        "id_col": layout.id_col,
        "model_col": layout.model_col,
        "prob_cols": () if is_logit else layout.prediction_cols,
        "logit_cols": layout.prediction_cols if is_logit else (),
        "width": len(layout.classes),
    }


def _prediction_schema(layout: Layout, schema: pl.Schema, tolerance: float) -> pa.DataFrameSchema:
    return predictions_schema(schema, tolerance=tolerance, **_prediction_kwargs(layout))


def _rules(dataset: str, layout: Layout, schema: pl.Schema, tolerance: float) -> Rules:
    if dataset == "labels":
        return label_rules(schema, tolerance=tolerance, **_label_kwargs(layout))
    return prediction_rules(schema, tolerance=tolerance, **_prediction_kwargs(layout))


def _every_check() -> AbstractContextManager[object]:
    """Pandera with data checks on, whatever PANDERA_VALIDATION_* says in the environment."""
    return config_context(validation_enabled=True, validation_depth=ValidationDepth.SCHEMA_AND_DATA)


def _structure_failures(error: pandera.errors.SchemaErrors, dataset: str) -> pl.DataFrame:
    cases: pl.DataFrame = error.failure_cases
    return cases.select(
        pl.lit(dataset).alias("dataset"),
        pl.col("check").cast(pl.String),
        pl.col("column").cast(pl.String),
        pl.lit(None, pl.Int64).alias("row"),
        pl.lit(None, pl.String).alias("id"),
        pl.lit(None, pl.String).alias("model"),
        pl.col("failure_case").cast(pl.String).alias("value"),
    )


# Columns per structural Pandera check (see check_structure).
STRUCTURE_COLUMNS = 100


def check_structure(
    labels: pl.LazyFrame, predictions: pl.LazyFrame, layout: Layout
) -> pl.DataFrame:
    """Column presence, dtypes, matching class sets and key dtypes, without reading any data."""
    failures = []
    frames = {
        "labels": (labels, label_columns(layout), _label_schema),
        "predictions": (predictions, prediction_columns(layout), _prediction_schema),
    }
    for dataset, (frame, columns, schema_of) in frames.items():
        actual = frame.collect_schema()
        schema = schema_of(layout, actual, 0.0)
        # Pandera asks a LazyFrame for its whole schema once per declared column, which grows
        # with the square of the columns (4 s at 1,000 classes, most of it re-planning the
        # scan): it gets an empty frame of the same columns and dtypes, a few columns at a time.
        for start in range(0, len(columns), STRUCTURE_COLUMNS):
            group = columns[start : start + STRUCTURE_COLUMNS]
            declared = pa.DataFrameSchema(
                {c: schema.columns[c] for c in group}, strict=True, coerce=False, name=schema.name
            )
            same_columns = pl.LazyFrame(schema={c: actual[c] for c in group if c in actual})
            try:
                with config_context(validation_enabled=True):  # a LazyFrame: dtypes and columns
                    declared.validate(same_columns, lazy=True)
            except pandera.errors.SchemaErrors as error:
                failures.append(_structure_failures(error, dataset))
    if layout.truth == "soft" and set(layout.label_classes) != set(layout.classes):
        only_labels = sorted(set(layout.label_classes) - set(layout.classes))
        only_predictions = sorted(set(layout.classes) - set(layout.label_classes))
        failures.append(
            failure(
                "predictions",
                "class_set",
                value=f"classes only in labels: {only_labels}; only in predictions: {only_predictions}",
            )
        )
    label_id = labels.collect_schema().get(layout.id_col)
    prediction_id = predictions.collect_schema().get(layout.id_col)
    if label_id is not None and prediction_id is not None:
        if (label_id == pl.String) != (prediction_id == pl.String):
            failures.append(
                failure(
                    "predictions",
                    "id_dtype",
                    column=layout.id_col,
                    value=f"labels' id is {label_id}, predictions' id is {prediction_id}",
                )
            )
    return pl.concat([no_failures(), *failures])


@functools.lru_cache(maxsize=16)
def _batch_schema(
    dataset: str, layout: Layout, columns: tuple[tuple[str, pl.DataType], ...], tolerance: float
) -> pa.DataFrameSchema:
    """The row rules of one input's batches, built once a run.

    With a thousand class columns, building them took as long as checking a batch.
    """
    schema_of = _label_schema if dataset == "labels" else _prediction_schema
    return rows_only(schema_of(layout, pl.Schema(columns), tolerance))


def check_rows(batch: pl.DataFrame, dataset: str, layout: Layout, tolerance: float) -> pl.DataFrame:
    """Every row rule on one in-memory batch (with its ``ROW`` positions): Pandera, then detail.

    Pandera runs the rules fused into one check; only when that fails are the rules evaluated one
    by one to name each failing (rule, row).
    """
    data = batch.drop(ROW)
    try:
        with _every_check():
            _batch_schema(dataset, layout, tuple(data.schema.items()), tolerance).validate(
                data, lazy=False
            )
    except (pandera.errors.SchemaError, pandera.errors.SchemaErrors):
        pass
    else:
        return no_failures()
    rules = _rules(dataset, layout, data.schema, tolerance)
    prob_cols = layout.label_prob_cols if dataset == "labels" else layout.prediction_cols
    model = (
        pl.col(layout.model_col).cast(pl.String)
        if dataset == "predictions"
        else pl.lit(None, pl.String)
    )
    found = []
    for (column, check), passes in rules.items():
        if column is None and len(prob_cols) == 1:  # an array's sum is in its summary
            value = failing_value(prob_cols[0], data.schema.get(prob_cols[0]))
        elif column is None:  # the row sum is the value worth showing
            value = pl.sum_horizontal([pl.col(c).cast(pl.Float64) for c in prob_cols])
            value = pl.format("sum {}", value)
        else:
            value = failing_value(column, data.schema.get(column))
        found.append(
            batch.filter(~passes).select(
                pl.lit(dataset).alias("dataset"),
                pl.lit(check).alias("check"),
                pl.lit(column, pl.String).alias("column"),
                pl.col(ROW).cast(pl.Int64).alias("row"),
                pl.col(layout.id_col).cast(pl.String).alias("id"),
                model.alias("model"),
                value.fill_null("null").alias("value"),
            )
        )
    return pl.concat(found)


def check_label_keys(label_keys: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """Duplicate label ids (nulls are the row rules' business), from ``id`` and ``ROW``."""
    key = pl.col(layout.id_col)
    ids = label_keys.get_column(layout.id_col).drop_nulls()
    if ids.is_sorted() and (
        ids.len() < 2 or bool((ids.slice(1) != ids.slice(0, ids.len() - 1)).all())
    ):
        return no_failures()  # sorted without repeats: unique, found in one cheap pass
    if ids.n_unique() == ids.len():
        return no_failures()
    duplicated = label_keys.filter(key.is_not_null() & key.is_duplicated())
    return duplicated.select(
        pl.lit("labels").alias("dataset"),
        pl.lit(FIELD_UNIQUENESS).alias("check"),
        pl.lit(layout.id_col).alias("column"),
        pl.col(ROW).cast(pl.Int64).alias("row"),
        key.cast(pl.String).alias("id"),
        pl.lit(None, pl.String).alias("model"),
        key.cast(pl.String).alias("value"),
    )


def check_coverage(
    label_keys: pl.DataFrame, model: str, model_keys: pl.DataFrame, layout: Layout
) -> pl.DataFrame:
    """A model must predict each label id exactly once: duplicate, missing and extra ids."""
    key = pl.col(layout.id_col)
    model_keys = model_keys.filter(key.is_not_null())
    label_ids = label_keys.select(key).filter(key.is_not_null()).unique()

    def cases(frame: pl.DataFrame, check: str, value: str, with_row: bool) -> pl.DataFrame:
        return frame.select(
            pl.lit("predictions").alias("dataset"),
            pl.lit(check).alias("check"),
            pl.lit(layout.id_col if check != PAIR_UNIQUENESS else None, pl.String).alias("column"),
            (pl.col(ROW).cast(pl.Int64) if with_row else pl.lit(None, pl.Int64)).alias("row"),
            key.cast(pl.String).alias("id"),
            pl.lit(model).alias("model"),
            pl.lit(value).alias("value"),
        )

    duplicated = model_keys.filter(key.is_duplicated())
    extra = model_keys.join(label_ids, on=layout.id_col, how="anti", maintain_order="left")
    missing = label_ids.join(model_keys, on=layout.id_col, how="anti").sort(layout.id_col)
    return pl.concat(
        [
            cases(duplicated, PAIR_UNIQUENESS, "id predicted more than once", True),
            cases(extra, "extra_ids", "id not in labels", True),
            cases(missing, "missing_ids", "label id without a prediction", False),
        ]
    )


def summarise(failures: pl.DataFrame, examples: int = 5) -> list[str]:
    """One line per failed check: dataset, check, column, count and up to ``examples`` cases.

    Column and model names are quoted as ``repr`` quotes them, ids, values and check names go
    through :func:`klrank.pipeline.text.one_line`: whatever the data holds, each check is one line.
    """
    lines = []
    groups = failures.group_by(["dataset", "check", "column", "model"], maintain_order=True)
    for (dataset, check, column, model), cases in groups:
        where = f"{dataset}" + (f" column {column!r}" if column else "")
        where += f" model {model!r}" if model else ""
        shown = []
        for case in cases.head(examples).iter_rows(named=True):
            label = []
            if case["id"] is not None:
                label.append(f"id={one_line(case['id'])}")
            if case["row"] is not None:
                label.append(f"row {case['row']}")
            value = one_line(str(case["value"]))
            text = f"{' '.join(label)}: {value}" if label else value
            shown.append(text)
        count = cases.height
        noun = "case" if count == 1 else "cases"
        lines.append(
            f"{where}: {one_line(describe_check(str(check)))} [{one_line(str(check))}]: "
            f"{count} {noun}; e.g. " + "; ".join(shown)
        )
    return lines
