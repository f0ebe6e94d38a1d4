"""Quality gates a nightly run can be held to, judged on the published report's ``ALL`` slice.

A gate never stops the report from being published: the report is valid, the models are just
not good enough. Each gate is judged per model and every outcome is kept, so a failed night
lists all its reasons, not the first.
"""

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import polars as pl
from klrank.pipeline.aggregate import ALL_ROWS, SLICE
from klrank.pipeline.errors import UsageError
from klrank.pipeline.layout import MODEL

Outcome = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class Gates:
    """The gates asked for; None means not asked."""

    max_mean_kl: float | None = None
    max_regression_pct: float | None = None
    alpha: float = 0.05
    expect_best: str | None = None
    expect_beats_prior: bool = False

    def __post_init__(self) -> None:
        if self.max_mean_kl is not None and math.isnan(self.max_mean_kl):
            raise UsageError("--max-mean-kl must be a number")
        if self.max_regression_pct is not None and not self.max_regression_pct >= 0:
            raise UsageError(f"--max-regression must be >= 0, got {self.max_regression_pct}")
        if not 0.0 < self.alpha < 1.0:
            raise UsageError(f"--alpha must be in (0, 1), got {self.alpha}")

    def recorded(self) -> dict[str, Any]:
        """The gates as recorded in the manifest (JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate for one model (``model`` None: the gate as a whole).

    ``message`` is one line: model names in it are quoted as ``repr`` quotes them, so that no
    name can break the line on stderr (Markdown escapes it again, :mod:`klrank.pipeline.summary`).
    """

    gate: str
    outcome: Outcome
    model: str | None
    message: str

    @property
    def failed(self) -> bool:
        """True when this gate failed."""
        return self.outcome == "failed"

    def recorded(self) -> dict[str, Any]:
        """The outcome as recorded in the manifest (JSON-ready)."""
        return asdict(self)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _max_mean_kl(overall: pl.DataFrame, limit: float, unit: str) -> list[GateResult]:
    results = []
    for row in overall.iter_rows(named=True):
        failed = row["mean_kl"] > limit
        relation = ">" if failed else "<="
        results.append(
            GateResult(
                "max_mean_kl",
                "failed" if failed else "passed",
                row[MODEL],
                f"max_mean_kl: model {row[MODEL]!r} mean KL {_number(row['mean_kl'])} {unit} "
                f"{relation} {_number(limit)}",
            )
        )
    return results


def _regressed(row: dict[str, Any], limit: float, alpha: float) -> bool:
    pct, p_value = row["change_mean_kl_pct"], row["p_value_change"]
    if pct is None or not pct > limit:
        return False
    # A mean that became +inf (a true class given probability 0) has no p-value but is
    # certainly worse.
    became_infinite = math.isinf(row["mean_kl"]) and not math.isinf(row["prev_mean_kl"])
    return became_infinite or (p_value is not None and p_value < alpha)


def _max_regression(
    overall: pl.DataFrame, limit: float, alpha: float, unit: str, has_baseline: bool
) -> list[GateResult]:
    if not has_baseline:
        return [
            GateResult("max_regression", "skipped", None, "max_regression: no baseline run found")
        ]
    results = []
    for row in overall.iter_rows(named=True):
        model = row[MODEL]
        if row["prev_mean_kl"] is None:
            results.append(
                GateResult(
                    "max_regression",
                    "skipped",
                    model,
                    f"max_regression: model {model!r} is not in the baseline",
                )
            )
            continue
        failed = _regressed(row, limit, alpha)
        pct, p_value = row["change_mean_kl_pct"], row["p_value_change"]
        change = "undefined change" if pct is None else f"change {pct:+.3g}%"
        p_text = "p undefined" if p_value is None else f"p={p_value:.2g}"
        verdict = (
            f"rose more than {_number(limit)}% (alpha {alpha})"
            if failed
            else f"within {_number(limit)}% or not significant at alpha {alpha}"
        )
        results.append(
            GateResult(
                "max_regression",
                "failed" if failed else "passed",
                model,
                f"max_regression: model {model!r} mean KL {_number(row['prev_mean_kl'])} -> "
                f"{_number(row['mean_kl'])} {unit} ({change}, {p_text}): {verdict}",
            )
        )
    return results


def _expect_best(overall: pl.DataFrame, model: str) -> GateResult:
    best = sorted(overall.filter(pl.col("rank") == 1).get_column(MODEL).to_list())
    rows = overall.filter(pl.col(MODEL) == model)
    if rows.height == 0:
        models = ", ".join(repr(m) for m in overall.get_column(MODEL).sort().to_list())
        return GateResult(
            "expect_best",
            "failed",
            model,
            f"expect_best: model {model!r} is not among tonight's models ({models})",
        )
    rank = rows.get_column("rank")[0]
    if rank == 1:
        return GateResult("expect_best", "passed", model, f"expect_best: model {model!r} ranks 1")
    return GateResult(
        "expect_best",
        "failed",
        model,
        f"expect_best: model {model!r} ranks {rank}; best: {', '.join(map(repr, best))}",
    )


def _beats_prior(overall: pl.DataFrame, alpha: float, unit: str) -> list[GateResult]:
    """Every model's mean KL must be below the prior's, by a paired test at ``alpha``."""
    results = []
    for row in overall.iter_rows(named=True):
        model, delta, p_value = row[MODEL], row["delta_vs_prior"], row["p_value_vs_prior"]
        beats = delta is not None and delta < 0 and p_value is not None and p_value < alpha
        if delta is None:
            detail = "its difference from the prior is undefined"
        else:
            p_text = "p undefined" if p_value is None else f"p={p_value:.2g}"
            detail = (
                f"mean KL {_number(row['mean_kl'])} vs the prior's "
                f"{_number(row['prior_mean_kl'])} {unit} ({p_text})"
            )
        verdict = (
            f"beats the prior at alpha {alpha}"
            if beats
            else f"does not beat the prior at alpha {alpha}"
        )
        results.append(
            GateResult(
                "expect_beats_prior",
                "passed" if beats else "failed",
                model,
                f"expect_beats_prior: model {model!r} {detail}: {verdict}",
            )
        )
    return results


def evaluate_gates(
    report: pl.DataFrame, gates: Gates, unit: str, has_baseline: bool
) -> list[GateResult]:
    """Judge every gate asked for on the ``ALL`` slice of ``report``, models in rank order.

    Parameters
    ----------
    report
        The report in its published order, with the baseline columns.
    gates
        The gates asked for.
    unit
        The report's unit, for the messages.
    has_baseline
        Whether a baseline was found (``--max-regression`` is skipped without one).

    Returns
    -------
    list of GateResult
        One per gate and model (``--expect-best``: one), in the order max_mean_kl,
        max_regression, expect_best, expect_beats_prior.
    """
    overall = report.filter(pl.col(SLICE) == ALL_ROWS)
    results: list[GateResult] = []
    if gates.max_mean_kl is not None:
        results += _max_mean_kl(overall, gates.max_mean_kl, unit)
    if gates.max_regression_pct is not None:
        results += _max_regression(
            overall, gates.max_regression_pct, gates.alpha, unit, has_baseline
        )
    if gates.expect_best is not None:
        results.append(_expect_best(overall, gates.expect_best))
    if gates.expect_beats_prior:
        results += _beats_prior(overall, gates.alpha, unit)
    return results
