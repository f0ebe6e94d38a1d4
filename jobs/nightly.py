"""Nightly history: finding and reading earlier runs' reports (``--baseline``, ``klrank history``).

Nightly runs publish to ``OUT/run_date=YYYY-MM-DD/report.parquet``. Nothing here prints or exits;
errors are raised as :mod:`klrank.pipeline.errors` classes.
"""

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandera.polars as pa
import polars as pl
from klrank.io import buckets, reading, storage, writing
from klrank.pipeline.baseline import BASELINE_INPUT_COLUMNS, in_unit
from klrank.pipeline.divergence import UNITS
from klrank.pipeline.errors import UsageError
from klrank.pipeline.history import HISTORY_INPUT_COLUMNS, history_chart_html, history_table
from klrank.schemas.outputs import HISTORY_CHART, REPORT_FILE, RUN_DATE_KEY
from klrank.schemas.report import REPORT_SCHEMA_VERSION, report_columns_schema

AUTO = "auto"
# Report schema versions whose columns this klrank can read back (every one so far).
READABLE_SCHEMA_VERSIONS = tuple(str(v) for v in range(1, int(REPORT_SCHEMA_VERSION) + 1))


def _read_report(path: Path | str, columns: tuple[str, ...]) -> tuple[pl.DataFrame, str]:
    """A report's ``columns`` and its unit, after checking its schema version and its values."""
    frame, metadata = reading.read_report(path, columns)
    found = metadata.get("klrank.report_schema_version")
    if found not in READABLE_SCHEMA_VERSIONS:
        raise UsageError(
            f"{str(path)!r} is not a klrank report this version can read: report schema version "
            f"{found!r}, expected one of {', '.join(READABLE_SCHEMA_VERSIONS)}"
        )
    unit = metadata.get("klrank.unit", "")
    if unit not in UNITS.values():
        raise UsageError(f"{str(path)!r} records no known unit (klrank.unit = {unit!r})")
    try:
        report_columns_schema(columns).validate(frame)
    except pa.errors.SchemaError as error:
        problem = str(error).splitlines()[0].rstrip(":")
        raise UsageError(f"{str(path)!r} is not a valid klrank report: {problem}") from None
    return frame, unit


@dataclass(frozen=True)
class Baseline:
    """The report tonight's is compared with; ``report`` None when ``auto`` found no earlier run."""

    spec: str
    path: Path | str | None  # a URL where the baseline is in a bucket
    run_date: str | None
    unit: str | None
    report: pl.DataFrame | None

    def recorded(self) -> dict[str, Any]:
        """Where the baseline came from, for the manifest (JSON-ready)."""
        return {
            "spec": self.spec,
            "path": str(self.path) if self.path is not None else None,
            "run_date": self.run_date,
            "unit": self.unit,
            "found": self.report is not None,
        }


def _remote_baseline_file(spec: str) -> tuple[str, str | None]:
    """An ``s3://`` report.parquet or run folder, and the run date its folder's name gives."""
    found = storage.kind(spec)
    file = spec if found == "file" else storage.join(spec, REPORT_FILE)
    if found == "none" or storage.kind(file) != "file":
        raise UsageError(f"--baseline: {spec!r} is neither a report.parquet nor a run folder")
    key, sep, value = file.rstrip("/").split("/")[-2].partition("=")
    return file, value if sep and key == RUN_DATE_KEY else None


def _baseline_file(
    spec: str, out: Path | str, run_date: dt.date | None
) -> tuple[Path | str | None, str | None]:
    if spec != AUTO and storage.scheme(spec) is not None:
        storage.check_input(spec, "--baseline")
        if storage.scheme(spec) == "file":
            return _baseline_file(storage.local_path(spec), out, run_date)
        return _remote_baseline_file(spec)
    if spec != AUTO:
        path = Path(spec)
        file = path / REPORT_FILE if path.is_dir() else path
        if not file.is_file():
            raise UsageError(f"--baseline: {spec!r} is neither a report.parquet nor a run folder")
        key, sep, value = file.parent.name.partition("=")
        return file, value if sep and key == RUN_DATE_KEY else None
    assert run_date is not None, "RunOptions requires --run-date with --baseline auto"
    earlier = [(d, p) for d, p in reading.run_partitions(out, REPORT_FILE) if d < run_date]
    if not earlier:
        return None, None
    day, folder = earlier[-1]
    return _report_in(folder), day.isoformat()


def load_baseline(spec: str, out: Path | str, run_date: dt.date | None, unit: str) -> Baseline:
    """Find and read the baseline report, converted to ``unit``.

    Parameters
    ----------
    spec
        ``auto`` (the latest ``out/run_date=D/report.parquet`` with D before ``run_date``), a
        report.parquet, or a folder holding one.
    out, run_date
        Where this run publishes, and its date.
    unit
        This run's unit; a baseline in another unit is converted.

    Raises
    ------
    UsageError
        ``auto`` without a run date, a missing path, or a file that is not a readable report.
    """
    file, run_date_text = _baseline_file(spec, out, run_date)
    if file is None:
        return Baseline(spec, None, None, None, None)
    frame, found_unit = _read_report(file, BASELINE_INPUT_COLUMNS)
    if frame.height and reading.report_version(file) not in ("1", "2"):  # n_clusters since 3
        clusters, _ = _read_report(file, (*BASELINE_INPUT_COLUMNS[:2], "n_clusters"))
        frame = frame.join(clusters, on=list(BASELINE_INPUT_COLUMNS[:2]), how="left")
    return Baseline(spec, file, run_date_text, found_unit, in_unit(frame, found_unit, unit))


@dataclass(frozen=True)
class HistoryOptions:
    """What ``klrank history`` reads and where it writes the chart."""

    root: Path | str  # a folder, or an s3:// URL (then --chart is needed)
    slice: str = "ALL"
    chart: Path | str | None = None  # a local file, or an s3:// URL

    def __post_init__(self) -> None:
        if isinstance(self.root, str) and storage.scheme(self.root) is not None:
            storage.check_input(self.root, "history")
        if isinstance(self.root, str) and not storage.is_remote(self.root):
            local = storage.local_path(self.root) if storage.scheme(self.root) else self.root
            object.__setattr__(self, "root", Path(local))  # a path, or a file:// URL's
        if self.chart is not None:
            object.__setattr__(self, "chart", storage.output_location(self.chart, "--chart"))

    @property
    def chart_path(self) -> Path | str:
        """Where the chart goes: ``--chart``, by default ``ROOT/history.html`` (in a bucket too)."""
        if self.chart is not None:
            return self.chart
        if isinstance(self.root, str):
            return storage.join(self.root, HISTORY_CHART)
        return self.root / HISTORY_CHART


@dataclass(frozen=True)
class HistorySummary:
    """Every night's mean KL per model, in one unit, and where the chart was written."""

    table: pl.DataFrame
    unit: str
    nights: list[str]
    chart: Path | str


_CHART_START = "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n<title>klrank: "


def _chart_start(path: Path | str) -> bytes | None:
    """The first bytes of the file at ``path``, or None where there is no file."""
    if isinstance(path, str):
        found = buckets.read_bytes(buckets.place(path)) if storage.kind(path) == "file" else None
        return None if found is None else found[: len(_CHART_START.encode())]
    if not path.is_file():
        return None  # missing: made; a folder or a device: the write names the problem (exit 74)
    with path.open("rb") as handle:
        return handle.read(len(_CHART_START.encode()))


def _check_replaceable_chart(path: Path | str) -> None:
    """Refuse to replace a file that is not a chart klrank wrote (``--chart labels.parquet``)."""
    start = _chart_start(path)
    if start is not None and start != _CHART_START.encode():
        raise UsageError(
            f"--chart: {str(path)!r} exists and is not a chart klrank wrote; klrank would "
            "replace it, so name another file"
        )


def _report_in(folder: Path | str) -> Path | str:
    return storage.join(folder, REPORT_FILE) if isinstance(folder, str) else folder / REPORT_FILE


def history(options: HistoryOptions) -> HistorySummary:
    """Read every night's report under ``options.root`` and write the chart.

    Values are converted to the unit of the latest night.

    Raises
    ------
    UsageError
        ``root`` holds no ``run_date=*/report.parquet``, a report is unreadable, or no night
        has the slice.
    """
    partitions = reading.run_partitions(options.root, REPORT_FILE)
    if not partitions:
        raise UsageError(
            f"{str(options.root)!r} holds no run_date=YYYY-MM-DD/{REPORT_FILE} (klrank run "
            "--run-date publishes there)"
        )
    reports = [
        (day, *_read_report(_report_in(folder), HISTORY_INPUT_COLUMNS))
        for day, folder in partitions
    ]
    unit = reports[-1][2]
    table = history_table(
        [(day, in_unit(frame, found, unit)) for day, frame, found in reports], options.slice
    )
    if table.height == 0:
        raise UsageError(f"no night's report has the slice {options.slice!r}")
    html = history_chart_html(table, unit, options.slice)
    _check_replaceable_chart(options.chart_path)
    writing.write_to(options.chart_path, lambda path: writing.write_text(html, path))
    nights = [day.isoformat() for day, _ in partitions]
    return HistorySummary(table, unit, nights, options.chart_path)
