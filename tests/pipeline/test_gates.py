"""Gates judged on literal reports: which model fails which gate, and the edge cases."""

import math

import polars as pl
import pytest
from klrank.pipeline.errors import UsageError
from klrank.pipeline.gates import Gates, evaluate_gates


def _report(rows: list[dict[str, object]]) -> pl.DataFrame:
    defaults = {
        "slice": "ALL",
        "rank": 1,
        "prev_mean_kl": None,
        "change_mean_kl_pct": None,
        "p_value_change": None,
    }
    return pl.DataFrame(
        [defaults | r for r in rows],
        schema={
            "slice": pl.String,
            "rank": pl.Int64,
            "model": pl.String,
            "mean_kl": pl.Float64,
            "prev_mean_kl": pl.Float64,
            "change_mean_kl_pct": pl.Float64,
            "p_value_change": pl.Float64,
        },
    )


def _outcomes(
    report: pl.DataFrame, gates: Gates, has_baseline: bool = True
) -> list[tuple[str, str | None, str]]:
    return [
        (g.gate, g.model, g.outcome) for g in evaluate_gates(report, gates, "bits", has_baseline)
    ]


def test_only_the_all_slice_is_judged() -> None:
    report = _report(
        [
            {"model": "m", "mean_kl": 0.1},
            {"slice": "region=eu", "model": "m", "mean_kl": 5.0},
        ]
    )
    assert _outcomes(report, Gates(max_mean_kl=1.0)) == [("max_mean_kl", "m", "passed")]


def test_max_mean_kl_fails_an_infinite_mean() -> None:
    report = _report([{"model": "m", "mean_kl": math.inf}])
    assert _outcomes(report, Gates(max_mean_kl=1e300)) == [("max_mean_kl", "m", "failed")]


@pytest.mark.parametrize(
    ("row", "outcome"),
    [
        ({"prev_mean_kl": 1.0, "change_mean_kl_pct": 20.0, "p_value_change": 0.01}, "failed"),
        ({"prev_mean_kl": 1.0, "change_mean_kl_pct": 20.0, "p_value_change": 0.05}, "passed"),
        ({"prev_mean_kl": 1.0, "change_mean_kl_pct": 10.0, "p_value_change": 0.0}, "passed"),
        ({"prev_mean_kl": 1.0, "change_mean_kl_pct": -50.0, "p_value_change": 0.0}, "passed"),
        ({"prev_mean_kl": 1.0, "change_mean_kl_pct": 20.0, "p_value_change": None}, "passed"),
        (
            {"mean_kl": math.inf, "prev_mean_kl": 1.0, "change_mean_kl_pct": math.inf},
            "failed",
        ),
        ({"prev_mean_kl": None}, "skipped"),
    ],
    ids=[
        "significant-rise",
        "p-equal-to-alpha",
        "rise-equal-to-limit",
        "improvement",
        "p-undefined",
        "became-infinite",
        "new-model",
    ],
)
def test_max_regression(row: dict[str, object], outcome: str) -> None:
    report = _report([{"model": "m", "mean_kl": 1.2} | row])
    gates = Gates(max_regression_pct=10.0, alpha=0.05)
    assert _outcomes(report, gates) == [("max_regression", "m", outcome)]


def test_max_regression_without_a_baseline_is_skipped_once() -> None:
    report = _report([{"model": "m", "mean_kl": 1.0}, {"model": "n", "mean_kl": 2.0}])
    assert _outcomes(report, Gates(max_regression_pct=10.0), has_baseline=False) == [
        ("max_regression", None, "skipped")
    ]


def test_expect_best_accepts_a_shared_first_rank() -> None:
    report = _report([{"model": "m", "mean_kl": 1.0}, {"model": "n", "mean_kl": 1.0}])
    assert _outcomes(report, Gates(expect_best="n")) == [("expect_best", "n", "passed")]


def test_every_gate_is_reported_in_order() -> None:
    report = _report([{"model": "m", "mean_kl": 1.0}, {"model": "n", "rank": 2, "mean_kl": 3.0}])
    gates = Gates(max_mean_kl=2.0, expect_best="n")
    assert _outcomes(report, gates) == [
        ("max_mean_kl", "m", "passed"),
        ("max_mean_kl", "n", "failed"),
        ("expect_best", "n", "failed"),
    ]


@pytest.mark.parametrize(
    "options",
    [{"alpha": 0.0}, {"alpha": 1.0}, {"max_regression_pct": -1.0}, {"max_mean_kl": math.nan}],
)
def test_bad_gate_options_are_usage_errors(options: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        Gates(**options)  # type: ignore[arg-type]
