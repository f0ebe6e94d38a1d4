"""``quantiles.parquet``: the quantiles of the per-row measures, against numpy's.

The oracle is ``numpy.quantile(..., method="linear")`` (the definition the report's
``median_kl`` ... ``p99_kl`` use) on per-row KL computed by scipy from the inputs, on the
``kl`` of ``rows.parquet``, or on a stand-in ``delta_p`` computed by numpy.
"""

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import class_frame, random_distributions, run_job
from klrank import evaluate
from klrank.pipeline import aggregate, fold, sketch
from klrank.pipeline.aggregate import ALL_ROWS, DEFAULT_QUANTILES, parse_slice_label
from klrank.pipeline.layout import p_col, q_col
from klrank.schemas.outputs import QUANTILE_COLUMNS, QUANTILES_FILE
from scipy.special import rel_entr

CLASSES = ("a", "b", "c", "d")
MODELS = {"close": 0.05, "far": 0.6, "flat": 1.0}  # model -> share of noise in its Q
# Float error between scipy's KL and klrank's (other sums of the same terms): relative, and
# absolute for KL near 0, where the terms cancel.
RELATIVE, ABSOLUTE = 1e-12, 1e-15


def _inputs(n: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, np.ndarray]]:
    """Soft labels with a region (some null) and a weight; each model's Q; scipy's KL in bits."""
    rng = np.random.default_rng(seed)
    truth = random_distributions(rng, n, len(CLASSES), zero_fraction=0.2)
    region = pl.Series(rng.choice(["eu", "us", "apac", "-"], n)).replace("-", None)
    weight = rng.uniform(0.0, 2.0, n) * (rng.random(n) > 0.1)  # some rows of weight 0
    labels = pl.DataFrame(
        {"id": np.arange(n), "region": region, "w": weight} | class_frame(truth, CLASSES, "prob_")
    )
    frames, kl = [], {}
    for model, noise in MODELS.items():
        q = (1 - noise) * truth + noise * random_distributions(rng, n, len(CLASSES))
        kl[model] = rel_entr(truth, q).sum(axis=1) / math.log(2)
        frames.append(
            pl.DataFrame({"id": np.arange(n), "model": model} | class_frame(q, CLASSES, "prob_"))
        )
    return labels, pl.concat(frames), kl


def _in_slice(labels: pl.DataFrame, slice_: str) -> np.ndarray:
    """The label rows of a slice, as a boolean mask."""
    if slice_ == ALL_ROWS:
        return np.ones(labels.height, dtype=bool)
    key, value = parse_slice_label(slice_)
    column = labels.get_column(key)
    return (column.is_null() if value is None else column == value).fill_null(False).to_numpy()


def _assert_matches(
    table: pl.DataFrame,
    values: Callable[[str, str, str], np.ndarray],
    relative: float = RELATIVE,
    absolute: float = ABSOLUTE,
) -> None:
    """Every row of ``table`` is numpy's linear quantile of ``values(slice, model, measure)``."""
    for slice_, model, measure, q, value in table.iter_rows():
        expected = float(np.quantile(values(slice_, model, measure), q, method="linear"))
        assert math.isclose(value, expected, rel_tol=relative, abs_tol=absolute), (
            slice_,
            model,
            measure,
            q,
            value,
            expected,
        )


def test_the_table_is_numpys_linear_quantile_per_slice_and_model(tmp_path: Path) -> None:
    labels, predictions, kl = _inputs(3_000, seed=1)
    probabilities = (0.0, 0.001, 0.25, 0.5, 0.999, 1.0)
    _, out = run_job(
        tmp_path, labels, predictions, inputs={"slice_by": ("region",)}, quantiles=probabilities
    )
    table = pl.read_parquet(out / QUANTILES_FILE)
    assert table.columns == list(QUANTILE_COLUMNS)
    report = pl.read_parquet(out / "report.parquet")
    # One row per (slice, model) of the report, in its order, then measure and probability.
    expected_keys = [
        (slice_, model, "kl", q)
        for slice_, model in report.select("slice", "model").iter_rows()
        for q in probabilities
    ]
    assert table.select("slice", "model", "measure", "quantile").rows() == expected_keys
    assert set(table.get_column("slice")) == {
        "ALL",
        "region=eu",
        "region=us",
        "region=apac",
        "region=(null)",
    }

    def scipy_kl(slice_: str, model: str, measure: str) -> np.ndarray:
        return kl[model][_in_slice(labels, slice_)]

    _assert_matches(table, scipy_kl)
    rows = pl.read_parquet(out / "rows.parquet")

    def published_kl(slice_: str, model: str, measure: str) -> np.ndarray:
        of_model = rows.filter(pl.col("model") == model)
        return of_model.get_column(measure).to_numpy()[_in_slice(of_model, slice_)]

    _assert_matches(table, published_kl, 1e-15, 0.0)  # the same floats: lerp rounding only


def test_the_report_quantile_columns_are_the_same_values(tmp_path: Path) -> None:
    labels, predictions, _ = _inputs(500, seed=2)
    _, out = run_job(tmp_path, labels, predictions, inputs={"slice_by": ("region",)})
    table = pl.read_parquet(out / QUANTILES_FILE)
    assert sorted(set(table.get_column("quantile"))) == list(DEFAULT_QUANTILES)
    report = pl.read_parquet(out / "report.parquet")
    for column, q in aggregate.QUANTILES.items():
        at_q = table.filter(pl.col("quantile") == q).select("slice", "model", "value")
        assert at_q.rows() == report.select("slice", "model", column).rows()


def test_weights_do_not_weight_the_quantiles(tmp_path: Path) -> None:
    # As the report's quantile columns: over every row, rows of weight 0 included.
    labels, predictions, kl = _inputs(800, seed=3)
    _, out = run_job(
        tmp_path, labels, predictions, inputs={"slice_by": ("region",), "weight_col": "w"}
    )
    table = pl.read_parquet(out / QUANTILES_FILE)
    _assert_matches(table, lambda s, m, _: kl[m][_in_slice(labels, s)])


def test_infinite_rows_give_infinite_upper_quantiles_not_nan() -> None:
    part = pl.DataFrame({"_kl0": [0.0, 1.0, math.inf, math.inf]})
    ordered = aggregate.sorted_columns([("ALL", part)], ["_kl0"])
    table = aggregate.quantile_table(ordered, {"kl": {"m": "_kl0"}}, [0.25, 0.5, 0.9, 1.0])
    # numpy's lerp gives 1 + (inf − 1)·0 ... : 0.25 → 0.75, 0.5 → inf (between 1 and inf).
    assert table.get_column("value").to_list() == [0.75, math.inf, math.inf, math.inf]


def test_a_measure_without_values_has_null_quantiles() -> None:
    part = pl.DataFrame(
        {"_kl0": [1.0, 2.0], "_delta_p0": pl.Series([None, None], dtype=pl.Float64)}
    )
    columns = {"kl": {"m": "_kl0"}, "delta_p": {"m": "_delta_p0"}}
    ordered = aggregate.sorted_columns([("ALL", part)], ["_kl0", "_delta_p0"])
    table = aggregate.quantile_table(ordered, columns, [0.5])
    assert table.rows() == [("ALL", "m", "kl", 0.5, 1.5), ("ALL", "m", "delta_p", 0.5, None)]


STAND_IN = "delta_p"


def test_delta_p_is_in_the_table_when_the_rows_carry_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in delta_p = q_a − p_a per row (signed): the table picks up any measure present."""
    measures = fold.row_measures

    def with_delta_p(layout: object, base: str) -> list[pl.Expr]:
        produced = measures(layout, base)  # type: ignore[arg-type]
        if STAND_IN in [e.meta.output_name() for e in produced]:
            pytest.skip("the rows carry a real delta_p now: see the end-to-end tests of it")
        return [*produced, (pl.col(q_col(0)) - pl.col(p_col(0))).alias(STAND_IN)]

    monkeypatch.setattr(fold, "row_measures", with_delta_p)
    labels, predictions, kl = _inputs(1_000, seed=4)
    probabilities = (0.01, 0.1, 0.5, 0.9, 0.99)
    evaluation = evaluate(
        labels.drop("w"), predictions, slice_by=["region"], quantiles=probabilities, rows=False
    )
    table = evaluation.quantiles
    assert set(table.get_column("measure")) == {"kl", STAND_IN}
    p_a = labels.get_column("prob_a").to_numpy()
    q_a = {
        m: predictions.filter(pl.col("model") == m).get_column("prob_a").to_numpy() for m in MODELS
    }

    def oracle(slice_: str, model: str, measure: str) -> np.ndarray:
        values = kl[model] if measure == "kl" else q_a[model] - p_a
        return values[_in_slice(labels, slice_)]

    _assert_matches(table, oracle)
    # kl before delta_p within each (slice, model); probabilities ascending.
    first = table.filter((pl.col("slice") == ALL_ROWS) & (pl.col("model") == "close"))
    assert first.get_column("measure").to_list() == ["kl"] * 5 + [STAND_IN] * 5
    assert first.get_column("quantile").to_list() == [*probabilities, *probabilities]


def test_sketched_quantiles_are_within_the_documented_bound() -> None:
    # Signed values (as delta_p is), exact zeros, from two "partitions" merged.
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(0.0, 0.3, 5_000), np.zeros(50), rng.exponential(2, 500)])
    rng.shuffle(values)
    keys = list(fold.SKETCH_KEYS)
    halves = []
    for half in np.array_split(values, 2):
        frame = pl.DataFrame({"slice": ALL_ROWS, "model": "m", "measure": "delta_p", "v": half})
        halves.append(sketch.bin_counts(frame, "v", keys))
    counts = sketch.merge(pl.concat(halves), keys)
    extrema = pl.DataFrame(
        {"slice": [ALL_ROWS], "model": ["m"], "measure": ["delta_p"]}
        | {"_min": [values.min()], "_max": [values.max()]}
    )
    probabilities = (0.0, *DEFAULT_QUANTILES, 1.0)
    table = fold.sketched_quantiles(counts, extrema, probabilities)
    ordered = np.sort(values)
    for q, value in zip(probabilities, table.get_column("value"), strict=True):
        exact = float(np.quantile(values, q, method="linear"))
        position = (len(values) - 1) * q
        around = max(abs(ordered[math.floor(position)]), abs(ordered[math.ceil(position)]))
        assert abs(value - exact) <= sketch.RELATIVE_ACCURACY * around * (1 + 1e-9), (q, value)
    assert table.get_column("value")[0] == values.min()  # 0 and 1: the exact extrema
    assert table.get_column("value")[-1] == values.max()


def test_readers_read_the_file(tmp_path: Path) -> None:
    labels, predictions, _ = _inputs(200, seed=6)
    _, out = run_job(tmp_path, labels, predictions, quantiles=(0.5, 0.9))
    path = out / QUANTILES_FILE
    in_polars = pl.scan_parquet(path).filter(pl.col("quantile") == 0.9).collect()
    assert in_polars.height == len(MODELS)
    duckdb = pytest.importorskip("duckdb")
    query = f"SELECT model, value FROM read_parquet('{path}') WHERE quantile = 0.9 ORDER BY model"
    assert duckdb.sql(query).fetchall() == sorted(in_polars.select("model", "value").rows())
