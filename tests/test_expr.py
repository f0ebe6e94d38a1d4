"""klrank.expr: the public expression builders, against scipy and hand-computed values."""

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from klrank import expr
from polars.testing import assert_series_equal
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

LN2 = math.log(2.0)


def _forms(p: list[list[float]], q: list[list[float]]) -> dict[str, pl.DataFrame]:
    """The same rows as per-class columns, as Array columns and as List columns."""
    k = len(p[0])
    columns = {f"p{i}": [row[i] for row in p] for i in range(k)} | {
        f"q{i}": [row[i] for row in q] for i in range(k)
    }
    return {
        "columns": pl.DataFrame(columns),
        "array": pl.DataFrame(
            {"p": p, "q": q}, schema={"p": pl.Array(pl.Float64, k), "q": pl.Array(pl.Float64, k)}
        ),
        "list": pl.DataFrame(
            {"p": p, "q": q}, schema={"p": pl.List(pl.Float64), "q": pl.List(pl.Float64)}
        ),
    }


def _args(form: str, k: int) -> tuple[object, object]:
    if form == "columns":
        return [f"p{i}" for i in range(k)], [f"q{i}" for i in range(k)]
    return "p", "q"


def _measure(name: str, frame: pl.DataFrame, form: str, k: int, **kwargs: object) -> list[float]:
    p, q = _args(form, k)
    builder = getattr(expr, name)
    built = builder(p, **kwargs) if name == "entropy" else builder(p, q, **kwargs)
    return frame.select(built.alias("value")).get_column("value").to_list()


P = [[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
Q = [[0.25, 0.75, 0.0], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.1, 0.2, 0.7]]


@pytest.mark.parametrize("form", ["columns", "array", "list"])
def test_kl_matches_scipy_rel_entr_with_the_edge_cases(form: str) -> None:
    got = _measure("kl_divergence", _forms(P, Q)[form], form, 3, base="e")
    want = [float(np.sum(rel_entr(p, q))) for p, q in zip(P, Q, strict=True)]
    assert got[0] == pytest.approx(want[0], rel=1e-15)  # 0.5 ln 2 + 0.5 ln(2/3)
    assert got[1] == math.inf  # p > 0 where q = 0
    assert got[2] == 0.0  # identical rows: exactly 0, and 0·log 0 = 0
    assert got[3] == pytest.approx(-math.log(0.7), rel=1e-15) == want[3]


@pytest.mark.parametrize("form", ["columns", "array", "list"])
@pytest.mark.parametrize("base", [2, "2", 10, "e", math.e])
def test_the_base_sets_the_unit(form: str, base: object) -> None:
    nats = _measure("kl_divergence", _forms(P, Q)[form], form, 3, base="e")[0]
    got = _measure("kl_divergence", _forms(P, Q)[form], form, 3, base=base)[0]
    log_base = math.log(float(base)) if base != "e" else 1.0
    assert got == pytest.approx(nats / log_base, rel=1e-15)


@pytest.mark.parametrize("form", ["columns", "array", "list"])
def test_cross_entropy_entropy_reverse_kl_and_js_by_hand(form: str) -> None:
    frame = _forms(P, Q)[form]
    cross = _measure("cross_entropy", frame, form, 3)
    assert cross[0] == pytest.approx(-(0.5 * math.log2(0.25) + 0.5 * math.log2(0.75)), rel=1e-15)
    assert cross[1] == math.inf
    entropy = _measure("entropy", frame, form, 3)
    assert entropy == pytest.approx([1.0, -(0.2 * math.log2(0.2) + 0.8 * math.log2(0.8)), 0.0, 0.0])
    reverse = _measure("reverse_kl_divergence", frame, form, 3, base="e")
    assert reverse[1] == math.inf  # q > 0 where p = 0
    assert reverse[0] == pytest.approx(float(np.sum(rel_entr(Q[0], P[0]))), rel=1e-15)
    assert reverse[2] == 0.0
    js = _measure("jensen_shannon_divergence", frame, form, 3)
    for row, got in enumerate(js):
        assert got == pytest.approx(
            jensenshannon(P[row], Q[row], base=2) ** 2, rel=1e-12, abs=1e-15
        )
    assert js[2] == 0.0  # exactly, not -1e-16


@pytest.mark.parametrize("form", ["columns", "array", "list"])
def test_rows_that_do_not_sum_to_one_are_not_renormalised(form: str) -> None:
    p, q = [[0.6, 0.6]], [[0.5, 0.25]]  # sums 1.2 and 0.75
    got = _measure("kl_divergence", _forms(p, q)[form], form, 2, base="e")[0]
    assert got == pytest.approx(0.6 * math.log(0.6 / 0.5) + 0.6 * math.log(0.6 / 0.25), rel=1e-15)


def test_float32_columns_are_computed_in_float64() -> None:
    frame = pl.DataFrame(
        {"p": [[0.1, 0.9]], "q": [[0.3, 0.7]]},
        schema={"p": pl.List(pl.Float32), "q": pl.List(pl.Float32)},
    )
    got = frame.select(expr.kl_divergence("p", "q", base="e")).item()
    p, q = np.float64(np.float32([0.1, 0.9])), np.float64(np.float32([0.3, 0.7]))
    assert got == pytest.approx(float(np.sum(rel_entr(p, q))), rel=1e-14)


def test_a_null_row_gives_null_and_expressions_work_as_arguments() -> None:
    frame = pl.DataFrame({"p": [[1.0, 0.0], None], "q": [[0.5, 0.5], [0.5, 0.5]]})
    got = frame.select(expr.kl_divergence(pl.col("p"), pl.col("q"))).to_series()
    assert_series_equal(got, pl.Series("p", [1.0, None]), check_names=False)
    columns = pl.DataFrame({"a": [1.0], "b": [0.0]})
    kl = expr.kl_divergence([pl.col("a"), "b"], [pl.lit(0.5), pl.lit(0.5)])
    assert columns.select(kl).item() == 1.0


def test_mismatched_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="classes"):
        expr.kl_divergence(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="both"):
        expr.kl_divergence(["a", "b"], "q")
    with pytest.raises(ValueError, match="base"):
        expr.kl_divergence("p", "q", base=1)


@st.composite
def _pair(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    k = draw(st.integers(1, 6))
    weight = st.one_of(st.just(0.0), st.floats(1e-12, 1.0))
    p = [draw(weight) for _ in range(k)]
    q = [draw(weight) for _ in range(k)]
    if sum(p) == 0:
        p[0] = 1.0
    if sum(q) == 0:
        q[0] = 1.0
    return [x / sum(p) for x in p], [x / sum(q) for x in q]


@settings(max_examples=60, deadline=None)
@given(_pair())
def test_property_every_form_matches_scipy_and_kl_of_p_with_itself_is_zero(
    pair: tuple[list[float], list[float]],
) -> None:
    p, q = pair
    k = len(p)
    want_kl = float(np.sum(rel_entr(p, q))) / LN2
    want_js = jensenshannon(p, q, base=2) ** 2
    for form, frame in _forms([p], [q]).items():
        kl = _measure("kl_divergence", frame, form, k)[0]
        assert kl == pytest.approx(want_kl, rel=1e-9, abs=1e-12) or kl == want_kl == math.inf
        assert _measure("jensen_shannon_divergence", frame, form, k)[0] == pytest.approx(
            want_js, rel=1e-9, abs=1e-12
        )
        same = _forms([p], [p])[form]
        assert _measure("kl_divergence", same, form, k)[0] == 0.0
        assert _measure("jensen_shannon_divergence", same, form, k)[0] == 0.0
        cross = _measure("cross_entropy", frame, form, k)[0]
        entropy = _measure("entropy", frame, form, k)[0]
        if math.isfinite(kl):
            assert cross == pytest.approx(entropy + kl, rel=1e-9, abs=1e-12)
        else:
            assert cross == math.inf
