"""Nights logged to a real MLflow tracking server (``--mlflow-experiment``, ``publish``).

The module starts ``mlflow server`` from ``.venv-mlflow`` (``make test-mlflow`` installs it:
full MLflow, which klrank's own environment does not hold) on a free loopback port, with a
SQLite backend store and an artifact folder in a temporary directory, and stops it at the end.
klrank logs with its own client (``mlflow-skinny``, the ``mlflow`` extra, in the test
environment); what the server holds is read back through MLflow's REST API with the standard
library, independent of that client, and compared with the published files read with Polars.

Deselected from the default run (pyproject's ``-m "not ..."``); ``make test-mlflow`` runs it.
A server that cannot be started fails the tests: they are never skipped.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import polars.selectors as cs
import pytest
from cli_helpers import KLRANK, expect, klrank, start
from klrank import StorageError, evaluate
from klrank.io import publishing
from markdown_helpers import blocks

pytestmark = pytest.mark.mlflow

REPO = Path(__file__).resolve().parents[2]
MLFLOW = REPO / ".venv-mlflow" / "bin" / "mlflow"
DOCS = REPO / "docs" / "mlflow.md"
EXAMPLES = REPO / "examples" / "data"
INPUTS = ("--labels", EXAMPLES / "labels.parquet", "--predictions", EXAMPLES / "predictions")
# Guards against a server that never answers; not a speed check (it starts in about 15 s).
HANG_GUARD_S = 300


@dataclass(frozen=True)
class Server:
    """A running tracking server and the REST calls the tests read it with."""

    uri: str

    def get(self, endpoint: str, **query: str) -> Any:
        url = f"{self.uri}{endpoint}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=HANG_GUARD_S) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.uri}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:
            return json.load(response)

    def runs(self, experiment: str) -> list[dict[str, Any]]:
        """Every run of ``experiment``, as the REST API returns them."""
        found = self.get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=experiment)
        experiment_id = found["experiment"]["experiment_id"]
        body = {"experiment_ids": [experiment_id], "max_results": 1000}
        return list(self.post("/api/2.0/mlflow/runs/search", body).get("runs", []))

    def artifacts(self, run_id: str, path: str = "") -> dict[str, bytes]:
        """Every artifact file of a run under ``path``, by its path, with its bytes."""
        listed = self.get("/api/2.0/mlflow/artifacts/list", run_id=run_id, path=path)
        files: dict[str, bytes] = {}
        for entry in listed.get("files", []):
            if entry["is_dir"]:
                files |= self.artifacts(run_id, entry["path"])
                continue
            query = urllib.parse.urlencode({"path": entry["path"], "run_uuid": run_id})
            with urllib.request.urlopen(f"{self.uri}/get-artifact?{query}") as response:
                files[entry["path"]] = response.read()
        return files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not MLFLOW.exists():
        pytest.fail(f"{MLFLOW} is missing: `make test-mlflow` installs the MLflow server there")
    home = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            *("--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"),
            *("--artifacts-destination", str(home / "artifacts")),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        start_new_session=True,  # its workers too are stopped with its process group
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not _healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the MLflow server did not start:\n{(home / 'server.log').read_text()}"
                )
            time.sleep(0.5)
        yield Server(uri)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _experiment() -> str:
    return f"klrank-{uuid.uuid4().hex[:8]}"


def _night(
    server: Server, out: Path, run_date: str, experiment: str, *extra: str | Path
) -> dict[str, Any]:
    """Run one night through the real CLI; its manifest."""
    result = klrank(
        "run",
        *INPUTS,
        *("--slice-by", "region", "--out", out, "--run-date", run_date),
        *("--mlflow-experiment", experiment, "--json", "--log-format", "json", *extra),
        env={"MLFLOW_TRACKING_URI": server.uri},
    )
    expect(result, 3 if "--max-mean-kl" in extra else 0)
    summary: dict[str, Any] = json.loads(
        result.stdout
    )  # one JSON document, MLflow's lines kept off
    for line in result.stderr.splitlines():
        json.loads(line)  # JSON lines only, none of MLflow's own
    manifest: dict[str, Any] = json.loads(
        (out / f"run_date={run_date}" / "manifest.json").read_text()
    )
    assert summary["mlflow"] == manifest["mlflow"]
    return manifest


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _params(run: dict[str, Any]) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: float(m["value"]) for m in run["data"].get("metrics", [])}


def _by_night(runs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The runs of an experiment as {parent's name: (parent, its nested runs)}."""
    parents = {r["info"]["run_id"]: r for r in runs if "mlflow.parentRunId" not in _tags(r)}
    nights: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for run_id, parent in parents.items():
        children = [r for r in runs if _tags(r).get("mlflow.parentRunId") == run_id]
        nights[parent["info"]["run_name"]] = (parent, children)
    return nights


def _options_as_params(report: Path) -> dict[str, str]:
    """The options recorded in report.parquet's metadata, as documented for MLflow's params."""
    options = json.loads(pl.read_parquet_metadata(report)["klrank.options"])
    flat = {}
    for key, value in options.items():
        entries = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, item in entries:
            name = key if sub is None else f"{key}.{sub}"
            flat[name] = item if isinstance(item, str) else json.dumps(item)
    return flat


def test_a_night_is_a_parent_run_with_a_nested_run_per_model(
    server: Server, tmp_path: Path
) -> None:
    experiment = _experiment()
    manifest = _night(server, tmp_path / "out", "2026-11-25", experiment)
    record = manifest["mlflow"]
    nights = _by_night(server.runs(experiment))
    assert list(nights) == ["2026-11-25"]
    parent, children = nights["2026-11-25"]

    assert record["status"] == "logged" and record["experiment"] == experiment
    assert record["tracking_uri"] == server.uri and record["run_id"] == parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    assert {c["info"]["run_name"] for c in children} == set(manifest["models"])
    assert {c["info"]["run_name"]: c["info"]["run_id"] for c in children} == record["model_runs"]
    assert all(c["info"]["status"] == "FINISHED" for c in children)
    tags = _tags(parent)
    assert (tags["klrank.run_date"], tags["klrank.status"]) == ("2026-11-25", "success")
    assert tags["klrank.target"] == str(tmp_path / "out" / "run_date=2026-11-25")


def test_the_params_are_the_run_options_and_the_metrics_the_all_slice_of_the_report(
    server: Server, tmp_path: Path
) -> None:
    experiment = _experiment()
    _night(server, tmp_path / "out", "2026-11-25", experiment)
    night = tmp_path / "out" / "run_date=2026-11-25"
    parent, children = _by_night(server.runs(experiment))["2026-11-25"]

    options = _options_as_params(night / "report.parquet")
    assert _params(parent) == options
    report = pl.read_parquet(night / "report.parquet")
    all_rows = report.filter(pl.col("slice") == "ALL")
    assert len(children) == all_rows.height == 3
    for child in children:
        assert _params(child) == options
        row = all_rows.filter(pl.col("model") == child["info"]["run_name"]).select(cs.numeric())
        expected = {k: float(v) for k, v in row.row(0, named=True).items() if v is not None}
        assert _metrics(child) == expected
        assert _tags(child)["klrank.rank"] == str(row["rank"][0])
    best = next(c for c in children if _tags(c)["klrank.rank"] == "1")
    assert "p_value_vs_best" not in _metrics(best)  # null in the report: no metric


def test_the_artifacts_are_the_published_files(server: Server, tmp_path: Path) -> None:
    experiment = _experiment()
    manifest = _night(server, tmp_path / "out", "2026-11-25", experiment)
    night = tmp_path / "out" / "run_date=2026-11-25"
    artifacts = server.artifacts(manifest["mlflow"]["run_id"])
    assert set(artifacts) == set(manifest["outputs"])
    for name, content in artifacts.items():
        assert content == (night / name).read_bytes(), name  # the manifest with its outcome too


def test_two_nights_sit_side_by_side_in_one_experiment(server: Server, tmp_path: Path) -> None:
    experiment, out = _experiment(), tmp_path / "out"
    first = _night(server, out, "2026-11-24", experiment)
    # The second night fails a gate: published (exit 3) and logged all the same.
    second = _night(server, out, "2026-11-25", experiment, "--max-mean-kl", "0.1")
    nights = _by_night(server.runs(experiment))
    assert sorted(nights) == ["2026-11-24", "2026-11-25"]
    for manifest, name in ((first, "2026-11-24"), (second, "2026-11-25")):
        parent, children = nights[name]
        assert parent["info"]["run_id"] == manifest["mlflow"]["run_id"]
        assert _tags(parent)["klrank.status"] == manifest["status"]
        assert {c["info"]["run_id"] for c in children} == set(
            manifest["mlflow"]["model_runs"].values()
        )
        assert {c["info"]["run_name"] for c in children} == set(manifest["models"])
    assert (first["status"], second["status"]) == ("success", "gate_failed")
    assert first["mlflow"]["experiment_id"] == second["mlflow"]["experiment_id"]


def test_two_nights_at_once_make_one_new_experiment(server: Server, tmp_path: Path) -> None:
    experiment = _experiment()
    env = {"MLFLOW_TRACKING_URI": server.uri}
    running = [
        start(
            "run",
            *INPUTS,
            *("--out", tmp_path / "out", "--run-date", night, "--mlflow-experiment", experiment),
            env=env,
        )
        for night in ("2026-11-24", "2026-11-25")
    ]
    for result in [r.wait() for r in running]:
        expect(result, 0)
    records = [
        json.loads((tmp_path / "out" / f"run_date={n}" / "manifest.json").read_text())["mlflow"]
        for n in ("2026-11-24", "2026-11-25")
    ]
    assert [r["status"] for r in records] == ["logged", "logged"]
    assert records[0]["experiment_id"] == records[1]["experiment_id"]
    found = server.post("/api/2.0/mlflow/experiments/search", {"max_results": 1000})
    assert [e["name"] for e in found["experiments"]].count(experiment) == 1
    assert sorted(_by_night(server.runs(experiment))) == ["2026-11-24", "2026-11-25"]


def test_publish_logs_the_night_from_python(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    experiment = _experiment()
    evaluation = evaluate(EXAMPLES / "labels.parquet", EXAMPLES / "predictions")
    night = evaluation.publish(tmp_path / "out", "2026-11-25", mlflow_experiment=experiment)
    record = json.loads((night / "manifest.json").read_text())["mlflow"]
    parent, children = _by_night(server.runs(experiment))["2026-11-25"]
    assert record["status"] == "logged" and record["run_id"] == parent["info"]["run_id"]
    assert sorted(c["info"]["run_name"] for c in children) == sorted(
        evaluation.report["model"].unique()
    )


def test_a_night_that_cannot_be_published_leaves_its_runs_failed(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    experiment = _experiment()
    evaluation = evaluate(EXAMPLES / "labels.parquet", EXAMPLES / "predictions")

    def refuse(staging: Path, target: Path, run_id: str = "") -> None:
        raise StorageError(f"cannot publish {target}: No space left on device (ENOSPC)")

    monkeypatch.setattr(publishing, "_swap_in", refuse)
    with pytest.raises(StorageError):
        evaluation.publish(tmp_path / "out", "2026-11-25", mlflow_experiment=experiment)
    assert not (tmp_path / "out" / "run_date=2026-11-25").exists()
    runs = server.runs(experiment)
    assert len(runs) == 1 + evaluation.report["model"].n_unique()
    assert {r["info"]["status"] for r in runs} == {"FAILED"}


def test_the_docs_night_is_logged(server: Server, tmp_path: Path) -> None:
    # The block of docs/mlflow.md that test_docs.py cannot run without a server, as a reader
    # runs it: from a checkout's root, with MLFLOW_TRACKING_URI set and klrank on the PATH.
    (block,) = [
        b.text
        for b in blocks(DOCS.read_text())
        if b.text.startswith("# MLFLOW_TRACKING_URI names the tracking server")
    ]
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLRANK_", "MLFLOW_"))}
    env |= {"MLFLOW_TRACKING_URI": server.uri, "PATH": f"{KLRANK.parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert (done.returncode, done.stdout) == (0, "logged\n"), done.stderr
    nights = _by_night(server.runs("klrank-nightly"))
    parent, children = nights["2026-11-26"]
    assert parent["info"]["status"] == "FINISHED"
    assert {c["info"]["run_name"] for c in children} == {"sharp", "blurry", "uniform"}
