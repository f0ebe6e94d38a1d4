"""The human-readable ranked table (``summary.md``, also printed by ``klrank run``)."""

import math

import polars as pl

from pipeline.aggregate import ALL_ROWS, SLICE


def _number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _p_value(value: float | None) -> str:
    if value is None:
        return "–"
    return "<1e-16" if value < 1e-16 else f"{value:.2g}"


def _table(rows: pl.DataFrame) -> list[str]:
    header = (
        "| rank | model | mean KL [95% CI] | median | p99 | max | n inf | top-1 | Δ vs best (p) |"
    )
    lines = [header, "|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows.iter_rows(named=True):
        interval = (
            f" [{_number(r['ci95_low'])}, {_number(r['ci95_high'])}]"
            if r["ci95_low"] is not None
            else ""
        )
        delta = (
            "best"
            if r["p_value_vs_best"] is None and r["delta_vs_best"] == 0
            else (f"{_number(r['delta_vs_best'])} (p={_p_value(r['p_value_vs_best'])})")
        )
        lines.append(
            f"| {r['rank']} | {r['model']} | {_number(r['mean_kl'])}{interval} | "
            f"{_number(r['median_kl'])} | {_number(r['p99_kl'])} | {_number(r['max_kl'])} | "
            f"{r['n_infinite']} | {r['top1_agreement']:.3f} | {delta} |"
        )
    return lines


def ranked_summary(report: pl.DataFrame, unit: str, rank_by: str) -> str:
    """Markdown: the overall ranking, a two-line reading guide, then one table per slice value."""
    overall = report.filter(pl.col(SLICE) == ALL_ROWS)
    n_rows = overall.get_column("n_rows").max() if overall.height else 0
    lines = [
        f"# klrank: models ranked by {rank_by} ({unit}), {n_rows!s} rows",
        "",
        *_table(overall),
        "",
        f"KL divergence D(P‖Q) in {unit}: 0 means the predicted distribution equals the truth on "
        "every row; lower is better, and inf means some true class got probability 0.",
        "Δ vs best is the mean per-row KL difference from the rank-1 model on the same rows; "
        "p is a paired two-sided t-test of that difference being 0.",
    ]
    for (name,), rows in report.filter(pl.col(SLICE) != ALL_ROWS).group_by(
        SLICE, maintain_order=True
    ):
        lines += ["", f"## {name}", "", *_table(rows)]
    return "\n".join(lines) + "\n"
