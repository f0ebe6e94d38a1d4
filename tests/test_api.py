"""The public Python API: klrank.evaluate, Evaluation, the errors and what a wheel installs."""

import datetime as dt
import gc
import json
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import klrank as api
import numpy as np
import polars as pl
import pytest
from cli_helpers import (
    CLASSES,
    FAILURE_COLUMNS,
    PREDICTED,
    PUBLISHED_FILES,
    TRUTH,
    expect,
    klrank,
    prob_predictions,
    set_value,
    soft_labels,
    write,
)
from klrank.schemas.report import REPORT_COLUMNS
from polars.testing import assert_frame_equal
from scipy.special import rel_entr

ROOT = Path(__file__).resolve().parents[1]


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    return (
        write(soft_labels(), tmp_path / "in" / "labels.parquet"),
        write(prob_predictions(), tmp_path / "in" / "predictions.parquet"),
    )


def _mean_kl_bits(model: str) -> float:
    """The oracle: scipy's relative entropy of each row, in bits, averaged."""
    rows = [np.sum(rel_entr(TRUTH[i], PREDICTED[model][i])) / math.log(2) for i in TRUTH]
    return float(np.mean(rows))


def test_the_public_names_are_listed_and_exist() -> None:
    for name in api.__all__:
        assert hasattr(api, name), name
    assert {"evaluate", "Evaluation", "expr", "ExitCode", "KlrankError"} <= set(api.__all__)
    assert api.__version__


def test_evaluate_ranks_the_models_as_scipy_computes_them(tmp_path: Path) -> None:
    labels, predictions = _inputs(tmp_path)
    evaluation = api.evaluate(labels, predictions)
    report = evaluation.report.filter(pl.col("slice") == "ALL").sort("rank")
    assert report.columns == list(REPORT_COLUMNS)
    assert report.get_column("model").to_list() == ["m", "n"]
    for row in report.iter_rows(named=True):
        assert row["mean_kl"] == pytest.approx(_mean_kl_bits(row["model"]), rel=1e-12)
    contributions = evaluation.class_contributions.filter(pl.col("slice") == "ALL")
    by_model = contributions.group_by("model").agg(pl.col("contribution").sum())
    for model, total in by_model.iter_rows():
        assert total == pytest.approx(_mean_kl_bits(model), rel=1e-12)
    assert evaluation.worst_rows is not None and evaluation.worst_rows.height == 8
    assert evaluation.manifest["status"] == "success"
    assert evaluation.manifest["models"] == ["m", "n"]
    assert evaluation.unit == "bits"


def test_rows_are_a_lazy_frame_over_a_temporary_file_removed_with_the_evaluation(
    tmp_path: Path,
) -> None:
    labels, predictions = _inputs(tmp_path)
    evaluation = api.evaluate(labels, predictions, base="e")
    rows = evaluation.rows
    assert isinstance(rows, pl.LazyFrame)
    means = rows.group_by("model").agg(pl.col("kl").mean()).collect()
    for model, mean in means.iter_rows():
        want = float(np.mean([np.sum(rel_entr(TRUTH[i], PREDICTED[model][i])) for i in TRUTH]))
        assert mean == pytest.approx(want, rel=1e-12)
    folder = evaluation._rows_path.parent  # type: ignore[union-attr]
    assert folder.is_dir()
    del evaluation, rows
    gc.collect()
    assert not folder.exists()


def test_no_rows_kept_is_said_when_they_are_asked_for(tmp_path: Path) -> None:
    evaluation = api.evaluate(*_inputs(tmp_path), rows=False)
    with pytest.raises(api.UsageError, match="rows=True"):
        _ = evaluation.rows


def test_frames_give_the_report_paths_give(tmp_path: Path) -> None:
    from_paths = api.evaluate(*_inputs(tmp_path), slice_by=["region"])
    from_frames = api.evaluate(soft_labels(), prob_predictions().lazy(), slice_by=["region"])
    assert_frame_equal(from_frames.report, from_paths.report)
    assert_frame_equal(from_frames.class_contributions, from_paths.class_contributions)
    assert from_frames.manifest["inputs"]["labels"]["rows"] == 4


def test_publish_writes_what_klrank_run_writes(tmp_path: Path) -> None:
    labels, predictions = _inputs(tmp_path)
    evaluation = api.evaluate(labels, predictions, slice_by=["region"])
    target = evaluation.publish(tmp_path / "api", run_date="2026-03-04")
    assert target == tmp_path / "api" / "run_date=2026-03-04"
    result = klrank(
        "run", "--labels", labels, "--predictions", predictions, "--slice-by", "region",
        "--out", tmp_path / "cli", "--run-date", "2026-03-04",
    )  # fmt: skip
    expect(result, 0)
    cli = tmp_path / "cli" / "run_date=2026-03-04"
    assert {p.name for p in target.iterdir()} == {p.name for p in cli.iterdir()} == PUBLISHED_FILES
    for name in ("report.parquet", "rows.parquet", "class_contributions.parquet"):
        assert_frame_equal(pl.read_parquet(target / name), pl.read_parquet(cli / name))
    api_manifest = json.loads((target / "manifest.json").read_text())
    cli_manifest = json.loads((cli / "manifest.json").read_text())
    assert api_manifest["options"] == cli_manifest["options"]
    assert api_manifest["outputs"] == cli_manifest["outputs"]
    assert (target / "summary.md").read_text() == (cli / "summary.md").read_text()


def test_publish_refuses_what_klrank_run_refuses_and_republishes_whole(tmp_path: Path) -> None:
    labels, predictions = _inputs(tmp_path)
    evaluation = api.evaluate(labels, predictions, rows=False, html=False, worst=0)
    with pytest.raises(api.UsageError, match="input"):
        evaluation.publish(tmp_path / "in")  # the inputs' folder
    out = tmp_path / "out"
    evaluation.publish(out)
    evaluation.publish(out)  # idempotent: the same files again
    names = {"report.parquet", "class_contributions.parquet", "quantiles.parquet"}
    names |= {"summary.md", "manifest.json"}
    assert {p.name for p in out.iterdir()} == names | {"_SUCCESS"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".out.klrank.lock"]
    with pytest.raises(api.UsageError, match="YYYY-MM-DD"):
        evaluation.publish(out, run_date="yesterday")
    dated = evaluation.publish(tmp_path / "nights", run_date=dt.date(2026, 3, 4))
    assert dated.name == "run_date=2026-03-04"


def test_invalid_data_raises_with_every_failure_case(tmp_path: Path) -> None:
    bad = set_value(prob_predictions(), "prob_a", -0.5, model="n", id=2)
    with pytest.raises(api.InvalidDataError) as raised:
        api.evaluate(soft_labels(), bad)
    error = raised.value
    assert isinstance(error, api.KlrankError)
    assert error.exit_code == api.ExitCode.INVALID_DATA == 1
    assert error.failures.columns == FAILURE_COLUMNS
    assert error.failures.filter(pl.col("model") == "n").height >= 1
    assert list(tmp_path.iterdir()) == []  # written nowhere unless failures= says where


def test_failures_are_written_where_asked(tmp_path: Path) -> None:
    bad = set_value(prob_predictions(), "prob_a", -0.5, model="n", id=2)
    failures = tmp_path / "failures.parquet"
    with pytest.raises(api.InvalidDataError):
        api.evaluate(soft_labels(), bad, failures=failures)
    assert pl.read_parquet(failures).columns == FAILURE_COLUMNS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base": "3"}, "base"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"baseline": "auto"}, "night"),
        ({"engine": "ray"}, "paths"),
        ({"rank_by": "median"}, "rank-by"),
    ],
)
def test_bad_options_raise_a_usage_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(api.UsageError, match=message) as raised:
        api.evaluate(soft_labels(), prob_predictions(), **options)  # type: ignore[arg-type]
    assert raised.value.exit_code == api.ExitCode.USAGE == 2


def test_a_frame_with_a_hidden_column_name_is_refused() -> None:
    labels = soft_labels().with_columns(pl.lit(0).alias("__klrank_row"))
    with pytest.raises(api.UsageError, match="__klrank_row"):
        api.evaluate(labels, prob_predictions())


def test_a_baseline_folder_fills_the_change_columns(tmp_path: Path) -> None:
    labels, predictions = _inputs(tmp_path)
    night = api.evaluate(labels, predictions).publish(tmp_path / "nights", run_date="2026-03-03")
    again = api.evaluate(labels, predictions, baseline=night, max_regression=1.0)
    changes = again.report.filter(pl.col("slice") == "ALL").get_column("change_mean_kl")
    assert changes.to_list() == [0.0, 0.0]
    assert not again.failed_gates and again.gates


def test_each_error_class_carries_its_exit_code() -> None:
    codes = {
        api.UsageError: 2,
        api.InvalidDataError: 1,
        api.LockBusyError: 75,
        api.StorageError: 74,
        api.EngineError: 69,
    }
    for error, code in codes.items():
        assert issubclass(error, api.KlrankError)
        assert error.exit_code == code


def test_a_wheel_holds_one_top_level_package_with_py_typed(tmp_path: Path) -> None:
    # Built from a copy of the sources: setuptools reuses a build/ folder, stale files included.
    source = tmp_path / "source"
    for folder in ("jobs", "pipeline", "schemas"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, source / file)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("klrank-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"klrank"}
    assert "klrank/py.typed" in names
    assert "klrank/pipeline/fold.py" in names and "klrank/schemas/outputs.py" in names
    assert "klrank/engines/local.py" in names and "klrank/cli/__init__.py" in names
    assert not [n for n in names if "/airflow/" in n or "/tests/" in n]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "klrank = klrank.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_classes_name_the_array_positions() -> None:
    labels = pl.DataFrame({"id": [1, 2], "prob": [[1.0, 0.0], [0.0, 1.0]]})
    predictions = pl.DataFrame(
        {"model": ["m", "m"], "id": [1, 2], "prob": [[0.5, 0.5], [0.5, 0.5]]}
    )
    evaluation = api.evaluate(labels, predictions, classes=["cat", "dog"], base="2", worst=0)
    assert evaluation.report.get_column("mean_kl").to_list() == [1.0]
    assert evaluation.class_contributions.get_column("class").to_list() == ["cat", "dog"]
    assert evaluation.worst_rows is None
    assert CLASSES  # the helpers' classes are a, b, c; these are named here


def test_publish_removes_the_failure_cases_of_an_earlier_failed_night(tmp_path: Path) -> None:
    labels, predictions = _inputs(tmp_path)
    bad = set_value(prob_predictions(), "prob_a", -0.5, model="n", id=2)
    bad_path = write(bad, tmp_path / "bad.parquet")
    out, night = tmp_path / "out", "2026-03-04"
    args = ("--labels", labels, "--out", out, "--run-date", night)
    expect(klrank("run", *args, "--predictions", bad_path), 1)
    failures = out / "_failures" / f"run_date={night}" / "failures.parquet"
    assert failures.is_file()  # outside the night's folder: publishing the night keeps it
    api.evaluate(labels, predictions).publish(out, run_date=night)
    assert not failures.exists()  # as klrank run removes it
    assert (out / f"run_date={night}" / "report.parquet").is_file()
