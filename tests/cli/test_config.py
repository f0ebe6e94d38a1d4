"""``--config klrank.toml`` through the whole command: precedence, errors and ``config show``.

Precedence is command line > ``KLRANK_*`` environment > config file > defaults; each test
checks which value a real run used from what it recorded (the manifest's ``options``, printed
by ``--json``) or from what ``klrank config show`` prints. The command runs in this process
(:func:`invoke`); ``config show`` also once as the console script, end to end.
"""

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import expect, invoke, klrank, prob_predictions, soft_labels, write


def _inputs(root: Path) -> tuple[Path, Path]:
    return (
        write(soft_labels(), root / "data" / "labels.parquet"),
        write(prob_predictions(), root / "data" / "predictions.parquet"),
    )


def _config(root: Path, text: str, name: str = "klrank.toml") -> Path:
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


def _base_config(root: Path, extra: str = "") -> Path:
    labels, predictions = _inputs(root)
    return _config(
        root,
        f'labels = "{labels}"\npredictions = "{predictions}"\nbase = "e"\n'
        f'[run]\nout = "{root / "reports"}"\n{extra}',
    )


def _run_options(*args: str | Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = invoke("run", *args, "--json", env=env)
    expect(result, 0)
    options: dict[str, Any] = json.loads(result.stdout)["options"]
    return options


def _shown(*args: str | Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = invoke("config", "show", *args, "--json", env=env)
    expect(result, 0)
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


def test_run_takes_every_option_from_the_file(tmp_path: Path) -> None:
    config = _base_config(
        tmp_path,
        'run-date = 2026-01-02\nrows = false\nslice_by = ["region"]\nepsilon = 0.001\n',
    )
    options = _run_options("--config", config)
    assert options["base"] == "e"
    assert options["run_date"] == "2026-01-02"
    assert options["write_rows"] is False
    assert options["slice_by"] == ["region"]
    assert options["epsilon"] == 0.001
    partition = tmp_path / "reports" / "run_date=2026-01-02"
    assert (partition / "report.parquet").is_file()
    assert not (partition / "rows.parquet").exists()


def test_environment_beats_file_and_command_line_beats_both(tmp_path: Path) -> None:
    config = _base_config(tmp_path)
    assert _run_options("--config", config)["base"] == "e"  # the file beats the default "2"
    env = {"KLRANK_BASE": "10"}
    assert _run_options("--config", config, env=env)["base"] == "10"
    assert _run_options("--config", config, "--base", "2", env=env)["base"] == "2"


def test_config_from_environment_variable_and_before_the_command(tmp_path: Path) -> None:
    config = _base_config(tmp_path)
    assert _run_options(env={"KLRANK_CONFIG": str(config)})["base"] == "e"
    result = invoke("--config", config, "run", "--json")
    expect(result, 0)
    assert json.loads(result.stdout)["options"]["base"] == "e"


def test_config_on_the_command_line_beats_klrank_config(tmp_path: Path) -> None:
    config = _base_config(tmp_path)
    other = _config(tmp_path, 'base = "10"\n', "other.toml")
    env = {"KLRANK_CONFIG": str(other)}
    result = invoke("--config", config, "run", "--json", env=env)
    expect(result, 0)
    assert json.loads(result.stdout)["options"]["base"] == "e"
    assert _run_options("--config", config, env=env)["base"] == "e"


def test_command_table_beats_the_top_level_and_applies_to_its_command_only(
    tmp_path: Path,
) -> None:
    labels, predictions = _inputs(tmp_path)
    config = _config(
        tmp_path,
        f'labels = "{labels}"\npredictions = "{predictions}"\ntolerance = 0.01\n'
        f'[run]\nout = "{tmp_path / "out"}"\ntolerance = 0.02\n'
        "[validate]\ntolerance = 0.03\n",
    )
    assert _run_options("--config", config)["tolerance"] == 0.02
    shown = _shown("--config", config)
    assert shown["run"]["tolerance"] == {"value": 0.02, "source": "config file"}
    assert shown["validate"]["tolerance"] == {"value": 0.03, "source": "config file"}
    result = invoke("validate", "--config", config, "--json")
    expect(result, 0)


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("bogus = 1\n", ["'bogus'"]),
        ('[run]\nbase = "e"\nout_dir = "x"\n', ["'out_dir'", "[run]"]),
        ('[validate]\nout = "x"\n', ["'out'", "[validate]"]),  # only run publishes
        ("[deploy]\nx = 1\n", ["[deploy]"]),
        ("labels = [1\n", ["not valid TOML"]),
    ],
    ids=[
        "unknown_key",
        "unknown_key_in_table",
        "key_of_another_command",
        "unknown_table",
        "bad_toml",
    ],
)
def test_bad_config_file_is_a_usage_error_naming_file_and_key(
    tmp_path: Path, text: str, mentions: list[str]
) -> None:
    config = _config(tmp_path, text, "broken.toml")
    result = invoke("run", "--config", config, "--out", tmp_path / "out")
    expect(result, 2)
    message = " ".join(result.stderr.split())  # the error box may wrap lines
    for mention in ["broken.toml", *mentions]:
        assert mention in message, str(result)
    assert not (tmp_path / "out").exists()


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("validate", "--config", tmp_path / "absent.toml")
    expect(result, 2)
    assert "does not exist" in result.stderr


def test_bad_value_in_file_is_a_usage_error_naming_the_option(tmp_path: Path) -> None:
    config = _base_config(tmp_path, 'rank-by = "fastest"\n')
    result = invoke("run", "--config", config)
    expect(result, 2)
    assert "--rank-by" in result.stderr


def test_show_says_where_each_value_came_from(tmp_path: Path) -> None:
    config = _base_config(tmp_path)
    shown = _shown("run", "--config", config, env={"KLRANK_TOLERANCE": "0.5"})
    run = shown["run"]
    assert set(shown) == {"config", "run"}
    assert run["base"] == {"value": "e", "source": "config file"}
    assert run["tolerance"] == {"value": 0.5, "source": "environment KLRANK_TOLERANCE"}
    assert run["rank-by"] == {"value": "mean_kl", "source": "default"}
    assert run["out"]["value"] == str(tmp_path / "reports")


def test_show_marks_required_options_nothing_sets(tmp_path: Path) -> None:
    result = klrank("config", "show", "validate")  # the console script: a smoke test of config
    expect(result, 0)
    assert "# labels = ...  # required, not set" in result.stdout


def test_show_prints_toml_that_is_a_config_file(tmp_path: Path) -> None:
    config = _base_config(tmp_path, "run-date = 2026-01-02\n")
    printed = invoke("config", "show", "--config", config, env={"KLRANK_EPSILON": "0.01"})
    expect(printed, 0)
    document = tomllib.loads(printed.stdout)
    assert document["run"]["epsilon"] == 0.01
    assert document["run"]["run-date"].isoformat() == "2026-01-02"
    # Fed back as a config file (with no environment), it gives the same values.
    again = _config(tmp_path, printed.stdout, "shown.toml")

    def values(shown: dict[str, Any]) -> dict[str, Any]:
        return {key: entry["value"] for key, entry in shown["run"].items()}

    assert values(_shown("--config", again)) == values(
        _shown("--config", config, env={"KLRANK_EPSILON": "0.01"})
    )


def test_show_rejects_an_unknown_command() -> None:
    result = invoke("config", "show", "deploy")
    expect(result, 2)
    assert "deploy" in result.stderr


def test_readme_example_config_is_accepted(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text(
        encoding="utf-8"
    )
    # The config-file example of docs/operations.md (tests/test_docs.py runs it too).
    (example,) = [
        e for e in re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL) if "lock-timeout" in e
    ]
    shown = _shown("--config", _config(tmp_path, example))
    assert shown["run"]["rows"] == {"value": False, "source": "config file"}
    assert shown["run"]["lock-timeout"]["value"] == 1800
    assert shown["validate"]["slice-by"] == {"value": ["region"], "source": "config file"}
