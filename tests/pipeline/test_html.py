"""pipeline/html.py without a browser: what the page is made of, and what a run without it skips.

The rendering itself is checked in a real browser in tests/pipeline/test_html_browser.py.
"""

import ast
import html
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from cli_helpers import prob_predictions, soft_labels, write
from helpers import random_distributions, run_job
from klrank.io.plotly_bundle import plotly_js
from klrank.pipeline.html import MAX_CLASSES_SHOWN


def test_page_is_self_contained(tmp_path: Path) -> None:
    _, out = run_job(tmp_path, soft_labels(), prob_predictions())
    page = (out / "report.html").read_text(encoding="utf-8")
    # Nothing is fetched: no external scripts, stylesheets, images or frames.
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", page, re.IGNORECASE)
    assert page.count("<script") >= 4  # the plotly.js bundle and one call per figure
    assert page.count(plotly_js()) == 1  # the bundle is inlined once, not linked
    assert list(_figure_calls(page)) == ["klrank-mean", "klrank-ecdf", "klrank-contributions"]


def test_many_classes_show_the_largest_contributions_and_say_so(tmp_path: Path) -> None:
    n_rows, n_classes = 50, MAX_CLASSES_SHOWN + 20
    rng = np.random.default_rng(3)
    classes = [f"c{k:03d}" for k in range(n_classes)]
    p = random_distributions(rng, n_rows, n_classes)
    q = random_distributions(rng, n_rows, n_classes)
    ids = pl.Series("id", range(n_rows))
    labels = pl.DataFrame([ids, *(pl.Series(f"prob_{c}", p[:, k]) for k, c in enumerate(classes))])
    predictions = pl.DataFrame(
        [ids, *(pl.Series(f"prob_{c}", q[:, k]) for k, c in enumerate(classes))]
    ).with_columns(model=pl.lit("m"))
    _, out = run_job(tmp_path, labels, predictions)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f"The {MAX_CLASSES_SHOWN} of {n_classes} classes with the largest contributions" in page
    contributions = pl.read_parquet(out / "class_contributions.parquet")
    assert contributions.filter(pl.col("slice") == "ALL").height == n_classes
    largest = (
        contributions.filter(pl.col("slice") == "ALL")
        .sort(pl.col("contribution").abs(), descending=True)
        .get_column("class")
    )
    # The bars' categories are in the figure's JSON: the largest class is there, the smallest not.
    figure = page[page.index('id="klrank-contributions"') :]
    assert f'"{largest[0]}"' in figure and f'"{largest[-1]}"' not in figure


def _plotly_modules_after_run(tmp_path: Path, *options: str) -> list[str]:
    """Run klrank in a fresh interpreter; the plotly modules it imported."""
    labels = write(soft_labels(), tmp_path / "labels.parquet")
    predictions = write(prob_predictions(), tmp_path / "predictions.parquet")
    out = tmp_path / "out"
    script = (
        "import sys\n"
        "from klrank.cli import run_cli\n"
        f"sys.argv = ['klrank', 'run', '--labels', {str(labels)!r}, '--predictions',"
        f" {str(predictions)!r}, '--out', {str(out)!r}, *{list(options)!r}]\n"
        "assert run_cli() == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('plotly', '_plotly_utils')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert (out / "report.parquet").exists()
    return list(ast.literal_eval(result.stdout.strip().splitlines()[-1]))


def test_a_run_without_the_page_does_not_import_plotly(tmp_path: Path) -> None:
    assert _plotly_modules_after_run(tmp_path, "--no-html") == []
    assert not (tmp_path / "out" / "report.html").exists()


def test_the_page_does_not_import_plotly_either(tmp_path: Path) -> None:
    # plotly's Python side (import, validators, templates) cost 0.2 s a page; only its
    # plotly.js file is read.
    assert _plotly_modules_after_run(tmp_path) == []
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert plotly_js() in page


def _figure_calls(page: str) -> dict[str, list[Any]]:
    """Each Plotly.newPlot call's arguments (id, data, layout, config), parsed as JSON."""
    calls = re.findall(r"<script>Plotly\.newPlot\((.*?)\);</script>", page)
    arguments = [json.loads(f"[{call}]") for call in calls]
    return {a[0]: a[1:] for a in arguments}


def test_markup_in_a_model_name_cannot_end_the_pages_scripts(tmp_path: Path) -> None:
    name = "</script><script>alert(1)</script><!--<script>"
    plain = prob_predictions()
    marked = plain.with_columns(pl.col("model").replace("n", name))
    pages = [
        (run_job(tmp_path, soft_labels(), predictions, name=folder)[1] / "report.html").read_text(
            encoding="utf-8"
        )
        for folder, predictions in (("plain", plain), ("marked", marked))
    ]
    assert pages[1].count("<script") == pages[0].count("<script")
    assert pages[1].count("</script") == pages[0].count("</script")
    figures = _figure_calls(pages[1])
    assert list(figures) == ["klrank-mean", "klrank-ecdf", "klrank-contributions"]
    # The name reaches plotly.js intact, escaped for its label markup (shown as typed).
    mean_data = figures["klrank-mean"][0]
    assert mean_data[0]["y"] == ["m", html.escape(name)]
    # In the table it is text, never markup.
    assert f"<td class='model'>{html.escape(name)}</td>" in pages[1]
