"""The benchmark harness: benchmarks/run.py end to end on the tiny set, and its data generator.

The harness runs in a subprocess exactly as ``make bench`` starts it, with its data cache in a
temporary folder; one repetition keeps it to a few seconds. The generator is imported from
benchmarks/ and run on a small set split into several row groups.
"""

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

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
    assert added[2].endswith("×"), rows[2]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "one-row-files-12x2m3k",
        "one-row-files-4x2m3k",
    ]
    labels = pl.read_parquet(tmp_path / "data" / "one-row-files-12x2m3k" / "labels")
    assert labels.get_column("id").to_list() == list(range(12))
