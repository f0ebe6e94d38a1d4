"""The Airflow task's exit-code mapping and command line (jobs/airflow/klrank_task.py), no Airflow.

tests/airflow/test_airflow.py runs the DAG itself in real Airflow.
"""

import doctest
import json
import signal
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from cli_helpers import expect, inputs, invoke, prob_predictions, soft_labels
from klrank.airflow import klrank_task
from klrank.airflow.klrank_task import (
    Outcome,
    judge,
    klrank_argv,
    read_manifest,
    report_uri,
    xcom_summary,
)


@pytest.mark.parametrize(
    ("exit_code", "outcome"),
    [
        (0, Outcome.SUCCESS),
        # Bad data, a bad command line and a failed regression gate give the same result on a rerun.
        (1, Outcome.FAIL),
        (2, Outcome.FAIL),
        (3, Outcome.FAIL),
        # A bug may be transient (memory, a flaky mount); retries are bounded.
        (70, Outcome.RETRY),
        # The machine's storage (a full disk, a read-only remount) and the Ray cluster may recover.
        (74, Outcome.RETRY),
        (69, Outcome.RETRY),
        # Another run of the same night held the partition's lock: the next try can take it.
        (75, Outcome.RETRY),
        # Killed: an Airflow timeout or a stopped worker, directly (-N) or through a shell (128 + N).
        (-signal.SIGTERM, Outcome.RETRY),
        (-signal.SIGKILL, Outcome.RETRY),
        (130, Outcome.RETRY),
        (137, Outcome.RETRY),
        (143, Outcome.RETRY),
        (4, Outcome.RETRY),
        (255, Outcome.RETRY),
    ],
)
def test_judge_maps_each_exit_code_to_an_outcome(exit_code: int, outcome: Outcome) -> None:
    assert judge(exit_code).outcome is outcome


@pytest.mark.parametrize(("exit_code", "cause"), [(74, "I/O step"), (69, "Ray engine")])
def test_io_and_engine_failures_are_named_not_called_unknown(exit_code: int, cause: str) -> None:
    assert cause in judge(exit_code).reason and "nothing was published" in judge(exit_code).reason


def test_a_failed_regression_gate_says_the_report_was_published() -> None:
    assert "report WAS published" in judge(3).reason


def test_invalid_data_says_nothing_was_published_and_retrying_cannot_help() -> None:
    reason = judge(1).reason
    assert "nothing was published" in reason
    assert "retrying cannot help" in reason


@pytest.mark.parametrize(
    ("exit_code", "reason"),
    [
        (-signal.SIGTERM, "klrank was killed by SIGTERM; retried"),
        (130, "klrank was killed by SIGINT; retried"),
        (137, "klrank was killed by SIGKILL; retried"),
        (4, "klrank exit 4: unexpected exit code; retried"),
        (-1000, "klrank exit -1000: unexpected exit code; retried"),
    ],
)
def test_judge_names_the_signal_or_the_unexpected_code(exit_code: int, reason: str) -> None:
    assert judge(exit_code).reason == reason


def test_klrank_argv_runs_one_night_with_a_json_summary() -> None:
    argv = klrank_argv(
        "/srv/klrank/.venv/bin/klrank",
        "/data/labels",
        "/data/predictions",
        "/data/klrank",
        "2026-11-25",
    )
    assert argv == [
        "/srv/klrank/.venv/bin/klrank",
        "run",
        "--labels",
        "/data/labels",
        "--predictions",
        "/data/predictions",
        "--out",
        "/data/klrank",
        "--run-date",
        "2026-11-25",
        "--json",
    ]


def test_klrank_argv_splits_the_command_and_the_options_as_shell_words() -> None:
    argv = klrank_argv(
        "uv run --project '/srv/k rank' klrank",
        "/l",
        "/p",
        "/o",
        "2026-11-25",
        options="--slice-by region --rank-by 'top1_agreement'",
    )
    assert argv[:9] == [
        "uv",
        "run",
        "--project",
        "/srv/k rank",
        "klrank",
        "run",
        "--slice-by",
        "region",
        "--rank-by",
    ]
    assert argv[9] == "top1_agreement"
    assert argv[-2:] == ["2026-11-25", "--json"]


def test_klrank_argv_rejects_relative_paths() -> None:
    # The task runs in a temporary folder, so a relative path would point nowhere useful.
    with pytest.raises(ValueError, match=r"paths must be absolute: labels='labels', out='out'"):
        klrank_argv("klrank", "labels", "/p", "out", "2026-11-25")


def test_klrank_argv_rejects_an_empty_command() -> None:
    with pytest.raises(ValueError, match="the klrank command is empty"):
        klrank_argv("  ", "/l", "/p", "/o", "2026-11-25")


def test_docstring_examples() -> None:
    assert doctest.testmod(klrank_task).failed == 0


def test_the_summary_is_the_published_nights_manifest_read_for_xcom(tmp_path: Path) -> None:
    # A real night with a failed gate (--max-mean-kl 0.01, which some model exceeds),
    # published by the CLI where the task would find it.
    out, night = tmp_path / "reports", "2026-11-25"
    args = [*inputs(tmp_path, soft_labels(), prob_predictions()), "--out", out, "--run-date", night]
    expect(invoke("run", *args, "--max-mean-kl", "0.01"), 3)
    summary = xcom_summary(read_manifest(str(out), night), str(out), night)
    report = pl.read_parquet(out / f"run_date={night}" / "report.parquet").filter(slice="ALL")
    assert summary["status"] == "gate_failed" and summary["run_date"] == night
    assert urllib.request.url2pathname(summary["report_uri"].removeprefix("file://")) == str(
        out / f"run_date={night}" / "report.parquet"
    )
    assert [(m["rank"], m["model"], m["mean_kl"]) for m in summary["models"]] == report.sort(
        "rank"
    ).select("rank", "model", "mean_kl").rows()
    over = report.filter(pl.col("mean_kl") > 0.01).get_column("model").to_list()
    assert [(g["gate"], g["model"]) for g in summary["failed_gates"]] == [
        ("max_mean_kl", m) for m in over
    ]
    assert over  # the gate did fail for some model
    json.dumps(summary, allow_nan=False)  # XCom takes JSON


def test_the_report_uri_keeps_the_hive_key_readable_and_quotes_the_rest() -> None:
    uri = report_uri("/data/k rank/out#1", "2026-11-25")
    assert uri == "file:///data/k%20rank/out%231/run_date=2026-11-25/report.parquet"
    assert urllib.request.url2pathname(uri.removeprefix("file://")) == (
        "/data/k rank/out#1/run_date=2026-11-25/report.parquet"
    )
