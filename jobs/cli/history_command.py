"""``klrank history``: every night's mean KL per model (:func:`klrank.nightly.history`)."""

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from klrank.cli import output
from klrank.cli.errors import guarded
from klrank.cli.options import Config, Debug, Json, LogFormatOption, Quiet
from klrank.nightly import HistoryOptions, HistorySummary, history
from klrank.pipeline.history import history_markdown
from klrank.pipeline.text import one_line

Root = Annotated[
    str,  # not a Path, which would fold s3://bucket into s3:/bucket
    typer.Argument(
        help="Output directory of nightly runs (holding run_date=YYYY-MM-DD/ folders), or "
        "an s3://, az:// or gs:// URL of one.",
        show_default=False,
    ),
]
Slice = Annotated[str, typer.Option("--slice", envvar="KLRANK_SLICE", help="ALL, or COL=value.")]
Chart = Annotated[
    Path | None,
    typer.Option(
        # Not --out: a config file's top-level `out` (the reports folder) must not land here.
        "--chart",
        envvar="KLRANK_HISTORY_CHART",
        help="Where the chart goes (a self-contained HTML file, or an s3://, az:// or gs:// URL); default "
        "DIR/history.html.",
        show_default=False,
    ),
]


def history_command(
    root: Root,
    slice_name: Slice = "ALL",
    chart: Chart = None,
    as_json: Json = False,
    debug: Debug = False,
    log_format: LogFormatOption = "text",
    quiet: Quiet = False,
    config: Config = None,
) -> None:
    """Every night's mean KL per model with its 95% CI, as a table and an HTML chart."""
    output.setup(log_format, quiet)

    def action() -> None:
        summary = history(HistoryOptions(root=root, slice=slice_name, chart=chart))
        if as_json:
            typer.echo(json.dumps(_document(summary, root=root, slice_name=slice_name)))
        else:
            typer.echo(history_markdown(summary.table, summary.unit, slice_name), nl=False)
        output.notice(f"chart written to {one_line(str(summary.chart))}", quiet=quiet)

    guarded(action, debug=debug, as_json=as_json)


def _document(summary: HistorySummary, *, root: str, slice_name: str) -> dict[str, Any]:
    """The JSON summary of ``--json``: the table's rows, with null for an infinite mean."""
    rows = [
        r | {"run_date": r["run_date"].isoformat()} for r in summary.table.iter_rows(named=True)
    ]
    for row in rows:  # JSON has no infinity: null, and n_infinite says why
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None
    return {
        "status": "success",
        "root": str(root),
        "slice": slice_name,
        "unit": summary.unit,
        "nights": summary.nights,
        "chart": str(summary.chart),
        "rows": rows,
    }
