"""``report.html``: the ranked report as one self-contained page, for people rather than programs.

The page holds the ranked tables, each model's mean KL with its 95% interval, the distribution
of per-row KL (an ECDF on a log axis) and each class's contribution to the mean KL. The figures
are static SVG drawn here (:mod:`klrank.pipeline.svg`): the page has no script at all, opens
without a network and stays small (tens of kilobytes: its size grows with the models, slices and
classes, never with the rows).

Notes
-----
* The ECDF is drawn from a bounded number of exact points per model
  (:func:`klrank.pipeline.aggregate.ecdf_points`), never from the rows themselves.
* A log axis has no place for KL <= 0 (0 for a perfect row; slightly below 0 within the row-sum
  tolerance): each curve starts at the left edge at the share of such rows, which is the exact
  ECDF there, and the legend states that share. Rows with KL = +inf are never reached: a curve
  ends below 1 by their share, also stated in the legend.
* Infinite values have no place on an axis: they are not drawn, and the text says what they were.
* The same frames give the same bytes: figure ids are fixed, nothing depends on the clock.
* Names are data, not markup: they are escaped wherever they go, tables and figures alike.
"""

import html
import math
from collections.abc import Sequence
from typing import Any

import polars as pl
from klrank.pipeline.aggregate import ALL_ROWS, CLASS, ECDF_POINTS, SLICE
from klrank.pipeline.layout import MODEL
from klrank.pipeline.svg import CHART_STYLE, Curve, bar_chart, dot_chart, step_chart

MAX_CLASSES_SHOWN = 40  # more bars than this are unreadable; the largest contributions are shown

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1rem; }
p.meta, p.note { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.9rem; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #e5e5e5; text-align: right; }
th { background: #f6f6f6; }
td { white-space: nowrap; }
td.model, th.model { text-align: left; font-weight: 600; }
"""


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}g}"


def _percent(share: float) -> str:
    return f"{100 * share:.3g}%"


def _change(r: dict[str, Any]) -> str:
    """Tonight's mean KL against the baseline's, as the --max-regression gate sees it."""
    if r["prev_mean_kl"] is None:
        return "new"
    pct, p = r["change_mean_kl_pct"], r["p_value_change"]
    if pct is None:
        change = "–"
    elif math.isinf(pct):
        change = "+∞%" if pct > 0 else "−∞%"
    else:
        change = f"{pct:+.3g}%"
    p_text = "–" if p is None else ("<1e-16" if p < 1e-16 else f"{p:.2g}")
    return f"{change} (p={p_text})"


def _table(rows: pl.DataFrame, unit: str, alpha: float) -> str:
    # The comparison with an earlier night, only when the run had one (--baseline).
    with_baseline = "prev_mean_kl" in rows.columns and rows["prev_mean_kl"].is_not_null().any()
    header = (
        "<tr><th>rank</th><th class='model'>model</th><th>rows</th>"
        f"<th>mean KL [95% CI] ({html.escape(unit)})</th><th>median</th><th>p90</th>"
        "<th>p99</th><th>max</th><th>n ∞</th><th>marginal KL</th><th>top-1</th>"
        "<th>Δ vs best (Holm p)</th><th>P(best)</th><th>rank 95%</th>"
        + ("<th>vs baseline (p)</th>" if with_baseline else "")
        + "</tr>"
    )
    lines = ["<table class='ranking'>", f"<thead>{header}</thead>", "<tbody>"]
    for r in rows.iter_rows(named=True):
        interval = (
            f" [{_number(r['ci95_low'])}, {_number(r['ci95_high'])}]"
            if r["ci95_low"] is not None
            else ""
        )
        if r["p_value_vs_best"] is None and r["delta_vs_best"] == 0:
            delta = "best"
        else:
            p = r["p_value_vs_best_holm"]
            p_text = "–" if p is None else ("<1e-16" if p < 1e-16 else f"{p:.2g}")
            delta = f"{_number(r['delta_vs_best'])} (p={p_text})"
            if p is not None and p >= alpha:
                delta += " ≈ best"
        low, high = r["rank_low"], r["rank_high"]
        ranks = "–" if low is None else (str(low) if low == high else f"{low}–{high}")
        cells = [
            str(r["rank"]),
            f"<td class='model'>{html.escape(r[MODEL])}</td>",
            str(r["n_rows"]),
            _number(r["mean_kl"]) + interval,
            _number(r["median_kl"]),
            _number(r["p90_kl"]),
            _number(r["p99_kl"]),
            _number(r["max_kl"]),
            str(r["n_infinite"]),
            _number(r["marginal_kl"]),
            f"{r['top1_agreement']:.3f}",
            html.escape(delta),
            "–" if r["p_best"] is None else f"{r['p_best']:.3f}",
            ranks,
            *([html.escape(_change(r))] if with_baseline else []),
        ]
        row = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells)
        lines.append(f"<tr>{row}</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _plus_minus(value: float | None, error: float | None) -> str:
    return _number(value) if error is None else f"{_number(value)} ± {_number(error, 2)}"


def _token_section(overall: pl.DataFrame, unit: str) -> list[str]:
    """The token measures of the ``ALL`` rows (soft truth with the next token); none without."""
    if not overall.height or overall.get_column("ppl").is_null().all():
        return []
    header = (
        "<tr><th>rank</th><th class='model'>model</th>"
        f"<th>mean nll ({html.escape(unit)})</th><th>PPL</th><th>PPL(Q)/PPL(P)</th>"
        "<th>ln ratio</th><th>mean Δp</th><th>RMS Δp</th></tr>"
    )
    lines = ["<table class='tokens'>", f"<thead>{header}</thead>", "<tbody>"]
    for r in overall.iter_rows(named=True):
        cells = [
            str(r["rank"]),
            f"<td class='model'>{html.escape(r[MODEL])}</td>",
            _plus_minus(r["mean_nll"], r["mean_nll_sem"]),
            _plus_minus(r["ppl"], r["ppl_sem"]),
            _number(r["ppl_ratio"]),
            _plus_minus(r["ln_ppl_ratio"], r["ln_ppl_ratio_sem"]),
            _plus_minus(r["mean_delta_p"], r["mean_delta_p_sem"]),
            _plus_minus(r["rms_delta_p"], r["rms_delta_p_sem"]),
        ]
        row = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells)
        lines.append(f"<tr>{row}</tr>")
    lines += ["</tbody>", "</table>"]
    return [
        "<h2 id='next-token'>The next token</h2>",
        "\n".join(lines),
        "<p class='note'>nll = −log q(token that came next); PPL = exp(mean nll in nats); the "
        "ln ratio, ln(PPL(Q)/PPL(P)) in nats, compares each model with the truth's "
        "distribution P on the same tokens; Δp = q(token) − p(token). ± one standard "
        "error.</p>",
    ]


def _mean_figure(overall: pl.DataFrame, unit: str) -> str:
    means = overall.get_column("mean_kl").to_list()
    notes = [
        "mean = ∞ (rows with KL = ∞)" if mean is not None and math.isinf(mean) else ""
        for mean in means
    ]
    return dot_chart(
        "mean",
        overall.get_column(MODEL).to_list(),
        means,
        overall.get_column("ci95_low").to_list(),
        overall.get_column("ci95_high").to_list(),
        x_title=f"mean KL ({unit}), 95% t-interval",
        notes=notes,
    )


def _ecdf_figure(overall: pl.DataFrame, ecdf: pl.DataFrame, unit: str) -> str:
    positive = ecdf.filter(pl.col("kl") > 0).get_column("kl")
    left = float(positive.min()) / 2 if positive.len() else 1e-6  # type: ignore[arg-type]
    right = float(positive.max()) * 2 if positive.len() else 1.0  # type: ignore[arg-type]
    curves = []
    for r in overall.iter_rows(named=True):
        curve = ecdf.filter(pl.col(MODEL) == r[MODEL])
        at_or_below_zero = curve.filter(pl.col("kl") <= 0).get_column("ecdf")
        zero_share = float(at_or_below_zero.max()) if at_or_below_zero.len() else 0.0  # type: ignore[arg-type]
        infinite_share = r["n_infinite"] / r["n_rows"]
        above = curve.filter(pl.col("kl") > 0)
        x = [left, *above.get_column("kl").to_list(), right]
        last = above.get_column("ecdf").to_list()[-1:] or [zero_share]
        y = [zero_share, *above.get_column("ecdf").to_list(), last[0]]
        notes = [
            f"KL≤0: {_percent(zero_share)}" if zero_share else "",
            f"KL=∞: {_percent(infinite_share)}" if infinite_share else "",
        ]
        note = ", ".join(n for n in notes if n)
        curves.append(Curve(f"{r[MODEL]} ({note})" if note else r[MODEL], x, y))
    return step_chart(
        "ecdf",
        curves,
        x_range=(left, right),
        y_range=(0.0, 1.02),
        x_title=f"per-row KL ({unit}), log scale",
        y_title="share of rows with KL ≤ x",
        x_log=True,
        y_percent=True,
    )


def _shown_classes(contributions: pl.DataFrame) -> list[str]:
    """Classes in class order, or the MAX_CLASSES_SHOWN with the largest |contribution|."""
    classes = contributions.get_column(CLASS).unique(maintain_order=True)
    if classes.len() <= MAX_CLASSES_SHOWN:
        return classes.to_list()
    largest = (
        contributions.group_by(CLASS, maintain_order=True)
        .agg(pl.col("contribution").abs().max().alias("size"))
        .top_k(MAX_CLASSES_SHOWN, by="size")
        .get_column(CLASS)
    )
    shown = set(largest.to_list())
    return [c for c in classes.to_list() if c in shown]


def _contribution_figure(overall: pl.DataFrame, contributions: pl.DataFrame, unit: str) -> str:
    shown = _shown_classes(contributions)
    series = []
    # Only the classes shown: a vocabulary of 128,000 tokens has as many contributions a model.
    contributions = contributions.filter(pl.col(CLASS).is_in(shown))
    for model in overall.get_column(MODEL).to_list():
        values = dict(
            contributions.filter(pl.col(MODEL) == model).select(CLASS, "contribution").iter_rows()
        )
        series.append((model, [values.get(c) for c in shown]))
    return bar_chart(
        "contributions",
        shown,
        series,
        x_title="class",
        y_title=f"contribution to mean KL ({unit})",
    )


def _infinite_contributions(contributions: pl.DataFrame) -> str:
    infinite = contributions.filter(pl.col("contribution") == math.inf)
    if infinite.height == 0:
        return ""
    parts = [
        f"{html.escape(model)}: {', '.join(html.escape(c) for c in group.get_column(CLASS).to_list())}"
        for (model,), group in infinite.group_by(MODEL, maintain_order=True)
    ]
    return (
        "<p class='note'>Infinite contributions (some row has p &gt; 0 where the model "
        "predicted q = 0), not drawn: " + "; ".join(parts) + ".</p>"
    )


def report_html(
    report: pl.DataFrame,
    contributions: pl.DataFrame,
    ecdf: pl.DataFrame,
    *,
    unit: str,
    rank_by: str,
    details: Sequence[str] = (),
    failed_gates: Sequence[str] = (),
    alpha: float = 0.05,
) -> str:
    """The page: tables, mean KL with 95% CI, KL ECDF and per-class contributions (ALL rows).

    Parameters
    ----------
    report
        The published report (``report.parquet``), rows in published order.
    contributions
        The published class contributions (``class_contributions.parquet``).
    ecdf
        ``model``, ``kl``, ``ecdf``: each model's ECDF points over all rows.
    unit, rank_by
        For the titles.
    details
        Short lines shown under the title (inputs, run date, version).
    failed_gates
        The messages of the gates that failed, shown first.
    alpha
        Models whose Holm-adjusted p-value against the best is at least this are marked
        "≈ best": they cannot be told apart from it.
    """
    overall = report.filter(pl.col(SLICE) == ALL_ROWS)
    n_rows = overall.get_column("n_rows").max() if overall.height else 0
    overall_contributions = contributions.filter(pl.col(SLICE) == ALL_ROWS)
    divs = {
        "mean": _mean_figure(overall, unit),
        "ecdf": _ecdf_figure(overall, ecdf, unit),
        "contributions": _contribution_figure(overall, overall_contributions, unit),
    }
    n_classes = overall_contributions.get_column(CLASS).n_unique()
    shown = min(n_classes, MAX_CLASSES_SHOWN)
    class_note = (
        f"The {shown} of {n_classes} classes with the largest contributions are shown; "
        "class_contributions.parquet has them all. "
        if shown < n_classes
        else ""
    )
    sections = [
        "<!DOCTYPE html>",
        "<html lang='en'>",
        "<head>",
        "<meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>klrank: models ranked by {html.escape(rank_by)}</title>",
        f"<style>{_STYLE}{CHART_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>klrank: models ranked by {html.escape(rank_by)} ({html.escape(unit)}), "
        f"{n_rows!s} rows</h1>",
        *[f"<p class='meta'>{html.escape(line)}</p>" for line in details],
        *(
            [
                "<h2 id='gates'>Failed gates</h2>",
                "<ul class='gates'>",
                *[f"<li>{html.escape(m)}</li>" for m in failed_gates],
                "</ul>",
            ]
            if failed_gates
            else []
        ),
        "<h2 id='ranking'>Ranking</h2>",
        _table(overall, unit, alpha),
        f"<p class='note'>KL divergence D(P‖Q) in {html.escape(unit)}: 0 means the predicted "
        "distribution equals the truth on every row; lower is better, and ∞ means some true "
        "class got probability 0. Δ vs best is the mean per-row KL difference from the rank-1 "
        "model on the same rows; p is a paired two-sided t-test of that difference being 0, "
        "Holm-adjusted over the slice's models; ≈ best: not significantly worse at alpha "
        f"{alpha}. P(best) is the share of bootstrap replicates in which the model ranks first, "
        "and rank 95% the interval of its rank over them (--bootstrap).</p>",
        *_token_section(overall, unit),
        "<h2 id='mean'>Mean KL with 95% confidence interval</h2>",
        divs["mean"],
        "<h2 id='distribution'>Distribution of per-row KL</h2>",
        divs["ecdf"],
        "<p class='note'>Empirical CDF of each model's per-row KL over all rows, drawn from up "
        f"to {ECDF_POINTS} exact points per model. The x axis is logarithmic, so rows with KL ≤ 0 (0 for "
        "a perfect prediction, or slightly below 0 for rows summing to 1 only within the "
        "tolerance) cannot be placed on it: each curve starts at the left edge at the share of "
        "those rows. Rows with KL = ∞ are never reached: the curve ends below 100% by their "
        "share. Both shares are in the legend when not 0.</p>",
        "<h2 id='contributions'>Per-class contributions to the mean KL</h2>",
        divs["contributions"],
        f"<p class='note'>{class_note}A class's contribution is Σ over rows of "
        "p<sub>c</sub>·log(p<sub>c</sub>/q<sub>c</sub>), divided by the number of rows; a "
        "model's contributions add up to its mean KL. One can be negative: that class is "
        "predicted more often than it occurs, and other classes pay for it.</p>",
        _infinite_contributions(overall_contributions),
    ]
    sliced = report.filter(pl.col(SLICE) != ALL_ROWS)
    if sliced.height:
        sections.append("<h2 id='slices'>Slices</h2>")
        for (name,), rows in sliced.group_by(SLICE, maintain_order=True):
            sections += [f"<h3>{html.escape(str(name))}</h3>", _table(rows, unit, alpha)]
    sections += ["</body>", "</html>", ""]
    return "\n".join(s for s in sections if s)
