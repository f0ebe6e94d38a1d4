"""Regressions found by review, each named after what broke."""

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_helpers import expect, inputs, invoke, write_hive
from helpers import class_frame, random_distributions, run_job
from klrank.config import InputOptions, RunOptions
from klrank.io import reading
from klrank.run import run
from polars.testing import assert_frame_equal

CLASSES = ("a", "b", "c")


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
    result = invoke(
        "run",
        *inputs(tmp_path, labels, predictions),
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
    scanned = reading.scan_parquet(str(tmp_path / "**" / "*"))
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
    result = invoke(
        "run",
        *inputs(tmp_path, labels, predictions),
        "--out", tmp_path / "out",
        "--slice-by", "s",
    )  # fmt: skip
    expect(result, 2)
    assert "a list column cannot name a slice" in result.stderr


def _examples_run(out: Path, *extra: str | Path) -> list[str | Path]:
    examples = Path(__file__).parent.parent / "examples" / "data"
    return ["run", "-l", examples / "labels.parquet", "-p", examples / "predictions", "-o", out, *extra]  # fmt: skip


def test_a_run_without_run_date_used_to_replace_every_night(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    expect(invoke(*_examples_run(out, "--run-date", "2026-01-01", "--no-html")), 0)
    before = sorted(p.name for p in out.iterdir())
    result = invoke(*_examples_run(out, "--no-html"))
    expect(result, 2)
    assert "holds nightly partitions" in result.stderr and "--run-date" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == before  # the night and its lock file stay
    assert (out / "run_date=2026-01-01" / "report.parquet").is_file()


def test_out_dot_used_to_fail_with_exit_70_after_all_the_work(tmp_path: Path) -> None:
    examples = Path(__file__).parent.parent / "examples" / "data"
    result = invoke(
        "run", "-l", examples / "labels.parquet", "-p", examples / "predictions", "-o", ".",
        cwd=tmp_path,
    )  # fmt: skip
    expect(result, 2)
    assert "working directory" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_top_level_out_in_a_config_used_to_become_the_history_chart(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    config = tmp_path / "klrank.toml"
    config.write_text(f'out = "{out}"\n', encoding="utf-8")
    expect(invoke(*_examples_run(out, "--run-date", "2026-01-01", "--no-html")), 0)
    result = invoke("history", out, "--config", config)
    expect(result, 0)
    assert (out / "history.html").is_file()


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("lock-timeout = -1", "lock-timeout"),
        ('worst = "lots"', "worst"),
        ('run-date = "x"', "run-date"),
    ],
)
def test_a_bad_config_value_used_to_be_blamed_on_an_unset_variable(
    tmp_path: Path, line: str, key: str
) -> None:
    config = tmp_path / "klrank.toml"
    config.write_text(f'labels = "a"\npredictions = "b"\n[run]\nout = "o"\n{line}\n', "utf-8")
    result = invoke("run", "--config", config)
    expect(result, 2)
    message = " ".join(result.stderr.replace("│", " ").split())
    assert f"klrank.toml: {key} =" in message, message


def test_run_date_folders_not_in_iso_form_used_to_count_as_nights(tmp_path: Path) -> None:
    for name in (
        "run_date=2026-02-01",
        "run_date=20260205",
        "run_date=2026-W06-5",
        "run_date=2026-02-30",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.parquet").touch()
    assert [d.isoformat() for d, _ in reading.run_partitions(tmp_path, "report.parquet")] == [
        "2026-02-01"
    ]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "-l", "a", "-p", "b", "-o", "o", "--base", "3"], "--base"),
        (["run", "-l", "a", "-p", "b", "-o", "o", "--no-such-option"], "--no-such-option"),
        (["validate", "-l", "a"], "--predictions"),
    ],
)
def test_json_used_to_print_nothing_for_errors_the_option_parser_finds(
    tmp_path: Path, args: list[str], named: str
) -> None:
    result = invoke(*args, "--json", cwd=tmp_path)
    expect(result, 2)
    (line,) = result.stdout.splitlines()
    summary = json.loads(line)
    assert summary["status"] == "usage_error" and summary["exit_code"] == 2
    assert named in summary["message"]


def test_a_baseline_that_is_no_report_used_to_print_a_query_plan(tmp_path: Path) -> None:
    labels = Path(__file__).parent.parent / "examples" / "data" / "labels.parquet"
    result = invoke(*_examples_run(tmp_path / "out", "--baseline", labels, "-q"))
    expect(result, 2)
    assert "no column 'slice' (is it a klrank report.parquet?)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_missing_input_used_to_leave_folders_and_a_lock_file_behind(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "reports"
    result = invoke(
        "run", "-l", tmp_path / "nope.parquet", "-p", tmp_path / "nope", "-o", out,
        "--run-date", "2026-05-01",
    )  # fmt: skip
    expect(result, 2)
    assert "does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_models_failing_coverage_used_to_each_hold_a_batch_through_the_paired_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every input's reader used to start at once, also for models that are only validated
    # after the paired loop: each held a thread and a batch (80-90 MB at full size) through it.
    import threading

    from klrank.engines import local
    from klrank.pipeline.errors import InvalidDataError

    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("klrank-read")]

    seen: list[int] = []
    check_rows = local.check_rows

    def counting(batch: pl.DataFrame, dataset: str, *args: object) -> pl.DataFrame:
        if dataset == "labels" and not seen:
            seen.append(len(readers()))
        return check_rows(batch, dataset, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(local, "check_rows", counting)
    rng = np.random.default_rng(5)
    n = 50
    p = random_distributions(rng, n, 3)
    labels = pl.DataFrame({"id": np.arange(n), **{f"prob_{k}": p[:, k] for k in range(3)}})
    models = [labels.with_columns(model=pl.lit("good"))]
    for j in range(6):  # each misses one id: validated only, after the loop
        models.append(labels.filter(pl.col("id") != j).with_columns(model=pl.lit(f"short{j}")))
    predictions = pl.concat(models, how="vertical").select("id", "model", pl.exclude("id", "model"))
    with pytest.raises(InvalidDataError):
        run_job(tmp_path, labels, predictions)
    assert seen and seen[0] <= 2  # the labels' reader and the one good model's, at most
    for thread in readers():  # and every reader ends with the evaluation
        thread.join(timeout=30)
        assert not thread.is_alive()


def _split_into_files(
    labels: pl.DataFrame, predictions: pl.DataFrame, root: Path, rows: Sequence[int]
) -> tuple[Path, Path]:
    """The inputs as part files of ``rows[i % len(rows)]`` rows each, predictions under
    ``model=NAME/`` folders, as Spark and Hive writers leave them.
    """

    def write(frame: pl.DataFrame, folder: Path) -> None:
        folder.mkdir(parents=True)
        start, part = 0, 0
        while start < frame.height:
            n = rows[part % len(rows)]
            frame.slice(start, n).write_parquet(folder / f"part-{part:05d}.parquet")
            start, part = start + n, part + 1

    write(labels, root / "labels")
    for (model,), frame in predictions.group_by("model", maintain_order=True):
        write(frame.drop("model"), root / "predictions" / f"model={model}")
    return root / "labels", root / "predictions"


def _as_one_file_and_as_many(
    tmp_path: Path, rows: Sequence[int]
) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame], dict[str, object]]:
    """What a run publishes from 100 label rows and two models in one file, and in many."""
    rng = np.random.default_rng(31)
    n = 100
    p = random_distributions(rng, n, 3)
    region = pl.Series("region", rng.choice(["eu", "us"], n))
    labels = pl.DataFrame({"id": np.arange(n), "region": region} | class_frame(p, CLASSES, "prob_"))
    models = []
    for model, noise in (("sharp", 0.1), ("blurry", 0.6)):
        q = (1 - noise) * p + noise * random_distributions(rng, n, 3)
        frame = pl.DataFrame(
            {"id": np.arange(n), "model": model} | class_frame(q, CLASSES, "prob_")
        )
        models.append(frame if model == "sharp" else frame.sample(fraction=1.0, shuffle=True))
    predictions = pl.concat(models)
    one_labels, one_predictions = tmp_path / "one" / "labels.parquet", tmp_path / "one" / "p"
    one_labels.parent.mkdir()
    labels.write_parquet(one_labels)
    write_hive(predictions, one_predictions)
    many = _split_into_files(labels, predictions, tmp_path / "many", rows)
    published = []
    for name, (labels_path, predictions_path) in (
        ("one", (one_labels, one_predictions)),
        ("many", many),
    ):
        out = tmp_path / f"out-{name}"
        options = InputOptions(str(labels_path), str(predictions_path), slice_by=("region",))
        summary = run(RunOptions(inputs=options, out=out))
        files = ("report", "rows", "class_contributions", "worst_rows")
        published.append({f: pl.read_parquet(out / f"{f}.parquet") for f in files})
    return published[0], published[1], summary.manifest


def test_one_row_part_files_used_to_cost_the_square_of_their_number(tmp_path: Path) -> None:
    # A query over N files held N scans, each with its own row index, and Polars' streaming
    # engine costs the square of the scans in a query: 1,000 one-row files took 14 s and
    # 10,000 did not finish in 10 minutes. The same rows in one file are the oracle, to the
    # last bit: positions, hive keys and the order of additions must not depend on the files.
    one, many, manifest = _as_one_file_and_as_many(tmp_path, rows=[1])
    assert manifest["inputs"]["labels"]["files"] == 100  # type: ignore[index]
    assert manifest["inputs"]["predictions"]["files"] == 200  # type: ignore[index]
    assert manifest["alignment"] == {"blurry": "joined", "sharp": "positional"}
    for name, frame in one.items():
        assert_frame_equal(many[name], frame, check_exact=True)


def test_batches_across_many_files_used_to_read_every_file_before_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each batch was a slice of a union of every file's scan, which read all the scans before
    # the slice. Batches of 7 rows now start and end inside files of 1 to 5 rows.
    from klrank.engines import local

    monkeypatch.setattr(local, "batch_rows", lambda n_classes, batch_bytes: 7)
    one, many, _ = _as_one_file_and_as_many(tmp_path, rows=[3, 1, 5, 2, 4])
    for name, frame in one.items():
        assert_frame_equal(many[name], frame, check_exact=True)
