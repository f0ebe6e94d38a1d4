"""Tests for pipeline.stats, with scipy.stats.t as the independent oracle."""

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from klrank.pipeline.stats import student_t_ppf, student_t_sf, two_sided_p_value
from scipy import stats

DFS = [1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0, 1000.0, 1e6]
TS = [0.0, 0.1, 1.0, 1.96, 5.0, 20.0, 100.0]
QS = [0.5, 0.9, 0.975, 0.995, 0.9999]

REL_TOL = 1e-10
# Below this, double precision itself runs out (the smallest normal double is 2.2e-308).
ABS_TOL = 1e-300


def assert_close(actual: float, expected: float, rel_tol: float = REL_TOL) -> None:
    assert math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=ABS_TOL), (actual, expected)


@pytest.mark.parametrize("df", DFS)
@pytest.mark.parametrize("t", TS)
def test_sf_matches_scipy(t: float, df: float) -> None:
    assert_close(student_t_sf(t, df), float(stats.t.sf(t, df)))
    assert_close(student_t_sf(-t, df), float(stats.t.sf(-t, df)))


@pytest.mark.parametrize("df", DFS)
@pytest.mark.parametrize("t", TS)
def test_two_sided_p_value_matches_scipy(t: float, df: float) -> None:
    expected = min(1.0, 2.0 * float(stats.t.sf(t, df)))
    assert_close(two_sided_p_value(t, df), expected)
    assert_close(two_sided_p_value(-t, df), expected)


@pytest.mark.parametrize(
    ("t", "df"),
    [
        (37.0, 1e6),
        (36.0, 1000.0),
        (40.0, 100.0),
        (700.0, 100.0),
        (1e10, 30.0),
        (1e30, 10.0),
        (1e100, 3.0),
        (1e150, 2.0),
    ],
)
def test_sf_far_tail_matches_scipy(t: float, df: float) -> None:
    # p-values between 1e-300 and 1e-63 keep their relative precision.
    assert_close(student_t_sf(t, df), float(stats.t.sf(t, df)))


@pytest.mark.parametrize("df", [1e7, 1e8, 1e12])
@pytest.mark.parametrize("t", [1.75, 1.96, 3.0, 5.0, 20.0])
def test_sf_large_df_beyond_the_median_does_not_cancel(t: float, df: float) -> None:
    # The continued fraction lost about log10(1 + df / t**2) digits here (4e-9 at df = 1e8).
    assert_close(student_t_sf(t, df), float(stats.t.sf(t, df)))


@pytest.mark.parametrize("t", [1.0, 1e10, 1e200, 1e300])
def test_sf_cauchy_closed_form(t: float) -> None:
    # df = 1 is the Cauchy distribution: P(T > t) = atan(1 / t) / pi for t > 0. Beyond
    # t = 1e154, x = df / (df + t**2) underflows; scipy returns 0 for t = 1e200.
    assert_close(student_t_sf(t, 1.0), math.atan2(1.0, t) / math.pi, rel_tol=1e-13)


@pytest.mark.parametrize("df", [1.0, 3.0, 1e6])
def test_sf_of_infinities(df: float) -> None:
    assert student_t_sf(math.inf, df) == 0.0
    assert student_t_sf(-math.inf, df) == 1.0
    assert two_sided_p_value(math.inf, df) == 0.0
    assert two_sided_p_value(-math.inf, df) == 0.0


def test_nan_statistic_gives_nan() -> None:
    assert math.isnan(student_t_sf(math.nan, 5.0))
    assert math.isnan(two_sided_p_value(math.nan, 5.0))


@pytest.mark.parametrize("t", [0.0, 1.0, 1.96, 5.0, 37.0])
def test_infinite_df_is_the_normal_distribution(t: float) -> None:
    assert_close(student_t_sf(t, math.inf), float(stats.norm.sf(t)))
    assert_close(student_t_sf(-t, math.inf), float(stats.norm.sf(-t)))


@pytest.mark.parametrize("df", DFS)
@pytest.mark.parametrize("q", QS)
def test_ppf_matches_scipy(q: float, df: float) -> None:
    assert_close(student_t_ppf(q, df), float(stats.t.ppf(q, df)))
    assert_close(student_t_ppf(1.0 - q, df), float(stats.t.ppf(1.0 - q, df)))


def test_ppf_of_the_median_is_zero() -> None:
    assert student_t_ppf(0.5, 7.0) == 0.0


@pytest.mark.parametrize("offset", [1e-12, 1e-7, 0.1])
def test_ppf_near_the_median_keeps_relative_precision(offset: float) -> None:
    # Cauchy: the quantile is tan(pi * (q - 1/2)). Solving on P(T > t) = 1 - q would keep
    # only the absolute precision of q; scipy is off by 8e-6 relative at offset 1e-12.
    q = 0.5 + offset
    expected = math.tan(math.pi * (q - 0.5))
    assert_close(student_t_ppf(q, 1.0), expected, rel_tol=1e-13)
    assert_close(student_t_ppf(1.0 - q, 1.0), -expected, rel_tol=1e-13)


def test_ppf_far_tail() -> None:
    # Cauchy: the lower quantile at q is -1 / tan(pi * q), about -1 / (pi * q).
    assert_close(student_t_ppf(1e-300, 1.0), -1.0 / (math.pi * 1e-300), rel_tol=1e-13)
    assert_close(student_t_ppf(1e-300, 1e6), float(stats.t.ppf(1e-300, 1e6)))


def test_ppf_beyond_the_largest_double_is_infinite() -> None:
    # With df = 0.05 the tail decays like t**-0.05: P(T < -1.8e308) is still 1.7e-16.
    assert student_t_ppf(1e-300, 0.05) == -math.inf
    assert student_t_ppf(1.0 - 1e-16, 0.05) == math.inf


@pytest.mark.parametrize("df", [0.0, -1.0, math.nan, -math.inf])
def test_bad_df_raises(df: float) -> None:
    with pytest.raises(ValueError, match="degrees of freedom"):
        student_t_sf(1.0, df)
    with pytest.raises(ValueError, match="degrees of freedom"):
        two_sided_p_value(1.0, df)
    with pytest.raises(ValueError, match="degrees of freedom"):
        student_t_ppf(0.975, df)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.1, math.nan, math.inf])
def test_ppf_bad_q_raises(q: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        student_t_ppf(q, 5.0)


dfs = st.floats(min_value=-0.3, max_value=6.0).map(lambda e: 10.0**e)


@given(t=st.floats(min_value=-60.0, max_value=0.0), df=dfs)
def test_ppf_inverts_the_complement_of_sf(t: float, df: float) -> None:
    # 1 - sf(t) is the CDF at t; sf(-t) gives it without cancellation. For t <= 0 it is at
    # most 1/2 and exact to an ulp, so the round trip must give t back.
    cdf = student_t_sf(-t, df)
    assume(cdf > 1e-300)
    assert math.isclose(student_t_ppf(cdf, df), t, rel_tol=REL_TOL, abs_tol=1e-14)


@given(q=st.floats(min_value=0.5, max_value=1.0, exclude_max=True), df=dfs)
def test_ppf_is_antisymmetric(q: float, df: float) -> None:
    # 1 - q is exact for q >= 1/2, so the two quantiles must agree to the last bit.
    assert student_t_ppf(1.0 - q, df) == -student_t_ppf(q, df)


@given(t=st.floats(min_value=-1e3, max_value=1e3), df=dfs)
def test_sf_and_its_mirror_sum_to_one(t: float, df: float) -> None:
    assert math.isclose(student_t_sf(t, df) + student_t_sf(-t, df), 1.0, rel_tol=1e-15)
