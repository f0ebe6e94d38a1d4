"""The report, the class contributions and the quantiles in the order and columns they are published in."""

import math
from typing import Any

import polars as pl
from klrank.pipeline import aggregate
from klrank.pipeline.baseline import compare_with_baseline
from klrank.pipeline.divergence import UNITS
from klrank.pipeline.layout import MODEL
from klrank.schemas.outputs import QUANTILE_COLUMNS, QUANTILE_MEASURES
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


def published_quantiles(quantiles: pl.DataFrame, report: pl.DataFrame) -> pl.DataFrame:
    """``quantiles.parquet``: by (slice, model) in the report's row order, then measure, quantile.

    Measures in the order of :data:`klrank.schemas.outputs.QUANTILE_MEASURES` (``kl`` first),
    probabilities ascending: the same order from either engine, whatever order the quantiles
    were asked for in.
    """
    order = report.select(aggregate.SLICE, MODEL).with_row_index("_order")
    measures = QUANTILE_MEASURES
    measure_order = pl.col(aggregate.MEASURE).replace_strict(
        measures, range(len(measures)), default=len(measures), return_dtype=pl.Int64
    )
    return (
        quantiles.join(order, on=[aggregate.SLICE, MODEL], how="left")
        .sort("_order", measure_order, aggregate.MEASURE, aggregate.QUANTILE, nulls_last=True)
        .select(list(QUANTILE_COLUMNS))
    )


RANKING_COLUMNS = ("rank", MODEL, "mean_kl", "ci95_low", "ci95_high", "n_rows", "n_infinite")


def ranking_record(report: pl.DataFrame, rank_by: str) -> list[dict[str, Any]]:
    """The ``ALL`` slice of a published report as JSON-ready rows, in rank order.

    Each row holds :data:`RANKING_COLUMNS` and the ``rank_by`` column, for the manifest and the
    run's ``--json`` summary: a scheduler reads the ranking there without reading Parquet.

    Notes
    -----
    JSON has no infinity or NaN: a non-finite value is ``None`` (null), and ``n_infinite`` says
    why a mean is missing.

    Examples
    --------
    >>> report = pl.DataFrame({"slice": ["ALL"], "rank": [1], "model": ["m"],
    ...     "mean_kl": [float("inf")], "ci95_low": [None], "ci95_high": [None], "n_rows": [4],
    ...     "n_infinite": [1]})
    >>> ranking_record(report, "mean_kl")
    [{'rank': 1, 'model': 'm', 'mean_kl': None, 'ci95_low': None, 'ci95_high': None, 'n_rows': 4, 'n_infinite': 1}]
    """
    columns = list(dict.fromkeys([*RANKING_COLUMNS, rank_by]))
    rows = report.filter(pl.col(aggregate.SLICE) == aggregate.ALL_ROWS).sort("rank", MODEL)
    return [
        {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        for row in rows.select(columns).iter_rows(named=True)
    ]
