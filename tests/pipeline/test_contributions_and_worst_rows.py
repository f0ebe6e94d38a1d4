"""class_contributions.parquet and worst_rows.parquet through the CLI (in-process), against
independent oracles: scipy's rel_entr per class for the contributions, a full sort of
rows.parquet for the worst rows. Both layouts (one column per class, one array column) and
several batches."""

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.special
from cli_helpers import (
    CLASSES,
    PREDICTED,
    TRUTH,
    expect,
    inputs,
    invoke,
    prob_predictions,
    set_value,
    soft_labels,
)
from helpers import random_distributions, run_job
from klrank.engines import local

CONTRIBUTION_COLUMNS = ["slice", "model", "class", "contribution", "mean_p", "mean_q", "unit"]
WORST_COLUMNS = [
    "model",
    "rank",
    "id",
    "kl",
    "reverse_kl",
    "js",
    "cross_entropy",
    "entropy",
    "top1_match",
    "row",
]


def _with_infinite_term(predictions: pl.DataFrame) -> pl.DataFrame:
    # Model n gives class a probability 0 on id 3, whose truth has p_a = 0.1: an infinite term.
    predictions = set_value(predictions, "prob_a", 0.0, model="n", id=3)
    return set_value(predictions, "prob_c", 0.7, model="n", id=3)


def _as_arrays(frame: pl.DataFrame) -> pl.DataFrame:
    columns = [f"prob_{c}" for c in CLASSES]
    return frame.with_columns(pl.concat_arr(columns).alias("prob")).drop(columns)


def _oracle_contributions(predictions: pl.DataFrame) -> dict[tuple[str, str], float]:
    """(model, class) -> Σ_rows rel_entr(p_c, q_c) / n, in bits, from the literal inputs."""
    ids = list(TRUTH)
    p = np.array([TRUTH[i] for i in ids])
    out = {}
    for (model,), rows in predictions.group_by("model"):
        by_id = {r["id"]: [r[f"prob_{c}"] for c in CLASSES] for r in rows.iter_rows(named=True)}
        q = np.array([by_id[i] for i in ids])
        terms = scipy.special.rel_entr(p, q).sum(axis=0) / len(ids) / math.log(2)
        out |= {(str(model), c): float(t) for c, t in zip(CLASSES, terms, strict=True)}
    return out


@pytest.mark.parametrize("layout", ["columns", "arrays"])
def test_class_contributions_match_scipy_and_add_up_to_mean_kl(tmp_path: Path, layout: str) -> None:
    labels, predictions = soft_labels(), _with_infinite_term(prob_predictions())
    expected = _oracle_contributions(predictions)
    extra: list[str] = []
    if layout == "arrays":
        labels, predictions = _as_arrays(labels), _as_arrays(predictions)
        extra = ["--classes", ",".join(CLASSES)]
    out = tmp_path / "out"
    result = invoke(
        "run",
        *inputs(tmp_path, labels, predictions),
        "--slice-by",
        "region",
        "--out",
        out,
        "--no-html",
        *extra,
    )
    expect(result, 0)
    contributions = pl.read_parquet(out / "class_contributions.parquet")
    assert contributions.columns == CONTRIBUTION_COLUMNS
    overall = contributions.filter(pl.col("slice") == "ALL")
    assert overall.height == len(expected)
    for row in overall.iter_rows(named=True):
        want = expected[(row["model"], row["class"])]
        if math.isinf(want):
            assert row["contribution"] == math.inf, row
        else:
            assert row["contribution"] == pytest.approx(want, rel=1e-12, abs=1e-15), row
    assert (overall.filter(pl.col("contribution") == math.inf).select("model", "class").rows()) == [
        ("n", "a")
    ]
    # Σ_c contribution = mean_kl for every slice and model (to rounding), inf included.
    report = pl.read_parquet(out / "report.parquet")
    sums = contributions.group_by("slice", "model").agg(pl.col("contribution").sum())
    joined = report.join(sums, on=["slice", "model"], how="left")
    assert joined.height == report.height == 3 * 2  # ALL, region=eu, region=us; two models
    for row in joined.iter_rows(named=True):
        if math.isinf(row["mean_kl"]):
            assert row["contribution"] == math.inf
        else:
            assert row["contribution"] == pytest.approx(row["mean_kl"], rel=1e-12, abs=1e-15)
    # The report's row order, classes in class order; mean P and Q are the class means.
    keys = contributions.select("slice", "model").unique(maintain_order=True)
    assert keys.rows() == report.select("slice", "model").rows()
    assert contributions.get_column("class").to_list() == list(CLASSES) * report.height
    m = overall.filter(pl.col("model") == "m")
    assert m.get_column("mean_q").to_list() == pytest.approx(
        np.mean([PREDICTED["m"][i] for i in TRUTH], axis=0).tolist(), rel=1e-12
    )
    assert set(contributions.get_column("unit")) == {"bits"}


def _tied_inputs(n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Labels whose ids are not in row order, truths repeating every 7 rows (so kl ties), and
    two models; model b's rows are shuffled, so it is aligned by a join."""
    rng = np.random.default_rng(8)
    pattern = random_distributions(rng, 7, 3, zero_fraction=0.2)
    p = pattern[np.arange(n) % 7]
    ids = rng.permutation(np.arange(10 * n))[:n]
    labels = pl.DataFrame(
        {"id": ids, "region": np.where(np.arange(n) % 2, "eu", "us")}
    ).with_columns(pl.Series(f"prob_{c}", p[:, k]) for k, c in enumerate(CLASSES))
    frames = []
    for model, zero_fraction in (("a", 0.0), ("b", 0.15)):
        q_pattern = random_distributions(rng, 7, 3, zero_fraction=zero_fraction)
        q = q_pattern[np.arange(n) % 7]
        frame = pl.DataFrame({"model": model, "id": ids}).with_columns(
            pl.Series(f"prob_{c}", q[:, k]) for k, c in enumerate(CLASSES)
        )
        frames.append(frame.sample(fraction=1.0, shuffle=True, seed=1) if model == "b" else frame)
    return labels, pl.concat(frames)


def _sorted_oracle(rows: pl.DataFrame, labels: pl.DataFrame, n: int) -> pl.DataFrame:
    """The n highest-KL rows per model by a full sort; ties by the label row order."""
    positions = labels.select("id").with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    return (
        rows.join(positions, on="id", how="left")
        .sort("model", "kl", "row", descending=[False, True, False])
        .group_by("model", maintain_order=True)
        .head(n)
    )


def test_worst_rows_equal_a_full_sort_of_rows_parquet(tmp_path: Path) -> None:
    labels, predictions = _tied_inputs(60)
    out = tmp_path / "out"
    result = invoke(
        "run",
        *inputs(tmp_path, labels, predictions),
        "--slice-by",
        "region",
        "--worst",
        "5",
        "--out",
        out,
        "--json",
    )
    expect(result, 0)
    worst = pl.read_parquet(out / "worst_rows.parquet")
    assert worst.columns == [*WORST_COLUMNS, "region"]
    expected = _sorted_oracle(pl.read_parquet(out / "rows.parquet"), labels, 5)
    assert worst.get_column("rank").to_list() == [1, 2, 3, 4, 5] * 2
    assert worst.drop("rank").rows() == expected.select(worst.drop("rank").columns).rows()
    tied = worst.filter(pl.col("model") == "a").get_column("kl")
    assert tied.n_unique() < tied.len(), "the data should make the top-5 of model a tie"
    assert np.isinf(worst.filter(pl.col("model") == "b").get_column("kl").to_numpy()).any()
    manifest = json.loads(result.stdout)
    assert {"class_contributions.parquet", "worst_rows.parquet", "report.html"} <= set(
        manifest["outputs"]
    )
    assert manifest["options"]["worst"] == 5


# worst=5: ~140 rows of a batch tie at the threshold (more than 4·5, selected by top_k);
# worst=worst: fewer than 4·50 do (sorted).
@pytest.mark.parametrize("worst", [5, 50])
def test_worst_rows_and_contributions_do_not_depend_on_the_batch_size(
    tmp_path: Path, worst: int
) -> None:
    labels, predictions = _tied_inputs(2500)  # 3 batches of 1000 rows below
    # One row of the last batch is model a's worst by far: it must survive the merge.
    spike = labels.row(2400, named=True)
    weakest = min(CLASSES, key=lambda c: spike[f"prob_{c}"])
    for c in CLASSES:
        value = 1.0 - 2e-9 if c == weakest else 1e-9
        predictions = set_value(predictions, f"prob_{c}", value, model="a", id=spike["id"])
    _, whole = run_job(
        tmp_path, labels, predictions, name="one-batch", worst=worst, write_html=False
    )
    thousand = {"batch_bytes": 1000 * len(CLASSES) * 8}
    assert local.batch_rows(len(CLASSES), **thousand) == 1000
    _, batched = run_job(
        tmp_path,
        labels,
        predictions,
        name="batched",
        worst=worst,
        write_html=False,
        inputs=thousand,
    )
    got = pl.read_parquet(batched / "worst_rows.parquet")
    assert got.height == 2 * worst
    assert got.rows() == pl.read_parquet(whole / "worst_rows.parquet").rows()
    expected = _sorted_oracle(pl.read_parquet(batched / "rows.parquet"), labels, worst)
    assert got.drop("rank").rows() == expected.select(got.drop("rank").columns).rows()
    assert got.filter(pl.col("model") == "a").row(0, named=True)["row"] == 2400
    one = pl.read_parquet(whole / "class_contributions.parquet")
    many = pl.read_parquet(batched / "class_contributions.parquet")
    assert (
        one.select("slice", "model", "class").rows()
        == many.select("slice", "model", "class").rows()
    )
    np.testing.assert_allclose(
        many.get_column("contribution").to_numpy(),
        one.get_column("contribution").to_numpy(),
        rtol=1e-12,
    )


def test_worst_zero_and_no_html_leave_those_files_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "run",
        *inputs(tmp_path, soft_labels(), prob_predictions()),
        "--out",
        out,
        "--worst",
        "0",
        "--no-html",
    )
    expect(result, 0)
    names = {p.name for p in out.iterdir()}
    assert "worst_rows.parquet" not in names and "report.html" not in names
    assert "class_contributions.parquet" in names
    outputs = json.loads((out / "manifest.json").read_text())["outputs"]
    assert "worst_rows.parquet" not in outputs and "report.html" not in outputs


def test_negative_worst_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(
        "run",
        "--labels",
        "x.parquet",
        "--predictions",
        "y.parquet",
        "--out",
        tmp_path,
        "--worst",
        "-1",
    )
    expect(result, 2)
    assert "--worst" in result.stderr


def test_slice_column_named_like_a_worst_rows_column_is_a_usage_error(tmp_path: Path) -> None:
    labels = soft_labels().rename({"region": "rank"})
    result = invoke(
        "run",
        *inputs(tmp_path, labels, prob_predictions()),
        "--slice-by",
        "rank",
        "--out",
        tmp_path / "out",
    )
    expect(result, 2)
    assert "clashes" in result.stderr
