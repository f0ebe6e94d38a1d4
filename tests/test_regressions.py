"""Regressions found by review, each named after what broke."""

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_helpers import expect, klrank, write
from helpers import random_distributions, run_job

from pipeline import io


def test_null_id_in_a_joined_model_used_to_pass_validation(tmp_path: Path) -> None:
    labels = pl.DataFrame({"id": [1, 2, 3], "prob_a": [0.5, 1.0, 0.0], "prob_b": [0.5, 0.0, 1.0]})
    predictions = pl.DataFrame(
        {
            "id": [3, 1, 2, None],  # shuffled, so the model is joined; the null id matched nothing
            "model": ["m"] * 4,
            "prob_a": [0.5, 0.5, 0.5, 7.0],
            "prob_b": [0.5, 0.5, 0.5, math.nan],
        }
    )
    result = klrank(
        "run",
        "--labels", write(labels, tmp_path / "labels.parquet"),
        "--predictions", write(predictions, tmp_path / "predictions.parquet"),
        "--out", tmp_path / "out",
    )  # fmt: skip
    expect(result, 1)
    assert "predictions column 'id' model 'm': null or NaN values [not_nullable]" in result.stderr
    assert "[in_range(0.0, 1.0)]" in result.stderr


def test_glob_used_to_read_underscore_folders(tmp_path: Path) -> None:
    for folder in ("model=a", "_temporary/model=b", ".hidden/model=c"):
        (tmp_path / folder).mkdir(parents=True)
        pl.DataFrame({"id": [1]}).write_parquet(tmp_path / folder / "part-0.parquet")
    (tmp_path / "model=a" / "notes.txt").write_text("not parquet")
    scanned = io.scan_parquet(str(tmp_path / "**" / "*"))
    assert scanned.frame.collect().get_column("model").to_list() == ["a"]


def test_float32_arrays_used_to_fail_row_sums_summed_in_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    p = random_distributions(rng, 200, 3000).astype(np.float32)
    # Float32 rows that sum to 1 within 1e-6 only when added up in Float64
    assert np.abs(p.astype(np.float64).sum(axis=1) - 1).max() < 1e-6
    array = pl.Series("prob", p.tolist(), dtype=pl.Array(pl.Float32, 3000))
    labels = pl.DataFrame({"id": np.arange(200)}).with_columns(array)
    predictions = labels.with_columns(model=pl.lit("m"))
    summary, _ = run_job(tmp_path, labels, predictions)
    assert summary.report.get_column("mean_kl").to_list() == [0.0]


def test_uint64_ids_above_int64_used_to_crash(tmp_path: Path) -> None:
    ids = pl.Series("id", [2**64 - 1, 2**63, 5], dtype=pl.UInt64)
    labels = pl.DataFrame({"id": ids, "prob_a": [0.5, 1.0, 0.0], "prob_b": [0.5, 0.0, 1.0]})
    predictions = labels.reverse().with_columns(model=pl.lit("m"))  # joined
    summary, out = run_job(tmp_path, labels, predictions)
    assert summary.manifest["alignment"] == {"m": "joined"}
    assert pl.read_parquet(out / "rows.parquet").get_column("kl").to_list() == [0.0, 0.0, 0.0]


def test_slicing_by_the_hard_label_used_to_crash(tmp_path: Path) -> None:
    labels = pl.DataFrame({"id": [1, 2, 3, 4], "label": ["a", "b", "a", "b"]})
    predictions = pl.DataFrame(
        {"id": [1, 2, 3, 4], "model": ["m"] * 4, "prob_a": [0.5] * 4, "prob_b": [0.5] * 4}
    )
    summary, _ = run_job(tmp_path, labels, predictions, inputs={"slice_by": ("label",)})
    assert sorted(summary.report.get_column("slice")) == ["ALL", "label=a", "label=b"]


@pytest.mark.parametrize("dtype", [pl.List(pl.Int64), pl.Array(pl.Int64, 1)])
def test_list_slice_column_used_to_crash_with_exit_70(tmp_path: Path, dtype: pl.DataType) -> None:
    labels = pl.DataFrame(
        {
            "id": [1, 2],
            "s": pl.Series([[1], [2]], dtype=dtype),
            "prob_a": [1.0, 0.0],
            "prob_b": [0.0, 1.0],
        }
    )
    predictions = labels.select("id", "prob_a", "prob_b").with_columns(model=pl.lit("m"))
    result = klrank(
        "run",
        "--labels", write(labels, tmp_path / "labels.parquet"),
        "--predictions", write(predictions, tmp_path / "predictions.parquet"),
        "--out", tmp_path / "out",
        "--slice-by", "s",
    )  # fmt: skip
    expect(result, 2)
    assert "a list column cannot name a slice" in result.stderr
