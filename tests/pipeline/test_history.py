"""The history table and chart from literal nightly reports."""

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable

import polars as pl
from klrank.pipeline.history import (
    HISTORY_COLUMNS,
    history_chart_html,
    history_markdown,
    history_table,
)
from markdown_helpers import raw_tables, render

SVG = "{http://www.w3.org/2000/svg}"


def _night(mean_m: float, mean_n: float) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "slice": ["ALL", "ALL", "region=eu"],
            "rank": [2, 1, 1],
            "model": ["m", "n", "m"],
            "n_rows": [4, 4, 2],
            "mean_kl": [mean_m, mean_n, 0.5],
            "sem_kl": [None, 0.1, 0.1],
            "ci95_low": [None, mean_n - 0.2, 0.3],
            "ci95_high": [None, mean_n + 0.2, 0.7],
            "n_infinite": [1 if math.isinf(mean_m) else 0, 0, 0],
        }
    )


NIGHTS = [(dt.date(2026, 1, 2), _night(math.inf, 0.25)), (dt.date(2026, 1, 1), _night(0.5, 0.75))]


def test_history_table_keeps_one_slice_ordered_by_night_then_rank() -> None:
    table = history_table(NIGHTS, "ALL")
    assert table.columns == list(HISTORY_COLUMNS)
    assert table.select("run_date", "model").rows() == [
        (dt.date(2026, 1, 1), "n"),
        (dt.date(2026, 1, 1), "m"),
        (dt.date(2026, 1, 2), "n"),
        (dt.date(2026, 1, 2), "m"),
    ]
    assert history_table(NIGHTS, "region=eu").height == 2
    assert history_table(NIGHTS, "region=us").height == 0


def _axis(svg: ET.Element, name: str, coordinate: str) -> Callable[[float], float]:
    """A pixel to the value it stands for, read off the axis' ticks and grid lines."""
    (group,) = [g for g in svg.iter(f"{SVG}g") if g.get("class") == name]
    lines = [float(e.get(coordinate, "")) for e in group.iter(f"{SVG}line")]
    texts = [e.text or "" for e in group.iter(f"{SVG}text") if e.get("class") == "tick"]
    values = [
        dt.date.fromisoformat(t).toordinal() if "-" in t[1:] else float(t.replace("−", "-"))
        for t in texts
    ]
    (p0, v0), (p1, v1) = (lines[0], values[0]), (lines[-1], values[-1])
    return lambda pixel: v0 + (pixel - p0) / (p1 - p0) * (v1 - v0)


def test_chart_leaves_out_infinite_means() -> None:
    page = history_chart_html(history_table(NIGHTS, "ALL"), "bits", "ALL")
    assert "<script" not in page
    figure = ET.fromstring(re.search(r"<figure .*</figure>", page, re.DOTALL).group(0))  # type: ignore[union-attr]
    x, y = _axis(figure, "xaxis", "x1"), _axis(figure, "yaxis", "y1")
    legend = [e.text for e in figure.iter("span") if e.get("class") == "legendtext"]
    series = [g for g in figure.iter(f"{SVG}g") if g.get("class") == "series"]
    drawn = {
        name: [
            (
                dt.date.fromordinal(round(x(float(c.get("cx", ""))))),
                round(y(float(c.get("cy", ""))), 2),
            )
            for c in g.iter(f"{SVG}circle")
        ]
        for name, g in zip(legend, series, strict=True)
    }
    # m's infinite night is left out of its line: one dot; n has both nights'.
    assert drawn == {
        "m": [(dt.date(2026, 1, 1), 0.5)],
        "n": [(dt.date(2026, 1, 1), 0.75), (dt.date(2026, 1, 2), 0.25)],
    }


def test_history_markdown_keeps_hostile_names_in_their_cells() -> None:
    night = pl.DataFrame(
        {
            "slice": ["region=\n# forged", "region=\n# forged"],
            "rank": [1, 2],
            "model": ["a|b", "x\n<script>alert(1)</script>"],
            "n_rows": [4, 4],
            "mean_kl": [0.25, 0.5],
            "sem_kl": [0.1, 0.1],
            "ci95_low": [0.05, 0.3],
            "ci95_high": [0.45, 0.7],
            "n_infinite": [0, 0],
        }
    )
    slice_name = "region=\n# forged"
    text = history_markdown(
        history_table([(dt.date(2026, 1, 1), night)], slice_name), "bits", slice_name
    )
    (table,) = raw_tables(text)  # the header and two rows, each with the header's cells
    assert len(table) == 3
    rendered = render(text)
    assert rendered.markup == []
    assert rendered.headings == [
        (1, "klrank history: mean KL (bits) per night, slice region=\\n# forged")
    ]
    assert [row[2] for row in rendered.tables[0][1:]] == ["a|b", "x\\n<script>alert(1)</script>"]
