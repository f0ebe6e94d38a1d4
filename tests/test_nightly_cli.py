"""Nightly history through the ``klrank`` command: baselines, gates (exit 3) and history.

Every night ranks the same 200 soft labels; a model's predictions are the truth mixed with the
uniform distribution, ``(1 − w)·p + w/K``, and a larger ``w`` tonight is a regression. The
oracles are scipy's: per-row KL from ``scipy.special.rel_entr`` and Welch's test from
``scipy.stats.ttest_ind`` on those rows, never klrank's own standard errors. The command runs in
this process (:func:`invoke`); ``history`` and a failed gate's exit 3 also as the console script.
"""

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.special
import scipy.stats
from cli_helpers import Result, expect, invoke, klrank, write
from klrank.io import reading
from klrank.schemas.report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION
from markdown_helpers import render

N_ROWS, CLASSES = 200, ("a", "b", "c")
# Mixing weight w of each model with the uniform distribution, per night: model m regresses on
# night 2 (w 0.1 -> 0.3); n moves a little (a change that is not significant).
NIGHT1 = {"m": 0.1, "n": 0.5}
NIGHT2 = {"m": 0.3, "n": 0.505}
CHANGE_COLUMNS = ["prev_mean_kl", "change_mean_kl", "change_mean_kl_pct", "p_value_change"]


def _truth() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.dirichlet(np.ones(len(CLASSES)), size=N_ROWS)


def _predicted(w: float) -> np.ndarray:
    return (1.0 - w) * _truth() + w / len(CLASSES)


def _row_kl_bits(w: float) -> np.ndarray:
    """The oracle: per-row D(P‖Q) in bits."""
    return scipy.special.rel_entr(_truth(), _predicted(w)).sum(axis=1) / math.log(2.0)


def _inputs(root: Path, weights: Mapping[str, float]) -> list[str | Path]:
    truth = _truth()
    labels = pl.DataFrame(
        {"id": range(N_ROWS), **{f"prob_{c}": truth[:, k] for k, c in enumerate(CLASSES)}}
    )
    frames = []
    for model, w in weights.items():
        q = _predicted(w)
        frames.append(
            pl.DataFrame(
                {
                    "model": [model] * N_ROWS,
                    "id": range(N_ROWS),
                    **{f"prob_{c}": q[:, k] for k, c in enumerate(CLASSES)},
                }
            )
        )
    return [
        "--labels",
        write(labels, root / "labels.parquet"),
        "--predictions",
        write(pl.concat(frames), root / "predictions.parquet"),
    ]


def _report(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(folder / "report.parquet")


def _manifest(folder: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((folder / "manifest.json").read_text())
    return document


def _all_rows(report: pl.DataFrame) -> dict[str, dict[str, object]]:
    return {r["model"]: r for r in report.filter(pl.col("slice") == "ALL").iter_rows(named=True)}


def _failed(manifest: Mapping[str, object]) -> set[tuple[str, str | None]]:
    gates = manifest["gates"]
    assert isinstance(gates, list)
    return {(g["gate"], g["model"]) for g in gates if g["outcome"] == "failed"}


# ---------------------------------------------------------------------------------------------
# A sequence of nights published with --run-date and --baseline auto, one of them late.


@dataclass(frozen=True)
class Nights:
    """The nightly output folder and what each night's command did."""

    out: Path
    results: dict[str, Result]


NIGHT_DATES = ("2026-03-01", "2026-03-03", "2026-03-02", "2026-03-04")  # 03-02 arrives late
NIGHT_WEIGHTS = {
    "2026-03-01": NIGHT1,
    "2026-03-03": NIGHT1,
    "2026-03-02": NIGHT1,
    "2026-03-04": NIGHT2,
}


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Nights:
    root = tmp_path_factory.mktemp("nights")
    out = root / "reports"
    results = {}
    for day in NIGHT_DATES:  # one after another: each night's baseline is an earlier night
        inputs = _inputs(root / day, NIGHT_WEIGHTS[day])
        results[day] = invoke(
            "run",
            *inputs,
            "--out",
            out,
            "--run-date",
            day,
            "--baseline",
            "auto",
            "--max-regression",
            "10",
            "--no-rows",
        )
    return Nights(out, results)


def test_first_night_has_no_baseline_and_null_change_columns(nights: Nights) -> None:
    result = nights.results["2026-03-01"]
    expect(result, 0)
    # Read as rendered Markdown: a "_" of the path is escaped in the text.
    assert any(
        p.startswith(f"No earlier run under {nights.out}:")
        for p in render(result.stdout).paragraphs
    )
    folder = nights.out / "run_date=2026-03-01"
    report = _report(folder)
    assert report.select(CHANGE_COLUMNS).null_count().row(0) == (report.height,) * 4
    manifest = _manifest(folder)
    assert manifest["status"] == "success"
    assert manifest["baseline"] == {
        "spec": "auto",
        "path": None,
        "run_date": None,
        "unit": None,
        "found": False,
    }
    assert manifest["gates"] == [
        {
            "gate": "max_regression",
            "outcome": "skipped",
            "model": None,
            "message": "max_regression: no baseline run found",
        }
    ]


@pytest.mark.parametrize(
    ("day", "baseline_day"),
    [("2026-03-03", "2026-03-01"), ("2026-03-02", "2026-03-01"), ("2026-03-04", "2026-03-03")],
    ids=["next-available", "late-night-ignores-later-runs", "latest-earlier"],
)
def test_baseline_auto_is_the_latest_earlier_night(
    nights: Nights, day: str, baseline_day: str
) -> None:
    baseline = _manifest(nights.out / f"run_date={day}")["baseline"]
    assert isinstance(baseline, dict)
    assert baseline["run_date"] == baseline_day
    assert baseline["path"] == str(nights.out / f"run_date={baseline_day}" / "report.parquet")


def test_unchanged_night_passes_the_regression_gate(nights: Nights) -> None:
    expect(nights.results["2026-03-03"], 0)
    folder = nights.out / "run_date=2026-03-03"
    rows = _all_rows(_report(folder))
    for model in NIGHT1:
        assert rows[model]["change_mean_kl"] == 0.0
        assert rows[model]["p_value_change"] == 1.0
    assert _manifest(folder)["status"] == "success"


def test_regression_exits_3_with_the_report_published_and_the_reason_recorded(
    nights: Nights,
) -> None:
    result = nights.results["2026-03-04"]
    expect(result, 3)
    folder = nights.out / "run_date=2026-03-04"
    assert (folder / "_SUCCESS").exists()
    report = _report(folder)
    REPORT_SCHEMA.validate(report)
    manifest = _manifest(folder)
    assert manifest["status"] == "gate_failed"
    assert _failed(manifest) == {("max_regression", "m")}
    failed_messages = [
        g["message"]
        for g in manifest["gates"]  # type: ignore[attr-defined]
        if g["outcome"] == "failed"
    ]
    assert f"klrank: gate failed: {failed_messages[0]}" in result.stderr
    assert "model 'm'" in failed_messages[0] and "rose more than 10%" in failed_messages[0]
    assert "## Gates: 1 failed" in result.stdout
    assert f"klrank: published {folder}" in result.stderr


def test_change_columns_match_an_independent_welch_test(nights: Nights) -> None:
    """prev/change/pct/p of night 2 against night 1, from scipy on the rows themselves."""
    rows = _all_rows(_report(nights.out / "run_date=2026-03-04"))
    for model in NIGHT1:
        tonight, before = _row_kl_bits(NIGHT2[model]), _row_kl_bits(NIGHT1[model])
        expected_change = tonight.mean() - before.mean()
        row = rows[model]
        assert row["prev_mean_kl"] == pytest.approx(before.mean(), rel=1e-12)
        assert row["change_mean_kl"] == pytest.approx(expected_change, rel=1e-9)
        assert row["change_mean_kl_pct"] == pytest.approx(
            100 * expected_change / before.mean(), rel=1e-9
        )
        welch = scipy.stats.ttest_ind(tonight, before, equal_var=False)
        assert row["p_value_change"] == pytest.approx(welch.pvalue, rel=1e-6, abs=1e-300)
    # The fixture is what the gate tests rely on: m's rise is significant, n's is not.
    assert rows["m"]["p_value_change"] < 1e-6 < 0.05 < rows["n"]["p_value_change"]


def test_history_prints_every_night_and_writes_the_chart(nights: Nights) -> None:
    # Folders that are no published night: ignored.
    (nights.out / "run_date=garbage").mkdir()
    (nights.out / "run_date=2026-03-09").mkdir()  # no report.parquet
    result = klrank("history", nights.out)  # the console script: history end to end
    expect(result, 0)
    lines = [line for line in result.stdout.splitlines() if line.startswith("| 2026-")]
    assert len(lines) == 4 * 2
    assert [line.split(" | ")[0] for line in lines] == [
        f"| {d}" for d in sorted(NIGHT_DATES) for _ in NIGHT1
    ]
    report = _all_rows(_report(nights.out / "run_date=2026-03-04"))
    m = report["m"]
    assert (
        f"| 2026-03-04 | {m['rank']} | m | {m['mean_kl']:.4g} [{m['ci95_low']:.4g}, {m['ci95_high']:.4g}] "
        f"| {N_ROWS} | 0 |" in lines
    )
    chart = nights.out / "history.html"
    html = chart.read_text()
    # One static SVG line per model, named in the legend: nothing to run or fetch.
    assert html.count('<g class="series"') == 2
    assert (
        '<span class="legendtext">m</span>' in html and '<span class="legendtext">n</span>' in html
    )
    assert "<script" not in html and " src=" not in html
    assert f"klrank: chart written to {chart}" in result.stderr


def test_history_json_holds_each_reports_values(nights: Nights, tmp_path: Path) -> None:
    chart = tmp_path / "charts" / "kl.html"
    result = invoke("history", nights.out, "--json", "--chart", chart)
    expect(result, 0)
    document = json.loads(result.stdout)
    assert document["nights"] == sorted(NIGHT_DATES)
    assert document["unit"] == "bits" and document["slice"] == "ALL"
    assert document["chart"] == str(chart) and chart.exists()
    expected = [
        {
            "run_date": day,
            "rank": r["rank"],
            "model": r["model"],
            "n_rows": r["n_rows"],
            "mean_kl": r["mean_kl"],
            "sem_kl": r["sem_kl"],
            "ci95_low": r["ci95_low"],
            "ci95_high": r["ci95_high"],
            "n_infinite": r["n_infinite"],
        }
        for day in sorted(NIGHT_DATES)
        for r in _report(nights.out / f"run_date={day}")
        .filter(pl.col("slice") == "ALL")
        .iter_rows(named=True)
    ]
    assert document["rows"] == expected


# ---------------------------------------------------------------------------------------------
# Each gate passing and failing, tonight = night 2 against night 1 given as --baseline PATH.


@dataclass(frozen=True)
class GateCase:
    """Gate options, the exit code they must give and the (gate, model) pairs that fail."""

    options: tuple[str, ...]
    code: int
    failed: frozenset[tuple[str, str | None]]


GATE_CASES = {
    "max_mean_kl-passes": GateCase(("--max-mean-kl", "100"), 0, frozenset()),
    "max_mean_kl-fails-every-model": GateCase(
        ("--max-mean-kl", "0"), 3, frozenset({("max_mean_kl", "m"), ("max_mean_kl", "n")})
    ),
    "max_regression-fails": GateCase(
        ("--max-regression", "10"), 3, frozenset({("max_regression", "m")})
    ),
    "max_regression-passes-a-large-limit": GateCase(("--max-regression", "100000"), 0, frozenset()),
    "max_regression-passes-when-not-significant": GateCase(
        ("--max-regression", "10", "--alpha", "1e-300"), 0, frozenset()
    ),
    "expect_best-passes": GateCase(("--expect-best", "m"), 0, frozenset()),
    "expect_best-fails": GateCase(("--expect-best", "n"), 3, frozenset({("expect_best", "n")})),
    "expect_best-unknown-model-fails": GateCase(
        ("--expect-best", "zzz"), 3, frozenset({("expect_best", "zzz")})
    ),
    "every-failed-gate-is-listed": GateCase(
        ("--max-mean-kl", "0", "--max-regression", "10", "--expect-best", "n"),
        3,
        frozenset(
            {
                ("max_mean_kl", "m"),
                ("max_mean_kl", "n"),
                ("max_regression", "m"),
                ("expect_best", "n"),
            }
        ),
    ),
}


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Result, Path]]:
    root = tmp_path_factory.mktemp("gates")
    baseline = root / "baseline"
    expect(invoke("run", *_inputs(root / "night1", NIGHT1), "--out", baseline, "--no-rows"), 0)
    tonight = _inputs(root / "night2", NIGHT2)
    commands = [
        ["run", *tonight, "--out", root / name, "--baseline", baseline, "--no-rows", *case.options]
        for name, case in GATE_CASES.items()
    ]
    results = [invoke(*command) for command in commands]
    return {name: (result, root / name) for name, result in zip(GATE_CASES, results, strict=True)}


@pytest.mark.parametrize("name", GATE_CASES)
def test_each_gate_passes_or_fails(gate_runs: dict[str, tuple[Result, Path]], name: str) -> None:
    case = GATE_CASES[name]
    result, out = gate_runs[name]
    expect(result, case.code)
    assert (out / "_SUCCESS").exists() and (out / "report.parquet").exists()  # published anyway
    manifest = _manifest(out)
    assert manifest["status"] == ("gate_failed" if case.code == 3 else "success")
    assert _failed(manifest) == case.failed
    assert result.stderr.count("klrank: gate failed: ") == len(case.failed)
    gates = manifest["gates"]
    assert isinstance(gates, list) and len(gates) >= len(case.failed)


def test_json_output_of_a_failed_gate(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline"
    expect(invoke("run", *_inputs(tmp_path / "n1", NIGHT1), "--out", baseline, "--no-rows"), 0)
    tonight = _inputs(tmp_path / "n2", NIGHT2)
    out = tmp_path / "out"
    result = klrank(  # the console script: exit 3 end to end
        "run", *tonight, "--out", out, "--baseline", baseline, "--expect-best", "n", "--json"
    )
    expect(result, 3)
    document = json.loads(result.stdout)
    assert document["status"] == "gate_failed" and document["exit_code"] == 3
    assert document["target"] == str(out)
    assert _failed(document) == {("expect_best", "n")}
    assert document["baseline"]["path"] == str(baseline / "report.parquet")


# ---------------------------------------------------------------------------------------------
# Baselines given as a path, in another unit, or with models that come and go.


def test_baseline_in_another_unit_is_converted(tmp_path: Path) -> None:
    bits = tmp_path / "bits"
    expect(invoke("run", *_inputs(tmp_path / "n1", NIGHT1), "--out", bits, "--no-rows"), 0)
    out = tmp_path / "nats"
    tonight = _inputs(tmp_path / "n2", NIGHT1)
    expect(
        invoke("run", *tonight, "--out", out, "--base", "e", "--baseline", bits / "report.parquet"),
        0,
    )
    before, now = _all_rows(_report(bits)), _all_rows(_report(out))
    for model in NIGHT1:
        assert now[model]["prev_mean_kl"] == pytest.approx(
            before[model]["mean_kl"] * math.log(2.0), rel=1e-12
        )
        assert now[model]["change_mean_kl"] == pytest.approx(0.0, abs=1e-12)
        assert now[model]["p_value_change"] == pytest.approx(1.0, abs=1e-9)


def test_new_model_tonight_gets_nulls_and_skips_the_regression_gate(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline"
    expect(invoke("run", *_inputs(tmp_path / "n1", NIGHT1), "--out", baseline, "--no-rows"), 0)
    out = tmp_path / "out"
    tonight = _inputs(tmp_path / "n2", NIGHT1 | {"o": 0.2})
    result = invoke("run", *tonight, "--out", out, "--baseline", baseline, "--max-regression", "5")
    expect(result, 0)
    rows = _all_rows(_report(out))
    assert [rows["o"][c] for c in CHANGE_COLUMNS] == [None] * 4
    assert rows["m"]["prev_mean_kl"] is not None
    gates = {g["model"]: g["outcome"] for g in _manifest(out)["gates"]}  # type: ignore[attr-defined]
    assert gates == {"m": "passed", "n": "passed", "o": "skipped"}
    assert "| o | – |" in result.stdout and "new" in result.stdout


def test_report_schema_version_is_4(tmp_path: Path) -> None:
    out = tmp_path / "out"
    expect(invoke("run", *_inputs(tmp_path, NIGHT1), "--out", out, "--no-rows"), 0)
    metadata = reading.read_parquet_metadata(out / "report.parquet")
    assert metadata["klrank.report_schema_version"] == REPORT_SCHEMA_VERSION == "4"
    columns = _report(out).columns
    assert columns[columns.index("p_value_change") - 3 :][:4] == CHANGE_COLUMNS


# ---------------------------------------------------------------------------------------------
# Usage errors: exit 2 with a message that says what to fix.


def _usage_cases(root: Path) -> dict[str, tuple[Sequence[str | Path], str]]:
    inputs = _inputs(root, NIGHT1)
    out = ["--out", root / "out"]
    not_parquet = root / "text" / "report.parquet"
    not_parquet.parent.mkdir()
    not_parquet.write_text("not parquet")
    foreign = write(pl.DataFrame({"slice": ["ALL"]}), root / "foreign" / "report.parquet")
    future = root / "future" / "report.parquet"
    future.parent.mkdir()
    pl.DataFrame(
        {"slice": ["ALL"], "model": ["m"], "n_rows": [1], "mean_kl": [0.0], "sem_kl": [None]},
        schema_overrides={"sem_kl": pl.Float64},
    ).write_parquet(future, metadata={"klrank.report_schema_version": "99", "klrank.unit": "bits"})
    (root / "empty").mkdir()
    return {
        "auto-without-run-date": (
            ["run", *inputs, *out, "--baseline", "auto"],
            "--baseline auto needs --run-date",
        ),
        "regression-without-baseline": (
            ["run", *inputs, *out, "--max-regression", "5"],
            "--max-regression needs --baseline",
        ),
        "missing-baseline": (
            ["run", *inputs, *out, "--baseline", root / "nowhere"],
            "is neither a report.parquet nor a run folder",
        ),
        "baseline-not-parquet": (
            ["run", *inputs, *out, "--baseline", not_parquet.parent],
            "cannot read the report",
        ),
        "baseline-not-a-klrank-report": (
            ["run", *inputs, *out, "--baseline", foreign],
            "cannot read the report",
        ),
        "baseline-from-a-future-version": (
            ["run", *inputs, *out, "--baseline", future],
            "report schema version '99'",
        ),
        "alpha-out-of-range": (
            ["run", *inputs, *out, "--baseline", foreign, "--max-regression", "5", "--alpha", "0"],
            "--alpha must be in (0, 1)",
        ),
        "negative-regression-limit": (
            ["run", *inputs, *out, "--baseline", foreign, "--max-regression", "-1"],
            "--max-regression",
        ),
        "history-of-an-empty-folder": (["history", root / "empty"], "holds no run_date="),
        "history-of-a-missing-folder": (["history", root / "nowhere"], "holds no run_date="),
    }


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    cases = _usage_cases(tmp_path)
    results = [invoke(*args) for args, _ in cases.values()]
    for (name, (_, message)), result in zip(cases.items(), results, strict=True):
        expect(result, 2)
        assert message in result.stderr, f"{name}: {message!r} not in\n{result}"
        assert not (tmp_path / "out" / "report.parquet").exists(), name


def test_history_of_an_unknown_slice_exits_2(nights: Nights) -> None:
    result = invoke("history", nights.out, "--slice", "region=mars")
    expect(result, 2)
    assert "no night's report has the slice 'region=mars'" in result.stderr


def test_page_of_a_regressed_night_shows_the_change_and_the_failed_gate(nights: Nights) -> None:
    folder = nights.out / "run_date=2026-03-04"
    page = (folder / "report.html").read_text(encoding="utf-8")
    manifest = _manifest(folder)
    (message,) = [
        g["message"]
        for g in manifest["gates"]  # type: ignore[attr-defined]
        if g["outcome"] == "failed"
    ]
    assert "<h2 id='gates'>Failed gates</h2>" in page
    assert f"<li>{html.escape(message)}</li>" in page
    assert "<th>vs baseline (p)</th>" in page
    row = _all_rows(_report(folder))["m"]
    assert f"{row['change_mean_kl_pct']:+.3g}% (p=" in page
    # The first night had no baseline: no such column, and no gate failed.
    first = (nights.out / "run_date=2026-03-01" / "report.html").read_text(encoding="utf-8")
    assert "vs baseline" not in first and "Failed gates" not in first
