"""summary.md, the run's stdout and ``klrank history``'s table with names that are hostile to
Markdown and to log lines: the CLI (in-process), read back as a reader would
(tests/markdown_helpers.py).

What broke: a model folder ``model=a|b`` split its table row, a model named with a newline
and ``<script>`` ended the row and passed the tag into the Markdown, a slice value with a
newline forged a heading, and gate messages naming such models forged lines on stderr.
"""

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from cli_helpers import Result, expect, invoke, write
from markdown_helpers import raw_tables, render

# Model names, as hive folders (URL-quoted) and as read back, and how a reader must see them.
MODELS = {
    "model=a|b": ("a|b", "a|b"),
    "model=x%0A<script>alert(1)<%2Fscript>": (
        "x\n<script>alert(1)</script>",
        "x\\n<script>alert(1)</script>",
    ),
    "model=*em* `c` [l](u) \\ #": ("*em* `c` [l](u) \\ #", "*em* `c` [l](u) \\ #"),
}
SEEN_MODELS = sorted(seen for _, seen in MODELS.values())
IDS = ["1", "2\nforged: line", "3", "4", "5", "6"]
# The slice values (one a null) and the headings a reader must see for them.
REGIONS = ["eu", "\n# forged heading", None, "x|y", "<script>alert(2)</script>", "eu"]
SLICE_HEADINGS = sorted(
    [
        "region=eu",
        "region=\\n# forged heading",
        "region=(null)",
        "region=x|y",
        "region=<script>alert(2)</script>",
    ]
)
TRUTH = [0.5, 0.2, 0.3, 0.9, 0.6, 0.4]
# Each model predicts P(a|b) = TRUTH shifted by its own amount, so the ranks differ.
SHIFTS = dict(zip(MODELS, (0.05, 0.02, 0.08), strict=True))


@dataclass(frozen=True)
class Nights:
    out: Path
    first: Result
    second: Result


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Nights:
    root = tmp_path_factory.mktemp("hostile")
    labels = write(
        pl.DataFrame(
            {
                "id": IDS,
                "region": REGIONS,
                "prob_a|b": TRUTH,
                "prob_<i>c</i>": [1 - p for p in TRUTH],
            }
        ),
        root / "labels.parquet",
    )
    for folder, shift in SHIFTS.items():
        q = [min(max(p + shift, 0.01), 0.99) for p in TRUTH]
        write(
            pl.DataFrame({"id": IDS, "prob_a|b": q, "prob_<i>c</i>": [1 - x for x in q]}),
            root / "predictions" / folder / "part-0.parquet",
        )
    out = root / "out_[x]*_"
    args = ["run", "--labels", labels, "--predictions", root / "predictions", "--out", out]
    args += ["--slice-by", "region", "--quiet"]
    first = invoke(*args, "--run-date", "2026-05-01")
    second = invoke(
        *args, "--run-date", "2026-05-02", "--baseline", "auto", "--max-mean-kl", "0",
        "--expect-best", "a|b\nklrank: forged",
    )  # fmt: skip
    return Nights(out, first, second)


def _model_columns(tables: list[list[list[str]]]) -> list[list[str]]:
    """The model column of each ranking table (header first)."""
    return [[row[table[0].index("model")] for row in table[1:]] for table in tables]


def test_summary_tables_keep_their_shape_and_show_the_names(nights: Nights) -> None:
    expect(nights.first, 0)
    summary = (nights.out / "run_date=2026-05-01" / "summary.md").read_text()
    assert nights.first.stdout == summary  # the run prints the same Markdown
    tables = raw_tables(summary)  # every row has the header's cell count
    assert len(tables) == 1 + len(SLICE_HEADINGS)
    rendered = render(summary)
    assert rendered.markup == []  # no HTML, code, emphasis or link came from a name
    assert "<script" not in summary.lower()
    assert sorted(text for level, text in rendered.headings if level == 2) == SLICE_HEADINGS
    for models in _model_columns(rendered.tables):
        assert sorted(models) == SEEN_MODELS


def test_baseline_and_gates_sections_keep_their_shape(nights: Nights) -> None:
    expect(nights.second, 3)  # every model fails --max-mean-kl 0; --expect-best names none
    summary = (nights.out / "run_date=2026-05-02" / "summary.md").read_text()
    assert nights.second.stdout == summary
    rendered = render(summary)
    assert rendered.markup == []
    headings = [text for level, text in rendered.headings if level == 2]
    baseline = nights.out / "run_date=2026-05-01" / "report.parquet"
    assert sorted(headings[:-2]) == SLICE_HEADINGS
    assert headings[-2:] == [f"Change since {baseline}", "Gates: 4 failed"]
    change = rendered.tables[-1]
    assert change[0][0] == "model" and sorted(r[0] for r in change[1:]) == SEEN_MODELS
    raw_tables(summary)  # asserts the shape of every table
    # Four gates, four list items; each max_mean_kl item names its model as repr quotes it.
    items = [p for p in rendered.paragraphs if p.startswith("FAILED ")]
    assert len(items) == 4
    per_model = [item for item in items if item.startswith("FAILED max_mean_kl: ")]
    for name, _ in MODELS.values():
        assert sum(f"model {name!r} mean KL" in item for item in per_model) == 1


def test_gate_failures_are_one_stderr_line_each(nights: Nights) -> None:
    lines = nights.second.stderr.splitlines()
    assert len(lines) == 4, nights.second.stderr  # --quiet: only the failed gates
    assert all(line.startswith("klrank: gate failed: ") for line in lines)
    assert not any(line.startswith("klrank: forged") for line in lines)
    assert "\x1b" not in nights.second.stderr


def test_history_table_keeps_its_shape(nights: Nights) -> None:
    result = invoke("history", nights.out, "--quiet")
    expect(result, 0)
    (table,) = raw_tables(result.stdout)
    assert len(table) == 1 + 2 * len(MODELS)  # header, then each night's models
    rendered = render(result.stdout)
    assert rendered.markup == []
    assert sorted(row[2] for row in rendered.tables[0][1:]) == sorted(SEEN_MODELS * 2)


def test_history_of_a_slice_with_a_newline_keeps_its_heading(nights: Nights) -> None:
    result = invoke("history", nights.out, "--slice", "region=\n# forged heading", "--quiet")
    expect(result, 0)
    rendered = render(result.stdout)
    assert rendered.markup == []
    assert rendered.headings == [
        (1, "klrank history: mean KL (bits) per night, slice region=\\n# forged heading")
    ]
    (table,) = raw_tables(result.stdout)
    assert len(table) == 1 + 2 * len(MODELS)
