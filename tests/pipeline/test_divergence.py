"""Tests of pipeline/divergence.py: literal frames, scipy oracles through the job, properties.

Every expected value comes from an independent source (hand-worked ``math`` expressions, scipy,
numpy), never from the code under test.
"""

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats
from helpers import (
    class_frame,
    dyadic_distributions,
    extreme_logits,
    random_distributions,
    read_report,
    read_rows,
    run_job,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st
from klrank.pipeline import divergence
from polars.testing import assert_frame_equal

LN2, LN3 = math.log(2.0), math.log(3.0)
MEASURES = ("kl", "reverse_kl", "js", "cross_entropy", "entropy")


# --- expression level: tiny literal frames --------------------------------------------------


def _cols(prefix: str, k: int) -> list[pl.Expr]:
    return [pl.col(f"{prefix}{i}") for i in range(k)]


def _logs(exprs: list[pl.Expr]) -> list[pl.Expr]:
    return [e.log() for e in exprs]


def _pq_frame(rows: list[tuple[tuple[float, ...], tuple[float, ...]]]) -> pl.DataFrame:
    """One row per (p, q) pair, as columns p0.., q0.. in Float64."""
    k = len(rows[0][0])
    data: dict[str, list[float]] = {}
    for i in range(k):
        data[f"p{i}"] = [p[i] for p, _ in rows]
        data[f"q{i}"] = [q[i] for _, q in rows]
    return pl.DataFrame(data, schema=dict.fromkeys(data, pl.Float64))


# Rows chosen to hit every convention of the module's Notes; expected values are worked by hand.
PQ_ROWS = [
    ((0.5, 0.5, 0.0), (0.25, 0.75, 0.0)),  # ordinary, with p = q = 0 in the last class
    ((1.0, 0.0, 0.0), (0.5, 0.25, 0.25)),  # one-hot P, Q with full support
    ((0.2, 0.3, 0.5), (0.2, 0.3, 0.5)),  # P = Q
    ((0.5, 0.5, 0.0), (1.0, 0.0, 0.0)),  # p > 0 where q = 0
    ((0.0, 0.0, 1.0), (0.5, 0.5, 0.0)),  # disjoint supports
]


def _measure(
    build: Callable[[list[pl.Expr], list[pl.Expr], list[pl.Expr], list[pl.Expr]], pl.Expr],
    rows: list[tuple[tuple[float, ...], tuple[float, ...]]] = PQ_ROWS,
) -> pl.DataFrame:
    """``build(p, log_p, q, log_q)`` evaluated on one row per (p, q) pair, as column ``value``."""
    k = len(rows[0][0])
    p, q = _cols("p", k), _cols("q", k)
    return _pq_frame(rows).select(build(p, _logs(p), q, _logs(q)).alias("value"))


def _expected(values: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"value": values}, schema={"value": pl.Float64})


def _assert_values(got: pl.DataFrame, values: list[float]) -> None:
    assert_frame_equal(got, _expected(values), check_exact=False, rel_tol=1e-12, abs_tol=1e-15)


def test_kl_divergence_hand_computed():
    got = _measure(lambda p, lp, q, lq: divergence.kl_divergence(p, lp, lq))
    _assert_values(
        got,
        [
            0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75),
            LN2,
            0.0,
            math.inf,  # p > 0 with q = 0
            math.inf,
        ],
    )


def test_kl_divergence_of_zero_p_and_zero_q_is_zero_not_nan():
    # 0 · (log 0 − log 0) would be NaN without the 0 · anything = 0 convention.
    got = _measure(
        lambda p, lp, q, lq: divergence.kl_divergence(p, lp, lq),
        [((0.0, 1.0), (0.0, 1.0)), ((0.0, 1.0), (0.5, 0.5))],
    )
    _assert_values(got, [0.0, math.log(2.0)])
    assert got.get_column("value")[0] == 0.0


def test_reverse_kl_divergence_hand_computed():
    got = _measure(lambda p, lp, q, lq: divergence.reverse_kl_divergence(q, lq, lp))
    _assert_values(
        got,
        [
            0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5),
            math.inf,  # q > 0 where p = 0
            0.0,
            math.log(1.0 / 0.5),  # q = 0 where p > 0 contributes nothing
            math.inf,
        ],
    )


def test_cross_entropy_hand_computed():
    got = _measure(lambda p, lp, q, lq: divergence.cross_entropy(p, lq))
    _assert_values(
        got,
        [
            -(0.5 * math.log(0.25) + 0.5 * math.log(0.75)),
            LN2,
            -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5)),
            math.inf,
            math.inf,
        ],
    )


def test_entropy_hand_computed():
    got = _measure(
        lambda p, lp, q, lq: divergence.entropy(p, lp),
        [
            ((0.5, 0.5, 0.0), (1.0, 0.0, 0.0)),
            ((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)),
            ((1 / 3, 1 / 3, 1 / 3), (1.0, 0.0, 0.0)),
            ((0.2, 0.3, 0.5), (1.0, 0.0, 0.0)),
        ],
    )
    _assert_values(
        got,
        [LN2, 0.0, LN3, -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))],
    )
    assert got.get_column("value")[1] == 0.0  # a one-hot P has exactly zero entropy


def test_jensen_shannon_hand_computed():
    got = _measure(divergence.jensen_shannon_divergence)
    m0 = (0.375, 0.625)
    m1 = (0.75, 0.125, 0.125)
    _assert_values(
        got,
        [
            0.5 * (0.5 * math.log(0.5 / m0[0]) + 0.5 * math.log(0.5 / m0[1]))
            + 0.5 * (0.25 * math.log(0.25 / m0[0]) + 0.75 * math.log(0.75 / m0[1])),
            0.5 * (1.0 * math.log(1.0 / m1[0]))
            + 0.5 * sum(q * math.log(q / m) for q, m in zip((0.5, 0.25, 0.25), m1, strict=True)),
            0.0,
            0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
            + 0.5 * (1.0 * math.log(1.0 / 0.75)),
            LN2,  # disjoint supports: the maximum, finite
        ],
    )


def test_jensen_shannon_is_finite_where_kl_is_infinite():
    got = _measure(divergence.jensen_shannon_divergence).get_column("value")
    kl = _measure(lambda p, lp, q, lq: divergence.kl_divergence(p, lp, lq)).get_column("value")
    assert kl[3] == math.inf and kl[4] == math.inf
    assert got.is_finite().all()
    assert (got <= LN2 + 1e-15).all()


def test_jensen_shannon_of_disjoint_one_hots_is_exactly_log_2():
    got = _measure(
        divergence.jensen_shannon_divergence, [((1.0, 0.0), (0.0, 1.0)), ((0.0, 1.0), (1.0, 0.0))]
    )
    assert got.get_column("value").to_list() == [LN2, LN2]


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        # log q_i = z_i − log Σ exp z_j, worked so that no exp of a large number appears.
        ((1000.0, 1001.0), (-1.0 - math.log1p(math.exp(-1.0)), -math.log1p(math.exp(-1.0)))),
        ((-1000.0, -1001.0), (-math.log1p(math.exp(-1.0)), -1.0 - math.log1p(math.exp(-1.0)))),
        ((0.0, 0.0, 0.0), (-LN3, -LN3, -LN3)),
        ((5.0, 5.0, 5.0), (-LN3, -LN3, -LN3)),  # shift invariance
        ((-1000.0, 0.0), (-1000.0, 0.0)),  # exp(-1000) underflows; the log-softmax does not
        ((700.0, 710.0, 720.0), tuple(scipy.special.log_softmax([700.0, 710.0, 720.0]))),
        # Where m + log Σ exp(z − m) rounds to m, the log-sum must still be subtracted.
        ((1e308, 1e308), (-LN2, -LN2)),
        ((1e15, 1e15 + 1), (-1.0 - math.log1p(math.exp(-1.0)), -math.log1p(math.exp(-1.0)))),
        ((1e16,) * 5, (-math.log(5.0),) * 5),
        ((-1.7976931348623157e308,) * 3, (-LN3, -LN3, -LN3)),
    ],
)
def test_log_softmax_is_stable_for_large_logits(logits, expected):
    frame = pl.DataFrame({f"z{i}": [z] for i, z in enumerate(logits)})
    got = frame.select(divergence.log_softmax(_cols("z", len(logits))))
    want = pl.DataFrame({f"z{i}": [v] for i, v in enumerate(expected)})
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-12, abs_tol=1e-12)
    assert all(math.isfinite(v) for v in got.row(0))


def test_log_softmax_exponentiates_to_a_distribution():
    frame = pl.DataFrame({"z0": [1000.0, -3.0], "z1": [1001.0, 2.0], "z2": [999.0, 0.5]})
    log_q = divergence.log_softmax(_cols("z", 3))
    total = frame.select(pl.sum_horizontal([lq.exp() for lq in log_q]).alias("total"))
    assert total.get_column("total").to_list() == pytest.approx([1.0, 1.0], rel=1e-15)


def test_log_softmax_below_the_float64_range_is_minus_infinity():
    # z − m = −2e308 is not a Float64: log q rounds to −inf and q to 0, as in scipy.
    frame = pl.DataFrame({"z0": [1e308], "z1": [-1e308]})
    got = frame.select(divergence.log_softmax(_cols("z", 2))).row(0)
    assert got == (0.0, -math.inf)
    with np.errstate(over="ignore"):
        assert got == tuple(scipy.special.log_softmax([1e308, -1e308]))


# P = (1/2, 1/2) against Q = softmax(0, 1) = (1, e)/(1 + e), worked by hand: D(P‖Q) =
# ½·log((1 + e)/2) + ½·log((1 + e)/(2e)) = ½·log((1 + e)²/(4e)) nats = 0.1732886 bits.
KL_HALVES_FROM_LOGITS_0_1 = 0.5 * math.log((1 + math.e) ** 2 / (4 * math.e))
EXTREME_LOGITS = {
    "two_at_1e308": ((1e308, 1e308), (0.5, 0.5), 0.0),
    "1e15_and_1e15_plus_1": ((1e15, 1e15 + 1), (0.5, 0.5), KL_HALVES_FROM_LOGITS_0_1),
    # Column by column (the review's 65 classes go to the array layout: tests/pipeline/test_arrays.py).
    "five_equal_at_1e16": ((1e16,) * 5, (0.2,) * 5, 0.0),
}


@pytest.mark.parametrize(
    ("logits", "p", "expected"), EXTREME_LOGITS.values(), ids=EXTREME_LOGITS.keys()
)
def test_kl_from_huge_logits_was_wrong_by_the_lost_log_sum(logits, p, expected):
    # log q was z − (m + log Σ exp(z − m)): at m = 1e16 or 1e308 the log-sum rounded away, and
    # D came out as −1 bit, 0.26 bits (for 0.17) and −log2 5 bits.
    k = len(p)
    frame = pl.DataFrame({f"z{i}": [z] for i, z in enumerate(logits)}).hstack(
        pl.DataFrame({f"p{i}": [v] for i, v in enumerate(p)})
    )
    pe = _cols("p", k)
    log_q = divergence.log_softmax(_cols("z", k))
    got = frame.select(divergence.kl_divergence(pe, _logs(pe), log_q)).item()
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert KL_HALVES_FROM_LOGITS_0_1 / LN2 == pytest.approx(0.1732886035, rel=1e-9)


def test_smoothed_hand_computed():
    frame = pl.DataFrame({"q0": [1.0, 0.25], "q1": [0.0, 0.75]})
    got = frame.select(divergence.smoothed(_cols("q", 2), 0.1))
    want = pl.DataFrame({"q0": [1.1 / 1.2, 0.35 / 1.2], "q1": [0.1 / 1.2, 0.85 / 1.2]})
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-14, abs_tol=0.0)
    assert got.select(pl.sum_horizontal(pl.all())).to_series().to_list() == pytest.approx(
        [1.0, 1.0], rel=1e-15
    )


def test_smoothed_with_zero_epsilon_is_the_identity():
    frame = pl.DataFrame({"q0": [1.0, 0.25], "q1": [0.0, 0.75]})
    assert_frame_equal(frame.select(divergence.smoothed(_cols("q", 2), 0.0)), frame)


def test_argmax_index_ties_go_to_the_first_position():
    frame = pl.DataFrame(
        {
            "v0": [0.3, 0.4, 0.2, 0.25, 0.1],
            "v1": [0.3, 0.4, 0.4, 0.25, 0.2],
            "v2": [0.4, 0.2, 0.4, 0.25, 0.7],
            "v3": [0.0, 0.0, 0.0, 0.25, 0.0],
        }
    )
    got = frame.select(divergence.argmax_index(_cols("v", 4)).alias("argmax"))
    want = pl.DataFrame({"argmax": [2, 0, 1, 0, 2]}, schema={"argmax": pl.Int32})
    assert_frame_equal(got, want)


def test_argmax_index_of_log_probabilities_with_zeros():
    # log 0 = -inf must not win, and must not turn the row into a null.
    frame = pl.DataFrame({"v0": [0.0, 0.0], "v1": [0.3, 1.0], "v2": [0.7, 0.0]})
    got = frame.select(divergence.argmax_index(_logs(_cols("v", 3))).alias("argmax"))
    assert got.get_column("argmax").to_list() == [2, 1]


def test_top1_match():
    frame = pl.DataFrame(
        {
            "p0": [0.6, 0.5, 0.2, 0.0],
            "p1": [0.4, 0.5, 0.8, 1.0],
            "q0": [0.9, 0.1, 0.5, 0.5],
            "q1": [0.1, 0.9, 0.5, 0.5],
        }
    )
    got = frame.select(divergence.top1_match(_cols("p", 2), _cols("q", 2)).alias("match"))
    # row 1: P ties -> class 0, Q says 1; rows 2 and 3: Q ties -> class 0.
    assert got.get_column("match").to_list() == [True, False, False, False]


@pytest.mark.parametrize(
    ("base", "factor"), [("2", 1 / math.log(2)), ("e", 1.0), ("10", 1 / math.log(10))]
)
def test_to_base(base, factor):
    frame = pl.DataFrame({"nats": [0.0, 1.0, LN2, math.log(10.0), math.inf]})
    got = frame.select(divergence.to_base(pl.col("nats"), base))
    want = pl.DataFrame({"nats": [0.0, factor, LN2 * factor, math.log(10.0) * factor, math.inf]})
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-15, abs_tol=0.0)
    if base == "2":
        assert got.get_column("nats")[2] == pytest.approx(1.0, rel=1e-15)
    if base == "10":
        assert got.get_column("nats")[3] == pytest.approx(1.0, rel=1e-15)


# --- scipy oracles through the real job -----------------------------------------------------

MODELS = ("alpha", "beta", "gamma")


def _log_base(base: str) -> float:
    return {"2": math.log(2.0), "e": 1.0, "10": math.log(10.0)}[base]


def _scipy_base(base: str) -> float:
    return {"2": 2.0, "e": math.e, "10": 10.0}[base]


def _oracle_row(
    p: np.ndarray, q: np.ndarray, log_q: np.ndarray, base: str, *, renormalise: bool
) -> dict[str, object]:
    """The per-row measures of P and Q, from scipy and numpy; ``log_q`` may come from logits.

    scipy's ``entropy`` and ``jensenshannon`` divide P and Q by their sums. That is harmless for
    inputs normalised in Float64, but klrank never renormalises, so for inputs that sum to 1
    only within the tolerance (``renormalise=False``) the same sums are taken with
    ``scipy.special.entr`` and ``rel_entr`` as they stand.
    """
    scale = _log_base(base)
    support = p > 0
    with np.errstate(divide="ignore"):
        kl = float(np.sum(p[support] * (np.log(p[support]) - log_q[support])))
        cross_entropy = float(-np.sum(p[support] * log_q[support]))
    if renormalise:
        js = float(scipy.spatial.distance.jensenshannon(p, q, base=_scipy_base(base))) ** 2
        entropy = float(scipy.stats.entropy(p, base=_scipy_base(base)))
    else:
        m = (p + q) / 2
        js_nats = 0.5 * np.sum(scipy.special.rel_entr(p, m)) + 0.5 * np.sum(
            scipy.special.rel_entr(q, m)
        )
        js = float(js_nats) / scale
        entropy = float(np.sum(scipy.special.entr(p))) / scale
    return {
        "kl": kl / scale,
        "reverse_kl": float(np.sum(scipy.special.rel_entr(q, p))) / scale,
        "js": js,
        "cross_entropy": cross_entropy / scale,
        "entropy": entropy,
        "top1_match": bool(np.argmax(p) == np.argmax(q)),
    }


def _oracle_frame(
    ids: np.ndarray,
    truth: np.ndarray,
    predictions: dict[str, tuple[np.ndarray, np.ndarray]],
    base: str,
    *,
    renormalise: bool = True,
) -> pl.DataFrame:
    records = []
    for model, (q_all, log_q_all) in predictions.items():
        for row, row_id in enumerate(ids):
            oracle = _oracle_row(
                truth[row], q_all[row], log_q_all[row], base, renormalise=renormalise
            )
            records.append({"id": int(row_id), "model": model} | oracle)
    return pl.DataFrame(records)


def _assert_rows_match(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.columns[:8] == [
        "id",
        "model",
        "kl",
        "reverse_kl",
        "js",
        "cross_entropy",
        "entropy",
        "top1_match",
    ]
    assert got.height == want.height
    joined = want.join(got, on=["id", "model"], how="left", suffix="_got")
    assert joined.height == want.height
    for name in MEASURES:
        expected = joined.get_column(name).to_numpy()
        actual = joined.get_column(f"{name}_got").to_numpy()
        # assert_allclose requires infinities at the same places with the same sign.
        np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=0.0, equal_nan=False)
    mismatched = joined.filter(pl.col("top1_match") != pl.col("top1_match_got"))
    assert mismatched.height == 0, mismatched


def _soft_case(seed: int, classes: list[str], n_rows: int = 40):
    """Soft labels and three models' probabilities, all with some exact zeros."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    ids = rng.permutation(np.arange(1000, 1000 + n_rows))
    truth = random_distributions(rng, n_rows, k, zero_fraction=0.25)
    labels = pl.DataFrame({"id": ids, **class_frame(truth, classes, "prob_")})
    q_by_model = {
        m: random_distributions(rng, n_rows, k, zero_fraction=z)
        for m, z in zip(MODELS, (0.0, 0.15, 0.3), strict=True)
    }
    predictions = pl.concat(
        pl.DataFrame({"id": ids, "model": [m] * n_rows, **class_frame(q, classes, "prob_")})
        for m, q in q_by_model.items()
    )
    return ids, truth, labels, q_by_model, predictions


def _with_logs(q_by_model: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with np.errstate(divide="ignore"):
        return {m: (q, np.log(q)) for m, q in q_by_model.items()}


@pytest.mark.parametrize("base", ["2", "e", "10"])
def test_job_soft_labels_match_scipy(tmp_path: Path, base: str):
    classes = ["0", "1", "2", "3", "4"]
    seed = {"2": 1, "e": 2, "10": 3}[base]
    ids, truth, labels, q_by_model, predictions = _soft_case(seed, classes)
    _, out = run_job(tmp_path, labels, predictions, base=base)
    want = _oracle_frame(ids, truth, _with_logs(q_by_model), base)
    # The data must exercise every convention, or the comparison proves less than it claims.
    assert want.filter(pl.col("kl") == math.inf).height > 0
    assert want.filter(pl.col("reverse_kl") == math.inf).height > 0
    assert want.filter(pl.col("kl").is_finite()).height > 0
    _assert_rows_match(read_rows(out), want)


def test_job_hard_integer_labels_match_scipy(tmp_path: Path):
    # Twelve classes, so that string order ("10" < "2") and numeric order differ.
    rng = np.random.default_rng(7)
    n_rows, k = 50, 12
    classes = [str(i) for i in range(k)]
    ids = np.arange(n_rows)
    label = rng.integers(0, k, size=n_rows)
    q_by_model = {m: random_distributions(rng, n_rows, k, zero_fraction=0.1) for m in MODELS}
    # Q ties between classes 2 and 10: class order is numeric, so "2" is first and wins the tie
    # (in string order "10" would come first).
    label[:2] = [10, 2]
    truth = np.eye(k)[label]
    labels = pl.DataFrame({"id": ids, "label": label})
    tie = np.zeros(k)
    tie[[2, 10]] = 0.5
    q_by_model["alpha"][:2] = tie
    predictions = pl.concat(
        pl.DataFrame({"id": ids, "model": [m] * n_rows, **class_frame(q, classes, "prob_")})
        for m, q in q_by_model.items()
    )
    _, out = run_job(tmp_path, labels, predictions, base="2")
    want = _oracle_frame(ids, truth, _with_logs(q_by_model), "2")
    # For a hard label D(P‖Q) = −log q[label] and H(P) = 0.
    for m, q in q_by_model.items():
        with np.errstate(divide="ignore"):
            direct = -np.log(q[np.arange(n_rows), label]) / math.log(2.0)
        oracle_kl = want.filter(pl.col("model") == m).sort("id").get_column("kl").to_numpy()
        np.testing.assert_allclose(oracle_kl, direct, rtol=1e-12)
    assert want.filter(pl.col("kl") == math.inf).height > 0
    got = read_rows(out)
    assert (got.get_column("entropy") == 0.0).all()
    _assert_rows_match(got, want)
    tied = got.filter((pl.col("model") == "alpha") & (pl.col("id") < 2)).sort("id")
    assert tied.get_column("top1_match").to_list() == [False, True]


def test_job_hard_string_labels_match_scipy(tmp_path: Path):
    rng = np.random.default_rng(11)
    n_rows = 45
    classes = ["cat", "dog", "bird", "ant"]
    k = len(classes)
    ids = np.arange(n_rows) * 3 + 5
    label = rng.integers(0, k, size=n_rows)
    truth = np.eye(k)[label]
    labels = pl.DataFrame({"id": ids, "label": [classes[i] for i in label]})
    q_by_model = {m: random_distributions(rng, n_rows, k, zero_fraction=0.15) for m in MODELS}
    # Ties in Q for a few rows: the first class in canonical (sorted) order wins.
    q_by_model["alpha"][:3] = [0.5, 0.5, 0.0, 0.0]  # cat and dog tie; order ant, bird, cat, dog
    predictions = pl.concat(
        pl.DataFrame({"id": ids, "model": [m] * n_rows, **class_frame(q, classes, "prob_")})
        for m, q in q_by_model.items()
    )
    _, out = run_job(tmp_path, labels, predictions, base="e")
    # The oracle works in canonical class order, so that numpy's argmax breaks ties the same way.
    order = np.argsort(classes)
    want = _oracle_frame(
        ids,
        truth[:, order],
        _with_logs({m: q[:, order] for m, q in q_by_model.items()}),
        "e",
    )
    for m, q in q_by_model.items():
        with np.errstate(divide="ignore"):
            direct = -np.log(q[np.arange(n_rows), label])
        oracle_kl = want.filter(pl.col("model") == m).sort("id").get_column("kl").to_numpy()
        np.testing.assert_allclose(oracle_kl, direct, rtol=1e-12)
    got = read_rows(out)
    _assert_rows_match(got, want)
    tied = got.filter((pl.col("model") == "alpha") & pl.col("id").is_in(ids[:3].tolist()))
    # ids increase with the row, so sorting by id keeps the rows' order.
    expected_match = [classes[i] == "cat" for i in label[:3]]
    assert tied.sort("id").get_column("top1_match").to_list() == expected_match


def _logit_case(seed: int, n_rows: int, classes: list[str], scale: float):
    rng = np.random.default_rng(seed)
    k = len(classes)
    ids = np.arange(n_rows)
    truth = random_distributions(rng, n_rows, k, zero_fraction=0.25)
    logits = {m: rng.normal(0.0, scale, size=(n_rows, k)) for m in MODELS}
    # Huge logits, and a spread so wide that exp underflows to an exact 0 in Q.
    logits["alpha"][0] = np.linspace(1000.0, 1000.0 + k - 1, k)
    logits["alpha"][1] = np.linspace(-800.0, 0.0, k)
    logits["beta"][1] = np.linspace(0.0, -800.0, k)
    # Full support in row 1, so that p > 0 meets the underflowed q = 0 (log q stays finite).
    truth[1] = np.full(k, 1.0 / k)
    labels = pl.DataFrame({"id": ids, **class_frame(truth, classes, "prob_")})
    predictions = pl.concat(
        pl.DataFrame({"id": ids, "model": [m] * n_rows, **class_frame(z, classes, "logit_")})
        for m, z in logits.items()
    )
    return ids, truth, labels, logits, predictions


def test_job_logits_match_scipy_log_softmax(tmp_path: Path):
    classes = ["0", "1", "2", "3", "4", "5"]
    ids, truth, labels, logits, predictions = _logit_case(3, 40, classes, scale=8.0)
    _, out = run_job(tmp_path, labels, predictions, base="2")
    q = {
        m: (scipy.special.softmax(z, axis=1), scipy.special.log_softmax(z, axis=1))
        for m, z in logits.items()
    }
    assert q["alpha"][0][1, 0] == 0.0 and truth[1, 0] > 0, "the test needs p > 0 at q = 0"
    want = _oracle_frame(ids, truth, q, "2")
    # log q comes from the log-softmax, so an underflowed q with p > 0 is still finite.
    assert want.get_column("kl").is_finite().all()
    assert want.get_column("cross_entropy").is_finite().all()
    _assert_rows_match(read_rows(out), want)


@pytest.mark.parametrize(
    ("kind", "base", "epsilon"), [("prob", "2", 1e-3), ("prob", "10", 0.05), ("logit", "e", 1e-4)]
)
def test_job_epsilon_smoothing_matches_formula(
    tmp_path: Path, kind: str, base: str, epsilon: float
):
    if kind == "prob":
        classes = ["0", "1", "2", "3", "4"]
        ids, truth, labels, q_by_model, predictions = _soft_case(seed=5, classes=classes)
        raw = q_by_model
        assert any((q == 0).any() for q in raw.values())
    else:
        classes = ["0", "1", "2", "3"]
        ids, truth, labels, logits, predictions = _logit_case(9, 30, classes, scale=5.0)
        raw = {m: scipy.special.softmax(z, axis=1) for m, z in logits.items()}
    k = len(classes)
    smoothed = {m: (q + epsilon) / (1.0 + k * epsilon) for m, q in raw.items()}
    _, out = run_job(tmp_path, labels, predictions, base=base, epsilon=epsilon)
    want = _oracle_frame(ids, truth, {m: (q, np.log(q)) for m, q in smoothed.items()}, base)
    # Smoothing gives Q full support: D(P‖Q) is finite everywhere.
    assert want.get_column("kl").is_finite().all()
    _assert_rows_match(read_rows(out), want)


def test_job_rows_follow_each_model_and_cover_the_label_ids(tmp_path: Path):
    classes = ["0", "1", "2"]
    ids, _, labels, _, predictions = _soft_case(seed=21, classes=classes, n_rows=10)
    _, out = run_job(tmp_path, labels, predictions, base="2")
    got = read_rows(out)
    assert got.height == len(MODELS) * len(ids)
    pairs = got.select("id", "model").unique()
    assert pairs.height == got.height
    for m in MODELS:
        assert sorted(got.filter(pl.col("model") == m).get_column("id").to_list()) == sorted(
            ids.tolist()
        )


# --- properties of the math, at the expression level ----------------------------------------


@st.composite
def distributions(draw, k: int | None = None) -> tuple[float, ...]:
    """A normalised distribution with exact zeros allowed, in Float64."""
    if k is None:
        k = draw(st.integers(2, 6))
    weight = st.one_of(st.just(0.0), st.floats(1e-300, 1.0), st.floats(0.01, 1.0))
    weights = draw(st.lists(weight, min_size=k, max_size=k).filter(lambda w: sum(w) > 0))
    total = math.fsum(weights)
    return tuple(w / total for w in weights)


@st.composite
def distribution_pairs(draw) -> tuple[tuple[float, ...], tuple[float, ...]]:
    k = draw(st.integers(2, 6))
    return draw(distributions(k)), draw(distributions(k))


def _one(expr_builder, p: tuple[float, ...], q: tuple[float, ...]) -> float:
    return _measure(expr_builder, [(p, q)]).item()


def _kl(p, lp, q, lq):
    return divergence.kl_divergence(p, lp, lq)


PROPERTY_SETTINGS = settings(max_examples=100, deadline=None)


@PROPERTY_SETTINGS
@given(distribution_pairs())
def test_property_kl_is_non_negative(pair):
    p, q = pair
    # Gibbs' inequality; the tolerance covers sums that are 1 only up to rounding.
    assert _one(_kl, p, q) >= -1e-12


@PROPERTY_SETTINGS
@given(distributions())
def test_property_kl_of_a_distribution_with_itself_is_exactly_zero(p):
    assert _one(_kl, p, p) == 0.0


@PROPERTY_SETTINGS
@given(distribution_pairs())
def test_property_cross_entropy_is_entropy_plus_kl(pair):
    p, q = pair
    h_pq = _one(lambda p, lp, q, lq: divergence.cross_entropy(p, lq), p, q)
    h_p = _one(lambda p, lp, q, lq: divergence.entropy(p, lp), p, q)
    kl = _one(_kl, p, q)
    if math.isinf(kl):
        assert h_pq == math.inf
        return
    assert math.isfinite(h_pq)
    assert h_pq == pytest.approx(h_p + kl, rel=1e-9, abs=1e-12)


@PROPERTY_SETTINGS
@given(distribution_pairs())
def test_property_jensen_shannon_is_symmetric_and_bounded(pair):
    p, q = pair
    js_pq = _one(divergence.jensen_shannon_divergence, p, q)
    js_qp = _one(divergence.jensen_shannon_divergence, q, p)
    # Each class term is a + b against b + a, and (p + q)/2 against (q + p)/2: exact in IEEE.
    assert js_pq == js_qp
    assert math.isfinite(js_pq)
    # [0, log 2] up to rounding of sums that are 1 only to within a few ulps.
    assert -1e-12 <= js_pq <= LN2 + 1e-12


@PROPERTY_SETTINGS
@given(distribution_pairs())
def test_property_reverse_kl_is_kl_with_arguments_swapped(pair):
    p, q = pair
    reverse = _one(lambda p, lp, q, lq: divergence.reverse_kl_divergence(q, lq, lp), p, q)
    assert reverse == _one(_kl, q, p)


@PROPERTY_SETTINGS
@given(distributions())
@example((0.2, 0.3, 0.5))  # JS(P,P) was −1e-16 here: log(2p) − log 2 is not log p in Float64
def test_property_every_measure_of_a_distribution_with_itself_is_exactly_zero(p):
    assert _one(divergence.jensen_shannon_divergence, p, p) == 0.0
    assert _one(lambda p, lp, q, lq: divergence.reverse_kl_divergence(q, lq, lp), p, p) == 0.0
    h_pq = _one(lambda p, lp, q, lq: divergence.cross_entropy(p, lq), p, p)
    h_p = _one(lambda p, lp, q, lq: divergence.entropy(p, lp), p, p)
    assert h_pq - h_p == 0.0


# Allowed rounding, relative to Σ p·(|log p| + |log q|), the size of the terms of D(P‖Q).
ROUNDING = 1e-13


@st.composite
def extreme_logit_rows(draw) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Logits at the extremes of Float64 and a P that sums to exactly 1, over 2 to 6 classes."""
    k = draw(st.integers(2, 6))
    return draw(extreme_logits(k)), draw(dyadic_distributions(k))


def _logit_oracle(z: np.ndarray, p: np.ndarray) -> dict[str, object]:
    """log Q by scipy, and D(P‖Q), D(Q‖P), JS with the size of their terms, by numpy."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        log_q = scipy.special.log_softmax(z)
        log_p, q = np.log(p), np.exp(log_q)
        kl_terms = np.where(p > 0, p * (log_p - log_q), 0.0)
        kl_size = np.where(p > 0, p * (abs(log_p) + abs(log_q)), 0.0)
        reverse_size = np.where(q > 0, q * (abs(log_p) + abs(log_q)), 0.0)
    m = (p + q) / 2
    js = 0.5 * np.sum(scipy.special.rel_entr(p, m)) + 0.5 * np.sum(scipy.special.rel_entr(q, m))
    return {
        "log_q": log_q,
        "kl": float(kl_terms.sum()),
        "kl_size": 1.0 + float(kl_size.sum()),
        # Softmax is never 0, so D(Q‖P) is +inf wherever p = 0 (even where q underflowed).
        "reverse_kl": math.inf if (p == 0).any() else float(scipy.special.rel_entr(q, p).sum()),
        "reverse_kl_size": 1.0 + float(reverse_size.sum()),
        "js": float(js),
    }


@PROPERTY_SETTINGS
@given(extreme_logit_rows())
@example(((1e308, 1e308), (0.5, 0.5)))
@example(((1e15, 1e15 + 1), (0.5, 0.5)))
def test_property_measures_of_extreme_logits_match_scipy(row):
    z, p = row
    k = len(p)
    frame = pl.DataFrame({f"z{i}": [v] for i, v in enumerate(z)}).hstack(
        pl.DataFrame({f"p{i}": [v] for i, v in enumerate(p)})
    )
    pe, log_p, log_q = _cols("p", k), _logs(_cols("p", k)), divergence.log_softmax(_cols("z", k))
    q = [lq.exp() for lq in log_q]
    got = frame.select(
        *[lq.alias(f"lq{i}") for i, lq in enumerate(log_q)],
        divergence.kl_divergence(pe, log_p, log_q).alias("kl"),
        divergence.reverse_kl_divergence(q, log_q, log_p, q_has_full_support=True).alias("rkl"),
        divergence.jensen_shannon_divergence(pe, log_p, q, log_q).alias("js"),
    ).row(0, named=True)
    want = _logit_oracle(np.array(z), np.array(p))
    got_log_q = np.array([got[f"lq{i}"] for i in range(k)])
    np.testing.assert_allclose(got_log_q, want["log_q"], rtol=1e-12, atol=1e-12)
    for name, size in (("kl", want["kl_size"]), ("rkl", want["reverse_kl_size"])):
        oracle = want["kl" if name == "kl" else "reverse_kl"]
        if math.isinf(oracle):
            assert got[name] == oracle, name
            continue
        assert abs(got[name] - oracle) <= ROUNDING * size, name
        # Gibbs' inequality: P and the exact softmax of these floats both sum to 1.
        assert got[name] >= -ROUNDING * size, name
    assert got["js"] == pytest.approx(want["js"], rel=1e-9, abs=1e-13)
    assert -1e-13 <= got["js"] <= LN2 + 1e-13


def test_kl_is_not_symmetric():
    p, q = (0.5, 0.5), (0.9, 0.1)
    forward, backward = _one(_kl, p, q), _one(_kl, q, p)
    assert forward == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
    assert backward == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
    assert forward != pytest.approx(backward)


# --- invariance of the published report -----------------------------------------------------


def test_report_invariant_to_row_order_and_class_column_order(tmp_path: Path):
    classes = ["0", "1", "2", "3", "10", "11"]  # numeric order differs from string order
    rng = np.random.default_rng(99)
    ids, _, labels, _, predictions = _soft_case(seed=17, classes=classes, n_rows=60)
    # One model with full support, so the report has finite means, spreads and p-values too.
    full = random_distributions(rng, len(ids), len(classes))
    predictions = pl.concat(
        [
            predictions,
            pl.DataFrame(
                {"id": ids, "model": ["delta"] * len(ids), **class_frame(full, classes, "prob_")}
            ),
        ]
    )
    labels = labels.with_columns(region=pl.Series(rng.choice(["eu", "us"], size=len(ids))))
    _, out_a = run_job(
        tmp_path, labels, predictions, name="original", inputs={"slice_by": ("region",)}
    )

    def shuffled(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
        order = np.random.default_rng(seed).permutation(frame.height)
        columns = list(frame.columns)
        class_columns = [c for c in columns if c.startswith("prob_")]
        others = [c for c in columns if not c.startswith("prob_")]
        permuted = [
            class_columns[i]
            for i in np.random.default_rng(seed + 1).permutation(len(class_columns))
        ]
        assert permuted != class_columns
        return frame[order.tolist()].select(permuted[:2] + others + permuted[2:])

    _, out_b = run_job(
        tmp_path,
        shuffled(labels, 1),
        shuffled(predictions, 2),
        name="shuffled",
        inputs={"slice_by": ("region",)},
    )
    report_a, report_b = read_report(out_a), read_report(out_b)
    assert report_a.height == 3 * 4  # ALL, region=eu, region=us, for four models
    # Means, moments and the marginal KL are sums over rows, and a different row order changes
    # their rounding (in the last bits only), hence rel_tol 1e-12 rather than exact equality.
    # Ranks, counts, strings and infinities are compared exactly by assert_frame_equal anyway.
    assert_frame_equal(report_a, report_b, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)
    # Per-row measures do not depend on row order at all: after sorting they are identical.
    rows_a = read_rows(out_a).sort("id", "model")
    rows_b = read_rows(out_b).sort("id", "model")
    assert_frame_equal(rows_a, rows_b, check_exact=True)


def test_job_float32_inputs_are_computed_in_float64(tmp_path: Path):
    classes = ["a", "b", "c"]
    ids, _, labels, q_by_model, predictions = _soft_case(seed=31, classes=classes, n_rows=20)
    labels = labels.with_columns(pl.selectors.starts_with("prob_").cast(pl.Float32))
    predictions = predictions.with_columns(pl.selectors.starts_with("prob_").cast(pl.Float32))
    _, out = run_job(tmp_path, labels, predictions, base="2")
    # The oracle sees exactly the stored Float32 values, widened to Float64.
    truth = (
        labels.sort("id").select(pl.selectors.starts_with("prob_")).to_numpy().astype(np.float64)
    )
    stored = {
        m: predictions.filter(pl.col("model") == m)
        .sort("id")
        .select(pl.selectors.starts_with("prob_"))
        .to_numpy()
        .astype(np.float64)
        for m in q_by_model
    }
    want = _oracle_frame(np.sort(ids), truth, _with_logs(stored), "2", renormalise=False)
    # Float32 rows sum to 1 only up to ~1e-7, which is what makes renormalising matter here.
    assert np.abs(truth.sum(axis=1) - 1.0).max() > 1e-12
    got = read_rows(out)
    assert got.select(MEASURES).dtypes == [pl.Float64] * len(MEASURES)
    _assert_rows_match(got, want)


# --- regressions -------------------------------------------------------------------------


def test_js_was_infinite_when_p_plus_q_rounded_to_zero():
    # M = (p + q)/2 once rounded to 0 for the smallest subnormal, making JS +inf.
    tiny = 5e-324  # 1.0 + tiny == 1.0, so P still sums to 1 and passes validation
    got = _measure(divergence.jensen_shannon_divergence, [((1.0, tiny), (1.0, 0.0))]).item()
    assert math.isfinite(got)
    assert 0.0 <= got <= LN2


def test_reverse_kl_was_finite_when_a_softmax_probability_underflowed(tmp_path: Path):
    # Softmax is never 0, so D(Q‖P) is +inf where p = 0, even when exp(log q) underflows.
    labels = pl.DataFrame({"id": [1, 2], "label": [0, 0]})
    predictions = pl.DataFrame(
        {"id": [1, 2], "model": ["m", "m"], "logit_0": [0.0, 0.0], "logit_1": [-800.0, -3.0]}
    )
    _, out = run_job(tmp_path, labels, predictions, base="e")
    got = read_rows(out).sort("id").get_column("reverse_kl").to_list()
    assert got == [math.inf, math.inf]
