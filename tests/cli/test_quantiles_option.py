"""``--quantiles``: on the command line, in the environment, in a config file and in Python.

What a run used is read from what it published: ``quantiles.parquet`` and the manifest's
``options``. Bad values are usage errors (exit 2) that name the option and publish nothing.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from cli_helpers import MODELS, expect, inputs, invoke, prob_predictions, soft_labels
from klrank import evaluate
from klrank.pipeline.aggregate import DEFAULT_QUANTILES
from klrank.pipeline.errors import UsageError


def _run(tmp_path: Path, *args: str | Path, env: dict[str, str] | None = None) -> Path:
    out = tmp_path / "out"
    result = invoke(
        "run", *inputs(tmp_path, soft_labels(), prob_predictions()), "--out", out, *args, env=env
    )
    expect(result, 0)
    return out


def _recorded(out: Path) -> Any:
    return json.loads((out / "manifest.json").read_text())["options"]["quantiles"]


def test_the_default_quantiles(tmp_path: Path) -> None:
    out = _run(tmp_path)
    table = pl.read_parquet(out / "quantiles.parquet")
    assert table.height == len(MODELS) * len(DEFAULT_QUANTILES)  # the ALL slice, kl only
    assert _recorded(out) == list(DEFAULT_QUANTILES)


def test_a_choice_of_quantiles_in_any_order(tmp_path: Path) -> None:
    out = _run(tmp_path, "--quantiles", "0.99, 0,0.5", "--slice-by", "region")
    table = pl.read_parquet(out / "quantiles.parquet")
    kl = pl.read_parquet(out / "rows.parquet").filter(pl.col("model") == "m")
    of_m = table.filter((pl.col("model") == "m") & (pl.col("slice") == "ALL"))
    assert of_m.get_column("quantile").to_list() == [0.0, 0.5, 0.99]
    expected = np.quantile(kl.get_column("kl").to_numpy(), [0.0, 0.5, 0.99], method="linear")
    assert np.allclose(of_m.get_column("value").to_numpy(), expected, rtol=1e-15, atol=0)
    assert table.height == 3 * len(MODELS) * 3  # ALL, region=eu, region=us
    assert _recorded(out) == [0.99, 0.0, 0.5]  # as given


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("1.5", "got 1.5"),
        ("-0.1", "got -0.1"),
        ("0.5,abc", "got 'abc'"),
        ("", "got ''"),
        ("0.5,,0.9", "got ''"),
        ("nan", "got nan"),
        ("inf", "got inf"),
        ("0.5,0.50", "names 0.5 twice"),
    ],
)
def test_bad_quantiles_are_usage_errors(tmp_path: Path, value: str, says: str) -> None:
    out = tmp_path / "out"
    result = invoke(
        "run", *inputs(tmp_path, soft_labels(), prob_predictions()), "--out", out,
        "--quantiles", value,
    )  # fmt: skip
    expect(result, 2)
    message = " ".join(result.stderr.split())
    assert "--quantiles" in message and says in message, str(result)
    assert not out.exists()


def test_the_environment_and_the_config_file(tmp_path: Path) -> None:
    out = _run(tmp_path, env={"KLRANK_QUANTILES": "0.1,0.9"})
    assert _recorded(out) == [0.1, 0.9]
    for i, line in enumerate(['quantiles = "0.25,0.75"', "quantiles = [0.25, 0.75]"]):
        config = tmp_path / f"klrank{i}.toml"
        config.write_text(f"[run]\n{line}\n", encoding="utf-8")
        folder = tmp_path / f"with_file{i}"
        folder.mkdir()
        assert _recorded(_run(folder, "--config", config)) == [0.25, 0.75], line
    shown = invoke("config", "show", "run", "--config", config, "--json")
    expect(shown, 0)
    assert json.loads(shown.stdout)["run"]["quantiles"]["source"] == "config file"
    default = invoke("config", "show", "run")
    expect(default, 0)
    assert 'quantiles = "0.001,0.01,0.05,0.1,0.5,0.9,0.95,0.99,0.999"' in default.stdout


def test_the_python_keyword(tmp_path: Path) -> None:
    evaluation = evaluate(soft_labels(), prob_predictions(), quantiles=[1, 0.5], rows=False)
    table = evaluation.quantiles
    assert table.filter(pl.col("model") == "m").get_column("quantile").to_list() == [0.5, 1.0]
    report = evaluation.report.filter(pl.col("model") == "m")
    at_one = table.filter((pl.col("model") == "m") & (pl.col("quantile") == 1.0))
    assert at_one.get_column("value").item() == report.get_column("max_kl").item()
    published = evaluation.publish(tmp_path / "out")
    assert pl.read_parquet(published / "quantiles.parquet").equals(table)
    for bad in ([], [0.5, 2.0], [True], "0.5"):
        with pytest.raises(UsageError, match="--quantiles"):
            evaluate(soft_labels(), prob_predictions(), quantiles=bad, rows=False)  # type: ignore[arg-type]
