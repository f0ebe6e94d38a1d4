"""The ``klrank`` command as a scheduler runs it: exit codes, messages and what lands on disk.

Every test runs the command on tiny Parquet files written in ``tmp_path``, in this process
(:func:`invoke`, through ``run_cli``); the installed console script runs in a subprocess for one
command of each kind and each exit code, end to end (0, 1, 2), and where the environment must be
read at start-up. Exit codes: 0 success, 1 the data failed validation, 2 usage error; a Python
traceback never reaches the user.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import polars as pl
import pytest
from cli_helpers import (
    FAILURE_COLUMNS,
    PUBLISHED_FILES,
    Result,
    corrupt_first_page,
    expect,
    hard_labels,
    invoke,
    klrank,
    klrank_together,
    logit_predictions,
    prob_predictions,
    set_value,
    snapshot,
    soft_labels,
    start,
    write,
    write_hive,
)
from cli_helpers import (
    inputs as input_options,
)
from klrank.pipeline.aggregate import ALL_ROWS

RUN_DATE = "2026-01-02"


def _good_inputs(root: Path) -> list[str | Path]:
    return input_options(root, soft_labels(), prob_predictions())


def _failures(path: Path) -> pl.DataFrame:
    failures = pl.read_parquet(path)
    assert failures.columns == FAILURE_COLUMNS
    return failures


# ---------------------------------------------------------------------------------------------
# The bad-input matrix: every broken input fails with exit 1, naming the check and an example.


@dataclass(frozen=True)
class BadInput:
    """Inputs that break one rule of the contract, and what the message must say about it."""

    labels: pl.DataFrame
    predictions: pl.DataFrame
    check: str  # the check's name as bracketed in the message (a prefix for dtype checks)
    mentions: tuple[str, ...]  # the column, model, example id or value the message names


def _with_row(frame: pl.DataFrame, **values: object) -> pl.DataFrame:
    return pl.concat([frame, pl.DataFrame([values], schema=frame.schema)])


def _duplicate(frame: pl.DataFrame, **where: object) -> pl.DataFrame:
    return pl.concat([frame, frame.filter(**where)])


BAD_INPUTS = {
    "negative_probability": BadInput(
        set_value(set_value(soft_labels(), "prob_a", -0.1, id=3), "prob_b", 0.3, id=3),
        prob_predictions(),
        "in_range(0.0, 1.0)",
        ("labels column 'prob_a'", "id=3", "-0.1"),
    ),
    "probability_above_one": BadInput(
        soft_labels(),
        set_value(prob_predictions(), "prob_c", 1.4, id=2, model="n"),
        "in_range(0.0, 1.0)",
        ("predictions column 'prob_c' model 'n'", "id=2", "1.4"),
    ),
    "nan_probability": BadInput(
        set_value(soft_labels(), "prob_b", float("nan"), id=4),
        prob_predictions(),
        "not_nullable",
        ("labels column 'prob_b'", "id=4", "NaN"),
    ),
    "inf_probability": BadInput(
        soft_labels(),
        set_value(prob_predictions(), "prob_a", float("inf"), id=1, model="m"),
        "in_range(0.0, 1.0)",
        ("predictions column 'prob_a' model 'm'", "id=1", "inf"),
    ),
    "rows_not_summing_to_one": BadInput(
        set_value(soft_labels(), "prob_a", 0.4, id=2),
        prob_predictions(),
        "rows_sum_to_one",
        ("labels:", "id=2"),
    ),
    "null_id": BadInput(
        set_value(soft_labels(), "id", None, id=2),
        prob_predictions(),
        "not_nullable",
        ("labels column 'id'", "row 1"),
    ),
    "duplicate_label_ids": BadInput(
        _duplicate(soft_labels(), id=3),
        prob_predictions(),
        "field_uniqueness",
        ("labels column 'id'", "id=3"),
    ),
    "duplicate_id_model_pairs": BadInput(
        soft_labels(),
        _duplicate(prob_predictions(), id=2, model="m"),
        "multiple_fields_uniqueness",
        ("model 'm'", "id=2"),
    ),
    "model_missing_label_ids": BadInput(
        soft_labels(),
        prob_predictions().filter(~((pl.col("id") == 4) & (pl.col("model") == "n"))),
        "missing_ids",
        ("model 'n'", "id=4"),
    ),
    "model_with_extra_ids": BadInput(
        soft_labels(),
        _with_row(prob_predictions(), model="m", id=9, prob_a=0.2, prob_b=0.3, prob_c=0.5),
        "extra_ids",
        ("model 'm'", "id=9"),
    ),
    "unknown_hard_label": BadInput(
        set_value(hard_labels(), "label", "zebra", id=2),
        prob_predictions(),
        "known_label",
        ("labels column 'label'", "id=2", "zebra"),
    ),
    "class_set_mismatch": BadInput(
        soft_labels().rename({"prob_c": "prob_d"}),
        prob_predictions(),
        "class_set",
        ("only in labels: ['d']", "only in predictions: ['c']"),
    ),
    "probabilities_as_strings": BadInput(
        soft_labels(),
        prob_predictions().with_columns(pl.col("prob_b").cast(pl.String)),
        "dtype(",
        ("predictions column 'prob_b'", "String"),
    ),
    "zero_rows": BadInput(
        soft_labels().clear(),
        prob_predictions(),
        "not_empty",
        ("labels:",),
    ),
    "nan_logit": BadInput(
        soft_labels(),
        set_value(logit_predictions(), "logit_b", float("nan"), id=3, model="m"),
        "finite",
        ("predictions column 'logit_b' model 'm'", "id=3"),
    ),
    "inf_logit": BadInput(
        soft_labels(),
        set_value(logit_predictions(), "logit_a", float("inf"), id=1, model="n"),
        "finite",
        ("predictions column 'logit_a' model 'n'", "id=1"),
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_exits_1_naming_check_and_example(tmp_path: Path, case: BadInput) -> None:
    inputs = input_options(tmp_path, case.labels, case.predictions)
    out = tmp_path / "out"
    validated, ran = invoke("validate", *inputs), invoke("run", *inputs, "--out", out)
    for result in (validated, ran):
        expect(result, 1)
        assert f"[{case.check}" in result.stderr, str(result)
        for text in case.mentions:
            assert text in result.stderr, f"{text!r} not in the message of\n{result}"
    assert not (out / "report.parquet").exists()
    assert not (out / "_SUCCESS").exists()
    failures = _failures(out / "_failures" / "failures.parquet")
    assert failures.filter(pl.col("check").str.starts_with(case.check)).height >= 1


def test_validation_reports_every_failed_check_in_one_run(tmp_path: Path) -> None:
    # The console script, both commands side by side: exit 1 end to end.
    labels = soft_labels()
    labels = set_value(labels, "prob_a", -0.1, id=1)
    labels = set_value(labels, "prob_b", 0.4, id=1)  # row 1 still sums to 1: only out of range
    labels = set_value(labels, "prob_a", 0.4, id=2)  # row 2 sums to 0.9
    labels = _duplicate(labels, id=3)
    predictions = _duplicate(prob_predictions(), id=1, model="m")
    predictions = predictions.filter(~((pl.col("id") == 4) & (pl.col("model") == "n")))
    inputs = input_options(tmp_path, labels, predictions)
    out = tmp_path / "out"
    expected = {
        "in_range(0.0, 1.0)",
        "rows_sum_to_one",
        "field_uniqueness",
        "multiple_fields_uniqueness",
        "missing_ids",
    }

    validated, ran = klrank_together(["validate", *inputs], ["run", *inputs, "--out", out])

    for result in (validated, ran):
        expect(result, 1)
        for check in expected:
            assert f"[{check}]" in result.stderr, str(result)
    failures = _failures(out / "_failures" / "failures.parquet")
    assert set(failures.get_column("check")) == expected


def test_column_failures_are_reported_before_row_checks_run(tmp_path: Path) -> None:
    # Documented design: row checks of a column with the wrong dtype are meaningless, so the
    # column and dtype failures of both inputs are reported together and the row checks wait.
    labels = _duplicate(soft_labels(), id=3).with_columns(pl.col("prob_a").cast(pl.String))
    predictions = prob_predictions().with_columns(pl.col("prob_b").cast(pl.String))

    result = invoke("validate", *input_options(tmp_path, labels, predictions))

    expect(result, 1)
    assert "labels column 'prob_a': wrong dtype" in result.stderr, str(result)
    assert "predictions column 'prob_b': wrong dtype" in result.stderr, str(result)
    assert "[field_uniqueness]" not in result.stderr, str(result)


# ---------------------------------------------------------------------------------------------
# Failure cases on disk, and a failed run never touching a published report.


def _three_negative_probabilities() -> pl.DataFrame:
    labels = soft_labels()
    for i in (1, 2, 3):  # prob_b makes up for prob_a, so that each row still sums to 1
        row = labels.filter(id=i).row(0, named=True)
        labels = set_value(labels, "prob_a", -0.1, id=i)
        labels = set_value(labels, "prob_b", row["prob_b"] + row["prob_a"] + 0.1, id=i)
    return labels


@pytest.mark.parametrize(
    ("options", "location"),
    [
        ([], "out/_failures/failures.parquet"),
        (["--run-date", RUN_DATE], f"out/_failures/run_date={RUN_DATE}/failures.parquet"),
        (["--failures", "elsewhere/cases.parquet"], "elsewhere/cases.parquet"),
    ],
    ids=["default", "run_date", "override"],
)
def test_run_writes_every_failure_case(tmp_path: Path, options: list[str], location: str) -> None:
    inputs = input_options(tmp_path, _three_negative_probabilities(), prob_predictions())
    options = [str(tmp_path / o) if o.endswith(".parquet") else o for o in options]

    result = invoke("run", *inputs, "--out", tmp_path / "out", *options)

    expect(result, 1)
    failures = _failures(tmp_path / location)
    assert failures.height == 3
    assert failures.select("dataset", "check", "column", "row", "id", "model").rows() == [
        ("labels", "in_range(0.0, 1.0)", "prob_a", row, str(row + 1), None) for row in (0, 1, 2)
    ]
    assert failures.get_column("value").cast(pl.Float64).to_list() == [-0.1] * 3
    assert str(tmp_path / location) in result.stderr
    published = [p for p in (tmp_path / "out").rglob("*") if p.name in PUBLISHED_FILES]
    assert published == []


def test_validate_writes_failure_cases_where_asked(tmp_path: Path) -> None:
    inputs = input_options(tmp_path, _three_negative_probabilities(), prob_predictions())
    path = tmp_path / "cases.parquet"

    result = invoke("validate", *inputs, "--failures", path)

    expect(result, 1)
    assert _failures(path).height == 3


@pytest.mark.parametrize(
    ("broken", "run_date"),
    [("invalid_data", []), ("corrupt_parquet", ["--run-date", RUN_DATE])],
    ids=["invalid_data", "corrupt_parquet_with_run_date"],
)
def test_failed_run_leaves_published_report_byte_identical(
    tmp_path: Path, broken: str, run_date: list[str]
) -> None:
    out = tmp_path / "out"
    expect(invoke("run", *_good_inputs(tmp_path / "good"), "--out", out, *run_date), 0)
    before = snapshot(out)
    assert PUBLISHED_FILES <= {Path(p).name for p in before}
    bad = tmp_path / "bad"
    if broken == "invalid_data":
        inputs, code = input_options(bad, _three_negative_probabilities(), prob_predictions()), 1
    else:
        inputs, code = _good_inputs(bad), 2
        (bad / "predictions.parquet").write_bytes(b"PAR1 this is not Parquet")

    result = invoke("run", *inputs, "--out", out, *run_date)

    expect(result, code)
    # The failure cases go to OUT/_failures/, which readers skip; nothing else may change.
    assert snapshot(out, skip=["_failures"]) == before
    assert (out / "_failures").exists() == (broken == "invalid_data")


# ---------------------------------------------------------------------------------------------
# Usage errors: exit 2 with a message, for both commands.


def _missing(root: Path) -> list[str | Path]:
    return ["--labels", root / "nowhere.parquet", "--predictions", root / "nowhere"]


def _not_parquet(root: Path) -> list[str | Path]:
    inputs = _good_inputs(root)
    (root / "labels.parquet").write_text("id,prob_a\n1,0.5\n")
    return inputs


def _corrupt_footer(root: Path) -> list[str | Path]:
    inputs = _good_inputs(root)
    data = (root / "predictions.parquet").read_bytes()
    (root / "predictions.parquet").write_bytes(data[:-20])  # footer length and magic gone
    return inputs


def _empty_file(root: Path) -> list[str | Path]:
    inputs = _good_inputs(root)
    (root / "predictions.parquet").write_bytes(b"")
    return inputs


def _no_prediction_distribution(root: Path) -> list[str | Path]:
    predictions = prob_predictions().rename({"prob_a": "a", "prob_b": "b", "prob_c": "c"})
    return input_options(root, soft_labels(), predictions)


def _labels_without_truth(root: Path) -> list[str | Path]:
    return input_options(root, soft_labels().select("id", "region"), prob_predictions())


def _glob_matching_nothing(root: Path) -> list[str | Path]:
    return [*_good_inputs(root)[:2], "--predictions", str(root / "nothing-*.parquet")]


def _folder_without_parquet(root: Path) -> list[str | Path]:
    (root / "empty").mkdir(parents=True)
    return [*_good_inputs(root)[:2], "--predictions", root / "empty"]


USAGE_ERRORS = {
    "missing_path": (_missing, "does not exist"),
    "not_parquet": (_not_parquet, "as Parquet"),
    "corrupt_footer": (_corrupt_footer, "as Parquet"),
    "empty_file": (_empty_file, "as Parquet"),
    "no_distribution_columns_in_predictions": (_no_prediction_distribution, "prob_<class>"),
    "labels_without_prob_or_label_column": (_labels_without_truth, "'label'"),
    "glob_matching_nothing": (_glob_matching_nothing, "matches no .parquet files"),
    "folder_without_parquet": (_folder_without_parquet, "matches no .parquet files"),
}


@pytest.mark.parametrize(("make", "message"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_unusable_input_exits_2(
    tmp_path: Path, make: Callable[[Path], list[str | Path]], message: str
) -> None:
    inputs = make(tmp_path)
    out = tmp_path / "out"
    validated, ran = invoke("validate", *inputs), invoke("run", *inputs, "--out", out)
    for result in (validated, ran):
        expect(result, 2)
        assert message in result.stderr, str(result)
    assert not out.exists()


def test_corrupt_data_page_exits_2(tmp_path: Path) -> None:
    inputs = _good_inputs(tmp_path)
    corrupt_first_page(tmp_path / "predictions.parquet")
    validated, ran = invoke("validate", *inputs), invoke("run", *inputs, "--out", tmp_path / "out")
    for result in (validated, ran):
        expect(result, 2)
        assert "predictions.parquet" in result.stderr, str(result)


BAD_OPTIONS = {
    "--base": ["--base", "3"],
    "--rank-by": ["--rank-by", "nonsense"],
    "--run-date": ["--run-date", "2026-13-40"],
    "--epsilon": ["--epsilon", "1"],
    "--tolerance": ["--tolerance", "-1"],
    "--slice-by": ["--slice-by", "no_such_column"],
}


@pytest.fixture(scope="module")
def bad_option_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Result, Path]]:
    root = tmp_path_factory.mktemp("bad_options")
    inputs = _good_inputs(root)
    return {
        name: (invoke("run", *inputs, "--out", root / name, *option), root / name)
        for name, option in BAD_OPTIONS.items()
    }


@pytest.mark.parametrize("option", BAD_OPTIONS)
def test_bad_option_value_exits_2(
    bad_option_runs: dict[str, tuple[Result, Path]], option: str
) -> None:
    result, out = bad_option_runs[option]

    expect(result, 2)
    assert option in result.stderr, str(result)
    assert not out.exists()


def test_out_that_is_a_file_exits_74_and_keeps_the_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("not a folder\n")

    result = invoke("run", *_good_inputs(tmp_path), "--out", out)

    expect(result, 74)  # a file where a folder is needed: the I/O exit code
    assert f"--out: '{out}' exists and is not a directory" in result.stderr
    assert out.read_text() == "not a folder\n"
    assert not list(tmp_path.glob(".klrank-staging-*"))


def test_missing_required_option_exits_2(tmp_path: Path) -> None:
    # The console script: the option parser's exit 2 end to end.
    result = klrank("run", "--labels", write(soft_labels(), tmp_path / "labels.parquet"))

    expect(result, 2)
    assert "--predictions" in result.stderr


# ---------------------------------------------------------------------------------------------
# The success path.


Runs = dict[str, tuple[Result, Path]]


@pytest.fixture(scope="module")
def successes(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Every successful command of this section; each has its own OUT.

    One run, one validate and ``--version`` start the console script (side by side, while the
    others run in this process): the smoke tests of exit 0 end to end.
    """
    root = tmp_path_factory.mktemp("success")
    inputs = _good_inputs(root)
    _, labels, _, predictions = inputs
    hard = input_options(root / "hard_inputs", hard_labels(), logit_predictions())
    env = {
        "KLRANK_LABELS": str(labels),
        "KLRANK_PREDICTIONS": str(predictions),
        "KLRANK_OUT": str(root / "env"),
    }
    running = {
        "default": start("run", *inputs, "--out", root / "default"),
        "validate": start("validate", *inputs),
        "version": start("--version"),
    }
    invoked = {
        "no_rows": invoke("run", *inputs, "--out", root / "no_rows", "--no-rows"),
        "run_date": invoke("run", *inputs, "--out", root / "run_date", "--run-date", RUN_DATE),
        "json": invoke("run", *inputs, "--out", root / "json", "--json"),
        "hard_logits": invoke("run", *hard, "--out", root / "hard_logits", "--json"),
        "env": invoke("run", env=env),
        "validate_json": invoke("validate", *inputs, "--json"),
    }
    results = {name: r.wait() for name, r in running.items()} | invoked
    return {name: (result, root / name) for name, result in results.items()}


def test_run_prints_ranked_table_and_publishes_report(successes: Runs) -> None:
    result, out = successes["default"]

    expect(result, 0)
    assert "| rank | model |" in result.stdout
    assert {p.name for p in out.iterdir()} == PUBLISHED_FILES
    assert result.stdout == (out / "summary.md").read_text(encoding="utf-8")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "success"
    assert manifest["models"] == ["m", "n"]
    report = pl.read_parquet(out / "report.parquet")
    assert report.filter(slice=ALL_ROWS).select("rank", "model").rows() == [(1, "m"), (2, "n")]
    assert pl.read_parquet(out / "rows.parquet").height == 8


def test_run_without_rows_skips_rows_file(successes: Runs) -> None:
    result, out = successes["no_rows"]

    expect(result, 0)
    assert {p.name for p in out.iterdir()} == PUBLISHED_FILES - {"rows.parquet"}
    assert "rows.parquet" not in json.loads((out / "manifest.json").read_text())["outputs"]


def test_run_date_publishes_to_partition(successes: Runs) -> None:
    result, out = successes["run_date"]

    expect(result, 0)
    # Besides the partition, only hidden files readers skip (the partition's lock file).
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == [f"run_date={RUN_DATE}"]
    assert {p.name for p in (out / f"run_date={RUN_DATE}").iterdir()} == PUBLISHED_FILES


def test_run_json_prints_one_success_object(successes: Runs) -> None:
    result, out = successes["json"]

    expect(result, 0)
    summary = json.loads(result.stdout)
    assert summary["status"] == "success"
    assert Path(summary["target"]) == out
    assert summary["models"] == ["m", "n"]
    # The ranking of the ALL slice, as report.parquet has it: schedulers need not read Parquet.
    columns = ["rank", "model", "mean_kl", "ci95_low", "ci95_high", "n_rows", "n_infinite"]
    report = pl.read_parquet(out / "report.parquet").filter(slice=ALL_ROWS).sort("rank")
    assert summary["ranking"] == report.select(columns).to_dicts()
    assert summary["ranking"] == json.loads((out / "manifest.json").read_text())["ranking"]


def test_run_json_writes_an_infinite_mean_as_null_not_as_invalid_json(tmp_path: Path) -> None:
    predictions = set_value(prob_predictions(), "prob_a", 0.0, model="n", id=3)
    predictions = set_value(predictions, "prob_c", 0.7, model="n", id=3)
    result = invoke(
        "run",
        *input_options(tmp_path, soft_labels(), predictions),
        "--out",
        tmp_path / "out",
        "--json",
    )
    expect(result, 0)

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    summary = json.loads(result.stdout, parse_constant=no_constants)
    infinite = [r for r in summary["ranking"] if r["model"] == "n"]
    assert infinite == [
        {
            "rank": 2,
            "model": "n",
            "mean_kl": None,
            "ci95_low": None,
            "ci95_high": None,
            "n_rows": 4,
            "n_infinite": 1,
        }
    ]


def test_hard_labels_and_logits_run(successes: Runs) -> None:
    result, out = successes["hard_logits"]

    expect(result, 0)
    summary = json.loads(result.stdout)
    assert (summary["truth"], summary["prediction_kind"]) == ("hard", "logit")
    assert (out / "_SUCCESS").exists()


# P = (1/2, 1/2) against Q = softmax(0, 1) = (1, e)/(1 + e), worked by hand, in bits.
_Q_OF_LOGITS_0_1 = (1 / (1 + math.e), math.e / (1 + math.e))
_HALF_AND_LOGITS_0_1 = {
    "mean_kl": 0.5 * math.log2((1 + math.e) ** 2 / (4 * math.e)),  # 0.1732886 bits
    "mean_js": sum(
        0.25 * math.log2(0.5 / mi) + 0.5 * qi * math.log2(qi / mi)
        for qi, mi in ((qi, (0.5 + qi) / 2) for qi in _Q_OF_LOGITS_0_1)
    ),
}
_EXACT_ZERO = {"mean_kl": 0.0, "mean_js": 0.0, "mean_reverse_kl": 0.0}


def test_logits_at_the_float64_extremes_publish_the_exact_means(tmp_path: Path) -> None:
    # The log-softmax lost log Σ exp(z − m) to m + log Σ at m = 1e16 and 1e308: the published
    # mean_kl was −1 bit for [1e308, 1e308], 0.26 bits for [1e15, 1e15 + 1] (0.17 is right)
    # and −0.25 bits for 65 equal logits of 1e16.
    halves = pl.DataFrame({"id": [1, 2], "prob_a": [0.5, 0.5], "prob_b": [0.5, 0.5]})
    columns = pl.DataFrame(
        {
            "id": [1, 2, 1, 2],
            "model": ["huge", "huge", "offset", "offset"],
            "logit_a": [1e308, 1e308, 1e15, 1e15],
            "logit_b": [1e308, 1e308, 1e15 + 1, 1e15 + 1],
        }
    )
    # Above 64 classes the measures run on arrays (tests/pipeline/test_arrays.py has Array columns).
    classes = [f"c{i:02d}" for i in range(65)]
    uniform = pl.DataFrame({"id": [1], **{f"prob_{c}": [1 / 65] for c in classes}})
    wide = pl.DataFrame({"id": [1], "model": ["huge"], **{f"logit_{c}": [1e16] for c in classes}})
    runs = {
        "columns": input_options(tmp_path / "columns", halves, columns),
        "65_classes": input_options(tmp_path / "65_classes", uniform, wide),
    }
    results = [
        invoke("run", *options, "--out", tmp_path / name / "out") for name, options in runs.items()
    ]
    expected = {
        "columns": {"huge": _EXACT_ZERO, "offset": _HALF_AND_LOGITS_0_1},
        "65_classes": {"huge": _EXACT_ZERO},
    }
    for (name, models), result in zip(expected.items(), results, strict=True):
        expect(result, 0)
        report = pl.read_parquet(tmp_path / name / "out" / "report.parquet").filter(slice=ALL_ROWS)
        for model, means in models.items():
            row = report.filter(model=model).row(0, named=True)
            for column, value in means.items():
                assert row[column] == pytest.approx(value, rel=1e-12, abs=1e-15), (
                    name,
                    model,
                    column,
                )


def test_options_from_environment_variables(successes: Runs) -> None:
    result, out = successes["env"]

    expect(result, 0)
    assert {p.name for p in out.iterdir()} == PUBLISHED_FILES


def test_validate_reports_valid_inputs(successes: Runs) -> None:
    plain, _ = successes["validate"]
    as_json, _ = successes["validate_json"]

    expect(plain, 0)
    assert plain.stdout.startswith("valid: 4 label rows, 8 prediction rows, 2 models")
    expect(as_json, 0)
    summary = json.loads(as_json.stdout)
    assert summary["status"] == "valid"
    assert summary["classes"] == ["a", "b", "c"]


def test_version(successes: Runs) -> None:
    result, _ = successes["version"]

    expect(result, 0)
    assert result.stdout.strip() == f"klrank {version('klrank')}"


@pytest.mark.parametrize(
    ("labels", "predictions", "code", "status"),
    [
        ("labels.parquet", "bad.parquet", 1, "invalid_data"),
        ("nowhere.parquet", "predictions.parquet", 2, "usage_error"),
    ],
    ids=["invalid_data", "usage_error"],
)
def test_json_on_failure_reports_status(
    tmp_path: Path, labels: str, predictions: str, code: int, status: str
) -> None:
    write(soft_labels(), tmp_path / "labels.parquet")
    write(prob_predictions(), tmp_path / "predictions.parquet")
    write(set_value(prob_predictions(), "prob_a", -1.0, id=1), tmp_path / "bad.parquet")
    paths = ["--labels", tmp_path / labels, "--predictions", tmp_path / predictions]

    result = invoke("run", *paths, "--out", tmp_path / "out", "--json")

    expect(result, code)
    summary = json.loads(result.stdout)
    assert summary["status"] == status
    assert summary["exit_code"] == code


# ---------------------------------------------------------------------------------------------
# Input layouts: a folder read recursively, a glob, hive model=<name>/ folders.


def _models_run(result: Result) -> list[str]:
    expect(result, 0)
    return list(json.loads(result.stdout)["models"])


def test_folder_inputs_are_read_recursively(tmp_path: Path) -> None:
    labels, predictions = soft_labels(), prob_predictions()
    write(labels.head(2), tmp_path / "labels" / "part-0.parquet")
    write(labels.tail(2), tmp_path / "labels" / "more" / "part-1.parquet")
    write(predictions.filter(model="m"), tmp_path / "predictions" / "a" / "m.parquet")
    write(predictions.filter(model="n"), tmp_path / "predictions" / "b" / "c" / "n.parquet")
    # Hidden and underscore entries are skipped, as Spark and Hive do (a writer's leftovers).
    (tmp_path / "predictions" / "_temporary").mkdir()
    (tmp_path / "predictions" / "_temporary" / "part-9.parquet").write_text("half written")
    (tmp_path / "predictions" / ".part-0.parquet.crc").write_text("checksum")

    result = invoke(
        "run",
        *("--labels", tmp_path / "labels", "--predictions", tmp_path / "predictions"),
        *("--out", tmp_path / "out", "--json"),
    )

    assert _models_run(result) == ["m", "n"]
    manifest = json.loads(result.stdout)
    assert (manifest["inputs"]["labels"]["files"], manifest["inputs"]["labels"]["rows"]) == (2, 4)
    assert manifest["inputs"]["predictions"]["files"] == 2


def test_glob_inputs(tmp_path: Path) -> None:
    write(soft_labels(), tmp_path / "labels.parquet")
    predictions = prob_predictions()
    for model in ("m", "n"):
        write(predictions.filter(model=model), tmp_path / "preds" / model / "part.parquet")
    # Outside the glob: read by mistake, its unknown id would fail validation.
    stray = predictions.filter(model="m").with_columns(id=pl.lit(99, pl.Int64))
    write(stray, tmp_path / "preds" / "m" / "stray.parquet")

    result = invoke(
        "run",
        *("--labels", tmp_path / "labels.parquet"),
        *("--predictions", f"{tmp_path}/preds/*/part.parquet"),
        *("--out", tmp_path / "out", "--json"),
    )

    assert _models_run(result) == ["m", "n"]


def test_hive_model_folders_without_model_column(tmp_path: Path) -> None:
    write(soft_labels(), tmp_path / "labels.parquet")
    write_hive(prob_predictions(), tmp_path / "predictions")
    assert "model" not in pl.read_parquet(tmp_path / "predictions" / "model=m").columns
    paths = ["--labels", tmp_path / "labels.parquet", "--predictions", tmp_path / "predictions"]
    glob = ["--labels", tmp_path / "labels.parquet"]
    glob += ["--predictions", f"{tmp_path}/predictions/model=*/*.parquet"]

    folder = invoke("run", *paths, "--out", tmp_path / "out", "--json")
    globbed = invoke("validate", *glob, "--json")

    assert _models_run(folder) == ["m", "n"]
    assert _models_run(globbed) == ["m", "n"]
    report = pl.read_parquet(tmp_path / "out" / "report.parquet")
    assert sorted(report.get_column("model").unique()) == ["m", "n"]


def test_hive_model_missing_ids_names_the_model(tmp_path: Path) -> None:
    write(soft_labels(), tmp_path / "labels.parquet")
    predictions = prob_predictions().filter(~((pl.col("id") == 2) & (pl.col("model") == "n")))
    write_hive(predictions, tmp_path / "predictions")

    result = invoke(
        "validate",
        *("--labels", tmp_path / "labels.parquet", "--predictions", tmp_path / "predictions"),
    )

    expect(result, 1)
    assert "[missing_ids]" in result.stderr
    assert "model 'n'" in result.stderr
    assert "id=2" in result.stderr


@pytest.mark.parametrize("difference", ["extra_column_in_later_file", "float_width"])
def test_folder_of_files_with_differing_schemas(tmp_path: Path, difference: str) -> None:
    labels = soft_labels()
    first, second = labels.head(2), labels.tail(2)
    if difference == "extra_column_in_later_file":
        first = first.drop("region")  # an unused column: the contract says it is ignored
    else:
        first = first.with_columns(pl.col("prob_a", "prob_b", "prob_c").cast(pl.Float32))
    write(first, tmp_path / "labels" / "part-0.parquet")
    write(second, tmp_path / "labels" / "part-1.parquet")
    predictions = write(prob_predictions(), tmp_path / "predictions.parquet")

    result = invoke("validate", "--labels", tmp_path / "labels", "--predictions", predictions)

    assert result.returncode in (0, 2), str(result)
    assert "internal error" not in result.stderr
    if difference == "extra_column_in_later_file":
        expect(result, 0)


def test_pandera_environment_cannot_switch_the_checks_off(tmp_path: Path) -> None:
    # PANDERA_VALIDATION_DEPTH=SCHEMA_ONLY would skip Pandera's data checks on a DataFrame.
    # A subprocess: pandera reads these variables when it is imported.
    labels = set_value(soft_labels(), "prob_a", 1.5, id=2)
    env = {"PANDERA_VALIDATION_DEPTH": "SCHEMA_ONLY", "PANDERA_VALIDATION_ENABLED": "False"}
    result = klrank("validate", *input_options(tmp_path, labels, prob_predictions()), env=env)
    expect(result, 1)
    assert "[in_range(0.0, 1.0)]" in result.stderr, str(result)
