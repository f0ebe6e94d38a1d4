"""The published report end to end: golden file, schema contract, metadata, determinism."""

import json
import os
from pathlib import Path

import pandera.errors
import polars as pl
import pytest
from klrank.config import InputOptions, RunOptions
from klrank.io import reading
from klrank.run import run
from klrank.schemas.report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION
from polars.testing import assert_frame_equal

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
GOLDEN = Path(__file__).parent / "golden" / "example_report.csv"


def _example_options(out: Path, **changes: object) -> RunOptions:
    inputs = InputOptions(
        labels=str(EXAMPLES / "labels.parquet"),
        predictions=str(EXAMPLES / "predictions"),
        slice_by=("region",),
    )
    return RunOptions(inputs=inputs, out=out, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def example_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("example") / "out"
    run(_example_options(out))
    return out


def test_example_report_matches_the_golden_file(example_report: Path) -> None:
    """Regenerate on purpose only: KLRANK_REGENERATE_GOLDEN=1 make test, then review the diff."""
    report = pl.read_parquet(example_report / "report.parquet")
    if os.environ.get("KLRANK_REGENERATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        report.write_csv(GOLDEN)
    golden = pl.read_csv(GOLDEN, schema=report.schema)
    # 1e-9: marginal_kl is a small difference of large sums, so its last digits follow the
    # summation order; anything beyond that is a real change.
    assert_frame_equal(report, golden, check_exact=False, rel_tol=1e-9, abs_tol=0.0)


def test_report_follows_its_schema_and_records_version_and_options(example_report: Path) -> None:
    report = pl.read_parquet(example_report / "report.parquet")
    REPORT_SCHEMA.validate(report)
    metadata = reading.read_parquet_metadata(example_report / "report.parquet")
    assert metadata["klrank.report_schema_version"] == REPORT_SCHEMA_VERSION
    options = json.loads(metadata["klrank.options"])
    assert (
        options["base"] == "2" and options["slice_by"] == ["region"] and options["epsilon"] == 0.0
    )


def test_outputs_and_manifest(example_report: Path) -> None:
    names = sorted(p.name for p in example_report.iterdir())
    assert names == [
        "_SUCCESS",
        "class_contributions.parquet",
        "manifest.json",
        "quantiles.parquet",
        "report.html",
        "report.parquet",
        "rows.parquet",
        "summary.md",
        "worst_rows.parquet",
    ]
    manifest = json.loads((example_report / "manifest.json").read_text())
    assert sorted(manifest["outputs"]) == [n for n in names if n != "_SUCCESS"]
    assert manifest["status"] == "success"
    assert manifest["models"] == ["blurry", "sharp", "uniform"]
    assert manifest["classes"] == ["bird", "cat", "dog", "fish"]
    assert manifest["inputs"]["labels"]["rows"] == 300
    assert manifest["inputs"]["predictions"] == {
        "path": str(EXAMPLES / "predictions"),
        "files": 3,
        "rows": 900,
    }
    assert set(manifest["timings_s"]) >= {"scan", "validate", "compute", "write"}
    assert {"polars", "pandera", "pyarrow", "python", "klrank"} <= set(manifest["versions"])
    rows = pl.read_parquet(example_report / "rows.parquet")
    assert rows.columns == [
        "id",
        "model",
        "kl",
        "reverse_kl",
        "js",
        "cross_entropy",
        "entropy",
        "top1_match",
        "region",
    ]
    assert rows.height == 900


def test_same_inputs_and_options_give_the_same_report_bytes(
    example_report: Path, tmp_path: Path
) -> None:
    run(_example_options(tmp_path / "again"))
    for name in (
        "report.parquet",
        "class_contributions.parquet",
        "quantiles.parquet",
        "worst_rows.parquet",
    ):
        assert (tmp_path / "again" / name).read_bytes() == (example_report / name).read_bytes()
    # The page names its inputs, which are the same paths here: the same bytes too.
    assert (tmp_path / "again" / "report.html").read_bytes() == (
        example_report / "report.html"
    ).read_bytes()


def test_run_date_partitions_form_one_hive_dataset(tmp_path: Path) -> None:
    import datetime as dt

    for day in (1, 2):
        run(
            _example_options(tmp_path / "nightly", run_date=dt.date(2026, 1, day), write_rows=False)
        )
    history = pl.read_parquet(
        tmp_path / "nightly" / "**" / "report.parquet", hive_partitioning=True
    )
    assert sorted(history.get_column("run_date").cast(pl.String).unique()) == [
        "2026-01-01",
        "2026-01-02",
    ]
    assert not (tmp_path / "nightly" / "run_date=2026-01-01" / "rows.parquet").exists()


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (pl.col("rank") * 0, "greater_than_or_equal_to(1)"),
        (pl.lit(-0.5).alias("top1_agreement"), "in_range(0.0, 1.0)"),
        (pl.lit("furlongs").alias("unit"), "isin"),
        (pl.col("n_rows").cast(pl.Int32), "dtype('Int64')"),
        (pl.lit(float("nan")).alias("mean_entropy"), "not_nullable"),
    ],
    ids=["rank-zero", "agreement-negative", "unknown-unit", "count-dtype", "nan-entropy"],
)
def test_report_schema_rejects_broken_reports(
    example_report: Path, change: pl.Expr, check: str
) -> None:
    report = pl.read_parquet(example_report / "report.parquet").with_columns(change)
    with pytest.raises(pandera.errors.SchemaErrors) as error:
        REPORT_SCHEMA.validate(report, lazy=True)
    assert any(check in c for c in error.value.failure_cases.get_column("check").to_list())
