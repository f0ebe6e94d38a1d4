"""The history table and chart from literal nightly reports."""

import datetime as dt
import math

import polars as pl
from klrank.io.plotly_bundle import plotly_js
from klrank.pipeline.history import (
    HISTORY_COLUMNS,
    history_chart_html,
    history_markdown,
    history_table,
)
from markdown_helpers import raw_tables, render


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


def test_chart_leaves_out_infinite_means() -> None:
    html = history_chart_html(history_table(NIGHTS, "ALL"), "bits", "ALL", plotly_js())
    assert '"name":"m"' in html and '"name":"n"' in html
    # m's infinite night is a gap: its trace has one point, n's two.
    assert '"x":["2026-01-01"],"y":[0.5]' in html
    assert '"x":["2026-01-01","2026-01-02"],"y":[0.75,0.25]' in html


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
