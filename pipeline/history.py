"""Every night's mean KL per model, as a table, a text table and a chart (``klrank history``).

Pure functions of frames; :mod:`klrank.nightly` finds and reads the reports.
"""

import datetime as dt
import html
from collections.abc import Sequence

import polars as pl
from klrank.pipeline.aggregate import SLICE
from klrank.pipeline.layout import MODEL
from klrank.pipeline.summary import number
from klrank.pipeline.svg import CHART_STYLE, DatedSeries, line_chart
from klrank.pipeline.text import markdown_text
from klrank.schemas.outputs import RUN_DATE_KEY

RUN_DATE = RUN_DATE_KEY
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1rem auto;
       max-width: 1100px; padding: 0 1rem; color: #2a3f5f; }
h1 { font-size: 1.2rem; font-weight: 500; }
"""
# What a night's report must have; all of them exist since report schema version 1.
HISTORY_INPUT_COLUMNS = (
    SLICE,
    "rank",
    MODEL,
    "n_rows",
    "mean_kl",
    "sem_kl",
    "ci95_low",
    "ci95_high",
    "n_infinite",
)
HISTORY_COLUMNS = (RUN_DATE, *(c for c in HISTORY_INPUT_COLUMNS if c != SLICE))


def history_table(reports: Sequence[tuple[dt.date, pl.DataFrame]], slice_name: str) -> pl.DataFrame:
    """One row per night and model of the slice ``slice_name``, by date, rank and model.

    Parameters
    ----------
    reports
        Each night's date and report (the :data:`HISTORY_INPUT_COLUMNS`), all in one unit.
    slice_name
        ``ALL`` or ``COL=value``; nights without it contribute no rows.
    """
    frames = [
        frame.filter(pl.col(SLICE) == slice_name).with_columns(pl.lit(day).alias(RUN_DATE))
        for day, frame in reports
    ]
    if not frames:
        return pl.DataFrame(schema={RUN_DATE: pl.Date, "rank": pl.Int64, MODEL: pl.String})
    return (
        pl.concat(frames, how="vertical_relaxed")
        .sort(RUN_DATE, "rank", MODEL)
        .select(HISTORY_COLUMNS)
    )


def history_markdown(table: pl.DataFrame, unit: str, slice_name: str) -> str:
    """Markdown: one line per night and model with the mean KL and its 95% interval.

    The slice and model names go through :func:`klrank.pipeline.text.markdown_text`.
    """
    lines = [
        f"# klrank history: mean KL ({unit}) per night, slice {markdown_text(slice_name)}",
        "",
        "| run_date | rank | model | mean KL [95% CI] | rows | n inf |",
        "|---|---:|---|---|---:|---:|",
    ]
    for r in table.iter_rows(named=True):
        interval = (
            f" [{number(r['ci95_low'])}, {number(r['ci95_high'])}]"
            if r["ci95_low"] is not None
            else ""
        )
        lines.append(
            f"| {r[RUN_DATE].isoformat()} | {r['rank']} | {markdown_text(r[MODEL])} | "
            f"{number(r['mean_kl'])}{interval} | {r['n_rows']} | {r['n_infinite']} |"
        )
    return "\n".join(lines) + "\n"


def history_chart_html(table: pl.DataFrame, unit: str, slice_name: str) -> str:
    """A self-contained HTML page (a static SVG chart): mean KL ± 95% CI per model over nights.

    An infinite mean is left out of its model's line, as an axis has no place for it; the table
    says so with ``n_infinite``.
    """
    series = []
    for (model,), rows in table.sort(RUN_DATE).group_by(MODEL, maintain_order=True):
        finite_rows = rows.filter(pl.col("mean_kl").is_finite())
        series.append(
            DatedSeries(
                str(model),
                finite_rows.get_column(RUN_DATE).to_list(),
                finite_rows.get_column("mean_kl").to_list(),
                finite_rows.get_column("ci95_low").to_list(),
                finite_rows.get_column("ci95_high").to_list(),
            )
        )
    title = f"klrank: mean KL per night, slice {slice_name} (95% CI)"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            "<html lang='en'>",
            "<head>",
            "<meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<style>{_STYLE}{CHART_STYLE}</style>",
            "</head>",
            "<body>",
            f"<h1>{html.escape(title)}</h1>",
            line_chart("history", series, x_title="run date", y_title=f"mean KL ({unit})"),
            "</body>",
            "</html>",
            "",
        ]
    )
