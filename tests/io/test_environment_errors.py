"""Environment problems get exit 74 (EX_IOERR) and a message naming the path and the cause.

A full disk and a read-only folder are real: a small tmpfs mounted for the test (as root, which
CI is: ``.ci/run`` sets ``KLRANK_REQUIRE_MOUNT=1`` there, so these tests cannot be skipped in
CI), and a file-size limit (``RLIMIT_FSIZE``), which needs no privileges. Exit 70 stays for bugs.
The command runs in this process (:func:`invoke`), but under the file-size limit, which is set
on a process of its own.
"""

import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from cli_helpers import (
    KLRANK,
    _environment,
    expect,
    inputs,
    invoke,
    many_rows,
    prob_predictions,
    snapshot,
    soft_labels,
)

RUN_DATE = "2026-01-02"


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: room for a small report, not for 200k rows' rows.parquet."""
    disk = tmp_path / "disk"
    if not _mount(disk, "size=512k"):
        if os.environ.get("KLRANK_REQUIRE_MOUNT") == "1":
            pytest.fail("cannot mount a tmpfs, and KLRANK_REQUIRE_MOUNT=1")
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def _small(root: Path) -> list[str | Path]:
    # report.html included: a small report's page (about 20 KB of static SVG) fits the disk.
    return inputs(root, soft_labels(), prob_predictions())


def _many_rows(root: Path) -> list[str | Path]:
    return [*many_rows(root), "--no-html"]


def test_a_full_disk_exits_74_and_keeps_the_previous_report(
    tmp_path: Path, small_disk: Path
) -> None:
    reports = small_disk / "reports"
    expect(invoke("run", *_small(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    before = snapshot(small_disk)
    result = invoke("run", *_many_rows(tmp_path / "big"), "--out", reports, "--run-date", RUN_DATE)
    expect(result, 74)
    assert "No space left on device (ENOSPC)" in result.stderr
    assert "internal error" not in result.stderr
    assert snapshot(small_disk) == before  # the staging folder is gone, the report intact


def test_a_read_only_out_exits_74_naming_the_path(tmp_path: Path, small_disk: Path) -> None:
    reports = small_disk / "reports"
    expect(invoke("run", *_small(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    _read_only(small_disk)
    result = invoke("run", *_small(tmp_path), "--out", reports, "--run-date", RUN_DATE)
    expect(result, 74)
    assert "Read-only file system (EROFS)" in result.stderr and str(reports) in result.stderr


def test_invalid_data_stays_exit_1_when_its_failures_cannot_be_written(
    tmp_path: Path, small_disk: Path
) -> None:
    _read_only(small_disk)
    bad = prob_predictions().with_columns(pl.lit(2.0).alias("prob_a"))
    result = invoke(
        "run", *inputs(tmp_path, soft_labels(), bad), "--out", tmp_path / "out",
        "--failures", small_disk / "failures.parquet",
    )  # fmt: skip
    expect(result, 1)
    assert "probability outside [0, 1]" in result.stderr  # the failed checks are still printed
    assert "failure cases were not written" in result.stderr and "EROFS" in result.stderr


def test_a_read_only_history_chart_exits_74(tmp_path: Path, small_disk: Path) -> None:
    reports = tmp_path / "reports"
    expect(invoke("run", *_small(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    _read_only(small_disk)
    result = invoke("history", reports, "--chart", small_disk / "history.html")
    expect(result, 74)
    assert "history.html" in result.stderr and "EROFS" in result.stderr


def test_failures_naming_a_folder_exits_74(tmp_path: Path) -> None:
    folder = tmp_path / "failures"
    folder.mkdir()
    bad = prob_predictions().with_columns(pl.lit(2.0).alias("prob_a"))
    for command in ("run", "validate"):
        extra = ["--out", tmp_path / "out"] if command == "run" else []
        result = invoke(
            command, *inputs(tmp_path, soft_labels(), bad), *extra, "--failures", folder
        )
        expect(result, 74)
        assert f"--failures: '{folder}' is a directory" in result.stderr


def test_a_file_size_limit_exits_74_without_privileges(tmp_path: Path) -> None:
    def limit() -> None:  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    args = [str(a) for a in _many_rows(tmp_path)]
    done = subprocess.run(
        [str(KLRANK), "run", *args, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=_environment(None),
        preexec_fn=limit,
        timeout=120,
        check=False,
    )
    assert done.returncode == 74, done.stderr
    assert "File too large (EFBIG)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".klrank-staging")] == []


def test_a_config_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "klrank.toml"
    config.write_bytes(b'base = "\xff"\n')
    result = invoke("--config", config, "run", *_small(tmp_path), "--out", tmp_path / "out")
    expect(result, 2)
    assert "is not UTF-8 text" in result.stderr


def _fake_report(path: Path, **columns: pl.Series) -> Path:
    frame = pl.DataFrame(
        {
            "slice": ["ALL", "ALL"],
            "rank": [1, 2],
            "model": ["m", "n"],
            "n_rows": [4, 4],
            "mean_kl": [0.1, 0.2],
            "sem_kl": [0.01, 0.02],
            "ci95_low": [0.08, 0.16],
            "ci95_high": [0.12, 0.24],
            "n_infinite": [0, 0],
        }
    ).with_columns(**columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path, metadata={"klrank.report_schema_version": "2", "klrank.unit": "bits"})
    return path


BROKEN_COLUMNS = {
    "strings": {"mean_kl": pl.Series(["0.1", "x"])},
    "nulls": {"mean_kl": pl.Series([None, 0.2], dtype=pl.Float64)},
    "nan": {"mean_kl": pl.Series([float("nan"), 0.2])},
    "nan_in_a_nullable_column": {"sem_kl": pl.Series([float("nan"), 0.02])},
    "a_model_twice": {"model": pl.Series(["m", "m"])},
}


@pytest.mark.parametrize("broken", list(BROKEN_COLUMNS))
def test_a_baseline_that_is_not_a_valid_report_is_a_usage_error(
    tmp_path: Path, broken: str
) -> None:
    baseline = _fake_report(tmp_path / "old" / "report.parquet", **BROKEN_COLUMNS[broken])
    result = invoke("run", *_small(tmp_path), "--out", tmp_path / "out", "--baseline", baseline)
    expect(result, 2)
    assert f"'{baseline}' is not a valid klrank report" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("broken", list(BROKEN_COLUMNS))
def test_a_history_night_that_is_not_a_valid_report_is_a_usage_error(
    tmp_path: Path, broken: str
) -> None:
    reports = tmp_path / "reports"
    expect(invoke("run", *_small(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    night = _fake_report(
        reports / "run_date=2026-01-03" / "report.parquet", **BROKEN_COLUMNS[broken]
    )
    result = invoke("history", reports)
    expect(result, 2)
    assert f"'{night}' is not a valid klrank report" in result.stderr
