"""The benchmark harness: benchmarks/run.py end to end on the tiny sets, and its data generator.

The harness runs in a subprocess exactly as ``make bench`` starts it, with its data cache in a
temporary folder; one repetition keeps it to a few seconds. The generator is imported from
benchmarks/ and run on a small set split into several row groups.
"""

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal
from scipy.special import rel_entr, softmax

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "tiny", "--repeat", "1"]
        + ["--data-dir", str(root / "data"), "--out", str(root / "bench.md")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return done, root


@pytest.mark.slow
def test_tiny_benchmark_times_every_contender_and_they_agree(
    tiny_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, root = tiny_run
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    table = (root / "bench.md").read_text()
    assert table == done.stdout
    for contender in ("| read floor |", "| klrank |", "| klrank ray |", "| duckdb |"):
        assert contender in table
    assert "klrank core only mean KL per model agrees with klrank" in table
    assert "| pandas+scipy |" in table
    assert "klrank ray mean KL per model agrees with klrank" in table
    assert "duckdb mean KL per model agrees with klrank" in table
    assert "pandas+scipy mean KL per model agrees with klrank" in table


@pytest.mark.slow
def test_tiny_data_set_follows_the_input_contract(
    tiny_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, root = tiny_run
    folder = root / "data" / "tiny"
    labels = pl.read_parquet(folder / "labels.parquet")
    classes = [f"prob_{k}" for k in range(10)]
    assert labels.schema == pl.Schema({"id": pl.Int64} | dict.fromkeys(classes, pl.Float64))
    assert labels["id"].to_list() == list(range(2000))
    assert (labels.select(pl.sum_horizontal(classes) - 1).to_series().abs() < 1e-12).all()
    models = sorted(p.name for p in (folder / "predictions").iterdir())
    assert models == ["model=m0", "model=m1", "model=m2"]
    for model in models:
        predictions = pl.read_parquet(folder / "predictions" / model / "part-0.parquet")
        assert predictions.schema == labels.schema
        assert predictions["id"].equals(labels["id"])  # the labels' row order


def _bench_data(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH.parent))
    return importlib.import_module("bench_data")


def test_array_variant_holds_the_same_numbers_in_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench_data = _bench_data(monkeypatch)
    monkeypatch.setattr(bench_data, "MAX_ROWS_PER_GROUP", 16)
    spec = bench_data.DataSet("small", 50, 4, 2, seed=7, array_variant=True)
    folder = bench_data.ensure(spec, tmp_path / "a", progress=lambda _: None)
    classes = [f"prob_{k}" for k in range(4)]
    for path in [folder / "labels.parquet", *sorted(folder.glob("predictions/*/*.parquet"))]:
        array_path = tmp_path / "a" / "small-array" / path.relative_to(folder)
        assert pq.ParquetFile(path).metadata.num_row_groups == 4
        columns = pl.read_parquet(path)
        array = pl.read_parquet(array_path)
        assert array.schema == pl.Schema({"id": pl.Int64, "prob": pl.Array(pl.Float64, 4)})
        expected = columns.select("id", pl.concat_arr(classes).alias("prob"))
        assert_frame_equal(array, expected)


def test_data_sets_are_deterministic_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench_data = _bench_data(monkeypatch)
    spec = bench_data.DataSet("small", 50, 4, 3, seed=7)
    messages: list[str] = []
    first = bench_data.ensure(spec, tmp_path / "a", progress=messages.append)
    second = bench_data.ensure(spec, tmp_path / "b", progress=messages.append)
    assert len(messages) == 2
    for path in first.rglob("*.parquet"):
        assert path.read_bytes() == (second / path.relative_to(first)).read_bytes()
    bench_data.ensure(spec, tmp_path / "a", progress=messages.append)
    assert len(messages) == 2  # found in the cache, not generated again


@pytest.mark.parametrize("job", ["duckdb_job.py", "pandas_job.py"])
def test_contenders_reject_what_klrank_rejects(
    job: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the DuckDB job ran two check queries on one connection before fetching
    # either, so the labels' failures were never seen and bad labels passed.
    bench_data = _bench_data(monkeypatch)
    folder = bench_data.ensure(
        bench_data.DataSet("small", 50, 4, 2, seed=7), tmp_path, progress=lambda _: None
    )
    labels = pl.read_parquet(folder / "labels.parquet")
    labels.with_columns(
        pl.when(pl.col("id") == 5).then(1.5).otherwise(pl.col("prob_1")).alias("prob_1")
    ).write_parquet(folder / "labels.parquet")
    m0 = folder / "predictions" / "model=m0" / "part-0.parquet"
    predictions = pl.read_parquet(m0)
    pl.concat([predictions.filter(pl.col("id") != 10), predictions.head(1)]).write_parquet(m0)
    done = subprocess.run(
        [sys.executable, str(BENCH.parent / job)]
        + ["--labels", str(folder / "labels.parquet"), "--predictions", str(folder / "predictions")]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 1, done.stderr
    failures = done.stderr.splitlines()
    assert any(line.startswith("labels:") and "outside" in line for line in failures), failures
    assert any(line.startswith("model m0: duplicate") for line in failures), failures
    assert any(line.startswith("model m0: label ids without") for line in failures), failures
    assert not (tmp_path / "out" / "report.parquet").exists()


def test_ray_rates_script_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # benchmarks/ray_rates.py calls the Ray engine's task functions directly (docs/scaling.md
    # quotes it): it broke once when their arguments changed.
    bench_data = _bench_data(monkeypatch)
    folder = bench_data.ensure(
        bench_data.DataSet("small", 200, 4, 2, seed=3), tmp_path, progress=lambda _: None
    )
    done = subprocess.run(
        [sys.executable, str(BENCH.parent / "ray_rates.py"), "--data", str(folder)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert "split: 600 rows" in done.stdout  # 200 label rows, 2 models
    assert "partial states:" in done.stdout


def test_cpu_breakdown_script_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # benchmarks/cpu_breakdown.py calls the local engine's steps one by one (BENCHMARKS.md
    # quotes it): a change of their arguments must not break it unseen.
    bench_data = _bench_data(monkeypatch)
    folder = bench_data.ensure(
        bench_data.DataSet("small", 200, 4, 2, seed=3), tmp_path, progress=lambda _: None
    )
    klrank = Path(sys.executable).with_name("klrank")
    done = subprocess.run(
        [sys.executable, str(BENCH.parent / "cpu_breakdown.py"), "--data", str(folder)]
        + ["--repeat", "1", "--klrank", str(klrank)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert "(200 label rows, 2 models, " in done.stdout
    steps = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(steps) == 12, done.stdout  # the header and 11 steps
    assert "`klrank run` on the same data:" in done.stdout


def test_many_files_script_times_klrank_beside_polars(tmp_path: Path) -> None:
    # benchmarks/many_files.py (BENCHMARKS.md quotes it) on two tiny sizes: klrank's mean KL
    # per model is checked against numpy's inside the script, which exits 1 on a disagreement.
    done = subprocess.run(
        [sys.executable, str(BENCH.parent / "many_files.py"), "--files", "4,12"]
        + ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "many.md")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert (tmp_path / "many.md").read_text() == done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 3, done.stdout  # the header and one row a size
    assert rows[1].startswith("| 4 | 12 | ") and rows[2].startswith("| 12 | 36 | ")
    assert "timed out" not in done.stdout
    added = rows[2].split(" | ")[7:10]  # µs an added file, klrank's and Polars', and the ratio
    # The slopes are differences of times at two tiny sizes, so noise can make Polars' negative:
    # the ratio is shown only where it is positive (regression: CI failed on "-172 | –").
    polars_slope = float(added[1].replace(",", ""))
    assert added[2].endswith("×") or (added[2] == "–" and polars_slope <= 0), rows[2]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "one-row-files-12x2m3k",
        "one-row-files-4x2m3k",
    ]
    labels = pl.read_parquet(tmp_path / "data" / "one-row-files-12x2m3k" / "labels")
    assert labels.get_column("id").to_list() == list(range(12))


# The language-model case: base logits with next tokens as truth, llama.cpp's statistics.

LM_ROWS, LM_VOCAB = 30, 50


@pytest.fixture(scope="module")
def lm_tiny_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path_factory.mktemp("bench-lm")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "lm-tiny", "--lm-rows", str(LM_ROWS)]
        + ["--repeat", "1", "--data-dir", str(root / "data"), "--out", str(root / "bench.md")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return done, root


@pytest.mark.slow
def test_lm_benchmark_times_its_contenders_and_they_agree(
    lm_tiny_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, root = lm_tiny_run
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    table = (root / "bench.md").read_text()
    assert f"### lm-tiny: N={LM_ROWS} tokens, vocabulary K={LM_VOCAB}, M=3 candidates" in table
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| read floor", "| klrank", "| klrank prob truth", "| llama.cpp numpy"]
    assert "| duckdb |" not in table  # the other case's contenders
    assert "llama.cpp numpy mean KL per model agrees with klrank" in table
    assert "llama.cpp numpy, model m2 (30 tokens): mean KLD" in table
    klrank_row = next(line for line in table.splitlines() if line.startswith("| klrank |"))
    if "not run" in klrank_row:  # a klrank that cannot read logits as truth
        assert "cannot read logits as truth" in klrank_row
    else:
        assert "klrank prob truth mean KL per model agrees with klrank's" in table


def _lm_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int, cells: int) -> Path:
    bench_data = _bench_data(monkeypatch)
    monkeypatch.setattr(bench_data, "MAX_LM_CELLS_PER_GROUP", cells)
    spec = bench_data.LmDataSet("small-lm", rows, LM_VOCAB, 3, seed=11)
    return Path(bench_data.ensure(spec, tmp_path / "data", progress=lambda _: None))


def _matrix(frame: pl.DataFrame, column: str) -> np.ndarray:
    return np.asarray(frame.get_column(column).to_list(), dtype=np.float64)


def test_lm_data_set_follows_its_layout_in_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _lm_set(tmp_path, monkeypatch, rows=300, cells=LM_VOCAB * 64)
    labels = pl.read_parquet(folder / "labels.parquet")
    assert labels.schema == pl.Schema(
        {"id": pl.Int64, "label": pl.Int32, "logit": pl.Array(pl.Float32, LM_VOCAB)}
    )
    assert labels["id"].to_list() == list(range(300))
    assert pq.ParquetFile(folder / "labels.parquet").metadata.num_row_groups == 5  # 64 rows each
    assert labels["label"].min() >= 0 and labels["label"].max() < LM_VOCAB  # type: ignore[operator]
    p = softmax(_matrix(labels, "logit"), axis=1)
    prob = pl.read_parquet(folder / "labels-prob.parquet")
    assert prob.schema == pl.Schema(
        {"id": pl.Int64, "label": pl.Int32, "prob": pl.Array(pl.Float64, LM_VOCAB)}
    )
    assert prob["label"].equals(labels["label"])
    np.testing.assert_allclose(_matrix(prob, "prob"), p, rtol=1e-13, atol=0)
    # A token order of each row's own: the top token moves around the vocabulary.
    assert len(set(p.argmax(axis=1))) > LM_VOCAB // 2
    # The next token is drawn from P: its mean surprisal is the mean entropy, within 4 SE.
    surprisal = -np.log(p[np.arange(300), labels["label"].to_numpy()])
    entropy = -(p * np.log(p)).sum(axis=1)
    difference = surprisal - entropy
    assert abs(difference.mean()) < 4 * difference.std(ddof=1) / np.sqrt(300)
    kl = []
    for j in range(3):
        model = pl.read_parquet(folder / "predictions" / f"model=m{j}" / "part-0.parquet")
        assert model.schema == pl.Schema({"id": pl.Int64, "logit": pl.Array(pl.Float32, LM_VOCAB)})
        assert model["id"].equals(labels["id"])
        kl.append(rel_entr(p, softmax(_matrix(model, "logit"), axis=1)).sum(axis=1).mean())
    assert 0 < kl[0] < kl[1] < kl[2]  # noise of increasing size


def _llamacpp(folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH.parent / "llamacpp_numpy.py")]
        + ["--labels", str(folder / "labels.parquet")]
        + ["--predictions", str(folder / "predictions"), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _percentile(values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile: linear between the sorted values at fraction·(n − 1)."""
    ordered = np.sort(values)
    at = fraction * (len(ordered) - 1)
    low = int(np.floor(at))
    high = min(low + 1, len(ordered) - 1)
    return float((1 - (at - low)) * ordered[low] + (at - low) * ordered[high])


def _se(x: np.ndarray) -> float:
    """The standard error of a mean, llama.cpp's for n > 10: sample SD over sqrt(n)."""
    return float(np.std(x, ddof=1) / np.sqrt(len(x)))


def test_llamacpp_contender_statistics_match_their_definitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several batches of 7 rows (350 values), across row groups of 16 rows.
    folder = _lm_set(tmp_path, monkeypatch, rows=LM_ROWS, cells=LM_VOCAB * 16)
    done = _llamacpp(folder, tmp_path / "out", "--batch-values", str(7 * LM_VOCAB))
    assert done.returncode == 0, done.stderr
    report = pl.read_parquet(tmp_path / "out" / "report.parquet")
    assert report["model"].to_list() == ["m0", "m1", "m2"]
    labels = pl.read_parquet(folder / "labels.parquet")
    base = _matrix(labels, "logit")
    p = softmax(base, axis=1)
    token = labels["label"].to_numpy()
    at = np.arange(LM_ROWS)
    nll_p = -np.log(p[at, token])
    for row in report.iter_rows(named=True):
        model = pl.read_parquet(folder / "predictions" / f"model={row['model']}" / "part-0.parquet")
        logits = _matrix(model, "logit")
        q = softmax(logits, axis=1)
        kl = rel_entr(p, q).sum(axis=1)
        delta_p = q[at, token] - p[at, token]
        nll_q = -np.log(q[at, token])
        same = float(np.mean(logits.argmax(axis=1) == base.argmax(axis=1)))
        ppl, ppl_base = np.exp(nll_q.mean()), np.exp(nll_p.mean())
        rms = np.sqrt(np.mean(delta_p**2))
        expected = {
            "n": LM_ROWS,
            "mean_kl": kl.mean(),
            "mean_kl_se": _se(kl),
            "kl_max": kl.max(),
            "kl_median": np.median(kl),
            "kl_min": kl.min(),
            "mean_delta_p": delta_p.mean(),
            "mean_delta_p_se": _se(delta_p),
            "delta_p_max": delta_p.max(),
            "delta_p_median": np.median(delta_p),
            "delta_p_min": delta_p.min(),
            "rms_delta_p": rms,
            "rms_delta_p_se": 0.5 / rms * _se(delta_p**2),  # the delta method, as llama.cpp
            "same_top_p": same,
            "same_top_p_se": np.sqrt(same * (1 - same) / (LM_ROWS - 1)),
            "ppl": ppl,
            "ppl_se": ppl * _se(nll_q),
            "ppl_base": ppl_base,
            "ppl_base_se": ppl_base * _se(nll_p),
            "ln_ppl_ratio": np.mean(nll_q - nll_p),
            "ln_ppl_ratio_se": _se(nll_q - nll_p),  # Var(a − b) = Var a + Var b − 2 Cov
            "ppl_ratio": np.exp(np.mean(nll_q - nll_p)),
            "ppl_ratio_se": np.exp(np.mean(nll_q - nll_p)) * _se(nll_q - nll_p),
            "ppl_diff": ppl - ppl_base,
            "ppl_diff_se": np.sqrt(
                (ppl * _se(nll_q)) ** 2
                + (ppl_base * _se(nll_p)) ** 2
                - 2 * ppl * ppl_base * np.cov(nll_q, nll_p)[0, 1] / LM_ROWS
            ),
            "cor_ln_ppl": np.corrcoef(nll_q, nll_p)[0, 1],
        }
        for name, fraction in [("q999", 0.999), ("q99", 0.99), ("q95", 0.95), ("q90", 0.9)] + [
            ("q10", 0.1),
            ("q05", 0.05),
            ("q01", 0.01),
            ("q001", 0.001),
        ]:
            expected[f"kl_{name}"] = _percentile(kl, fraction)
            expected[f"delta_p_{name}"] = _percentile(delta_p, fraction)
        expected["delta_p_q75"] = _percentile(delta_p, 0.75)
        expected["delta_p_q25"] = _percentile(delta_p, 0.25)
        assert set(row) == {"model", *expected}
        for name, value in expected.items():
            # Means and quantiles to rounding; the SEs come from Σx²/n − mean² (cancellation).
            rtol = 1e-9 if name.endswith("_se") else 1e-12
            assert row[name] == pytest.approx(value, rel=rtol, abs=1e-15), name


def test_llamacpp_contender_takes_the_first_of_tied_top_tokens(tmp_path: Path) -> None:
    # llama.cpp's argmax keeps the first of equal logits, for the base and the candidate.
    rows = [  # base logits, candidate logits, same top token?
        ([1.0, 3.0, 3.0, 0.0], [0.0, 3.0, 3.0, 1.0], True),
        ([1.0, 3.0, 3.0, 0.0], [0.0, 2.5, 3.0, 1.0], False),
        ([2.0, 2.0, 2.0, 2.0], [5.0, 5.0, 0.0, 0.0], True),
        ([0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], False),
    ]
    folder = tmp_path / "ties"
    (folder / "predictions" / "model=m").mkdir(parents=True)
    ids = list(range(len(rows)))
    pl.DataFrame(
        {"id": ids, "label": [0] * len(rows), "logit": [r[0] for r in rows]},
        schema={"id": pl.Int64, "label": pl.Int32, "logit": pl.Array(pl.Float32, 4)},
    ).write_parquet(folder / "labels.parquet")
    pl.DataFrame(
        {"id": ids, "logit": [r[1] for r in rows]},
        schema={"id": pl.Int64, "logit": pl.Array(pl.Float32, 4)},
    ).write_parquet(folder / "predictions" / "model=m" / "part-0.parquet")
    done = _llamacpp(folder, tmp_path / "out", "--batch-values", "4")  # one row a batch
    assert done.returncode == 0, done.stderr
    report = pl.read_parquet(tmp_path / "out" / "report.parquet")
    assert report["same_top_p"].item() == sum(r[2] for r in rows) / len(rows)


def test_llamacpp_contender_rejects_candidates_out_of_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _lm_set(tmp_path, monkeypatch, rows=LM_ROWS, cells=LM_VOCAB * 16)
    m1 = folder / "predictions" / "model=m1" / "part-0.parquet"
    pl.read_parquet(m1).reverse().write_parquet(m1)
    done = _llamacpp(folder, tmp_path / "out")
    assert done.returncode == 1
    assert "model m1: ids differ from the labels'" in done.stderr
    assert not (tmp_path / "out" / "report.parquet").exists()
