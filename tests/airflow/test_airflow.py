"""The example DAG jobs/airflow/klrank_nightly.py, run by real Apache Airflow.

Each test runs ``airflow dags test klrank_nightly 2026-11-25`` from ``.venv-airflow`` (``make
test-airflow`` installs it) in a subprocess, with a fresh SQLite metadata database, the DAGs
folder set to jobs/airflow and the DAG's Variables set as ``AIRFLOW_VAR_*`` environment
variables, exactly as a deployment may set them. The task runs the real ``klrank`` of the test
environment; then the test reads the task instance's state and try number from Airflow's database.

Deselected from the default run (pyproject's ``-m "not airflow"``); ``make test-airflow`` runs it.
"""

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from cli_helpers import PUBLISHED_FILES, set_value

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
KLRANK = Path(sys.executable).with_name("klrank")
EXAMPLES = REPO / "examples" / "data"
RUN_DATE = "2026-11-25"
DAG_ID, TASK_ID = "klrank_nightly", "klrank_run"
RETRIES = 2  # as set in the DAG
# Guards against a hang (a retry delay not taken from the test's configuration, say); not a
# speed check: one run takes about ten seconds.
HANG_GUARD_S = 600


@dataclass(frozen=True)
class DagRun:
    """What one ``airflow dags test`` did."""

    returncode: int
    output: str
    state: str
    try_number: int
    max_tries: int


@pytest.fixture
def airflow_home(tmp_path: Path) -> Path:
    if not AIRFLOW.exists():
        pytest.fail(f"{AIRFLOW} is missing: `make test-airflow` installs Airflow there")
    home = tmp_path / "airflow-home"
    home.mkdir()
    _airflow(home, {}, "db", "migrate")
    return home


def _environment(home: Path, variables: dict[str, str]) -> dict[str, str]:
    # Nothing of the caller's Airflow or klrank configuration may leak in.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KLRANK_", "_AIRFLOW"))
    }
    return env | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "jobs" / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The DAG leaves the retry delay to Airflow's configuration (300 s by default).
        "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "0",
        **{f"AIRFLOW_VAR_{name.upper()}": value for name, value in variables.items()},
    }


def _airflow(home: Path, variables: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AIRFLOW), *args],
        env=_environment(home, variables),
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def dags_test(home: Path, **variables: str | Path) -> DagRun:
    """Run the DAG for RUN_DATE with these Variables; read back its task instance."""
    done = _airflow(
        home, {k: str(v) for k, v in variables.items()}, "dags", "test", DAG_ID, RUN_DATE
    )
    output = done.stdout + done.stderr
    with closing(sqlite3.connect(home / "airflow.db")) as db:
        rows = db.execute(
            "SELECT state, try_number, max_tries FROM task_instance WHERE dag_id = ? AND task_id = ?",
            (DAG_ID, TASK_ID),
        ).fetchall()
    assert len(rows) == 1, output
    return DagRun(done.returncode, output, *rows[0])


def test_a_night_on_the_examples_publishes_the_report(airflow_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    run = dags_test(
        airflow_home,
        klrank_command=KLRANK,
        klrank_labels=EXAMPLES / "labels.parquet",
        klrank_predictions=EXAMPLES / "predictions",
        klrank_out=out,
        klrank_options="--slice-by region",
    )
    assert run.returncode == 0, run.output
    assert (run.state, run.try_number) == ("success", 1), run.output
    published = out / f"run_date={RUN_DATE}"
    assert {p.name for p in published.iterdir()} == PUBLISHED_FILES
    report = pl.read_parquet(published / "report.parquet")
    assert set(report.filter(slice="ALL")["model"]) == {"blurry", "sharp", "uniform"}
    assert report.filter(pl.col("slice").str.starts_with("region=")).height > 0
    # klrank's own output is in the task log: its one-line JSON summary.
    assert '{"status": "success"' in run.output, run.output


def test_a_night_with_invalid_data_fails_without_retry_and_publishes_nothing(
    airflow_home: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES, data)
    labels = pl.read_parquet(data / "labels.parquet")
    set_value(labels, "prob_cat", 1.5, id=17).write_parquet(data / "labels.parquet")
    out = tmp_path / "reports"
    run = dags_test(
        airflow_home,
        klrank_command=KLRANK,
        klrank_labels=data / "labels.parquet",
        klrank_predictions=data / "predictions",
        klrank_out=out,
    )
    assert run.returncode != 0, run.output
    assert "DagRun failed" in run.output
    # Failed on its first try although two retries were left.
    assert (run.state, run.try_number, run.max_tries) == ("failed", 1, RETRIES), run.output
    assert "AirflowFailException: klrank exit 1: the input data failed validation" in run.output
    assert "id=17" in run.output, "klrank's failed checks are in the task log"
    assert not (out / f"run_date={RUN_DATE}").exists()
    assert (out / "_failures" / f"run_date={RUN_DATE}" / "failures.parquet").exists()


def test_an_internal_error_is_retried(airflow_home: Path, tmp_path: Path) -> None:
    # No real input makes klrank exit 70 (that takes a bug), so a stand-in command does; what is
    # tested here is the DAG's side: the task fails the try and Airflow runs it again.
    stand_in = tmp_path / "klrank-bug"
    stand_in.write_text('#!/bin/sh\necho "stand-in for klrank $*"\nexit 70\n')
    stand_in.chmod(0o755)
    run = dags_test(
        airflow_home,
        klrank_command=stand_in,
        klrank_labels=EXAMPLES / "labels.parquet",
        klrank_predictions=EXAMPLES / "predictions",
        klrank_out=tmp_path / "reports",
    )
    assert run.returncode != 0, run.output
    assert (run.state, run.try_number) == ("failed", 1 + RETRIES), run.output
    assert run.output.count("stand-in for klrank run --labels") == 1 + RETRIES, run.output
    assert "klrank exit 70: internal error" in run.output
