"""The comparison with a baseline report: Welch's p-value, percentages and their edge cases."""

import math

import polars as pl
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st
from klrank.pipeline.baseline import change_pct, compare_with_baseline, in_unit, welch_p_value
from polars.testing import assert_frame_equal

means = st.floats(0.0, 100.0)
sems = st.floats(1e-6, 10.0)
counts = st.integers(2, 10_000)


@given(means, sems, counts, means, sems, counts)
def test_welch_p_value_matches_scipy(
    mean: float, sem: float, n: int, prev: float, prev_sem: float, prev_n: int
) -> None:
    expected = scipy.stats.ttest_ind_from_stats(
        mean, sem * math.sqrt(n), n, prev, prev_sem * math.sqrt(prev_n), prev_n, equal_var=False
    ).pvalue
    got = welch_p_value(mean, sem, n, prev, prev_sem, prev_n)
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-300)


def test_welch_p_value_of_tiny_errors_does_not_underflow() -> None:
    # sem⁴ = 1e-360 underflows to 0 in double precision; the shares of the variance do not.
    p = welch_p_value(3e-90, 1e-90, 10, 0.0, 1e-90, 10)
    expected = scipy.stats.ttest_ind_from_stats(
        3.0, math.sqrt(10), 10, 0.0, math.sqrt(10), 10, equal_var=False
    ).pvalue  # the same t and degrees of freedom, everything scaled by 1e90
    assert p == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((1.0, None, 10, 1.0, 0.1, 10), None),
        ((1.0, 0.1, 10, 1.0, None, 10), None),
        ((1.0, 0.0, 10, 1.0, 0.0, 10), 1.0),
        ((2.0, 0.0, 10, 1.0, 0.0, 10), 0.0),
    ],
    ids=["sem-undefined", "prev-sem-undefined", "exact-and-equal", "exact-and-different"],
)
def test_welch_p_value_edge_cases(
    args: tuple[float, float | None, int, float, float | None, int], expected: float | None
) -> None:
    assert welch_p_value(*args) == expected


@pytest.mark.parametrize(
    ("change", "previous", "expected"),
    [
        (0.5, 2.0, 25.0),
        (-1.0, 2.0, -50.0),
        (0.1, -0.5, 20.0),  # a mean slightly below 0: the sign of the change is kept
        (0.0, 0.0, 0.0),
        (0.2, 0.0, math.inf),
        (math.inf, 1.0, math.inf),
        (-math.inf, math.inf, None),
        (None, 1.0, None),
    ],
)
def test_change_pct(change: float | None, previous: float, expected: float | None) -> None:
    assert change_pct(change, previous) == expected


def _report(**columns: list[object]) -> pl.DataFrame:
    return pl.DataFrame(
        columns,
        schema={
            "slice": pl.String,
            "model": pl.String,
            "n_rows": pl.Int64,
            "mean_kl": pl.Float64,
            "sem_kl": pl.Float64,
        },
    )


def test_compare_matches_on_slice_and_model_and_leaves_new_rows_null() -> None:
    report = _report(
        slice=["ALL", "ALL", "r=eu", "ALL"],
        model=["m", "n", "m", "new"],
        n_rows=[10, 10, 5, 10],
        mean_kl=[2.0, math.inf, 1.0, 1.0],
        sem_kl=[0.0, None, 0.0, 0.1],
    )
    baseline = _report(
        slice=["r=eu", "ALL", "ALL"],
        model=["m", "n", "m"],
        n_rows=[5, 10, 10],
        mean_kl=[1.0, math.inf, 1.0],
        sem_kl=[0.0, None, 0.0],
    )
    compared = compare_with_baseline(report, baseline)
    expected = report.with_columns(
        pl.Series("prev_mean_kl", [1.0, math.inf, 1.0, None]),
        pl.Series("change_mean_kl", [1.0, None, 0.0, None]),  # inf − inf: undefined
        pl.Series("change_mean_kl_pct", [100.0, None, 0.0, None]),
        pl.Series("p_value_change", [0.0, None, 1.0, None]),
    )
    assert_frame_equal(compared, expected)


def test_compare_without_baseline_gives_null_columns() -> None:
    report = _report(slice=["ALL"], model=["m"], n_rows=[3], mean_kl=[1.0], sem_kl=[0.1])
    compared = compare_with_baseline(report, None)
    assert compared.columns[-4:] == [
        "prev_mean_kl",
        "change_mean_kl",
        "change_mean_kl_pct",
        "p_value_change",
    ]
    assert compared.row(0)[-4:] == (None, None, None, None)
    assert all(compared.schema[c] == pl.Float64 for c in compared.columns[-4:])


def test_in_unit_scales_means_errors_and_intervals_only() -> None:
    frame = pl.DataFrame(
        {"mean_kl": [1.0], "sem_kl": [0.5], "ci95_low": [0.2], "ci95_high": [1.8], "n_rows": [4]}
    )
    nats = in_unit(frame, "bits", "nats")
    assert nats.row(0) == pytest.approx(
        (math.log(2), 0.5 * math.log(2), 0.2 * math.log(2), 1.8 * math.log(2), 4)
    )
    assert in_unit(nats, "nats", "bits").row(0) == pytest.approx(frame.row(0))
    assert in_unit(frame, "bans", "bans") is frame
