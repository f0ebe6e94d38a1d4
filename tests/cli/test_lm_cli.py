"""klrank run and validate on a language model's layout: base logits and the next token as labels,
``--batch-bytes`` down to one row a batch (in-process)."""

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.special
from cli_helpers import expect, inputs, invoke

K, N = 50, 12


def _lm_inputs() -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (N, K)).astype(np.float32)
    q = (z + rng.normal(0, 0.5, (N, K))).astype(np.float32)
    label = rng.integers(0, K, N)
    as_array = pl.Array(pl.Float32, K)
    labels = pl.DataFrame(
        {"id": np.arange(N), "label": label, "logit": pl.Series(z, dtype=as_array)}
    )
    predictions = pl.DataFrame(
        {"id": np.arange(N), "model": ["q4"] * N, "logit": pl.Series(q, dtype=as_array)}
    )
    return labels, predictions, z.astype(np.float64), q.astype(np.float64), label


@pytest.mark.parametrize("batch_bytes", [K * 8, 10**9])
def test_run_on_base_logits_and_tokens_publishes_the_token_measures(
    tmp_path: Path, batch_bytes: int
) -> None:
    labels, predictions, z, q, label = _lm_inputs()
    out = tmp_path / "out"
    args = inputs(tmp_path, labels, predictions)
    result = invoke(
        "run", *args, "--out", out, "--base", "e", "--batch-bytes", str(batch_bytes), "--json"
    )
    expect(result, 0)
    assert json.loads(result.stdout)["options"]["batch_bytes"] == batch_bytes
    rows = pl.read_parquet(out / "rows.parquet").sort("id")
    assert rows.columns == [
        "id", "model", "kl", "reverse_kl", "js", "cross_entropy", "entropy", "top1_match",
        "nll", "delta_p",
    ]  # fmt: skip
    log_p, log_q = scipy.special.log_softmax(z, axis=1), scipy.special.log_softmax(q, axis=1)
    at = np.arange(N), label
    np.testing.assert_allclose(rows.get_column("nll").to_numpy(), -log_q[at], rtol=1e-12)
    delta = np.exp(log_q[at]) - np.exp(log_p[at])
    np.testing.assert_allclose(rows.get_column("delta_p").to_numpy(), delta, rtol=1e-9, atol=1e-15)
    kl = scipy.special.rel_entr(np.exp(log_p), np.exp(log_q)).sum(axis=1)
    np.testing.assert_allclose(rows.get_column("kl").to_numpy(), kl, rtol=1e-9)
    worst = pl.read_parquet(out / "worst_rows.parquet")
    assert {"nll", "delta_p"} <= set(worst.columns)


def test_validate_takes_batch_bytes_and_reports_logit_labels(tmp_path: Path) -> None:
    labels, predictions, *_ = _lm_inputs()
    args = inputs(tmp_path, labels, predictions)
    result = invoke("validate", *args, "--batch-bytes", "1", "--json")
    expect(result, 0)
    assert json.loads(result.stdout)["truth"] == "soft"
    bad = labels.with_columns(
        pl.Series("logit", np.full((N, K), math.inf), dtype=pl.Array(pl.Float32, K))
    )
    failed = invoke("validate", *inputs(tmp_path / "bad", bad, predictions))
    expect(failed, 1)
    assert "labels column 'logit'" in failed.stderr and "[finite]" in failed.stderr
    refused = invoke("validate", *args, "--batch-bytes", "0")
    expect(refused, 2)
