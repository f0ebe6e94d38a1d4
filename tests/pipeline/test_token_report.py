"""The report's token columns (schema version 4) against independent computations.

The oracles: numpy of each definition (nll = −ln q(token), Δp = q(token) − p(token), PPL =
exp(mean nll), ...), statsmodels' WLS on a constant for every standard error (HC1, or CR1 by
document), and ``benchmarks/llamacpp_numpy.py``, a numpy transcription of llama.cpp's
``--kl-divergence`` statistics, for the unweighted, unclustered case. The inputs have ties for
the top token, Float16 logits, logits of −inf, exact zeros, a single-token document and
infinite nll.
"""

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import klrank
import numpy as np
import polars as pl
import pytest
import scipy.special
import statsmodels.api as sm
from klrank.pipeline.aggregate import TOKEN_STATS

MODELS = ("m0", "m1", "m2")
RELATIVE = 1e-9
QUIET: dict[str, Any] = {"html": False, "bootstrap": 0, "worst": 0, "rows": False}


def _llamacpp() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "llamacpp_numpy.py"
    spec = importlib.util.spec_from_file_location("llamacpp_numpy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _array(values: np.ndarray, name: str, dtype: pl.DataType) -> pl.Series:
    return pl.Series(name, values).cast(pl.Array(dtype, values.shape[1]))


class Tokens:
    """Random language-model-like inputs: base logits, the next token drawn from the base, three
    candidates with noise of increasing size, documents (one of a single token) and weights.
    ``z`` and ``logits`` hold the values as the input dtype stores them, in Float64."""

    def __init__(
        self,
        seed: int,
        n: int = 90,
        k: int = 12,
        dtype: pl.DataType = pl.Float32,
        masked: bool = False,
    ):
        rng = np.random.default_rng(seed)
        as_numpy = {pl.Float16: np.float16, pl.Float32: np.float32, pl.Float64: np.float64}[dtype]
        z = (rng.standard_normal((n, k)) * 2.5).astype(as_numpy)
        if masked:  # logits of −inf: masked tokens, probability 0, never the top one
            z[(rng.random((n, k)) < 0.2) & (z < z.max(axis=1, keepdims=True))] = -np.inf
        z[0, :2] = z[0].max() + 1  # a tie for the top token
        self.z = z.astype(np.float64)
        log_p = scipy.special.log_softmax(self.z, axis=1)
        self.label = np.array([rng.choice(k, p=np.exp(row) / np.exp(row).sum()) for row in log_p])
        self.logits = {
            m: (z + rng.standard_normal((n, k)) * s).astype(as_numpy).astype(np.float64)
            for m, s in zip(MODELS, (0.1, 0.5, 1.5), strict=True)
        }
        if masked:  # the candidates mask other tokens too, but never the one that came next
            for values in self.logits.values():
                hidden = rng.random((n, k)) < 0.1
                hidden[np.arange(n), self.label] = False
                values[hidden] = -np.inf
        self.doc = np.concatenate([[0], rng.integers(1, 12, n - 1)])  # doc 0: one token
        self.region = rng.choice(["east", "west"], n)
        self.w = rng.integers(0, 4, n).astype(np.float64)
        self.w[0] = 2.0  # the single-token document counts
        self.labels = pl.DataFrame(
            {
                "id": np.arange(n),
                "label": self.label,
                "doc": self.doc,
                "region": self.region,
                "w": self.w,
            }
        ).with_columns(_array(z, "logit", dtype))
        self.predictions = pl.concat(
            pl.DataFrame({"id": np.arange(n), "model": [m] * n}).with_columns(
                _array(self.logits[m].astype(as_numpy), "logit", dtype)
            )
            for m in MODELS
        )

    def per_token(self, model: str) -> dict[str, np.ndarray]:
        """nll of Q and of P at the token (nats) and Δp, from scipy's log-softmax."""
        at = np.arange(len(self.label))
        log_p = scipy.special.log_softmax(self.z, axis=1)[at, self.label]
        log_q = scipy.special.log_softmax(self.logits[model], axis=1)[at, self.label]
        return {"nll": -log_q, "nll_p": -log_p, "delta_p": np.exp(log_q) - np.exp(log_p)}


def _row(report: pl.DataFrame, slice_: str, model: str) -> dict[str, Any]:
    rows = report.filter((pl.col("slice") == slice_) & (pl.col("model") == model))
    assert rows.height == 1, (slice_, model)
    return rows.row(0, named=True)


def _close(got: float | None, want: float, what: object) -> None:
    assert got is not None, what
    assert got == pytest.approx(want, rel=RELATIVE, abs=1e-15), what


def _fit(y: np.ndarray, w: np.ndarray, groups: np.ndarray | None) -> tuple[float, float]:
    """statsmodels' weighted mean of ``y`` and its HC1 (no groups) or CR1 error."""
    keep = w > 0
    model = sm.WLS(y[keep], np.ones(keep.sum()), weights=w[keep])
    if groups is None:
        fit = model.fit(cov_type="HC1", use_t=True)
    else:
        fit = model.fit(cov_type="cluster", cov_kwds={"groups": groups[keep]}, use_t=True)
    return float(fit.params[0]), float(fit.bse[0])


@pytest.mark.parametrize("masked", [False, True], ids=["finite", "minus-inf"])
@pytest.mark.parametrize("dtype", [pl.Float16, pl.Float32, pl.Float64])
@pytest.mark.parametrize("base", ["e", "2"])
def test_the_token_columns_are_llama_cpps_statistics(
    dtype: pl.DataType, base: str, masked: bool
) -> None:
    data = Tokens(1, dtype=dtype, masked=masked)
    report = klrank.evaluate(data.labels, data.predictions, base=base, **QUIET).report
    llamacpp = _llamacpp()
    unit = 1.0 if base == "e" else math.log(2)
    for model in MODELS:
        x = data.per_token(model)
        seen = llamacpp.Tokens(
            kl=[np.zeros(1)],  # not compared here: the report's KL has its own tests
            nll_q=[x["nll"]],
            nll_p=[x["nll_p"]],
            delta_p=[x["delta_p"]],
            same_top=[np.zeros(1, dtype=bool)],
        )
        want = llamacpp.statistics(seen)
        row = _row(report, "ALL", model)
        _close(row["mean_nll"] * unit, float(np.mean(x["nll"])), model)
        _close(row["mean_nll_sem"] * unit, float(np.std(x["nll"], ddof=1) / math.sqrt(90)), model)
        for column, theirs in [
            ("ppl", "ppl"),
            ("ppl_sem", "ppl_se"),
            ("ln_ppl_ratio", "ln_ppl_ratio"),
            ("ln_ppl_ratio_sem", "ln_ppl_ratio_se"),
            ("ppl_ratio", "ppl_ratio"),
            ("mean_delta_p", "mean_delta_p"),
            ("mean_delta_p_sem", "mean_delta_p_se"),
            ("rms_delta_p", "rms_delta_p"),
            ("rms_delta_p_sem", "rms_delta_p_se"),
        ]:
            _close(row[column], want[theirs], (model, column))
        # The definitions once more, without llama.cpp's code.
        _close(row["ppl"], math.exp(np.mean(x["nll"])), model)
        _close(row["ppl_ratio"], math.exp(np.mean(x["nll"] - x["nll_p"])), model)
        _close(row["rms_delta_p"], math.sqrt(np.mean(x["delta_p"] ** 2)), model)


@pytest.mark.parametrize(
    ("weighted", "clustered"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["plain", "weighted", "clustered", "weighted-clustered"],
)
def test_every_token_error_is_what_statsmodels_gives_in_every_slice(
    weighted: bool, clustered: bool
) -> None:
    data = Tokens(2, dtype=pl.Float16)
    report = klrank.evaluate(
        data.labels,
        data.predictions,
        base="e",
        slice_by=["region"],
        weight_col="w" if weighted else None,
        cluster_by="doc" if clustered else None,
        batch_bytes=2_000,  # several batches: the states merge across them
        **QUIET,
    ).report
    w = data.w if weighted else np.ones_like(data.w)
    slices = {"ALL": np.ones(len(w), dtype=bool)} | {
        f"region={r}": data.region == r for r in ("east", "west")
    }
    for name, rows in slices.items():
        sw, groups = w[rows], data.doc[rows] if clustered else None
        for model in MODELS:
            x = {k: v[rows] for k, v in data.per_token(model).items()}
            row, what = _row(report, name, model), (name, model)
            nll, nll_sem = _fit(x["nll"], sw, groups)
            _close(row["mean_nll"], nll, what)
            _close(row["mean_nll_sem"], nll_sem, what)
            _close(row["ppl"], math.exp(nll), what)
            _close(row["ppl_sem"], math.exp(nll) * nll_sem, what)
            ratio, ratio_sem = _fit(x["nll"] - x["nll_p"], sw, groups)
            _close(row["ln_ppl_ratio"], ratio, what)
            _close(row["ln_ppl_ratio_sem"], ratio_sem, what)
            _close(row["ppl_ratio"], math.exp(ratio), what)
            delta, delta_sem = _fit(x["delta_p"], sw, groups)
            _close(row["mean_delta_p"], delta, what)
            _close(row["mean_delta_p_sem"], delta_sem, what)
            square, square_sem = _fit(x["delta_p"] ** 2, sw, groups)
            _close(row["rms_delta_p"], math.sqrt(square), what)
            _close(row["rms_delta_p_sem"], square_sem / (2 * math.sqrt(square)), what)


def test_a_zero_probability_at_the_token_makes_nll_and_ppl_infinite_without_errors() -> None:
    n, k = 20, 5
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(k), n)
    q = rng.dirichlet(np.ones(k), n)
    label = rng.integers(0, k, n)
    p[0] = q[0] = 0.0
    p[0, (label[0] + 1) % k] = q[0, (label[0] + 1) % k] = 1.0  # neither gives the token a chance
    q[1, label[1]] = 0.0  # m gives it none: nll = +inf
    q[1] /= q[1].sum()
    labels = pl.DataFrame({"id": np.arange(n), "label": label}).with_columns(
        _array(p, "prob", pl.Float64)
    )
    predictions = pl.concat(
        [
            pl.DataFrame({"id": np.arange(n), "model": ["m"] * n}).with_columns(
                _array(q, "prob", pl.Float64)
            ),
            pl.DataFrame({"id": np.arange(n)[1:], "model": ["same"] * (n - 1)}).with_columns(
                _array(p[1:], "prob", pl.Float64)
            ),
        ]
    )
    report = klrank.evaluate(labels, predictions.filter(pl.col("model") == "m"), **QUIET).report
    row = _row(report, "ALL", "m")
    assert row["mean_nll"] == math.inf and row["ppl"] == math.inf
    assert row["mean_nll_sem"] is None and row["ppl_sem"] is None
    # Row 0: ln p − ln q = −inf − (−inf), undefined: so is the mean, not a number.
    assert row["ln_ppl_ratio"] is None and row["ppl_ratio"] is None
    at = np.arange(n)
    delta = q[at, label] - p[at, label]
    _close(row["mean_delta_p"], float(np.mean(delta)), "delta_p")
    _close(row["rms_delta_p"], math.sqrt(np.mean(delta**2)), "rms")
    # The base itself as a candidate, on the rows where the token has a chance: ratio exactly 1.
    same = klrank.evaluate(
        labels.slice(1), predictions.filter(pl.col("model") == "same"), **QUIET
    ).report
    row = _row(same, "ALL", "same")
    assert (row["ln_ppl_ratio"], row["ppl_ratio"], row["mean_delta_p"], row["rms_delta_p"]) == (
        0.0,
        1.0,
        0.0,
        0.0,
    )
    assert row["ln_ppl_ratio_sem"] == 0.0 and row["rms_delta_p_sem"] is None  # 0/0: undefined
    _close(row["ppl"], math.exp(-np.mean(np.log(p[at, label][1:]))), "ppl of the base")


def test_without_a_token_every_token_column_is_null() -> None:
    data = Tokens(4)
    report = klrank.evaluate(data.labels.drop("label"), data.predictions, **QUIET).report
    assert report.select(TOKEN_STATS).null_count().row(0) == (report.height,) * len(TOKEN_STATS)
    hard = klrank.evaluate(data.labels.drop("logit"), data.predictions, **QUIET).report
    assert hard.select(TOKEN_STATS).null_count().row(0) == (hard.height,) * len(TOKEN_STATS)


def test_the_summary_shows_the_token_measures_computed_by_hand() -> None:
    # Truth (1/2, 1/2) on both rows, the token is class 0; q(token) is 1/2, then 1/4.
    labels = pl.DataFrame(
        {"id": [1, 2], "label": [0, 0], "prob_0": [0.5, 0.5], "prob_1": [0.5, 0.5]}
    )
    predictions = pl.DataFrame(
        {"id": [1, 2], "model": ["m", "m"], "prob_0": [0.5, 0.25], "prob_1": [0.5, 0.75]}
    )
    evaluation = klrank.evaluate(labels, predictions, base="2", **QUIET)
    row = _row(evaluation.report, "ALL", "m")
    # nll 1 and 2 bits; PPL = 2^1.5; PPL(P) = 2; Δp = 0 and -1/4.
    _close(row["mean_nll"], 1.5, "mean_nll")
    _close(row["ppl"], 2**1.5, "ppl")
    _close(row["ppl_ratio"], 2**0.5, "ppl_ratio")
    _close(row["ln_ppl_ratio"], 0.5 * math.log(2), "ln_ppl_ratio")
    _close(row["mean_delta_p"], -0.125, "mean_delta_p")
    _close(row["rms_delta_p"], math.sqrt(0.25**2 / 2), "rms_delta_p")
    summary = evaluation.summary()
    table = summary[summary.index("## The next token") :]
    # Errors by hand: s/√2 of (1, 2) bits, of (0, ln 2) nats, of (0, −1/4), of (0, 1/16) / (2 RMS).
    assert (
        "| 1 | m | 1.5 ± 0.5 | 2.828 ± 0.98 | 1.414 | 0.3466 ± 0.35 | -0.125 ± 0.12 | 0.1768 ± 0.088 |"
        in table
    )
    hard = klrank.evaluate(labels.drop("prob_0", "prob_1"), predictions, **QUIET)
    assert "The next token" not in hard.summary()


def test_the_page_shows_the_token_measures_computed_by_hand(tmp_path: Path) -> None:
    labels = pl.DataFrame(
        {"id": [1, 2], "label": [0, 0], "prob_0": [0.5, 0.5], "prob_1": [0.5, 0.5]}
    )
    predictions = pl.DataFrame(
        {"id": [1, 2], "model": ["m", "m"], "prob_0": [0.5, 0.25], "prob_1": [0.5, 0.75]}
    )
    evaluation = klrank.evaluate(labels, predictions, base="2", bootstrap=0, worst=0)
    evaluation.publish(tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    table = page[page.index("<h2 id='next-token'>") : page.index("<h2 id='mean'>")]
    # The numbers of the summary's test: 1.5 bits, PPL 2^1.5, ratio √2, Δp −1/8, RMS √(1/32).
    cells = ["1.5 ± 0.5", "2.828 ± 0.98", "1.414", "0.3466 ± 0.35", "-0.125 ± 0.12", "0.1768"]
    assert all(f"<td>{c}" in table for c in cells), table
    hard = tmp_path / "hard"
    klrank.evaluate(labels.drop("prob_0", "prob_1"), predictions, bootstrap=0).publish(hard)
    assert "next-token" not in (hard / "report.html").read_text()
