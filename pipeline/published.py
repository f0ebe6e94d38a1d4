"""The report and the class contributions in the order and columns they are published in."""

import polars as pl
from klrank.pipeline import aggregate
from klrank.pipeline.baseline import compare_with_baseline
from klrank.pipeline.divergence import UNITS
from klrank.pipeline.layout import MODEL
from klrank.schemas.report import REPORT_COLUMNS, REPORT_SCHEMA


def published_report(
    report: pl.DataFrame, base: str, baseline: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The report in its published column and row order, checked against its schema."""
    ordered = report.with_columns(pl.lit(UNITS[base]).alias("unit")).sort(
        pl.col(aggregate.SLICE) != aggregate.ALL_ROWS, aggregate.SLICE, "rank", MODEL
    )
    published = compare_with_baseline(ordered, baseline).select(list(REPORT_COLUMNS))
    REPORT_SCHEMA.validate(published)
    return published


def published_contributions(
    contributions: pl.DataFrame, report: pl.DataFrame, unit: str
) -> pl.DataFrame:
    """Class contributions in the report's row order, classes in class order within each."""
    order = report.select(aggregate.SLICE, MODEL).with_row_index("_order")
    return (
        contributions.with_row_index("_class_order")
        .join(order, on=[aggregate.SLICE, MODEL], how="left")
        .sort("_order", "_class_order")
        .select(
            aggregate.SLICE,
            MODEL,
            aggregate.CLASS,
            "contribution",
            "mean_p",
            "mean_q",
            pl.lit(unit).alias("unit"),
        )
    )
