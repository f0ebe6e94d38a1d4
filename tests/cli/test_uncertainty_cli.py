"""--weight-col, --cluster-by and --expect-beats-prior through the command line (in-process).

The numbers are checked in depth in tests/pipeline/test_uncertainty.py; here, that the options
reach the run (statsmodels' CR1 error of a weighted mean in report.parquet), the gate's exit
code and manifest entry, and how bad weights, cluster keys and column names exit.
"""

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from cli_helpers import expect, inputs, invoke

CLASSES = ("a", "b", "c")
N = 60


def _labels(rng: np.random.Generator) -> pl.DataFrame:
    """Hard labels, skewed (80% a), of N rows in 12 documents, with weights (some 0)."""
    label = rng.choice(list(CLASSES), N, p=[0.8, 0.1, 0.1])
    w = rng.uniform(0.5, 2.0, N)
    w[::7] = 0.0
    return pl.DataFrame({"id": np.arange(N), "label": label, "doc": np.arange(N) % 12, "w": w})


def _predictions(labels: pl.DataFrame, models: dict[str, float | None]) -> pl.DataFrame:
    """Per model: ``share`` on the true label and the rest split evenly; None: uniform."""
    label = labels.get_column("label").to_numpy()
    frames = []
    for name, share in models.items():
        columns = {
            f"prob_{c}": np.full(N, 1 / 3)
            if share is None
            else np.where(label == c, share, (1 - share) / 2)
            for c in CLASSES
        }
        frames.append(pl.DataFrame({"model": name, "id": labels.get_column("id"), **columns}))
    return pl.concat(frames)


def _manifest(out: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return document


def test_run_writes_cluster_robust_weighted_errors(tmp_path: Path) -> None:
    labels = _labels(np.random.default_rng(1))
    predictions = _predictions(labels, {"good": 0.7, "better": 0.75})
    out = tmp_path / "out"
    result = invoke(
        "run", *inputs(tmp_path, labels, predictions), "--out", out,
        "--weight-col", "w", "--cluster-by", "doc", "--base", "e",
    )  # fmt: skip
    expect(result, 0)
    report = pl.read_parquet(out / "report.parquet").filter(pl.col("slice") == "ALL")
    w, doc = labels.get_column("w").to_numpy(), labels.get_column("doc").to_numpy()
    label = labels.get_column("label").to_numpy()
    keep = w > 0
    for row in report.iter_rows(named=True):
        share = {"good": 0.7, "better": 0.75}[row["model"]]
        kl = np.full(N, -math.log(share))
        prior_kl = -np.log([np.average(label == x, weights=w) for x in label])
        assert row["n_clusters"] == 12
        fit = sm.WLS((kl - prior_kl)[keep], np.ones(keep.sum()), weights=w[keep]).fit(
            cov_type="cluster", cov_kwds={"groups": doc[keep]}, use_t=True
        )
        assert row["delta_vs_prior"] == pytest.approx(fit.params[0], rel=1e-9)
        assert row["delta_vs_prior_sem"] == pytest.approx(fit.bse[0], rel=1e-9)
        assert row["p_value_vs_prior"] == pytest.approx(fit.pvalues[0], rel=1e-9)
    options = _manifest(out)["options"]
    assert (options["weight_col"], options["cluster_by"]) == ("w", "doc")


def test_a_model_no_better_than_the_prior_fails_the_gate_with_exit_3(tmp_path: Path) -> None:
    # 80% of the labels are a: the uniform model's log2(3) bits a row lose to the prior's
    # H(P̄) ≈ 0.9 bits; "good" (0.9 on the truth) beats it.
    labels = _labels(np.random.default_rng(2))
    predictions = _predictions(labels, {"good": 0.9, "uniform": None})
    out = tmp_path / "out"
    result = invoke(
        "run", *inputs(tmp_path, labels, predictions), "--out", out, "--expect-beats-prior"
    )
    expect(result, 3)
    gates = _manifest(out)["gates"]
    assert {(g["gate"], g["model"], g["outcome"]) for g in gates} == {
        ("expect_beats_prior", "good", "passed"),
        ("expect_beats_prior", "uniform", "failed"),
    }
    assert _manifest(out)["status"] == "gate_failed"
    assert "model 'uniform'" in result.stderr and "does not beat the prior" in result.stderr
    report = pl.read_parquet(out / "report.parquet").filter(pl.col("slice") == "ALL")
    uniform = report.filter(pl.col("model") == "uniform").row(0, named=True)
    assert uniform["delta_vs_prior"] > 0
    assert uniform["mean_kl"] == pytest.approx(math.log2(3), rel=1e-12)


@pytest.mark.parametrize("clustered", [False, True], ids=["rows", "clusters"])
def test_models_that_all_beat_the_prior_pass_the_gate(tmp_path: Path, clustered: bool) -> None:
    labels = _labels(np.random.default_rng(3))
    predictions = _predictions(labels, {"good": 0.9, "fair": 0.85})
    out = tmp_path / "out"
    result = invoke(
        "run", *inputs(tmp_path, labels, predictions), "--out", out, "--expect-beats-prior",
        "--weight-col", "w", *(["--cluster-by", "doc"] if clustered else []),
    )  # fmt: skip
    expect(result, 0)
    gates = _manifest(out)["gates"]
    assert sorted((g["gate"], g["model"], g["outcome"]) for g in gates) == [
        ("expect_beats_prior", "fair", "passed"),
        ("expect_beats_prior", "good", "passed"),
    ]


def test_without_the_gate_the_manifest_lists_no_prior_gate(tmp_path: Path) -> None:
    labels = _labels(np.random.default_rng(4))
    predictions = _predictions(labels, {"uniform": None})
    out = tmp_path / "out"
    expect(invoke("run", *inputs(tmp_path, labels, predictions), "--out", out), 0)
    assert _manifest(out)["gates"] == []


@pytest.mark.parametrize(
    ("change", "check", "column"),
    [
        ({"w": -1.0}, "weight_finite_non_negative", "w"),
        ({"w": math.inf}, "weight_finite_non_negative", "w"),
        ({"w": None}, "not_nullable", "w"),
        ({"doc": None}, "not_nullable", "doc"),
    ],
    ids=["negative-weight", "infinite-weight", "null-weight", "null-cluster"],
)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_bad_weights_and_cluster_keys_exit_1_naming_the_check_and_row(
    tmp_path: Path, command: str, change: dict[str, float | None], check: str, column: str
) -> None:
    labels = _labels(np.random.default_rng(5))
    [(name, value)] = change.items()
    values = labels.get_column(name).to_list()
    values[4] = value
    labels = labels.with_columns(pl.Series(name, values, dtype=labels.schema[name]))
    predictions = _predictions(labels, {"good": 0.9})
    failures = tmp_path / "failures.parquet"
    result = invoke(
        command, *inputs(tmp_path, labels, predictions), *(["--out", tmp_path / "out"] if command == "run" else []),
        "--weight-col", "w", "--cluster-by", "doc", "--failures", failures,
    )  # fmt: skip
    expect(result, 1)
    assert f"labels column '{column}'" in result.stderr and f"[{check}]" in result.stderr
    cases = pl.read_parquet(failures).select("check", "column", "row", "id").rows()
    assert (check, column, 4, "4") in cases


def test_run_refuses_weights_that_sum_to_zero_in_a_slice(tmp_path: Path) -> None:
    labels = _labels(np.random.default_rng(6)).with_columns(
        w=pl.when(pl.col("label") == "b").then(0.0).otherwise(pl.col("w"))
    )
    predictions = _predictions(labels, {"good": 0.9})
    result = invoke(
        "run", *inputs(tmp_path, labels, predictions), "--out", tmp_path / "out",
        "--weight-col", "w", "--slice-by", "label",
    )  # fmt: skip
    expect(result, 1)
    assert "[weight_sum_positive]" in result.stderr and "slice label=b" in result.stderr
    assert not (tmp_path / "out" / "report.parquet").exists()


def test_validate_refuses_weights_that_sum_to_zero_in_a_slice(tmp_path: Path) -> None:
    labels = _labels(np.random.default_rng(6)).with_columns(
        w=pl.when(pl.col("label") == "b").then(0.0).otherwise(pl.col("w"))
    )
    predictions = _predictions(labels, {"good": 0.9})
    result = invoke(
        "validate", *inputs(tmp_path, labels, predictions), "--weight-col", "w",
        "--slice-by", "label",
    )  # fmt: skip
    expect(result, 1)
    assert "[weight_sum_positive]" in result.stderr


@pytest.mark.parametrize("option", ["--weight-col", "--cluster-by"])
@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_missing_column_is_a_usage_error(tmp_path: Path, command: str, option: str) -> None:
    labels = _labels(np.random.default_rng(7))
    predictions = _predictions(labels, {"good": 0.9})
    out = ["--out", tmp_path / "out"] if command == "run" else []
    result = invoke(command, *inputs(tmp_path, labels, predictions), *out, option, "nope")
    expect(result, 2)
    assert f"{option} 'nope': no such column in the labels" in result.stderr
