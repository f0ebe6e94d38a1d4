"""The README and the manual in docs/, read and run as a reader would.

Every code block of README.md, docs/*.md and BENCHMARKS.md is run, page by page and in document order, from a
folder that mirrors the checkout's root (its top-level entries linked there, `.venv/bin` first on
``PATH``, ``/srv/klrank`` moved inside it), or is listed in ``ILLUSTRATIVE`` with the reason it
cannot run here. A page's Python blocks share one interpreter, as a notebook's cells do. A
``text`` block after ``<!-- output -->`` must appear in what the block before it printed. The
tables that restate the code (report columns, published files, exit codes, the Airflow task's
outcomes, the import layers) are checked against the code or against real published files, and
every relative link and anchor resolves.

Blocks that use the Python API (README.md, docs/python-api.md) and the tables of errors and exit
codes need ``klrank.evaluate``, ``klrank.ExitCode`` and the error classes at the package's top.
"""

import configparser
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import IO

import duckdb
import polars as pl
import pytest
from markdown_helpers import Block, blocks, heading_anchors, links, raw_tables

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "BENCHMARKS.md",
    ROOT / "CHANGELOG.md",
]
EXAMPLES = ROOT / "examples" / "data"
VENV = Path(sys.prefix)  # the environment running the tests, whose klrank is the checkout's
HOME = "/srv/klrank"  # the deployment folder of docs/operations.md
NIGHTS = ("2026-11-24", "2026-11-25")  # the nights in reports/ before each page runs
# Blocks that are run, and blocks that are read only (command synopses, formulas, output).
RUN = {"bash", "python", "sql", "toml", "cron"}
READ = {"text"}
# Outputs a page may write: not mirrored from the checkout, so that they land in the sandbox.
NOT_MIRRORED = {".git", "demo-out", "reports", "out", "build", "srv-klrank"}

# (page, how the block's first line starts): why it is not run here.
ILLUSTRATIVE = {
    ("README.md", "make demo"): (
        "builds .venv, and `make test` is this suite; the demo's klrank command is the README's "
        "next block (test_make_demo_runs_the_readme_example)"
    ),
    ("docs/operations.md", "python3 -m venv /srv/klrank/.venv"): (
        "installs klrank into a new environment (minutes, over the network); the walkthrough "
        "runs the checkout's own install, linked as /srv/klrank/.venv"
    ),
    ("docs/engines.md", "pip install 'klrank[ray]'"): (
        "needs a Ray cluster at head-node:6379; tests/engines/test_ray_engine.py runs the engine on a "
        "local Ray"
    ),
    ("docs/airflow.md", "export AIRFLOW_HOME="): (
        "needs Airflow in .venv-airflow; `make test-airflow` runs the same `airflow dags test` "
        "(tests/airflow/test_airflow.py)"
    ),
    ("docs/airflow.md", "# after_klrank.py"): (
        "a DAG file, which needs Airflow; tests/airflow/test_airflow.py runs it from this page "
        "(test_a_downstream_dag_scheduled_on_the_asset_is_queued_by_a_good_night)"
    ),
    ("docs/mlflow.md", "pip install 'klrank[mlflow]'"): (
        "installs from the network and names a server that is not there; the test environment "
        "has the extra, and tests/tracking/test_mlflow.py starts a real server"
    ),
    ("docs/mlflow.md", "# MLFLOW_TRACKING_URI names the tracking server"): (
        "needs an MLflow tracking server; `make test-mlflow` runs this block against one "
        "(tests/tracking/test_mlflow.py, test_the_docs_night_is_logged)"
    ),
    ("docs/scaling.md", "make bench"): (
        "times the 2m benchmark set (0.65 GiB to generate, minutes); "
        "tests/test_benchmark_runs.py runs the harness on the tiny set"
    ),
    ("docs/scaling.md", ".venv/bin/python benchmarks/ray_rates.py"): (
        "measures rates on the 2m benchmark set with a local Ray (minutes); "
        "tests/test_benchmark_runs.py runs it on the tiny set"
    ),
    ("docs/inputs-and-outputs.md", "export AWS_ACCESS_KEY_ID="): (
        "needs an S3 bucket; tests/io/test_object_storage.py runs such runs through the CLI "
        "against moto's S3 server on loopback "
        "(test_a_report_from_a_bucket_is_the_report_from_the_same_files_on_disk)"
    ),
    ("docs/inputs-and-outputs.md", "export AZURE_STORAGE_ACCOUNT_NAME="): (
        "needs an Azure storage account; tests/io/test_object_storage.py runs such runs through "
        "the CLI against Azurite, Azure's emulator, on loopback (its [az] cases)"
    ),
    ("docs/object-storage.md", "export AZURE_STORAGE_ACCOUNT_NAME="): (
        "needs an Azure storage account; tests/io/test_bucket_publishing.py publishes, reads "
        "back, runs history and --baseline auto through the CLI against Azurite (its [az] cases)"
    ),
    ("docs/object-storage.md", "export AWS_ACCESS_KEY_ID="): (
        "needs an S3 bucket; tests/io/test_bucket_publishing.py publishes, reads back, runs "
        "history and --baseline auto through the CLI against moto's S3 server on loopback"
    ),
    ("docs/inputs-and-outputs.md", "export GOOGLE_APPLICATION_CREDENTIALS="): (
        "needs a GCS bucket; tests/io/test_object_storage.py runs such runs through the CLI "
        "against fake-gcs-server, a GCS emulator, on loopback (its [gs] cases)"
    ),
    ("docs/object-storage.md", "pip install 'klrank[gcs]'"): (
        "needs a GCS bucket and installs from the network; tests/io/test_bucket_publishing.py "
        "publishes, reads back, runs history and --baseline auto through the CLI against "
        "fake-gcs-server (its [gs] cases)"
    ),
    ("docs/object-storage.md", "import polars as pl, pyarrow.fs"): (
        "needs an S3 bucket; the readers' rule it checks is checked by _complete_night in "
        "tests/io/test_bucket_publishing.py"
    ),
    ("docs/language-models.md", "python -m klrank.tools.dump_logits labels"): (
        "needs torch, transformers and models on disk; tests/tools/test_dump_logits_model.py "
        "runs these commands on a tiny random model (make test-lm)"
    ),
    ("docs/language-models.md", "klrank run --labels base.parquet"): (
        "needs the dumps of the block before it (torch, transformers, models on disk); labels "
        "given as logits with a label column are issue 16's input, tested with it"
    ),
    ("BENCHMARKS.md", "make bench"): (
        "the benchmarks generate up to 10 GiB of data and take minutes to hours; "
        "tests/test_benchmark_runs.py runs the harness and each script on tiny sizes"
    ),
}


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _illustrative(page: Path, block: Block) -> list[tuple[str, str]]:
    """The ILLUSTRATIVE entries that name ``block``."""
    first = block.text.split("\n", 1)[0]
    return [key for key in ILLUSTRATIVE if key[0] == _name(page) and first.startswith(key[1])]


def _section(page: Path, heading: str) -> str:
    """The text under ``heading`` (a whole heading line), up to the next heading of its level."""
    text = page.read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    after = text.split(f"\n{heading}\n", 1)
    assert len(after) == 2, f"{_name(page)} lost its heading {heading!r}"
    return re.split(rf"\n{level} ", after[1], maxsplit=1)[0]


def _table(page: Path, heading: str, first: str) -> list[list[str]]:
    """The table under ``heading`` whose header's first cell is ``first``, header first."""
    tables = [t for t in raw_tables(_section(page, heading)) if t[0][0] == first]
    assert len(tables) == 1, f"{_name(page)}, {heading!r}: no single table headed {first!r}"
    return tables[0]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# ---------------------------------------------------------------------------------------------
# Every block is run or illustrative


def test_every_block_is_run_or_listed_as_illustrative() -> None:
    seen = set()
    for page in PAGES:
        for block in blocks(page.read_text(encoding="utf-8")):
            where = f"{_name(page)}:{block.line}"
            assert block.language in RUN | READ, (
                f"{where}: a ```{block.language} block: use one of {sorted(RUN | READ)}, so that "
                "it is run (or text, for output and synopses)"
            )
            named = _illustrative(page, block)
            assert len(named) <= 1, f"{where}: named by {named}"
            if block.language in RUN:
                seen.update(named)
            if block.comment == "output":
                assert block.language == "text", f"{where}: output is a ```text block"
    stale = set(ILLUSTRATIVE) - seen
    assert not stale, f"ILLUSTRATIVE names blocks no page has: {stale}"


class Reader:
    """Runs a page's blocks as its reader would, from a mirror of the checkout's root."""

    _KERNEL = """
import contextlib, io, json, os, sys, traceback
replies = os.fdopen(int(sys.argv[1]), "w")
shared = {"__name__": "__main__"}
for request in map(json.loads, sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    namespace = shared if request["shared"] else {"__name__": "__main__"}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            exec(compile(request["code"], request["name"], "exec"), namespace)
        error = None
    except BaseException:
        error = traceback.format_exc()
    replies.write(json.dumps({"stdout": out.getvalue(), "stderr": err.getvalue(), "error": error}) + "\\n")
    replies.flush()
"""

    def __init__(self, root: Path, scratch: Path) -> None:
        self.root = root
        self.scratch = scratch
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KLRANK_")}
        self.env |= {
            "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "NO_COLOR": "1",
            "TERM": "dumb",
            "COLUMNS": "200",
        }
        self._kernel: subprocess.Popen[str] | None = None
        self._replies: IO[str] | None = None
        self._log: IO[str] | None = None

    def _here(self, text: str) -> str:
        return text.replace(HOME, str(self.root / "srv-klrank"))

    def _process(self, args: list[str], where: str) -> tuple[str, str]:
        done = subprocess.run(
            args,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (
            f"{where} exited {done.returncode}\n--- stdout ---\n{done.stdout}\n"
            f"--- stderr ---\n{done.stderr}"
        )
        return done.stdout, done.stderr

    def _python(self, code: str, name: str, shared: bool) -> tuple[str, str]:
        if self._kernel is None:
            read, write = os.pipe()
            self._log = (self.scratch / "kernel.log").open("w")
            self._kernel = subprocess.Popen(
                [str(VENV / "bin" / "python"), "-c", self._KERNEL, str(write)],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._log,
                pass_fds=(write,),
                text=True,
            )
            os.close(write)
            self._replies = os.fdopen(read)
        assert self._kernel.stdin is not None and self._replies is not None
        self._kernel.stdin.write(json.dumps({"code": code, "name": name, "shared": shared}) + "\n")
        self._kernel.stdin.flush()
        line = self._replies.readline()
        assert line, f"the Python kernel died:\n{(self.scratch / 'kernel.log').read_text()}"
        reply = json.loads(line)
        assert reply["error"] is None, f"{name}:\n{reply['error']}\n{reply['stdout']}"
        return reply["stdout"], reply["stderr"]

    def run(self, page: Path, block: Block) -> tuple[str, str]:
        """Run one block; its stdout and stderr."""
        where = f"{_name(page)}:{block.line}"
        text = self._here(block.text)
        if block.language == "bash":
            return self._process(["bash", "-e", "-o", "pipefail", "-c", text], where)
        if block.language == "python":
            # Blank lines first, so that a traceback gives the line in the page.
            return self._python("\n" * block.line + text, _name(page), shared=True)
        if block.language == "sql":
            code = f"import duckdb\nprint(duckdb.sql({text!r}).fetchall())"
            return self._python(code, where, shared=False)
        if block.language == "toml":
            target = (block.comment or "").removeprefix("file: ")
            config = Path(self._here(target)) if target else self.scratch / f"{block.line}.toml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(text, encoding="utf-8")
            return self._process(["klrank", "config", "show", "--config", str(config)], where)
        if block.language == "cron":
            fields = text.strip().split(None, 5)
            assert len(fields) == 6, f"{where}: not a crontab line"
            # What cron does to the command: \% is a literal %, and sh runs it.
            return self._process(["sh", "-c", fields[5].replace("\\%", "%")], where)
        raise AssertionError(f"{where}: no way to run a {block.language} block")

    def close(self) -> None:
        if self._kernel is not None:
            assert self._kernel.stdin is not None and self._replies is not None
            self._kernel.stdin.close()
            self._kernel.wait(timeout=60)
            self._replies.close()
        if self._log is not None:
            self._log.close()


def _normal(text: str) -> str:
    # Column padding is the renderer's business: compare words, line by line.
    return "\n".join(" ".join(line.split()) for line in text.strip().split("\n"))


def _klrank(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLRANK_")}
    return subprocess.run(
        [str(VENV / "bin" / "klrank"), *map(str, args)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``reports/``: two nights of the example data, as docs/nightly.md makes them."""
    reports = tmp_path_factory.mktemp("nights") / "reports"
    for night in NIGHTS:
        done = _klrank(
            "run",
            "--labels",
            EXAMPLES / "labels.parquet",
            "--predictions",
            EXAMPLES / "predictions",
            "--slice-by",
            "region",
            "--out",
            reports,
            "--run-date",
            night,
            "--baseline",
            "auto",
            "--quiet",
        )
        assert done.returncode == 0, done.stderr
    return reports


@contextmanager
def _reader(tmp_path: Path, nights: Path) -> Iterator[Reader]:
    root = tmp_path / "checkout"
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in NOT_MIRRORED:
            (root / entry.name).symlink_to(entry)
    shutil.copytree(nights, root / "reports")
    home = root / "srv-klrank"
    home.mkdir()
    (home / ".venv").symlink_to(VENV)
    shutil.copytree(EXAMPLES, home / "data")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    reader = Reader(root, scratch)
    try:
        yield reader
    finally:
        reader.close()


def _after_operations(root: Path) -> None:
    """The deployment of docs/operations.md did what the page says."""
    home = root / "srv-klrank"
    shown = _klrank("config", "show", "run", "--config", home / "klrank.toml", "--json")
    assert shown.returncode == 0, shown.stderr
    options = json.loads(shown.stdout)["run"]
    assert options["baseline"] == {"value": "auto", "source": "config file"}
    assert options["out"]["value"] == str(home / "reports")

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
    assert (reports / "history.html").is_file()
    rows = duckdb.sql(
        "SELECT run_date, count(*) AS n FROM read_parquet("
        f"'{reports}/*/report.parquet', hive_partitioning = true) "
        "WHERE slice = 'ALL' GROUP BY run_date ORDER BY run_date"
    ).fetchall()
    # The cron line published a night too, dated today.
    today = dt.date.today().isoformat()
    assert {(str(d), n) for d, n in rows} == {("2026-11-24", 3), ("2026-11-25", 3), (today, 3)}

    # With --json and --log-format json, every line of the cron log is one JSON object.
    log = (home / "klrank.log").read_text(encoding="utf-8").splitlines()
    lines = [json.loads(line) for line in log]
    assert any(line.get("status") == "success" and "outputs" in line for line in lines), log


AFTER: dict[str, Callable[[Path], None]] = {"docs/operations.md": _after_operations}


def _runs(page: Path) -> bool:
    return any(
        b.language in RUN and not _illustrative(page, b)
        for b in blocks(page.read_text(encoding="utf-8"))
    )


@pytest.mark.parametrize("page", [p for p in PAGES if _runs(p)], ids=_name)
def test_the_blocks_of_the_page_run(page: Path, tmp_path: Path, nights: Path) -> None:
    with _reader(tmp_path, nights) as reader:
        printed: tuple[str, str] | None = None
        for block in blocks(page.read_text(encoding="utf-8")):
            where = f"{_name(page)}:{block.line}"
            if block.comment == "output":
                assert printed is not None, f"{where}: output of no block that ran"
                stdout, stderr = printed
                shown = _normal(block.text)
                assert shown in _normal(stdout) or shown in _normal(stderr), (
                    f"{where}: the page shows\n{block.text}\nbut the block before it printed\n"
                    f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
                )
            if block.language in READ:
                continue
            printed = None
            if not _illustrative(page, block):
                printed = reader.run(page, block)
        AFTER.get(_name(page), lambda root: None)(reader.root)


def test_make_demo_runs_the_readme_example() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "the Makefile lost its demo target"
    demo = " ".join(recipe.group(1).replace("\\\n", " ").split()).replace("$(BIN)/", ".venv/bin/")
    (example,) = [
        b.text
        for b in blocks(README.read_text(encoding="utf-8"))
        if b.language == "bash" and "klrank run" in b.text
    ]
    assert demo in " ".join(example.replace("\\\n", " ").split())


def test_the_readme_is_a_front_door() -> None:
    # The manual lives in docs/; the README stays short enough to read in a minute or two.
    assert len(README.read_bytes()) <= 8 * 1024


# ---------------------------------------------------------------------------------------------
# Tables that restate the code

IO_PAGE = ROOT / "docs" / "inputs-and-outputs.md"
DTYPES = {"string": pl.String, "int64": pl.Int64, "float64": pl.Float64, "boolean": pl.Boolean}


def _documented_columns(rows: list[list[str]]) -> list[tuple[str, str]]:
    """(column, type cell) for every column a table names, in its order."""
    return [(name, row[1]) for row in rows for name in _names(row[0]) or [row[0]]]


def test_the_report_column_table_is_the_report_schema() -> None:
    from klrank.schemas.report import REPORT_COLUMNS

    table = _table(IO_PAGE, "### `report.parquet` columns (schema version 4)", "column")
    documented = _documented_columns(table[1:])
    assert [name for name, _ in documented] == list(REPORT_COLUMNS)
    for name, kind in documented:
        dtype, _, null = kind.partition(" or ")
        column = REPORT_COLUMNS[name]
        assert DTYPES[dtype] == column.dtype.type, (name, kind, column.dtype)
        assert (null == "null") == column.nullable, f"{name}: documented as {kind!r}"


def _published(nights: Path) -> Path:
    return nights / f"run_date={NIGHTS[-1]}"


def test_the_output_files_table_lists_what_a_run_publishes(nights: Path) -> None:
    from klrank.schemas.outputs import OUTPUT_FILES, SUCCESS_FILE

    table = _table(IO_PAGE, "## Output files", "file")
    documented = [_names(row[0])[0] for row in table[1:]]
    assert documented == [*OUTPUT_FILES, SUCCESS_FILE]
    published = {p.name for p in _published(nights).iterdir() if not p.name.startswith(".")}
    assert published == set(documented)


@pytest.mark.parametrize(
    ("heading", "file"),
    [
        ("### `class_contributions.parquet` columns", "class_contributions.parquet"),
        ("### `quantiles.parquet` columns", "quantiles.parquet"),
        ("### `worst_rows.parquet` columns", "worst_rows.parquet"),
    ],
)
def test_the_column_tables_match_the_published_files(nights: Path, heading: str, file: str) -> None:
    labels = pl.read_parquet_schema(EXAMPLES / "labels.parquet")
    expected = []
    for name, kind in _documented_columns(_table(IO_PAGE, heading, "column")[1:]):
        if name == "slice columns":  # the nights were run with --slice-by region
            expected.append(("region", labels["region"]))
        elif kind == "as the labels' id":
            expected.append((name, labels["id"]))
        else:
            expected.append((name, DTYPES[kind]))
    schema = pl.read_parquet_schema(_published(nights) / file)
    assert list(schema.items()) == expected


def test_the_rows_file_has_the_documented_columns(nights: Path) -> None:
    from klrank.schemas.outputs import ROW_COLUMNS

    (cell,) = [
        row[1]
        for row in _table(IO_PAGE, "## Output files", "file")
        if _names(row[0]) == ["rows.parquet"]
    ]
    documented = _names(cell.split("then the slice columns")[0])
    assert documented == list(ROW_COLUMNS)
    schema = pl.read_parquet_schema(_published(nights) / "rows.parquet")
    assert list(schema) == [*ROW_COLUMNS, "region"]


def test_the_exit_code_table_lists_every_code_klrank_returns() -> None:
    import klrank

    table = _table(IO_PAGE, "## Exit codes", "exit code")
    listed = {int(code) for row in table[1:] for code in row[0].split(",")}
    # ExitCode is the one table of codes; a signal's is 128 + its number, as a shell reports it.
    returned = {int(code) for code in klrank.ExitCode if int(code) < 128}
    returned |= {128 + signal.SIGINT, 128 + signal.SIGTERM}
    assert listed == returned


def test_the_error_table_gives_each_error_its_exit_code() -> None:
    import klrank

    table = _table(ROOT / "docs" / "python-api.md", "## Errors", "error")
    for row in table[1:]:
        (name,) = _names(row[0])
        error = getattr(klrank, name.removeprefix("klrank."))
        assert issubclass(error, klrank.KlrankError)
        assert error.exit_code == klrank.ExitCode(int(row[2])), name


def _klrank_task() -> ModuleType:
    # The DAG's helper is plain Python deployed beside the DAG, not part of the package.
    spec = importlib.util.spec_from_file_location(
        "klrank_task", ROOT / "jobs" / "airflow" / "klrank_task.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["klrank_task"] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def test_the_airflow_table_is_what_the_task_does() -> None:
    task = _klrank_task()
    outcomes = {
        "succeeds": task.Outcome.SUCCESS,
        "**fails at once, no retry**": task.Outcome.FAIL,
        "fails this try; retried": task.Outcome.RETRY,
    }
    table = _table(
        ROOT / "docs" / "airflow.md", "## What the task does with each exit code", "klrank exits"
    )
    listed = set()
    for row in table[1:]:
        if row[0].startswith("killed"):
            codes = [130, 143, 137, -signal.SIGTERM, -signal.SIGKILL]
        elif row[0] == "anything else":
            codes = [4, 64, 99, 255]
        else:
            codes = [int(row[0].split()[0])]
            listed.update(codes)
        for code in codes:
            assert task.judge(code).outcome == outcomes[row[1]], (code, row)
    assert listed == {0, 1, 2, 3, 69, 70, 74, 75}


def test_the_architecture_page_lists_the_import_contracts() -> None:
    contracts = configparser.ConfigParser()
    contracts.read(ROOT / ".importlinter", encoding="utf-8")
    page = ROOT / "docs" / "architecture.md"
    layers = _section(page, "## The layers")

    stated = contracts["importlinter:contract:layers"]["layers"].split("\n")
    expected = [re.split(r"\s*[:|]\s*", line.strip()) for line in stated if line.strip()]
    documented = [_names(item) for item in re.findall(r"^\d+\. (.*?) —", layers, re.M)]
    assert documented == expected

    pure = contracts["importlinter:contract:pure-core"]
    paragraph = layers.split("A second contract", 1)[1].split("So the core", 1)[0]
    named = [n for n in _names(paragraph) if n != "pure-core"]
    assert named == [*pure["source_modules"].split(), *pure["forbidden_modules"].split()]


# ---------------------------------------------------------------------------------------------
# Links


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{_name(page)} links to {target}, which does not exist"
        if anchor:
            assert linked.suffix == ".md", target
            assert anchor in heading_anchors(linked.read_text(encoding="utf-8")), (
                f"{_name(page)} links to {target}: no such heading"
            )
