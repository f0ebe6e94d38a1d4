"""The human-readable ranked table (``summary.md``, also printed by ``klrank run``).

Every name or path that comes from the data or the command line goes through
:func:`klrank.pipeline.text.markdown_text`, so a model called ``a|b`` stays in its table cell and a
slice value with a newline cannot start a heading.
"""

import math
from collections.abc import Sequence

import polars as pl
from klrank.pipeline.aggregate import ALL_ROWS, SLICE
from klrank.pipeline.gates import GateResult
from klrank.pipeline.text import markdown_text


def number(value: float | None, digits: int = 4) -> str:
    """A table cell: ``digits`` significant digits, ``inf``, or ``–`` for a null."""
    if value is None:
        return "–"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _p_value(value: float | None) -> str:
    if value is None:
        return "–"
    return "<1e-16" if value < 1e-16 else f"{value:.2g}"


def _rank_interval(row: dict[str, object]) -> str:
    low, high = row["rank_low"], row["rank_high"]
    if low is None:
        return "–"
    return str(low) if low == high else f"{low}–{high}"


def _table(rows: pl.DataFrame, alpha: float) -> list[str]:
    header = (
        "| rank | model | mean KL [95% CI] | median | p99 | max | n inf | top-1 | "
        "Δ vs best (Holm p) | P(best) | rank 95% |"
    )
    lines = [header, "|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows.iter_rows(named=True):
        interval = (
            f" [{number(r['ci95_low'])}, {number(r['ci95_high'])}]"
            if r["ci95_low"] is not None
            else ""
        )
        holm = r["p_value_vs_best_holm"]
        if r["p_value_vs_best"] is None and r["delta_vs_best"] == 0:
            delta = "best"
        else:
            delta = f"{number(r['delta_vs_best'])} (p={_p_value(holm)})"
            if holm is not None and holm >= alpha:
                delta += " ≈ best"
        p_best = "–" if r["p_best"] is None else f"{r['p_best']:.3f}"
        lines.append(
            f"| {r['rank']} | {markdown_text(r['model'])} | {number(r['mean_kl'])}{interval} | "
            f"{number(r['median_kl'])} | {number(r['p99_kl'])} | {number(r['max_kl'])} | "
            f"{r['n_infinite']} | {r['top1_agreement']:.3f} | {delta} | {p_best} | "
            f"{_rank_interval(r)} |"
        )
    return lines


def _plus_minus(value: float | None, error: float | None) -> str:
    return number(value) if error is None else f"{number(value)} ± {number(error, 2)}"


def _token_table(overall: pl.DataFrame, unit: str) -> list[str]:
    """The token measures of the ``ALL`` rows (soft truth with the next token); none without."""
    if not overall.height or overall.get_column("ppl").is_null().all():
        return []
    lines = [
        "",
        "## The next token",
        "",
        f"| rank | model | mean nll ({unit}) | PPL | PPL(Q)/PPL(P) | ln ratio | mean Δp | RMS Δp |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in overall.iter_rows(named=True):
        lines.append(
            f"| {r['rank']} | {markdown_text(r['model'])} | "
            f"{_plus_minus(r['mean_nll'], r['mean_nll_sem'])} | "
            f"{_plus_minus(r['ppl'], r['ppl_sem'])} | {number(r['ppl_ratio'])} | "
            f"{_plus_minus(r['ln_ppl_ratio'], r['ln_ppl_ratio_sem'])} | "
            f"{_plus_minus(r['mean_delta_p'], r['mean_delta_p_sem'])} | "
            f"{_plus_minus(r['rms_delta_p'], r['rms_delta_p_sem'])} |"
        )
    lines += [
        "",
        "nll = −log q(token that came next); PPL = exp(mean nll in nats); the ln ratio, "
        "ln(PPL(Q)/PPL(P)) in nats, compares each model with the truth's distribution P on "
        "the same tokens; Δp = q(token) − p(token). ± one standard error.",
    ]
    return lines


def _prior_line(overall: pl.DataFrame, unit: str, alpha: float) -> str:
    """One line: the prior's mean KL and the models that do not beat it significantly."""
    if not overall.height:
        return ""
    prior = overall.get_column("prior_mean_kl")[0]
    worse = [
        markdown_text(r["model"])
        for r in overall.iter_rows(named=True)
        if not (
            r["delta_vs_prior"] is not None
            and r["delta_vs_prior"] < 0
            and r["p_value_vs_prior"] is not None
            and r["p_value_vs_prior"] < alpha
        )
    ]
    verdict = (
        f"not better than it at alpha {alpha}: {', '.join(worse)}."
        if worse
        else f"every model beats it (paired p < {alpha})."
    )
    return (
        f"The prior, which predicts the mean label distribution for every row, has mean KL "
        f"{number(prior)} {unit}; {verdict}"
    )


def ranked_summary(report: pl.DataFrame, unit: str, rank_by: str, alpha: float = 0.05) -> str:
    """Markdown: the overall ranking, a short reading guide, then one table per slice value.

    A model marked "≈ best" cannot be told apart from the rank-1 model at ``alpha`` (Holm's
    adjustment of the paired tests).
    """
    overall = report.filter(pl.col(SLICE) == ALL_ROWS)
    n_rows = overall.get_column("n_rows").max() if overall.height else 0
    lines = [
        f"# klrank: models ranked by {rank_by} ({unit}), {n_rows!s} rows",
        "",
        *_table(overall, alpha),
        "",
        f"KL divergence D(P‖Q) in {unit}: 0 means the predicted distribution equals the truth on "
        "every row; lower is better, and inf means some true class got probability 0.",
        "Δ vs best is the mean per-row KL difference from the rank-1 model on the same rows; "
        "p is a paired two-sided t-test of that difference being 0, Holm-adjusted over the "
        f"slice's models; ≈ best: not significantly worse at alpha {alpha}. P(best) and the rank "
        "95% interval come from the bootstrap (--bootstrap).",
        _prior_line(overall, unit, alpha),
        *_token_table(overall, unit),
    ]
    for (name,), rows in report.filter(pl.col(SLICE) != ALL_ROWS).group_by(
        SLICE, maintain_order=True
    ):
        lines += ["", f"## {markdown_text(name)}", "", *_table(rows, alpha)]
    return "\n".join(lines) + "\n"


def baseline_section(report: pl.DataFrame, unit: str, baseline: str | None, out: str) -> str:
    """Markdown: how each model's mean KL (``ALL`` rows) changed since the baseline run."""
    if baseline is None:
        return (
            f"\nNo earlier run under {markdown_text(out)}: nothing to compare with, "
            "the change columns are null.\n"
        )
    lines = [
        "",
        f"## Change since {markdown_text(baseline)}",
        "",
        f"| model | previous mean KL | mean KL | change ({unit}) | change % | p |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report.filter(pl.col(SLICE) == ALL_ROWS).iter_rows(named=True):
        model = markdown_text(r["model"])
        if r["prev_mean_kl"] is None:
            lines.append(f"| {model} | – | {number(r['mean_kl'])} | new | – | – |")
            continue
        lines.append(
            f"| {model} | {number(r['prev_mean_kl'])} | {number(r['mean_kl'])} | "
            f"{number(r['change_mean_kl'])} | {number(r['change_mean_kl_pct'], 3)}% | "
            f"{_p_value(r['p_value_change'])} |"
        )
    lines.append("")
    lines.append("p is a two-sided Welch t-test of the two nights' mean KL being equal.")
    return "\n".join(lines) + "\n"


def gates_section(gates: Sequence[GateResult]) -> str:
    """Markdown: every gate's outcome, failures first; empty when no gate was asked for."""
    if not gates:
        return ""
    failed = [g for g in gates if g.failed]
    title = f"{len(failed)} failed" if failed else "all passed"
    lines = ["", f"## Gates: {title}", ""]
    for gate in sorted(gates, key=lambda g: not g.failed):
        lines.append(f"- {gate.outcome.upper()} {markdown_text(gate.message)}")
    return "\n".join(lines) + "\n"
