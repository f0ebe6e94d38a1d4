"""The README's "Run it every night" steps, run as a new user would, on the example data.

The config file is read from the README itself (between its ``nightly-config`` markers), with
``/srv/klrank`` moved to a temporary folder, so the walkthrough cannot drift from what works.
"""

import json
import re
import shutil
import textwrap
from pathlib import Path

import duckdb
import polars as pl
from cli_helpers import expect, klrank

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"


def _nightly_config(home: Path) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(
        r"<!-- nightly-config -->\s*```toml\n(.*?)```\s*<!-- /nightly-config -->", readme, re.S
    )
    assert block, "README.md lost its nightly-config markers"
    return textwrap.dedent(block.group(1)).replace("/srv/klrank", str(home))


def test_the_nightly_walkthrough_works_from_the_readme(tmp_path: Path) -> None:
    home = tmp_path / "srv-klrank"
    shutil.copytree(EXAMPLES, home / "data")
    config = home / "klrank.toml"
    config.write_text(_nightly_config(home), encoding="utf-8")

    # Step 3: the merged options name the file as their source, and the data is valid.
    shown = klrank("config", "show", "run", "--config", config, "--json")
    expect(shown, 0)
    options = json.loads(shown.stdout)["run"]
    assert options["baseline"] == {"value": "auto", "source": "config file"}
    assert options["out"]["value"] == str(home / "reports")
    expect(klrank("validate", "--config", config), 0)

    # Step 4, two nights: the second compares with the first.
    for night in ("2026-11-24", "2026-11-25"):
        expect(klrank("run", "--config", config, "--run-date", night), 0)
    reports = home / "reports"
    tonight = reports / "run_date=2026-11-25"
    for name in ("report.parquet", "report.html", "summary.md", "manifest.json"):
        assert (tonight / name).is_file(), name
    report = pl.read_parquet(tonight / "report.parquet").filter(pl.col("slice") == "ALL")
    # The same data both nights: every model's change is exactly 0.
    assert report.get_column("change_mean_kl").to_list() == [0.0] * report.height
    manifest = json.loads((tonight / "manifest.json").read_text())
    assert manifest["status"] == "success"
    assert {g["gate"] for g in manifest["gates"]} == {"max_regression"}

    # Step 6: history, and the reports read as one hive-partitioned table.
    expect(klrank("history", reports), 0)
    assert (reports / "history.html").is_file()
    rows = duckdb.sql(
        "SELECT run_date, count(*) AS n FROM read_parquet("
        f"'{reports}/*/report.parquet', hive_partitioning = true) "
        "WHERE slice = 'ALL' GROUP BY run_date ORDER BY run_date"
    ).fetchall()
    assert [(str(d), n) for d, n in rows] == [("2026-11-24", 3), ("2026-11-25", 3)]


def test_the_exit_code_table_lists_every_code_klrank_returns() -> None:
    from klrank.pipeline.errors import ExitCode

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Bad input, exit codes and failure cases", 1)[1].split("\n## ", 1)[0]
    listed = {
        int(code)
        for row in re.findall(r"^\| ([0-9, ]+) \|", section, re.M)
        for code in row.split(",")
    }
    assert listed == {int(code) for code in ExitCode}
