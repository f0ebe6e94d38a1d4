"""Checks of the input contract, collecting every failure as rows of one failure-cases frame.

The frame has the columns of ``FAILURE_SCHEMA``: which dataset and check failed, on which column,
at which row (0-based position in the dataset as read), for which id and model, and the failing
value as text. Pandera's failure cases are translated into it; the checks that span both inputs
(class sets, key dtypes, coverage of the label ids by every model) are written here in Polars.
"""

from collections.abc import Sequence

import pandera.errors
import pandera.polars as pa
import polars as pl

from pipeline.layout import Layout
from schemas.inputs import labels_schema, predictions_schema

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

# What Pandera's built-in check names mean, for people reading the error.
_CHECK_DESCRIPTIONS = {
    "column_in_dataframe": "required column is missing",
    "not_nullable": "null or NaN values",
    "field_uniqueness": "duplicate values",
    "multiple_fields_uniqueness": "duplicate (id, model) pairs",
    "in_range(0.0, 1.0)": "probability outside [0, 1]",
    "rows_sum_to_one": "probabilities do not sum to 1 within the tolerance",
    "class_set": "labels and predictions have different class sets",
    "id_dtype": "labels and predictions have different id dtypes",
    "not_empty": "no rows",
    "extra_ids": "predictions for ids that are not in the labels",
    "missing_ids": "label ids without a prediction",
    "known_label": "label is not a class of the predictions",
    "finite": "NaN or infinite logit",
    "column_not_in_schema": "unexpected column",
}


def describe_check(check: str) -> str:
    """A reader's description of a check name, falling back to the name itself."""
    if check.startswith("dtype("):
        return (
            "wrong dtype (probabilities and logits: Float32 or Float64; id and label: integer "
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


def _from_pandera(
    error: pandera.errors.SchemaErrors, dataset: str, data: pl.DataFrame | None, layout: Layout
) -> pl.DataFrame:
    raw: pl.DataFrame = error.failure_cases
    cases = raw.select(
        pl.lit(dataset).alias("dataset"),
        pl.col("check").cast(pl.String),
        # Frame-level checks (row sums, (id, model) uniqueness) name the schema, not a column.
        pl.when(pl.col("schema_context") != "DataFrameSchema")
        .then(pl.col("column").cast(pl.String))
        .alias("column"),
        pl.col("index").cast(pl.Int64).alias("row"),
        pl.col("failure_case").cast(pl.String).alias("value"),
    )
    if data is None:
        return cases.with_columns(id=pl.lit(None, pl.String), model=pl.lit(None, pl.String)).select(
            FAILURE_SCHEMA.names()
        )
    keys = [pl.col(layout.id_col).cast(pl.String).alias("id")]
    if dataset == "predictions":
        keys.append(pl.col(layout.model_col).cast(pl.String).alias("model"))
    else:
        keys.append(pl.lit(None, pl.String).alias("model"))
    keyed = data.select(keys).with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    return cases.join(keyed, on="row", how="left", maintain_order="left").select(
        FAILURE_SCHEMA.names()
    )


def _run_schema(
    schema: pa.DataFrameSchema,
    frame: pl.DataFrame | pl.LazyFrame,
    dataset: str,
    layout: Layout,
) -> pl.DataFrame:
    try:
        if isinstance(frame, pl.DataFrame):
            schema.validate(frame, lazy=True)
        else:
            schema.validate(frame, lazy=True)  # a LazyFrame: dtypes and columns only
    except pandera.errors.SchemaErrors as error:
        data = frame if isinstance(frame, pl.DataFrame) else None
        return _from_pandera(error, dataset, data, layout)
    return no_failures()


def _schemas(
    layout: Layout, labels: pl.Schema, predictions: pl.Schema, tolerance: float
) -> tuple[pa.DataFrameSchema, pa.DataFrameSchema]:
    label_schema = labels_schema(
        labels,
        id_col=layout.id_col,
        prob_cols=layout.label_prob_cols,
        label_col=layout.label_col,
        classes=layout.classes,
        slice_cols=layout.slice_cols,
        tolerance=tolerance,
    )
    prediction_schema = predictions_schema(
        predictions,
        id_col=layout.id_col,
        model_col=layout.model_col,
        prob_cols=layout.prediction_cols if layout.prediction_kind == "prob" else (),
        logit_cols=layout.prediction_cols if layout.prediction_kind == "logit" else (),
        tolerance=tolerance,
    )
    return label_schema, prediction_schema


def label_columns(layout: Layout) -> list[str]:
    """The label columns klrank reads (and validates), in order."""
    truth = [layout.label_col] if layout.label_col is not None else layout.label_prob_cols
    return [layout.id_col, *truth, *layout.slice_cols]


def prediction_columns(layout: Layout) -> list[str]:
    """The prediction columns klrank reads (and validates), in order."""
    return [layout.id_col, layout.model_col, *layout.prediction_cols]


def _present(frame: pl.LazyFrame, columns: Sequence[str]) -> pl.LazyFrame:
    # Missing columns are left out here, so that Pandera reports them by name.
    available = set(frame.collect_schema().names())
    return frame.select([c for c in columns if c in available])


def check_structure(
    labels: pl.LazyFrame, predictions: pl.LazyFrame, layout: Layout
) -> pl.DataFrame:
    """Column presence, dtypes, matching class sets and key dtypes, without reading any data."""
    label_frame = _present(labels, label_columns(layout))
    prediction_frame = _present(predictions, prediction_columns(layout))
    label_schema, prediction_schema = _schemas(
        layout, label_frame.collect_schema(), prediction_frame.collect_schema(), tolerance=0.0
    )
    failures = [
        _run_schema(label_schema, label_frame, "labels", layout),
        _run_schema(prediction_schema, prediction_frame, "predictions", layout),
    ]
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
    label_id = label_frame.collect_schema().get(layout.id_col)
    prediction_id = prediction_frame.collect_schema().get(layout.id_col)
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
    return pl.concat(failures)


def _coverage(labels: pl.DataFrame, predictions: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """Every model must predict exactly the label ids: report missing and extra ids per model."""
    id_col, model_col = layout.id_col, layout.model_col
    # Null keys and duplicates are reported by their own checks; here each key counts once.
    label_ids = labels.select(pl.col(id_col).cast(pl.String)).drop_nulls().unique()
    pairs = predictions.select(pl.col(id_col).cast(pl.String), model_col).drop_nulls().unique()
    extra = pairs.join(label_ids, on=id_col, how="anti")
    failures = [
        extra.select(
            pl.lit("predictions").alias("dataset"),
            pl.lit("extra_ids").alias("check"),
            pl.lit(id_col).alias("column"),
            pl.lit(None, pl.Int64).alias("row"),
            pl.col(id_col).alias("id"),
            pl.col(model_col).alias("model"),
            pl.lit("id not in labels").alias("value"),
        )
    ]
    for model in pairs.get_column(model_col).unique().sort().to_list():
        model_ids = pairs.filter(pl.col(model_col) == model).select(id_col)
        missing = label_ids.join(model_ids, on=id_col, how="anti").sort(id_col)
        if missing.height:
            failures.append(
                failure(
                    "predictions",
                    "missing_ids",
                    column=id_col,
                    ids=missing.get_column(id_col).to_list(),
                    model=model,
                    value="label id without a prediction",
                )
            )
    return pl.concat(failures)


def check_data(
    labels: pl.DataFrame, predictions: pl.DataFrame, layout: Layout, tolerance: float
) -> pl.DataFrame:
    """Every row-level check of both inputs (already selected to ``*_columns(layout)``)."""
    label_schema, prediction_schema = _schemas(layout, labels.schema, predictions.schema, tolerance)
    failures = [
        _run_schema(label_schema, labels, "labels", layout),
        _run_schema(prediction_schema, predictions, "predictions", layout),
    ]
    for dataset, frame in (("labels", labels), ("predictions", predictions)):
        if frame.height == 0:
            failures.append(failure(dataset, "not_empty", value="zero rows"))
    if labels.height and predictions.height:
        failures.append(_coverage(labels, predictions, layout))
    return pl.concat(failures)


def summarise(failures: pl.DataFrame, examples: int = 5) -> list[str]:
    """One line per failed check: dataset, check, column, count and up to ``examples`` cases."""
    lines = []
    groups = failures.group_by(["dataset", "check", "column", "model"], maintain_order=True)
    for (dataset, check, column, model), cases in groups:
        where = f"{dataset}" + (f" column {column!r}" if column else "")
        where += f" model {model!r}" if model else ""
        shown = []
        for case in cases.head(examples).iter_rows(named=True):
            label = []
            if case["id"] is not None:
                label.append(f"id={case['id']}")
            if case["row"] is not None:
                label.append(f"row {case['row']}")
            text = f"{' '.join(label)}: {case['value']}" if label else str(case["value"])
            shown.append(text)
        count = cases.height
        noun = "case" if count == 1 else "cases"
        lines.append(
            f"{where}: {describe_check(str(check))} [{check}]: {count} {noun}; e.g. "
            + "; ".join(shown)
        )
    return lines
