"""klrank deletes only what it wrote: every ``--out`` that could destroy something is refused.

Each case runs the ``klrank`` command (in this process, :func:`invoke`, unless a real process
matters: a run that another one waits for, or one that is killed) and checks, byte for byte,
that what was there before is still there afterwards (:func:`snapshot`), and that the refusal
came before any work (no lock file, no staging folder, no report).
"""

import fcntl
import glob
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl
import pytest
from cli_helpers import (
    FAILURE_COLUMNS,
    Running,
    expect,
    inputs,
    invoke,
    many_rows,
    prob_predictions,
    snapshot,
    soft_labels,
    start,
    write,
    write_hive,
)
from klrank.io.targets import STAGING_PREFIX
from klrank.runtime.lock import lock_path

RUN_DATE = "2026-01-02"


def _inputs(root: Path) -> list[str | Path]:
    return inputs(root, soft_labels(), prob_predictions())


def _staging(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX))


# ---------------------------------------------------------------------------------------------
# --out and the inputs


def test_out_holding_the_inputs_is_refused_and_they_survive(tmp_path: Path) -> None:
    data = tmp_path / "d"
    args = inputs(data, soft_labels(), prob_predictions())
    before = snapshot(data)
    result = invoke("run", *args, "--out", data)
    expect(result, 2)
    assert "is or holds the labels input" in result.stderr
    assert snapshot(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no lock file, no staging


def test_out_an_ancestor_of_the_inputs_is_refused(tmp_path: Path) -> None:
    args = inputs(tmp_path / "a" / "b" / "c", soft_labels(), prob_predictions())
    before = snapshot(tmp_path)
    result = invoke("run", *args, "--out", tmp_path / "a", "--run-date", RUN_DATE)
    expect(result, 2)
    assert "holds the labels input" in result.stderr
    assert snapshot(tmp_path) == before


def test_out_inside_the_predictions_folder_is_refused(tmp_path: Path) -> None:
    labels = write(soft_labels(), tmp_path / "labels.parquet")
    predictions = write_hive(prob_predictions(), tmp_path / "predictions")
    before = snapshot(tmp_path)
    result = invoke(
        "run", "-l", labels, "-p", predictions, "--out", predictions / "reports",
        "--run-date", RUN_DATE,
    )  # fmt: skip
    expect(result, 2)
    assert "lies inside the predictions input" in result.stderr
    assert snapshot(tmp_path) == before


def test_out_inside_a_glob_input_root_is_refused(tmp_path: Path) -> None:
    labels = write(soft_labels(), tmp_path / "labels.parquet")
    predictions = write_hive(prob_predictions(), tmp_path / "predictions")
    result = invoke(
        "run", "-l", labels, "-p", f"{predictions}/**/*.parquet", "--out",
        predictions / "model=m" / "out",
    )  # fmt: skip
    expect(result, 2)
    assert "lies inside the predictions input" in result.stderr


def _glob_through_a_link(root: Path) -> tuple[str, Path]:
    (root / "plink").symlink_to(root / "predictions")
    return f"{root}/plink/**/*.parquet", root / "predictions" / "reports"


def _glob_ending_in_stars(root: Path) -> tuple[str, Path]:
    return f"{root}/predictions/**", root / "predictions" / "reports"


def _link_under_the_stars(root: Path) -> tuple[str, Path]:
    (root / "elsewhere").mkdir()
    (root / "predictions" / "latest").symlink_to(root / "elsewhere")
    return f"{root}/predictions/**/*.parquet", root / "elsewhere" / "reports"


@pytest.mark.parametrize(
    "case", [_glob_through_a_link, _glob_ending_in_stars, _link_under_the_stars]
)
def test_out_that_a_glob_reads_through_links_or_a_last_star_star_is_refused(
    tmp_path: Path, case: Callable[[Path], tuple[str, Path]]
) -> None:
    labels = write(soft_labels(), tmp_path / "labels.parquet")
    write_hive(prob_predictions(), tmp_path / "predictions")
    spec, out = case(tmp_path)
    failures = tmp_path / "failures.parquet"  # not below --out: only the --out check can refuse
    result = invoke("run", "-l", labels, "-p", spec, "--out", out, "--failures", failures)
    expect(result, 2)
    assert "lies inside the predictions input" in result.stderr
    assert not out.exists()
    # The refusal is due: the glob, as Python expands it, would read a report published there.
    write(soft_labels(), out / "report.parquet")
    assert str(out / "report.parquet") in {
        os.path.realpath(p) for p in glob.glob(spec, recursive=True)
    }


def test_failures_file_that_is_an_input_is_refused_and_kept(tmp_path: Path) -> None:
    args = _inputs(tmp_path)
    labels = Path(args[1])
    before = labels.read_bytes()
    result = invoke("run", *args, "--out", tmp_path / "out", "--failures", labels)
    expect(result, 2)
    assert "--failures" in result.stderr and "labels input" in result.stderr
    assert labels.read_bytes() == before


def test_failures_file_klrank_did_not_write_is_refused_and_kept(tmp_path: Path) -> None:
    mine = tmp_path / "notes.parquet"
    pl.DataFrame({"x": [1]}).write_parquet(mine)
    before = mine.read_bytes()
    result = invoke("run", *_inputs(tmp_path), "--out", tmp_path / "out", "--failures", mine)
    expect(result, 2)
    assert "not a failure-cases file of klrank" in result.stderr
    assert mine.read_bytes() == before


def test_out_that_is_the_labels_file_is_refused_as_an_input(tmp_path: Path) -> None:
    args = _inputs(tmp_path)
    before = snapshot(tmp_path)
    result = invoke("run", *args, "--out", args[1])
    expect(result, 2)  # a usage error, not an I/O one (74): the path is an input
    assert "is or holds the labels input" in result.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("failures", "extra"),
    [
        ("out", []),
        ("out/report.parquet", []),
        (f"out/run_date={RUN_DATE}/report.parquet", ["--run-date", RUN_DATE]),
        ("out/failures.parquet", ["--run-date", RUN_DATE]),
    ],
)
def test_failures_that_readers_of_the_reports_would_read_are_refused(
    tmp_path: Path, failures: str, extra: list[str]
) -> None:
    bad = prob_predictions().with_columns(pl.lit(2.0).alias("prob_a"))  # fails validation
    args = inputs(tmp_path / "in", soft_labels(), bad)
    result = invoke("run", *args, "--out", "out", "--failures", failures, *extra, cwd=tmp_path)
    expect(result, 2)
    assert "--failures" in result.stderr and "lies in it" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing written, no lock


def test_failures_under_an_underscore_folder_of_out_are_written(tmp_path: Path) -> None:
    bad = prob_predictions().with_columns(pl.lit(2.0).alias("prob_a"))
    failures = tmp_path / "out" / "_checks" / "failures.parquet"
    result = invoke(
        "run", *inputs(tmp_path, soft_labels(), bad), "--out", tmp_path / "out",
        "--run-date", RUN_DATE, "--failures", failures,
    )  # fmt: skip
    expect(result, 1)
    assert pl.read_parquet(failures).columns == FAILURE_COLUMNS


# ---------------------------------------------------------------------------------------------
# An existing --out


def test_an_existing_folder_that_is_not_a_report_is_refused_untouched(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "private").mkdir(parents=True)
    (docs / "thesis.tex").write_text("chapter 1")
    (docs / "private" / "notes.txt").write_text("keep")
    before = snapshot(docs)
    result = invoke("run", *_inputs(tmp_path), "--out", docs)
    expect(result, 2)
    assert "exists and is not a klrank report" in result.stderr
    assert snapshot(docs) == before
    assert _staging(tmp_path) == []


def test_a_dated_partition_that_is_not_a_report_is_refused(tmp_path: Path) -> None:
    night = tmp_path / "out" / f"run_date={RUN_DATE}"
    night.mkdir(parents=True)
    (night / "mine.csv").write_text("a,b")
    before = snapshot(tmp_path / "out")
    result = invoke("run", *_inputs(tmp_path), "--out", tmp_path / "out", "--run-date", RUN_DATE)
    expect(result, 2)
    assert snapshot(tmp_path / "out") == before


def test_an_empty_folder_and_a_report_are_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    expect(invoke("run", *_inputs(tmp_path), "--out", out), 0)
    expect(invoke("run", *_inputs(tmp_path), "--out", out, "--base", "e"), 0)
    assert pl.read_parquet(out / "report.parquet").get_column("unit").unique().to_list() == ["nats"]


@pytest.mark.parametrize("dated", [False, True], ids=["undated", "dated"])
def test_a_report_holding_a_file_the_user_added_is_refused(tmp_path: Path, dated: bool) -> None:
    out = tmp_path / "out"
    extra = ["--run-date", RUN_DATE] if dated else []
    target = out / f"run_date={RUN_DATE}" if dated else out
    expect(invoke("run", *_inputs(tmp_path), "--out", out, *extra), 0)
    (target / "notes.md").write_text("why model m won")
    (target / "data").symlink_to(tmp_path)
    before = snapshot(out)
    result = invoke("run", *_inputs(tmp_path), "--out", out, *extra)
    expect(result, 2)
    assert "klrank did not write 'data'" in result.stderr
    assert snapshot(out) == before
    (target / "data").unlink()
    (target / "notes.md").unlink()
    expect(invoke("run", *_inputs(tmp_path), "--out", out, *extra), 0)  # its own files: replaced


def test_a_folder_holding_only_failure_records_is_klranks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bad = prob_predictions().with_columns(pl.lit(2.0).alias("prob_a"))
    failed = invoke("run", *inputs(tmp_path / "bad", soft_labels(), bad), "--out", out)
    expect(failed, 1)
    assert (out / "_failures" / "failures.parquet").is_file()
    expect(invoke("run", *_inputs(tmp_path), "--out", out), 0)
    assert not (out / "_failures").exists()  # the stale record went with the swap


def test_out_through_a_symlink_publishes_into_its_target(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    expect(invoke("run", *_inputs(tmp_path), "--out", link, "--run-date", RUN_DATE), 0)
    expect(invoke("run", *_inputs(tmp_path), "--out", link), 2)  # it holds a night now
    assert link.is_symlink() and link.resolve() == real
    assert (real / f"run_date={RUN_DATE}" / "report.parquet").is_file()
    undated = tmp_path / "undated-link"
    undated.symlink_to(tmp_path / "undated")
    expect(invoke("run", *_inputs(tmp_path), "--out", undated), 0)
    expect(invoke("run", *_inputs(tmp_path), "--out", undated), 0)  # a rerun: the same link
    assert undated.is_symlink() and (tmp_path / "undated" / "report.parquet").is_file()


def test_a_mount_point_out_is_refused_before_any_work(tmp_path: Path) -> None:
    if not os.path.ismount("/dev/shm"):
        pytest.skip("needs /dev/shm as a mount point")
    for extra in ([], ["--run-date", RUN_DATE]):
        result = invoke("run", *_inputs(tmp_path), "--out", "/dev/shm", *extra)
        expect(result, 2)
        assert "is a mount point" in result.stderr and "/dev/shm/klrank" in result.stderr
    assert not list(Path("/dev/shm").glob(".run_date=*.klrank.lock"))


@contextmanager
def _bind_mounted(source: Path, point: Path) -> Iterator[None]:
    source.mkdir()
    point.mkdir()
    done = subprocess.run(["mount", "--bind", source, point], capture_output=True, check=False)
    if done.returncode != 0:
        if os.environ.get("KLRANK_REQUIRE_MOUNT") == "1":
            pytest.fail(f"cannot bind-mount, and KLRANK_REQUIRE_MOUNT=1: {done.stderr!r}")
        pytest.skip("a bind mount needs root")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", point], check=False)


def test_a_bind_mount_of_the_same_file_system_is_refused_before_any_work(tmp_path: Path) -> None:
    point = tmp_path / "bound reports"  # a space: escaped as \040 in /proc/self/mountinfo
    with _bind_mounted(tmp_path / "source", point):
        assert not os.path.ismount(point)  # what the check cannot rely on alone
        for extra in ([], ["--run-date", RUN_DATE]):
            result = invoke("run", *_inputs(tmp_path), "--out", point, *extra)
            expect(result, 2)  # not 74 (EBUSY, EXDEV) once all the work is done
            assert "is a mount point" in result.stderr
        assert list(point.iterdir()) == [] and _staging(tmp_path) == []


@pytest.mark.parametrize("dated", [False, True], ids=["undated", "dated"])
def test_an_out_name_of_230_characters_publishes(tmp_path: Path, dated: bool) -> None:
    out = tmp_path / ("r" * 230)
    extra = ["--run-date", RUN_DATE] if dated else []
    for _ in range(2):  # the rerun swaps: its staging name must fit too
        expect(invoke("run", *_inputs(tmp_path), "--out", out, *extra), 0)
    assert (out / (f"run_date={RUN_DATE}" if dated else "") / "_SUCCESS").is_file()


# ---------------------------------------------------------------------------------------------
# An undated and a dated run on the same --out


@contextmanager
def _holding(path: Path, mode: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, mode)
        yield


def test_an_undated_run_waits_for_a_dated_one_then_refuses_its_night(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _inputs(tmp_path)
    # A dated run holds the tree's lock shared while it works; the undated run must wait.
    with _holding(lock_path(out), fcntl.LOCK_SH):
        busy = invoke("run", *args, "--out", out, "--lock-timeout", "0")
        expect(busy, 75)
        waiting = start("run", *args, "--out", out, "--lock-timeout", "60")
        time.sleep(1.5)  # it has passed its first check and waits for the lock
        assert waiting.process.poll() is None
        expect(invoke("run", *args, "--out", out, "--run-date", RUN_DATE), 0)  # shared: in
    night = snapshot(out)
    result = waiting.wait()
    expect(result, 2)  # checked again under the lock: the night it would replace is there
    assert "holds nightly partitions" in result.stderr
    assert snapshot(out) == night


def test_a_dated_run_waits_for_an_undated_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _holding(lock_path(out), fcntl.LOCK_EX):
        result = invoke(
            "run", *_inputs(tmp_path), "--out", out, "--run-date", RUN_DATE, "--lock-timeout", "0"
        )
    expect(result, 75)
    assert not (out / f"run_date={RUN_DATE}").exists()


# ---------------------------------------------------------------------------------------------
# Killed runs: the previous report intact, the README's readers unaffected, leftovers removed


def _readme_readers(reports: Path) -> tuple[int, int]:
    """The README's Polars and DuckDB queries over every night, as a user runs them."""
    polars_rows = pl.read_parquet(f"{reports}/**/report.parquet", hive_partitioning=True).height
    duck_rows = duckdb.sql(
        f"SELECT run_date, model, mean_kl FROM read_parquet('{reports}/*/report.parquet', "
        "hive_partitioning = true)"
    ).fetchall()
    return polars_rows, len(duck_rows)


@pytest.fixture(scope="module")
def slow_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str | Path]:
    """200k label rows, 3 classes, 2 models: a run takes a second or two."""
    return many_rows(tmp_path_factory.mktemp("slow"))


def _wait_for_staging(running: Running, folder: Path) -> None:
    while not _staging(folder):
        assert running.process.poll() is None, str(running.wait())
        time.sleep(0.001)


def test_sigkill_leftovers_never_reach_the_readme_readers_and_are_removed(
    tmp_path: Path, slow_inputs: list[str | Path]
) -> None:
    reports = tmp_path / "reports"
    for day in ("2026-01-01", RUN_DATE):
        expect(invoke("run", *_inputs(tmp_path), "--out", reports, "--run-date", day), 0)
    expected = _readme_readers(reports)
    before = snapshot(reports)
    running = start("run", *slow_inputs, "--out", reports, "--run-date", RUN_DATE)
    _wait_for_staging(running, tmp_path)  # beside the reports tree, not in it
    running.process.kill()
    assert running.wait().returncode == -signal.SIGKILL
    assert _staging(tmp_path) != [] and _staging(reports) == []
    assert snapshot(reports) == before
    assert _readme_readers(reports) == expected
    expect(invoke("run", *_inputs(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    assert _staging(tmp_path) == []  # the next run of the night removed what the dead one left


def test_sigkill_at_random_moments_of_a_rerun(
    tmp_path: Path, slow_inputs: list[str | Path]
) -> None:
    reports = tmp_path / "reports"
    night = reports / f"run_date={RUN_DATE}"
    expect(invoke("run", *_inputs(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    before = snapshot(reports)
    expected = _readme_readers(reports)
    rng = random.Random(12)
    mid_work = 0  # kills that left a staging folder: the run was writing its report
    for _ in range(8):
        running = start("run", *slow_inputs, "--out", reports, "--run-date", RUN_DATE, "--no-html")
        _wait_for_staging(running, tmp_path)  # the work has begun (start-up is most of a run)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the work, the publishing or after
        running.process.send_signal(signal.SIGKILL)
        code = running.wait().returncode
        assert code in (0, -signal.SIGKILL)
        mid_work += code != 0 and bool(_staging(tmp_path))
        if snapshot(reports) != before:  # the swap happened: a whole new report, nothing less
            manifest = json.loads((night / "manifest.json").read_text())
            assert {p.name for p in night.iterdir()} == {*manifest["outputs"], "_SUCCESS"}
            before = snapshot(reports)
        assert _readme_readers(reports) == expected
    assert mid_work >= 1  # else no kill landed in the work and the loop proved nothing
    expect(invoke("run", *_inputs(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    assert _staging(tmp_path) == [] and _staging(reports) == []


def test_a_report_published_before_staging_moved_is_still_cleaned(tmp_path: Path) -> None:
    """Older klranks staged beside the target, named after it; such a leftover is removed."""
    reports = tmp_path / "reports"
    expect(invoke("run", *_inputs(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    leftover = reports / f"{STAGING_PREFIX}run_date={RUN_DATE}-{'0' * 32}"
    leftover.mkdir()
    (leftover / "report.parquet").write_bytes(b"half")
    unrelated = reports / f"{STAGING_PREFIX}mine"
    unrelated.mkdir()
    expect(invoke("run", *_inputs(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    assert not leftover.exists() and unrelated.exists()  # only what klrank names its own


def test_history_never_replaces_a_file_it_did_not_write(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    args = _inputs(tmp_path)
    expect(invoke("run", *args, "--out", reports, "--run-date", RUN_DATE), 0)
    labels = Path(args[1])
    before = labels.read_bytes()
    result = invoke("history", reports, "--chart", labels)
    expect(result, 2)
    assert "is not a chart klrank wrote" in result.stderr
    assert labels.read_bytes() == before
    chart = tmp_path / "chart.html"
    expect(invoke("history", reports, "--chart", chart), 0)
    expect(invoke("history", reports, "--chart", chart), 0)  # its own chart: replaced


def test_a_chart_through_a_link_is_written_where_the_link_points(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    expect(invoke("run", *_inputs(tmp_path), "--out", reports, "--run-date", RUN_DATE), 0)
    link = tmp_path / "chart.html"
    link.symlink_to(tmp_path / "charts" / "latest.html")  # dangling until the first chart
    (tmp_path / "charts").mkdir()
    for _ in range(2):
        expect(invoke("history", reports, "--chart", link), 0)
        assert link.is_symlink()
        assert (tmp_path / "charts" / "latest.html").read_text().startswith("<!DOCTYPE html>")
