"""The Array/List layout (and many classes): scipy oracle, equality with the column layout,
positional and joined alignment, and bad array input through the CLI (in-process)."""

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.special
import scipy.stats
from cli_helpers import expect, inputs, invoke
from helpers import (
    class_frame,
    dyadic_distributions,
    extreme_logits,
    random_distributions,
    read_rows,
    run_job,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st
from klrank.pipeline import arrays
from klrank.pipeline.layout import resolve_layout
from polars.testing import assert_frame_equal

N_ROWS, N_CLASSES = 300, 6
MODELS = ("a", "b")


def _array(values: np.ndarray, name: str, dtype: pl.DataType | None = None) -> pl.Series:
    series = pl.Series(name, values.tolist(), dtype=pl.Array(pl.Float64, values.shape[1]))
    return series if dtype is None else series.cast(dtype)


def _data(
    rng: np.random.Generator, n_classes: int = N_CLASSES
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    p = random_distributions(rng, N_ROWS, n_classes, zero_fraction=0.2)
    q = {m: random_distributions(rng, N_ROWS, n_classes, zero_fraction=0.1) for m in MODELS}
    return p, q


def _array_inputs(
    p: np.ndarray, q: dict[str, np.ndarray], dtype: pl.DataType | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    labels = pl.DataFrame({"id": np.arange(N_ROWS)}).with_columns(_array(p, "prob", dtype))
    predictions = pl.concat(
        pl.DataFrame({"id": np.arange(N_ROWS), "model": [m] * N_ROWS}).with_columns(
            _array(v, "prob", dtype)
        )
        for m, v in q.items()
    )
    return labels, predictions


def _rows(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "rows.parquet").sort("model", "id")


def _oracle(p: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    kl = scipy.special.rel_entr(p, q).sum(axis=1) / math.log(2)
    entropy = scipy.special.entr(p).sum(axis=1) / math.log(2)
    m = (p + q) / 2
    js = (
        (scipy.special.rel_entr(p, m).sum(axis=1) + scipy.special.rel_entr(q, m).sum(axis=1))
        / 2
        / math.log(2)
    )
    return {
        "kl": kl,
        "reverse_kl": scipy.special.rel_entr(q, p).sum(axis=1) / math.log(2),
        "js": js,
        "entropy": entropy,
        "cross_entropy": entropy + kl,
        "top1_match": p.argmax(axis=1) == q.argmax(axis=1),
    }


def _assert_matches(rows: pl.DataFrame, p: np.ndarray, q: dict[str, np.ndarray]) -> None:
    for model, values in q.items():
        got = rows.filter(pl.col("model") == model)
        for name, want in _oracle(p, values).items():
            have = got.get_column(name).to_numpy()
            if name == "top1_match":
                assert (have == want).all(), name
                continue
            infinite = np.isinf(want)
            assert (np.isinf(have) == infinite).all(), name
            np.testing.assert_allclose(
                have[~infinite], want[~infinite], rtol=1e-9, atol=1e-15, err_msg=name
            )


@pytest.mark.parametrize(
    "dtype",
    [None, pl.List(pl.Float64), pl.Array(pl.Float32, N_CLASSES)],
    ids=["array", "list", "array-float32"],
)
def test_array_layout_matches_scipy(tmp_path: Path, dtype: pl.DataType | None) -> None:
    rng = np.random.default_rng(11)
    p, q = _data(rng)
    if dtype == pl.Array(pl.Float32, N_CLASSES):  # the oracle sees what klrank reads
        p, q = (
            p.astype(np.float32).astype(np.float64),
            {m: v.astype(np.float32).astype(np.float64) for m, v in q.items()},
        )
    labels, predictions = _array_inputs(p, q, dtype)
    _, out = run_job(tmp_path, labels, predictions, inputs={"tolerance": 1e-6})
    rows = _rows(out)
    assert np.isinf(rows.get_column("kl").to_numpy()).any(), (
        "the data should hold zero q where p > 0"
    )
    _assert_matches(rows, p, q)


def test_array_logits_match_scipy_log_softmax(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    p = random_distributions(rng, N_ROWS, N_CLASSES, zero_fraction=0.2)
    logits = {m: rng.normal(scale=5.0, size=(N_ROWS, N_CLASSES)) for m in MODELS}
    logits["a"][0] = [1000.0, 999.0, -1000.0, 0.0, 3.0, 2.0]  # no overflow, one q underflows
    labels = pl.DataFrame({"id": np.arange(N_ROWS)}).with_columns(_array(p, "prob"))
    predictions = pl.concat(
        pl.DataFrame({"id": np.arange(N_ROWS), "model": [m] * N_ROWS}).with_columns(
            _array(v, "logit")
        )
        for m, v in logits.items()
    )
    _, out = run_job(tmp_path, labels, predictions)
    rows = _rows(out)
    for model, z in logits.items():
        log_q = scipy.special.log_softmax(z, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * (np.log(p) - log_q), 0.0)
        want = terms.sum(axis=1) / math.log(2)
        have = rows.filter(pl.col("model") == model).get_column("kl").to_numpy()
        np.testing.assert_allclose(have, want, rtol=1e-9)
        # softmax is never 0, so D(Q‖P) is infinite exactly where some p is 0
        reverse = rows.filter(pl.col("model") == model).get_column("reverse_kl").to_numpy()
        assert (np.isinf(reverse) == (p == 0).any(axis=1)).all()


def _array_measures(p: np.ndarray, values: np.ndarray, kind: str) -> pl.DataFrame:
    """The per-row measures in nats, and log Q, by the array layout's own functions."""
    n = len(p)
    labels = pl.DataFrame({"id": np.arange(n)}).with_columns(_array(p, "prob"))
    batch = pl.DataFrame({"id": np.arange(n), "model": ["m"] * n}).with_columns(
        _array(values, kind)
    )
    layout = resolve_layout(
        labels.schema,
        batch.schema,
        id_col="id",
        model_col="model",
        label_col="label",
        truth="soft",
        prob_prefix="prob_",
        logit_prefix="logit_",
        slice_by=(),
    )
    assert layout.uses_arrays and layout.prediction_kind == kind
    prepared, truth = arrays.prepare_labels(labels, layout, "e")
    rows, _ = arrays.row_measures(
        prepared, truth, batch, layout, base="e", epsilon=0.0, slice_keys=()
    )
    return rows


# Allowed rounding, relative to Σ p·(|log p| + |log q|), the size of the terms of D(P‖Q).
ROUNDING = 1e-13


@st.composite
def extreme_logit_arrays(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """1 to 4 rows of logits at the extremes of Float64, and P rows summing to exactly 1."""
    k, n = draw(st.integers(2, 6)), draw(st.integers(1, 4))
    z = [draw(extreme_logits(k)) for _ in range(n)]
    return np.array(z), np.array([draw(dyadic_distributions(k)) for _ in range(n)])


@settings(max_examples=100, deadline=None)
@given(extreme_logit_arrays())
@example((np.array([[1e308, 1e308]]), np.array([[0.5, 0.5]])))
@example((np.array([[1e15, 1e15 + 1]]), np.array([[0.5, 0.5]])))
def test_property_array_measures_of_extreme_logits_match_scipy(case) -> None:
    z, p = case
    rows = _array_measures(p, z, "logit")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        log_q = scipy.special.log_softmax(z, axis=1)
        log_p, q = np.log(p), np.exp(log_q)
        kl = np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=1)
        kl_size = 1.0 + np.where(p > 0, p * (abs(log_p) + abs(log_q)), 0.0).sum(axis=1)
        reverse_size = 1.0 + np.where(q > 0, q * (abs(log_p) + abs(log_q)), 0.0).sum(axis=1)
    # Softmax is never 0, so D(Q‖P) is +inf wherever some p = 0 (even where q underflowed).
    reverse = np.where((p == 0).any(axis=1), np.inf, scipy.special.rel_entr(q, p).sum(axis=1))
    m = (p + q) / 2
    js = (scipy.special.rel_entr(p, m).sum(axis=1) + scipy.special.rel_entr(q, m).sum(axis=1)) / 2
    np.testing.assert_allclose(arrays.distribution(z, "logit")[1], log_q, rtol=1e-12, atol=1e-12)
    for name, want, size in (("kl", kl, kl_size), ("reverse_kl", reverse, reverse_size)):
        have = rows.get_column(name).to_numpy()
        infinite = np.isinf(want)
        assert (have[infinite] == want[infinite]).all(), name
        have, want, tolerance = have[~infinite], want[~infinite], ROUNDING * size[~infinite]
        assert (abs(have - want) <= tolerance).all(), name
        # Gibbs' inequality: P and the exact softmax of these floats both sum to 1.
        assert (have >= -tolerance).all(), name
    np.testing.assert_allclose(rows.get_column("js").to_numpy(), js, rtol=1e-9, atol=1e-13)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 6).flatmap(
        lambda k: st.lists(
            st.lists(st.one_of(st.just(0.0), st.floats(5e-324, 1.0)), min_size=k, max_size=k),
            min_size=1,
            max_size=4,
        )
    )
)
@example([[0.2, 0.3, 0.5]])  # JS(P,P) was −1e-16 here: log(2p) − log 2 is not log p in Float64
def test_property_array_measures_of_a_distribution_with_itself_are_exactly_zero(p) -> None:
    values = np.array(p)
    rows = _array_measures(values, values, "prob")
    for name in ("kl", "reverse_kl", "js"):
        assert (rows.get_column(name).to_numpy() == 0.0).all(), name
    difference = rows.select(pl.col("cross_entropy") - pl.col("entropy")).to_series()
    assert (difference == 0.0).all()


# P = (1/2, 1/2) against Q = softmax(0, 1) = (1, e)/(1 + e), worked by hand in nats.
Q_OF_LOGITS_0_1 = (1 / (1 + math.e), math.e / (1 + math.e))
HALF_AND_LOGITS_0_1 = {
    "kl": 0.5 * math.log((1 + math.e) ** 2 / (4 * math.e)),
    "reverse_kl": sum(qi * math.log(2 * qi) for qi in Q_OF_LOGITS_0_1),
    "js": sum(
        0.25 * math.log(0.5 / mi) + 0.5 * qi * math.log(qi / mi)
        for qi, mi in ((qi, (0.5 + qi) / 2) for qi in Q_OF_LOGITS_0_1)
    ),
}


@pytest.mark.parametrize(
    ("logits", "p", "expected"),
    [
        ([1e308, 1e308], [0.5, 0.5], {"kl": 0.0, "reverse_kl": 0.0, "js": 0.0}),
        ([1e15, 1e15 + 1], [0.5, 0.5], HALF_AND_LOGITS_0_1),
        ([1e16] * 65, [1 / 65] * 65, {"kl": 0.0, "reverse_kl": 0.0, "js": 0.0}),
    ],
    ids=["two_at_1e308", "1e15_and_1e15_plus_1", "65_equal_at_1e16"],
)
def test_array_logits_lost_the_log_sum_at_large_magnitudes(
    tmp_path: Path, logits: list[float], p: list[float], expected: dict[str, float]
) -> None:
    # log q was z − (m + log Σ exp(z − m)): the log-sum rounded away at m = 1e16 or 1e308, and
    # the mean KL came out as −1 bit, 0.26 bits (for 0.17) and −0.25 bits.
    labels = pl.DataFrame({"id": [1]}).with_columns(_array(np.array([p]), "prob"))
    predictions = pl.DataFrame({"id": [1], "model": ["m"]}).with_columns(
        _array(np.array([logits]), "logit")
    )
    _, out = run_job(tmp_path, labels, predictions, base="e")
    row = read_rows(out).row(0, named=True)
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_array_layout_report_equals_column_layout_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    p, q = _data(rng)
    classes = [str(i) for i in range(N_CLASSES)]
    region = rng.choice(["x", "y"], size=N_ROWS)
    labels, predictions = _array_inputs(p, q)
    _, array_out = run_job(
        tmp_path,
        labels.with_columns(region=region),
        predictions,
        name="arrays",
        inputs={"slice_by": ("region",)},
    )
    wide_labels = pl.DataFrame(
        {"id": np.arange(N_ROWS), "region": region, **class_frame(p, classes, "prob_")}
    )
    wide_predictions = pl.concat(
        pl.DataFrame(
            {"id": np.arange(N_ROWS), "model": [m] * N_ROWS, **class_frame(v, classes, "prob_")}
        )
        for m, v in q.items()
    )
    _, wide_out = run_job(
        tmp_path, wide_labels, wide_predictions, name="columns", inputs={"slice_by": ("region",)}
    )
    assert_frame_equal(
        pl.read_parquet(array_out / "report.parquet"),
        pl.read_parquet(wide_out / "report.parquet"),
        check_exact=False,
        rel_tol=1e-12,
    )


def test_many_class_columns_are_measured_as_arrays_and_match_scipy(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    p, q = _data(rng, n_classes=80)  # above the 64 classes where one expression per class stops
    classes = [str(i) for i in range(80)]
    labels = pl.DataFrame({"id": np.arange(N_ROWS), **class_frame(p, classes, "prob_")})
    predictions = pl.concat(
        pl.DataFrame(
            {"id": np.arange(N_ROWS), "model": [m] * N_ROWS, **class_frame(v, classes, "prob_")}
        )
        for m, v in q.items()
    )
    _, out = run_job(tmp_path, labels, predictions)
    _assert_matches(_rows(out), p, q)


@pytest.mark.parametrize("labels_as", ["index", "name"])
def test_hard_labels_with_array_predictions_and_class_names(tmp_path: Path, labels_as: str) -> None:
    rng = np.random.default_rng(15)
    names = ["cat", "dog", "eel", "fox", "gnu", "hen"]
    truth = rng.integers(0, N_CLASSES, size=N_ROWS)
    label = truth if labels_as == "index" else np.array(names)[truth]
    q = {m: random_distributions(rng, N_ROWS, N_CLASSES) for m in MODELS}
    labels = pl.DataFrame({"id": np.arange(N_ROWS), "label": label})
    _, predictions = _array_inputs(np.eye(N_CLASSES)[truth], q)
    summary, out = run_job(tmp_path, labels, predictions, inputs={"classes": tuple(names)})
    rows = _rows(out)
    for model, values in q.items():
        want = -np.log2(values[np.arange(N_ROWS), truth])
        np.testing.assert_allclose(
            rows.filter(pl.col("model") == model).get_column("kl").to_numpy(), want, rtol=1e-12
        )
    assert summary.manifest["classes"] == names


def test_joined_alignment_gives_the_same_report_as_positional(tmp_path: Path) -> None:
    rng = np.random.default_rng(16)
    p, q = _data(rng)
    labels, predictions = _array_inputs(p, q)
    positional, positional_out = run_job(tmp_path, labels, predictions, name="positional")
    shuffled = predictions.sample(fraction=1.0, shuffle=True, seed=3)
    joined, joined_out = run_job(tmp_path, labels, shuffled, name="joined")
    assert positional.manifest["alignment"] == {"a": "positional", "b": "positional"}
    assert joined.manifest["alignment"] == {"a": "joined", "b": "joined"}
    # Both put every model's rows in the labels' order, so even the last digits agree.
    assert_frame_equal(
        pl.read_parquet(positional_out / "report.parquet"),
        pl.read_parquet(joined_out / "report.parquet"),
    )


def _bad(frame: pl.DataFrame, row: int, values: list[float | None]) -> pl.DataFrame:
    column = frame.get_column("prob").to_list()
    column[row] = values
    return frame.with_columns(pl.Series("prob", column, dtype=frame.schema["prob"]))


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda labels, p: (_bad(labels, 2, [0.5, math.nan, 0.5, 0, 0, 0]), p), "[not_nullable]"),
        (lambda labels, p: (_bad(labels, 2, [1.5, -0.5, 0, 0, 0, 0]), p), "[in_range(0.0, 1.0)]"),
        (lambda labels, p: (_bad(labels, 2, [0.5, 0.6, 0, 0, 0, 0]), p), "[rows_sum_to_one]"),
        (lambda labels, p: (_bad(labels, 2, [0.5, None, 0.5, 0, 0, 0]), p), "[not_nullable]"),
        (
            lambda labels, p: (
                labels,
                _bad(p.with_columns(pl.col("prob").cast(pl.List(pl.Float64))), 3, [0.5, 0.5]),
            ),
            "[list_length]",
        ),
        (
            lambda labels, p: (
                labels,
                p.with_columns(pl.col("prob").cast(pl.Array(pl.Int64, N_CLASSES))),
            ),
            "dtype(",
        ),
        (
            lambda labels, p: (labels.with_columns(pl.col("prob").arr.head(5).list.to_array(5)), p),
            "[class_set]",
        ),
    ],
    ids=[
        "nan",
        "out-of-range",
        "row-sum",
        "null-element",
        "list-length",
        "integer-array",
        "width-mismatch",
    ],
)
def test_bad_array_input_is_reported_by_the_cli(tmp_path: Path, change: object, check: str) -> None:
    p = np.full((4, N_CLASSES), 1 / N_CLASSES)
    labels = pl.DataFrame({"id": np.arange(4)}).with_columns(_array(p, "prob"))
    predictions = pl.DataFrame({"id": np.arange(4), "model": ["m"] * 4}).with_columns(
        _array(p, "prob")
    )
    labels, predictions = change(labels, predictions)  # type: ignore[operator]
    result = invoke(
        "run",
        *inputs(tmp_path, labels, predictions),
        "--out", tmp_path / "out",
    )  # fmt: skip
    expect(result, 1)
    assert check in result.stderr, result.stderr
    assert not (tmp_path / "out" / "report.parquet").exists()


def test_logit_array_with_infinity_is_reported(tmp_path: Path) -> None:
    labels = pl.DataFrame({"id": [1, 2]}).with_columns(
        _array(np.array([[1.0, 0.0], [0.0, 1.0]]), "prob")
    )
    predictions = pl.DataFrame({"id": [1, 2], "model": ["m", "m"]}).with_columns(
        _array(np.array([[0.0, math.inf], [1.0, 2.0]]), "logit")
    )
    result = invoke(
        "validate",
        *inputs(tmp_path, labels, predictions),
        "--json",
    )  # fmt: skip
    expect(result, 1)
    assert "[finite]" in result.stderr and "id=1" in result.stderr
    assert json.loads(result.stdout)["status"] == "invalid_data"
