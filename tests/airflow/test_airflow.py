"""The example DAG jobs/airflow/klrank_nightly.py, run by real Apache Airflow.

Each test runs ``airflow dags test klrank_nightly 2026-11-25`` from ``.venv-airflow`` (``make
test-airflow`` installs it) in a subprocess, with a fresh SQLite metadata database, the DAGs
folder set to jobs/airflow and the DAG's Variables set as ``AIRFLOW_VAR_*`` environment
variables, exactly as a deployment may set them. The task runs the real ``klrank`` of the test
environment; then the test reads from Airflow's database what the run left: the task instance's
state and try number, its XCom, and the events of the Asset it declares as its outlet, and checks
the XCom against the published report.parquet.

Deselected from the default run (pyproject's ``-m "not airflow"``); ``make test-airflow`` runs it.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from cli_helpers import PUBLISHED_FILES, set_value
from markdown_helpers import blocks

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
KLRANK = Path(sys.executable).with_name("klrank")
EXAMPLES = REPO / "examples" / "data"
RUN_DATE = "2026-11-25"
DAG_ID, TASK_ID = "klrank_nightly", "klrank_run"
ASSET = "klrank_nightly_report"
DAGS = REPO / "jobs" / "airflow"
DOCS = REPO / "docs" / "airflow.md"
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
    xcom: Any  # the task's return_value, None when it pushed none
    asset_events: list[dict[str, Any]]  # the extra of each event of ASSET, oldest first


@pytest.fixture
def airflow_home(tmp_path: Path) -> Path:
    if not AIRFLOW.exists():
        pytest.fail(f"{AIRFLOW} is missing: `make test-airflow` installs Airflow there")
    home = tmp_path / "airflow-home"
    home.mkdir()
    _airflow(home, {}, "db", "migrate")
    return home


def _environment(home: Path, variables: dict[str, str], dags: Path = DAGS) -> dict[str, str]:
    # Nothing of the caller's Airflow or klrank configuration may leak in.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KLRANK_", "_AIRFLOW"))
    }
    return env | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The DAG leaves the retry delay to Airflow's configuration (300 s by default).
        "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "0",
        **{f"AIRFLOW_VAR_{name.upper()}": value for name, value in variables.items()},
    }


def _airflow(
    home: Path, variables: dict[str, str], *args: str, dags: Path = DAGS
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AIRFLOW), *args],
        env=_environment(home, variables, dags),
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def dags_test(home: Path, dags: Path = DAGS, **variables: str | Path) -> DagRun:
    """Run the DAG for RUN_DATE with these Variables; read back its task instance."""
    done = _airflow(
        home, {k: str(v) for k, v in variables.items()}, "dags", "test", DAG_ID, RUN_DATE, dags=dags
    )
    output = done.stdout + done.stderr
    with closing(sqlite3.connect(home / "airflow.db")) as db:
        rows = db.execute(
            "SELECT state, try_number, max_tries FROM task_instance WHERE dag_id = ? AND task_id = ?",
            (DAG_ID, TASK_ID),
        ).fetchall()
        xcoms = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value'",
            (DAG_ID, TASK_ID),
        ).fetchall()
        events = db.execute(
            "SELECT e.extra, e.source_dag_id, e.source_task_id FROM asset_event e "
            "JOIN asset a ON a.id = e.asset_id WHERE a.name = ? ORDER BY e.id",
            (ASSET,),
        ).fetchall()
    assert len(rows) == 1, output
    assert len(xcoms) <= 1, xcoms
    assert all(tuple(source) == (DAG_ID, TASK_ID) for _, *source in events), events
    xcom = json.loads(xcoms[0][0]) if xcoms else None
    return DagRun(done.returncode, output, *rows[0], xcom, [json.loads(e[0]) for e in events])


def _expected_models(report_file: Path) -> list[dict[str, Any]]:
    """The ALL slice of report.parquet in rank order, as the XCom should hold it."""
    columns = ["rank", "model", "mean_kl", "ci95_low", "ci95_high", "n_rows", "n_infinite"]
    report = pl.read_parquet(report_file).filter(slice="ALL").sort("rank")
    return report.select(columns).to_dicts()


def test_the_dag_declares_the_nightly_report_as_its_outlet(airflow_home: Path) -> None:
    done = _airflow(airflow_home, {}, "dags", "reserialize")
    assert done.returncode == 0, done.stdout + done.stderr
    with closing(sqlite3.connect(airflow_home / "airflow.db")) as db:
        outlets = db.execute(
            "SELECT a.name, a.uri, r.dag_id, r.task_id FROM task_outlet_asset_reference r "
            "JOIN asset a ON a.id = r.asset_id"
        ).fetchall()
    assert outlets == [(ASSET, ASSET, DAG_ID, TASK_ID)]


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
    # XCom holds the night's summary, as the published report has it.
    assert run.xcom == {
        "status": "success",
        "run_date": RUN_DATE,
        "report_uri": (published / "report.parquet").as_uri().replace("%3D", "="),
        "unit": "bits",
        "rank_by": "mean_kl",
        "models": _expected_models(published / "report.parquet"),
        "failed_gates": [],
        "klrank_version": json.loads((published / "manifest.json").read_text())["klrank_version"],
    }
    assert [m["model"] for m in run.xcom["models"]] == ["sharp", "blurry", "uniform"]
    assert Path(run.xcom["report_uri"].removeprefix("file://")) == published / "report.parquet"
    # One event of the Asset, saying which night it is and where its report lies.
    assert run.asset_events == [
        {"run_date": RUN_DATE, "report_uri": run.xcom["report_uri"], "status": "success"}
    ]


def test_a_downstream_dag_scheduled_on_the_asset_is_queued_by_a_good_night(
    airflow_home: Path, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    shutil.copytree(DAGS, dags, ignore=shutil.ignore_patterns("__pycache__", "*.txt"))
    # The downstream DAG of docs/airflow.md, as a reader would copy it.
    (downstream,) = [
        b.text for b in blocks(DOCS.read_text()) if b.text.startswith("# after_klrank.py")
    ]
    (dags / "after_klrank.py").write_text(downstream)
    for command in (("dags", "reserialize"), ("dags", "unpause", "after_klrank")):
        done = _airflow(airflow_home, {}, *command, dags=dags)
        assert done.returncode == 0, done.stdout + done.stderr
    run = dags_test(
        airflow_home,
        dags,
        klrank_command=KLRANK,
        klrank_labels=EXAMPLES / "labels.parquet",
        klrank_predictions=EXAMPLES / "predictions",
        klrank_out=tmp_path / "reports",
    )
    assert (run.returncode, run.state) == (0, "success"), run.output
    with closing(sqlite3.connect(airflow_home / "airflow.db")) as db:
        queued = db.execute(
            "SELECT a.name, q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id"
        ).fetchall()
    assert queued == [(ASSET, "after_klrank")]


def test_a_failed_gate_fails_without_retry_but_hands_on_the_summary(
    airflow_home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    run = dags_test(
        airflow_home,
        klrank_command=KLRANK,
        klrank_labels=EXAMPLES / "labels.parquet",
        klrank_predictions=EXAMPLES / "predictions",
        klrank_out=out,
        klrank_options="--max-mean-kl 0.5",
    )
    assert run.returncode != 0, run.output
    assert (run.state, run.try_number) == ("failed", 1), run.output
    assert "klrank exit 3: a regression gate failed" in run.output
    report = out / f"run_date={RUN_DATE}" / "report.parquet"
    assert run.xcom is not None, run.output
    assert run.xcom["status"] == "gate_failed"
    assert run.xcom["models"] == _expected_models(report)
    # The one model over the limit, as the report says.
    over = pl.read_parquet(report).filter(slice="ALL").filter(pl.col("mean_kl") > 0.5)
    assert (
        [(g["gate"], g["model"]) for g in run.xcom["failed_gates"]]
        == [("max_mean_kl", m) for m in over.get_column("model")]
        == [("max_mean_kl", "uniform")]
    )
    assert run.asset_events == []  # the task failed: downstream DAGs do not run on this night


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
    assert (run.xcom, run.asset_events) == (None, [])


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
