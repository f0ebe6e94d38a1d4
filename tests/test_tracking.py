"""klrank.tracking without a server: what a night logs, the refusals before any work, and a
tracking server that cannot be reached (a warning; the night is published all the same).

The runs logged to a real MLflow tracking server are in tests/tracking/ (``make test-mlflow``).
"""

import json
import socket
import sys
from pathlib import Path

import polars as pl
import pytest
from cli_helpers import PUBLISHED_FILES, expect, invoke, klrank, prob_predictions, soft_labels
from klrank import UsageError, evaluate
from klrank.tracking import INSTALL_HINT, model_metrics, params, public_uri, redacted

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
EXAMPLE_INPUTS = (
    "--labels",
    EXAMPLES / "labels.parquet",
    "--predictions",
    EXAMPLES / "predictions",
)


def test_params_flatten_the_options_tables_and_write_non_strings_as_json() -> None:
    options = {
        "base": "2",
        "epsilon": 0.0,
        "run_date": None,
        "write_rows": True,
        "slice_by": ["region", "site"],
        "gates": {"alpha": 0.05, "expect_best": None},
    }
    assert params(options) == {
        "base": "2",
        "epsilon": "0.0",
        "run_date": "null",
        "write_rows": "true",
        "slice_by": '["region", "site"]',
        "gates.alpha": "0.05",
        "gates.expect_best": "null",
    }


def test_a_param_longer_than_mlflow_takes_is_cut_to_its_limit() -> None:
    classes = [f"class_{i:04d}" for i in range(1000)]  # 14 characters a class in JSON
    [value] = params({"classes": classes}).values()
    assert len(value) == 6000 and value.endswith("…")
    assert json.dumps(classes).startswith(value[:-1])


def test_the_metrics_are_each_models_numeric_columns_of_the_all_slice() -> None:
    report = pl.DataFrame(
        {
            "slice": ["ALL", "ALL", "region=eu"],
            "rank": [1, 2, 1],
            "model": ["m", "n", "n"],
            "mean_kl": [0.25, float("inf"), 0.5],
            "p_value_vs_best": [None, 0.01, None],
            "unit": ["bits", "bits", "bits"],
        }
    )
    assert model_metrics(report) == {
        "m": {"rank": 1.0, "mean_kl": 0.25},
        "n": {"rank": 2.0, "mean_kl": float("inf"), "p_value_vs_best": 0.01},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET http://me:pw@host:5000/api failed", "GET http://host:5000/api failed"),
        ("https://token@host/ and ftp://a:b@c/", "https://host/ and ftp://c/"),
        ("no url here: a@b", "no url here: a@b"),
    ],
)
def test_messages_lose_the_credentials_of_every_url(text: str, expected: str) -> None:
    assert redacted(text) == expected


def test_messages_lose_the_values_of_mlflows_secret_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-456")
    assert redacted("bearer tok-123 refused; pw-456") == "bearer *** refused; ***"


def test_the_recorded_tracking_uri_has_no_credentials_query_or_fragment() -> None:
    assert public_uri("https://me:pw@mlflow.example.com:8443/base?token=t#x") == (
        "https://mlflow.example.com:8443/base"
    )
    assert public_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert public_uri("databricks") == "databricks"


def test_without_mlflows_client_a_run_stops_before_any_work_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    out = tmp_path / "out"
    result = invoke(
        "run",
        *EXAMPLE_INPUTS,
        *("--out", out, "--mlflow-experiment", "nightly"),
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"},
    )
    expect(result, 2)
    assert "pip install 'klrank[mlflow]'" in result.stderr
    assert not out.exists()


def test_without_mlflows_client_publish_raises_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation = evaluate(soft_labels(), prob_predictions())
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(UsageError) as raised:
        evaluation.publish(tmp_path / "out", mlflow_experiment="nightly")
    assert str(raised.value) == INSTALL_HINT
    assert not (tmp_path / "out").exists()


def test_a_run_without_a_tracking_uri_stops_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "run",
        *EXAMPLE_INPUTS,
        *("--out", out, "--mlflow-experiment", "nightly"),
        env={"MLFLOW_TRACKING_URI": None},  # type: ignore[dict-item]
    )
    expect(result, 2)
    assert "MLFLOW_TRACKING_URI" in result.stderr
    assert not out.exists()


def test_an_empty_experiment_name_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("run", *EXAMPLE_INPUTS, "--out", tmp_path / "out", "--mlflow-experiment", " ")
    expect(result, 2)
    assert "--mlflow-experiment must name an experiment" in result.stderr


def _closed_port() -> int:
    """A loopback port that nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_is_a_warning_and_the_night_is_published(tmp_path: Path) -> None:
    out = tmp_path / "out"
    secret = "sekrit-password"
    env = {
        "MLFLOW_TRACKING_URI": f"http://klrank:{secret}@127.0.0.1:{_closed_port()}",
        "MLFLOW_TRACKING_TOKEN": "sekrit-token",
        # MLflow's own retries (7 by default, minutes) are not what this test is about.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    args = ("--out", out, "--run-date", "2026-11-25", "--mlflow-experiment", "nightly")
    result = klrank("run", *EXAMPLE_INPUTS, *args, "--json", "--log-format", "json", env=env)
    expect(result, 0)

    night = out / "run_date=2026-11-25"
    assert {p.name for p in night.iterdir()} == PUBLISHED_FILES
    manifest = json.loads((night / "manifest.json").read_text())
    record = manifest["mlflow"]
    assert record["status"] == "failed" and record["experiment"] == "nightly"
    assert record["run_id"] is None and "Connection refused" in record["message"]
    assert record["tracking_uri"] == env["MLFLOW_TRACKING_URI"].replace(f"klrank:{secret}@", "")
    assert json.loads(result.stdout)["mlflow"] == record  # the --json summary says so too

    events = [json.loads(line) for line in result.stderr.splitlines()]  # JSON lines, nothing else
    [warning] = [e for e in events if e["event"] == "mlflow.failed"]
    assert warning["level"] == "warning" and warning["message"] == record["message"]
    published = "".join(p.read_text(errors="replace") for p in night.iterdir() if p.is_file())
    for text in (published, result.stdout, result.stderr):
        assert secret not in text and "sekrit-token" not in text
