"""Aggregation: report columns against numpy/scipy computed from rows.parquet, and state merging."""

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.special
import scipy.stats
from cli_helpers import expect, inputs, invoke
from hypothesis import given
from hypothesis import strategies as st
from klrank.config import InputOptions, RunOptions
from klrank.pipeline import aggregate
from klrank.pipeline.layout import kl_term_col, p_col, q_col
from klrank.run import run
from polars.testing import assert_frame_equal

N_ROWS, CLASSES = 400, ("a", "b", "c")


def _distributions(rng: np.random.Generator, n: int, concentration: float) -> np.ndarray:
    return rng.dirichlet(np.full(len(CLASSES), concentration), size=n)


def _write_inputs(folder: Path, *, infinite_model: bool) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    p = _distributions(rng, N_ROWS, 1.0)
    labels = pl.DataFrame(
        {
            "id": np.arange(N_ROWS),
            "region": rng.choice(["north", "south"], size=N_ROWS),
            **{f"prob_{c}": p[:, k] for k, c in enumerate(CLASSES)},
        }
    )
    models = {
        "close": 0.9 * p + 0.1 * _distributions(rng, N_ROWS, 1.0),
        "closer": 0.95 * p + 0.05 * _distributions(rng, N_ROWS, 1.0),
        "far": _distributions(rng, N_ROWS, 1.0),
    }
    if infinite_model:
        q = 0.5 * p + 0.5 * _distributions(rng, N_ROWS, 1.0)
        q[:3] = [1.0, 0.0, 0.0]  # zero probability where the truth is positive: KL = inf
        models["broken"] = q
    predictions = pl.concat(
        pl.DataFrame(
            {
                "id": np.arange(N_ROWS),
                "model": [name] * N_ROWS,
                **{f"prob_{c}": q[:, k] for k, c in enumerate(CLASSES)},
            }
        )
        for name, q in models.items()
    )
    folder.mkdir(parents=True, exist_ok=True)
    labels.write_parquet(folder / "labels.parquet")
    predictions.write_parquet(folder / "predictions.parquet")
    return folder / "labels.parquet", folder / "predictions.parquet"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, pl.DataFrame]:
    folder = tmp_path_factory.mktemp("aggregate")
    labels, predictions = _write_inputs(folder, infinite_model=True)
    options = RunOptions(
        inputs=InputOptions(labels=str(labels), predictions=str(predictions), slice_by=("region",)),
        out=folder / "out",
    )
    run(options)
    return pl.read_parquet(folder / "out" / "report.parquet"), pl.read_parquet(
        folder / "out" / "rows.parquet"
    )


def _slice_rows(rows: pl.DataFrame, slice_name: str) -> pl.DataFrame:
    if slice_name == aggregate.ALL_ROWS:
        return rows
    column, value = slice_name.split("=", 1)
    return rows.filter(pl.col(column) == value)


def test_every_slice_and_model_is_reported(published: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    report, _ = published
    assert sorted(report.get_column("slice").unique()) == ["ALL", "region=north", "region=south"]
    assert report.group_by("slice").len().get_column("len").to_list() == [4, 4, 4]


def test_summary_statistics_match_numpy_and_scipy(
    published: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    report, rows = published
    for r in report.filter(pl.col("model") != "broken").iter_rows(named=True):
        kl = (
            _slice_rows(rows, r["slice"])
            .filter(pl.col("model") == r["model"])
            .get_column("kl")
            .to_numpy()
        )
        n = len(kl)
        assert r["n_rows"] == n
        assert r["mean_kl"] == pytest.approx(kl.mean(), rel=1e-12)
        assert r["std_kl"] == pytest.approx(kl.std(ddof=1), rel=1e-10)
        assert r["sem_kl"] == pytest.approx(scipy.stats.sem(kl), rel=1e-10)
        low, high = scipy.stats.t.interval(0.95, n - 1, loc=kl.mean(), scale=scipy.stats.sem(kl))
        assert (r["ci95_low"], r["ci95_high"]) == (
            pytest.approx(low, rel=1e-9),
            pytest.approx(high, rel=1e-9),
        )
        for column, q in (("median_kl", 50), ("p90_kl", 90), ("p95_kl", 95), ("p99_kl", 99)):
            assert r[column] == pytest.approx(np.percentile(kl, q, method="linear"), rel=1e-12)
        assert (r["min_kl"], r["max_kl"]) == (kl.min(), kl.max())
        assert r["n_infinite"] == 0


def test_means_of_other_measures_and_top1(published: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    report, rows = published
    for r in report.iter_rows(named=True):
        subset = _slice_rows(rows, r["slice"]).filter(pl.col("model") == r["model"])
        for measure in ("reverse_kl", "js", "cross_entropy", "entropy"):
            assert r[f"mean_{measure}"] == pytest.approx(
                subset.get_column(measure).mean(), rel=1e-12
            )
        assert r["top1_agreement"] == subset.get_column("top1_match").mean()


def test_paired_comparison_matches_scipy_ttest_rel(
    published: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    report, rows = published
    for slice_name, group in report.group_by("slice"):
        best = group.filter(pl.col("rank") == 1).get_column("model").item()
        subset = _slice_rows(rows, str(slice_name[0])).sort("id")
        kl_best = subset.filter(pl.col("model") == best).get_column("kl").to_numpy()
        for r in group.filter(pl.col("model").is_in([best, "broken"]).not_()).iter_rows(named=True):
            kl = subset.filter(pl.col("model") == r["model"]).get_column("kl").to_numpy()
            d = kl - kl_best
            assert r["delta_vs_best"] == pytest.approx(d.mean(), rel=1e-12)
            assert r["delta_vs_best_sem"] == pytest.approx(scipy.stats.sem(d), rel=1e-10)
            expected = scipy.stats.ttest_rel(kl, kl_best).pvalue
            assert r["p_value_vs_best"] == pytest.approx(expected, rel=1e-9, abs=1e-300)
        best_row = group.filter(pl.col("model") == best).row(0, named=True)
        assert (
            best_row["delta_vs_best"],
            best_row["delta_vs_best_sem"],
            best_row["p_value_vs_best"],
        ) == (0.0, 0.0, None)


def test_infinite_rows_make_the_mean_infinite_and_spread_undefined(
    published: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    report, rows = published
    broken = report.filter((pl.col("model") == "broken") & (pl.col("slice") == "ALL")).row(
        0, named=True
    )
    n_inf = rows.filter((pl.col("model") == "broken") & pl.col("kl").is_infinite()).height
    assert n_inf == 3 and broken["n_infinite"] == 3
    assert broken["mean_kl"] == math.inf and broken["max_kl"] == math.inf
    assert broken["std_kl"] is None and broken["sem_kl"] is None and broken["ci95_low"] is None
    assert broken["delta_vs_best"] == math.inf and broken["p_value_vs_best"] is None
    assert broken["rank"] == 4  # infinite sorts last


def test_marginal_kl_is_kl_of_the_mean_distributions(
    published: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path
) -> None:
    report, _ = published
    labels, predictions = _write_inputs(tmp_path, infinite_model=True)  # the fixture's inputs again
    columns = [f"prob_{c}" for c in CLASSES]
    p = pl.read_parquet(labels).select(columns).to_numpy()
    for model, q in pl.read_parquet(predictions).group_by("model"):
        if model[0] == "broken":
            continue
        q_mean = q.select(columns).to_numpy().mean(axis=0)
        expected = scipy.special.rel_entr(p.mean(axis=0), q_mean).sum() / math.log(2)
        row = report.filter((pl.col("model") == model[0]) & (pl.col("slice") == "ALL")).row(
            0, named=True
        )
        assert row["marginal_kl"] == pytest.approx(expected, rel=1e-9)


def test_ranks_share_ties_and_rank_by_top1_is_descending(tmp_path: Path) -> None:
    labels, predictions = _write_inputs(tmp_path, infinite_model=False)
    # A copy of "close" under another name ties with it exactly.
    frame = pl.read_parquet(predictions)
    twin = frame.filter(pl.col("model") == "close").with_columns(model=pl.lit("close_twin"))
    pl.concat([frame, twin]).write_parquet(predictions)
    out = tmp_path / "out"
    run(RunOptions(inputs=InputOptions(labels=str(labels), predictions=str(predictions)), out=out))
    report = pl.read_parquet(out / "report.parquet")
    ranks = dict(zip(report.get_column("model"), report.get_column("rank"), strict=True))
    assert ranks["closer"] == 1 and ranks["close"] == ranks["close_twin"] == 2 and ranks["far"] == 4

    run(
        RunOptions(
            inputs=InputOptions(labels=str(labels), predictions=str(predictions)),
            out=out,
            rank_by="top1_agreement",
        )
    )
    report = pl.read_parquet(out / "report.parquet")
    agreement = report.sort("rank").get_column("top1_agreement").to_list()
    assert agreement == sorted(agreement, reverse=True)


def _synthetic_rows(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "region": rng.choice(["x", "y"], size=n),
            "kl": rng.exponential(1e3, size=n)
            + 1e6,  # a large offset makes naive variance lose digits
            "reverse_kl": rng.exponential(size=n),
            "js": rng.uniform(size=n),
            "cross_entropy": rng.exponential(size=n),
            "entropy": rng.exponential(size=n),
            "top1_match": rng.uniform(size=n) < 0.5,
            p_col(0): rng.uniform(size=n),
            q_col(0): rng.uniform(size=n),
            kl_term_col(0): rng.normal(size=n),
        }
    ).with_columns(**aggregate.slice_key_columns(["region"]))


def test_merged_shard_states_equal_the_states_of_all_rows() -> None:
    rows = _synthetic_rows(5000, seed=3)
    keys = list(aggregate.slice_key_columns(["region"]))

    def states(frame: pl.DataFrame) -> pl.DataFrame:
        return aggregate.partial_states(frame, "m", keys, aggregate.column_class_sums(1))[0]

    whole = aggregate.merge_states(states(rows))
    shards = [rows.slice(0, 1234), rows.slice(1234, 1), rows.slice(1235, None)]
    merged = aggregate.merge_states(pl.concat(states(s) for s in shards))
    # Σw²(x − x̄) is 0 without weights: the merge cancels it to rounding of Σ|x|, not exactly.
    assert_frame_equal(
        merged.sort(aggregate.KEYS).drop("kl_r"),
        whole.sort(aggregate.KEYS).drop("kl_r"),
        check_exact=False,
        rel_tol=1e-12,
    )
    scale = rows.get_column("kl").filter(rows.get_column("kl").is_finite()).abs().sum()
    assert merged.get_column("kl_r").abs().max() <= 1e-12 * scale
    for (region,), group in rows.group_by(["region"]):
        state = merged.filter(pl.col("slice") == f"region={region}").row(0, named=True)
        kl = group.get_column("kl").to_numpy()
        assert state["kl_m2"] == pytest.approx(((kl - kl.mean()) ** 2).sum(), rel=1e-9)
        assert state["kl_sum"] == pytest.approx(kl.sum(), rel=1e-12)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0, 1.0, 2.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
        ([0.0, 10.0], 0.99, 9.9),
        ([1.0, math.inf, math.inf], 0.5, math.inf),  # inf - inf must not turn into NaN
        ([1.0, 2.0, math.inf], 0.99, math.inf),
        ([1.0, 2.0, math.inf], 0.5, 2.0),
        ([5.0], 0.9, 5.0),
    ],
)
def test_linear_quantile_by_hand(values: list[float], q: float, expected: float) -> None:
    ordered = pl.Series(values).sort()
    assert aggregate._linear_quantile(ordered, q) == pytest.approx(expected, rel=1e-15)


def test_merged_shard_class_states_equal_the_class_sums_of_all_rows() -> None:
    rows = _synthetic_rows(5000, seed=4)
    keys = list(aggregate.slice_key_columns(["region"]))
    shards = [rows.slice(0, 777), rows.slice(777, None)]
    parts = []
    for shard in shards:  # each shard's sums added up by batches, then the shards merged
        totals = aggregate.ClassTotals()
        for batch in (shard.slice(0, 100), shard.slice(100, None)):
            totals.add(
                aggregate.partial_states(batch, "m", keys, aggregate.column_class_sums(1))[1]
            )
        parts.append(totals.frame("m"))
    merged = aggregate.merge_class_states(pl.concat(parts))
    everything = merged.filter(pl.col("slice") == "ALL").row(0, named=True)
    assert everything["p_sum"] == pytest.approx(rows.get_column(p_col(0)).sum(), rel=1e-12)
    assert everything["q_sum"] == pytest.approx(rows.get_column(q_col(0)).sum(), rel=1e-12)
    terms = rows.get_column(kl_term_col(0))
    assert everything["kl_term_sum"] == pytest.approx(terms.sum(), rel=1e-9, abs=1e-9)
    assert merged.height == 3  # ALL, region=x, region=y; one class


@pytest.mark.parametrize(
    "values",
    [
        [0.0, 0.0, 1.0, 2.0, 2.0, 3.0, math.inf],
        [-1e-9, 0.0, 0.0, 0.5, 0.5, 0.5, 4.0],  # slightly negative (within the tolerance)
        [math.inf, math.inf],
        [7.0],
    ],
    ids=["zeros-ties-inf", "negative", "all-inf", "one-row"],
)
def test_ecdf_points_are_the_exact_ecdf_at_each_point(values: list[float]) -> None:
    curve = aggregate.ecdf_points(pl.Series(values).sort(), 500)
    data = np.array(values)
    for x, share in curve.iter_rows():
        assert share == (data <= x).sum() / data.size  # numpy counts the rows at or below x
    finite = data[np.isfinite(data)]
    assert sorted(curve.get_column("kl").to_list()) == sorted(
        set(finite) | ({0.0} if finite.size and finite.min() < 0 < finite.max() else set())
    )


def test_ecdf_points_are_bounded_and_keep_both_ends() -> None:
    values = pl.Series(np.random.default_rng(5).exponential(size=100_000)).sort()
    curve = aggregate.ecdf_points(values, 500)
    assert curve.height <= 500
    kl = curve.get_column("kl")
    assert kl[0] == values[0] and kl[-1] == values[-1]
    assert curve.get_column("ecdf")[-1] == 1.0


# Slice labels: `COL=value`, never shared by two different (column, value) pairs.
# Text a Parquet file can hold: UTF-8, so no lone surrogates (Polars refuses them).
SLICE_TEXT = st.text(
    st.one_of(st.sampled_from(list("=\\()nul ")), st.characters(codec="utf-8")), max_size=12
)
SLICE_VALUES = st.one_of(st.none(), st.just("(null)"), SLICE_TEXT)


@pytest.mark.parametrize(
    ("column", "value", "label"),
    [
        ("region", "eu", "region=eu"),  # ordinary labels are what they always were
        ("region", None, "region=(null)"),
        ("region", "", "region="),
        ("a", "b=c", "a=b=c"),
        ("a=b", "c", r"a\=b=c"),  # the column's "=" is escaped, so the two above differ
        ("region", "(null)", r"region=\(null)"),  # the text "(null)" is not the null
        ("region", r"\(null)", r"region=\\(null)"),
        ("back\\slash", r"\x", r"back\\slash=\\x"),
    ],
)
def test_slice_labels_by_hand(column: str, value: str | None, label: str) -> None:
    assert aggregate.slice_label(column, value) == label
    assert aggregate.parse_slice_label(label) == (column, value)
    frame = pl.DataFrame({column: [value]}, schema={column: pl.String})
    assert frame.select(**aggregate.slice_key_columns([column])).item() == label


@given(st.lists(st.tuples(SLICE_TEXT.filter(bool), SLICE_VALUES), min_size=1, max_size=20))
def test_slice_labels_read_back_so_no_two_pairs_share_one(
    pairs: list[tuple[str, str | None]],
) -> None:
    labels = [aggregate.slice_label(c, v) for c, v in pairs]
    assert [aggregate.parse_slice_label(label) for label in labels] == pairs
    assert len(set(labels)) == len(set(pairs))
    assert aggregate.ALL_ROWS not in labels


@given(SLICE_TEXT.filter(bool), st.lists(SLICE_VALUES, min_size=1, max_size=20))
def test_slice_key_expression_writes_the_same_labels(column: str, values: list[str | None]) -> None:
    frame = pl.DataFrame({column: values}, schema={column: pl.String})
    keys = frame.select(**aggregate.slice_key_columns([column])).to_series()
    assert keys.to_list() == [aggregate.slice_label(column, v) for v in values]


@pytest.mark.parametrize("label", ["ALL", "region", r"a\b=c", "a=\\x", "a\\"])
def test_parse_slice_label_refuses_what_no_slice_is_labelled(label: str) -> None:
    with pytest.raises(ValueError, match="not a slice label"):
        aggregate.parse_slice_label(label)


def test_colliding_slice_labels_and_null_versus_the_text_null_stay_apart(tmp_path: Path) -> None:
    # --slice-by a --slice-by a=b: a = "b=c" and a=b = "c" were both `a=b=c` (exit 70), and a
    # null and the text "(null)" in one column were one slice.
    rng = np.random.default_rng(11)
    n = 60
    labels = pl.DataFrame(
        {
            "id": np.arange(n),
            "a": rng.choice(["b=c", "x", "(null)", "\\(null)", ""], size=n).tolist(),
            "a=b": rng.choice(["c", "y"], size=n).tolist(),
            **{f"prob_{c}": p for c, p in zip(CLASSES, _distributions(rng, n, 1.0).T, strict=True)},
        }
    ).with_columns(pl.when(pl.int_range(n) % 7 == 0).then(None).otherwise(pl.col("a")).alias("a"))
    q = _distributions(rng, n, 1.0)
    predictions = pl.DataFrame(
        {"id": np.arange(n), "model": ["m"] * n}
        | {f"prob_{c}": q[:, k] for k, c in enumerate(CLASSES)}
    )
    out = tmp_path / "out"
    result = invoke(
        "run",
        *inputs(tmp_path, labels, predictions),
        "--out", out, "--run-date", "2026-01-02", "--slice-by", "a", "--slice-by", "a=b", "-q",
    )  # fmt: skip
    expect(result, 0)
    night = out / "run_date=2026-01-02"
    report = pl.read_parquet(night / "report.parquet")
    rows = pl.read_parquet(night / "rows.parquet")
    # Each label, written out by hand, and the rows it must hold, picked from the input.
    a, a_b = pl.col("a"), pl.col("a=b")
    expected = {
        "ALL": pl.lit(True),
        "a=b=c": a == "b=c",
        "a=x": a == "x",
        "a=(null)": a.is_null(),
        r"a=\(null)": a == "(null)",
        r"a=\\(null)": a == "\\(null)",
        "a=": a == "",
        r"a\=b=c": a_b == "c",
        r"a\=b=y": a_b == "y",
    }
    assert sorted(report.get_column("slice").to_list()) == sorted(expected)
    for label, rows_of in expected.items():
        kl = rows.filter(rows_of).get_column("kl").to_numpy()
        r = report.filter(pl.col("slice") == label).row(0, named=True)
        assert r["n_rows"] == labels.filter(rows_of).height == len(kl) > 0, label
        assert r["mean_kl"] == pytest.approx(kl.mean(), rel=1e-12), label
    # `klrank history --slice` finds each of the two "null" slices by its label.
    for label, rows_of in [("a=(null)", a.is_null()), (r"a=\(null)", a == "(null)")]:
        history = invoke("history", out, "--slice", label, "--json", "-q")
        expect(history, 0)
        (row,) = json.loads(history.stdout)["rows"]
        assert row["n_rows"] == labels.filter(rows_of).height
