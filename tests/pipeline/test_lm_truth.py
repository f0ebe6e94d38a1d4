"""Language-model truth: base logits as labels, the next token beside them, batches by bytes.

Every quantity is checked against scipy/numpy computations of its definition: P and Q from
``scipy.special.log_softmax``, the divergences from ``rel_entr`` and the token measures from
the row's label, on random cases with exact zeros, ties for the top token, Float16 inputs,
single-row batches and batch boundaries.
"""

import math
from typing import Any

import klrank
import numpy as np
import polars as pl
import pytest
import scipy.special
from klrank.pipeline import arrays
from klrank.pipeline.errors import InvalidDataError
from klrank.pipeline.layout import resolve_layout
from polars.testing import assert_frame_equal

MODELS = ("m0", "m1")
QUIET = {"html": False, "bootstrap": 0, "worst": 5}


def _array(values: np.ndarray, name: str, dtype: pl.DataType) -> pl.Series:
    return pl.Series(name, values).cast(pl.Array(dtype, values.shape[1]))


def _logit_inputs(
    rng: np.random.Generator, n: int, k: int, dtype: pl.DataType = pl.Float32
) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Labels (logit array, label) and logit predictions, and the values as their dtype holds them."""
    as_numpy = {pl.Float16: np.float16, pl.Float32: np.float32, pl.Float64: np.float64}[dtype]
    z = (rng.normal(0, 3, (n, k))).astype(as_numpy)
    z[0, :3] = z[0].max() + 1  # a tie for the top token, on the first row
    label = rng.integers(0, k, n)
    q = {
        m: (z + rng.normal(0, s, (n, k))).astype(as_numpy)
        for m, s in zip(MODELS, (0.1, 1.0), strict=True)
    }
    q["m1"][1] = z[1]  # a model that equals the base on one row
    labels = pl.DataFrame({"id": np.arange(n), "label": label}).with_columns(
        _array(z, "logit", dtype)
    )
    predictions = pl.concat(
        pl.DataFrame({"id": np.arange(n), "model": [m] * n}).with_columns(_array(v, "logit", dtype))
        for m, v in q.items()
    )
    return (
        labels,
        predictions,
        z.astype(np.float64),
        {m: v.astype(np.float64) for m, v in q.items()},
        label,
    )


def _oracle(
    log_p: np.ndarray, log_q: np.ndarray, label: np.ndarray | None, logits_q: bool
) -> dict[str, np.ndarray]:
    """The row measures in nats, from the definitions."""
    p, q = np.exp(log_p), np.exp(log_q)
    rows = np.arange(len(p))
    kl = scipy.special.rel_entr(p, q).sum(axis=1)
    reverse = scipy.special.rel_entr(q, p).sum(axis=1)
    if logits_q:  # softmax is never 0: D(Q‖P) is +inf wherever some p is 0
        reverse = np.where((p == 0).any(axis=1), np.inf, reverse)
    m = (p + q) / 2
    js = (scipy.special.rel_entr(p, m).sum(axis=1) + scipy.special.rel_entr(q, m).sum(axis=1)) / 2
    entropy = scipy.special.entr(p).sum(axis=1)
    out = {
        "kl": kl,
        "reverse_kl": reverse,
        "js": js,
        "entropy": entropy,
        "cross_entropy": entropy + kl,
    }
    if label is not None:
        out |= {"nll": -log_q[rows, label], "delta_p": q[rows, label] - p[rows, label]}
    return out


def _rows(evaluation: klrank.Evaluation) -> pl.DataFrame:
    return evaluation.rows.collect().sort("model", "id")


def _close(have: np.ndarray, want: np.ndarray, what: str, rtol: float = 1e-9) -> None:
    infinite = np.isinf(want)
    assert (have[infinite] == want[infinite]).all(), what
    np.testing.assert_allclose(
        have[~infinite], want[~infinite], rtol=rtol, atol=1e-12, err_msg=what
    )


@pytest.mark.parametrize("dtype", [pl.Float16, pl.Float32, pl.Float64])
def test_logit_truth_with_a_token_matches_scipy(dtype: pl.DataType) -> None:
    labels, predictions, z, q, label = _logit_inputs(np.random.default_rng(1), 40, 9, dtype)
    evaluation = klrank.evaluate(labels, predictions, base="e", **QUIET)
    rows = _rows(evaluation)
    assert rows.columns[-2:] == ["nll", "delta_p"] and "_label_nll" not in rows.columns
    log_p = scipy.special.log_softmax(z, axis=1)
    for model in MODELS:
        mine = rows.filter(pl.col("model") == model)
        want = _oracle(log_p, scipy.special.log_softmax(q[model], axis=1), label, True)
        for name, values in want.items():
            _close(mine.get_column(name).to_numpy(), values, f"{model} {name}")
        top = z.argmax(axis=1) == q[model].argmax(axis=1)  # ties: the first class
        assert mine.get_column("top1_match").to_list() == top.tolist()
    equal = rows.filter((pl.col("model") == "m1") & (pl.col("id") == 1)).row(0, named=True)
    assert (equal["kl"], equal["reverse_kl"], equal["js"], equal["delta_p"]) == (0, 0, 0, 0)
    worst = evaluation.worst_rows
    assert worst is not None and {"nll", "delta_p"} <= set(worst.columns)


def test_probability_truth_with_zeros_and_a_token_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    n, k = 30, 7
    p = rng.dirichlet(np.ones(k), n)
    p[rng.random((n, k)) < 0.3] = 0.0
    p[:, 0] += 1e-3  # no row all zero
    p /= p.sum(axis=1, keepdims=True)
    q = rng.dirichlet(np.ones(k), n)
    q[rng.random((n, k)) < 0.2] = 0.0
    q[:, 1] += 1e-3
    q /= q.sum(axis=1, keepdims=True)
    label = rng.integers(0, k, n)  # p (and q) may be 0 there: nll and -log p(label) are +inf
    labels = pl.DataFrame({"id": np.arange(n), "label": label}).with_columns(
        _array(p, "prob", pl.Float64)
    )
    predictions = pl.DataFrame({"id": np.arange(n), "model": ["m"] * n}).with_columns(
        _array(q, "prob", pl.Float64)
    )
    rows = _rows(klrank.evaluate(labels, predictions, base="2", **QUIET))
    with np.errstate(divide="ignore"):
        want = _oracle(np.log(p), np.log(q), label, False)
    for name, values in want.items():
        scale = 1.0 if name == "delta_p" else math.log(2)
        _close(rows.get_column(name).to_numpy(), values / scale, name)


def test_label_nll_is_kept_for_the_report_and_matches_scipy() -> None:
    labels, predictions, z, _, label = _logit_inputs(np.random.default_rng(3), 12, 5)
    batch = predictions.filter(pl.col("model") == "m0")
    layout = resolve_layout(
        labels.schema,
        batch.schema,
        id_col="id",
        model_col="model",
        label_col="label",
        truth="auto",
        prob_prefix="prob_",
        logit_prefix="logit_",
        slice_by=(),
    )
    assert (layout.truth, layout.label_kind, layout.token_col) == ("soft", "logit", "label")
    prepared, truth = arrays.prepare_labels(labels, layout, "10")
    rows, _ = arrays.row_measures(
        prepared, truth, batch, layout, base="10", epsilon=0.0, slice_keys=()
    )
    want = -scipy.special.log_softmax(z, axis=1)[np.arange(12), label] / math.log(10)
    np.testing.assert_allclose(rows.get_column("_label_nll").to_numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("where", ["labels", "predictions"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_nan_and_plus_inf_logits_are_rejected_in_either_input(where: str, value: float) -> None:
    labels, predictions, *_ = _logit_inputs(np.random.default_rng(4), 6, 4, pl.Float64)
    frame = labels if where == "labels" else predictions
    values = np.array(frame.get_column("logit").to_list())
    values[2, 1] = value
    frame = frame.with_columns(_array(values, "logit", pl.Float64))
    inputs = (frame, predictions) if where == "labels" else (labels, frame)
    with pytest.raises(InvalidDataError) as raised:
        klrank.evaluate(*inputs, **QUIET)
    failures = raised.value.failures
    assert "finite" in failures.get_column("check").to_list()
    assert failures.get_column("dataset").unique().to_list() == [where]


@pytest.mark.parametrize("where", ["labels", "predictions"])
def test_a_row_of_minus_inf_logits_is_rejected_in_either_input(where: str) -> None:
    labels, predictions, *_ = _logit_inputs(np.random.default_rng(4), 6, 4, pl.Float64)
    frame = labels if where == "labels" else predictions
    values = np.array(frame.get_column("logit").to_list())
    values[2] = -math.inf
    frame = frame.with_columns(_array(values, "logit", pl.Float64))
    inputs = (frame, predictions) if where == "labels" else (labels, frame)
    with pytest.raises(InvalidDataError) as raised:
        klrank.evaluate(*inputs, **QUIET)
    failures = raised.value.failures
    assert failures.select("dataset", "check", "row").unique().rows() == [
        (where, "some_logit_finite", 2)
    ]


@pytest.mark.parametrize("dtype", [pl.Float16, pl.Float32, pl.Float64])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_minus_inf_logits_are_probabilities_of_zero_and_match_scipy(
    dtype: pl.DataType, hard: bool
) -> None:
    labels, predictions, z, q, label = _logit_inputs(np.random.default_rng(6), 40, 6, dtype)
    rng = np.random.default_rng(7)
    z[rng.random(z.shape) < 0.3] = -math.inf
    z[np.arange(40), rng.integers(0, 6, 40)] = 0.0  # some class above −inf in every row
    z[3] = -math.inf
    z[3, label[3]] = 1.0  # one-hot truth at the token
    for m, s in zip(MODELS, (0.3, 0.6), strict=True):
        q[m][rng.random(z.shape) < s] = -math.inf
        q[m][np.arange(40), rng.integers(0, 6, 40)] = 0.5
    q["m0"][5] = z[5]  # the same support and values as the truth on a row
    q["m1"][7] = -math.inf
    q["m1"][7, label[7]] = 2.0  # one-hot at the label
    labels = labels.with_columns(_array(z, "logit", dtype))
    if hard:
        labels = labels.drop("logit")
    predictions = pl.concat(
        pl.DataFrame({"id": np.arange(40), "model": [m] * 40}).with_columns(
            _array(v, "logit", dtype)
        )
        for m, v in q.items()
    )
    rows = _rows(klrank.evaluate(labels, predictions, base="e", **QUIET))
    with np.errstate(divide="ignore"):
        log_p = np.log(np.eye(6)[label]) if hard else scipy.special.log_softmax(z, axis=1)
        for model in MODELS:
            mine = rows.filter(pl.col("model") == model)
            log_q = scipy.special.log_softmax(q[model], axis=1)
            want = _oracle(log_p, log_q, None if hard else label, False)
            # D(Q‖P): +inf where Q puts any mass (a logit above −inf) on a class with p = 0.
            want["reverse_kl"] = np.where(
                ((log_p == -math.inf) & (q[model] > -math.inf)).any(axis=1),
                math.inf,
                want["reverse_kl"],
            )
            for name, values in want.items():
                _close(mine.get_column(name).to_numpy(), values, f"{model} {name}")
    one_hot = rows.filter((pl.col("model") == "m1") & (pl.col("id") == 7)).row(0, named=True)
    if hard:  # Q one-hot at the label equals the hard truth
        assert (one_hot["kl"], one_hot["reverse_kl"], one_hot["js"]) == (0.0, 0.0, 0.0)
    same = rows.filter((pl.col("model") == "m0") & (pl.col("id") == 5)).row(0, named=True)
    if not hard:
        assert (same["kl"], same["reverse_kl"], same["js"], same["delta_p"]) == (0, 0, 0, 0)


def test_wide_logit_labels_match_array_logit_labels() -> None:
    labels, predictions, z, *_ = _logit_inputs(np.random.default_rng(5), 20, 4, pl.Float64)
    wide = labels.select("id", "label", *[pl.Series(f"logit_{i}", z[:, i]) for i in range(4)])
    one = _rows(klrank.evaluate(labels, predictions, **QUIET))
    other = _rows(klrank.evaluate(wide, predictions, **QUIET))
    assert_frame_equal(one, other)


def test_soft_truth_without_a_token_publishes_no_token_columns() -> None:
    labels, predictions, *_ = _logit_inputs(np.random.default_rng(6), 10, 4)
    rows = _rows(klrank.evaluate(labels.drop("label"), predictions, **QUIET))
    assert not {"nll", "delta_p"} & set(rows.columns)
    hard = _rows(klrank.evaluate(labels, predictions, truth="hard", **QUIET))
    assert not {"nll", "delta_p"} & set(hard.columns)


def test_hard_labels_are_read_by_index_and_match_scipy() -> None:
    rng = np.random.default_rng(7)
    n, k = 25, 6
    q = rng.dirichlet(np.ones(k), n)
    q[rng.random((n, k)) < 0.3] = 0.0
    label = rng.integers(0, k, n)
    q[np.arange(n), label] += 1e-3
    q[0] = 0.0
    q[0, label[0]] = 1.0  # exactly one-hot: D(Q‖P) = 0, not +inf
    q[1, label[1]] = 0.0  # q(label) = 0: D(P‖Q) = +inf
    q[1, (label[1] + 1) % k] += 0.1
    q /= q.sum(axis=1, keepdims=True)
    labels = pl.DataFrame({"id": np.arange(n), "label": label})
    predictions = pl.DataFrame({"id": np.arange(n), "model": ["m"] * n}).with_columns(
        _array(q, "prob", pl.Float64)
    )
    rows = _rows(klrank.evaluate(labels, predictions, base="e", **QUIET))
    p = np.eye(k)[label]
    with np.errstate(divide="ignore"):
        want = _oracle(np.log(p), np.log(q), None, False)
    for name, values in want.items():
        _close(rows.get_column(name).to_numpy(), values, name)
    assert rows.get_column("reverse_kl")[0] == 0.0 and math.isinf(rows.get_column("kl")[1])


def _contributions(evaluation: klrank.Evaluation) -> pl.DataFrame:
    return evaluation.class_contributions.sort("slice", "model", "class")


@pytest.mark.parametrize("truth", ["soft", "hard"])
def test_results_do_not_depend_on_the_batch_bytes(truth: str) -> None:
    labels, predictions, z, q, label = _logit_inputs(np.random.default_rng(8), 37, 6, pl.Float64)
    labels = labels.with_columns(region=pl.Series(["a", "b", "c"] * 12 + ["a"]))
    labels = labels.with_columns(w=pl.Series(np.arange(37) % 4, dtype=pl.Float64))
    options: dict[str, Any] = QUIET | {
        "truth": truth,
        "slice_by": ["region"],
        "weight_col": "w",
        "base": "e",
    }
    whole = klrank.evaluate(labels, predictions, **options)
    for rows_a_batch in (1, 5, 36):
        batched = klrank.evaluate(labels, predictions, batch_bytes=rows_a_batch * 6 * 8, **options)
        assert_frame_equal(_rows(batched), _rows(whole), check_exact=True)
        assert_frame_equal(
            _contributions(batched), _contributions(whole), check_exact=False, rel_tol=1e-12
        )
        assert_frame_equal(batched.report, whole.report, check_exact=False, rel_tol=1e-12)
    # The contributions against their definition: Σ w·p·(log p − log q) / Σ w, by class.
    log_p = scipy.special.log_softmax(z, axis=1)
    p = np.eye(6)[label] if truth == "hard" else np.exp(log_p)
    w = labels.get_column("w").to_numpy()
    got = _contributions(whole).filter(pl.col("slice") == "ALL")
    for model in MODELS:
        terms = scipy.special.rel_entr(p, np.exp(scipy.special.log_softmax(q[model], axis=1)))
        want = (w[:, None] * terms).sum(axis=0) / w.sum()
        have = got.filter(pl.col("model") == model).get_column("contribution").to_numpy()
        np.testing.assert_allclose(have, want, rtol=1e-9)


@pytest.mark.parametrize("layout", ["wide", "array"])
def test_a_softmax_that_underflows_to_zero_still_has_support_there(layout: str) -> None:
    # Truth (1/2, 1/2, 0); Q's third logit is 800 below the others: q = e^-800/(2 + e^-800), 0.0 in
    # Float64 but above 0, so D(Q‖P) = +inf. A third logit of −inf is q = 0 exactly: D(Q‖P) = 0.
    p = np.array([[0.5, 0.5, 0.0]] * 2)
    z = np.array([[0.0, 0.0, -800.0], [0.0, 0.0, -math.inf]])
    if layout == "wide":
        labels = pl.DataFrame({"id": [0, 1]} | {f"prob_{k}": p[:, k] for k in range(3)})
        predictions = pl.DataFrame(
            {"id": [0, 1], "model": ["m", "m"]} | {f"logit_{k}": z[:, k] for k in range(3)}
        )
    else:
        labels = pl.DataFrame({"id": [0, 1]}).with_columns(_array(p, "prob", pl.Float64))
        predictions = pl.DataFrame({"id": [0, 1], "model": ["m", "m"]}).with_columns(
            _array(z, "logit", pl.Float64)
        )
    rows = _rows(klrank.evaluate(labels, predictions, base="e", **QUIET))
    assert rows.get_column("reverse_kl").to_list() == [math.inf, 0.0]
    assert rows.get_column("kl").to_list() == [0.0, 0.0]
    # And the other way round: truth from logits that underflow is above 0 there, so D(Q‖P) of
    # a Q with mass on that class is finite: q·(ln q − ln p) with ln p = −800 − ln 2 (1 + e^-800).
    truth = pl.DataFrame({"id": [0]}).with_columns(_array(z[:1], "logit", pl.Float64))
    q = pl.DataFrame({"id": [0], "model": ["m"]}).with_columns(
        _array(np.array([[0.25, 0.25, 0.5]]), "prob", pl.Float64)
    )
    reverse = _rows(klrank.evaluate(truth, q, base="e", **QUIET)).get_column("reverse_kl")[0]
    log_p = np.array([-math.log(2), -math.log(2), -800 - math.log(2)])
    want = float(np.sum(np.array([0.25, 0.25, 0.5]) * (np.log([0.25, 0.25, 0.5]) - log_p)))
    assert reverse == pytest.approx(want, rel=1e-12)
