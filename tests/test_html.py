"""pipeline/html.py without a browser: what the page is made of, and what a run without it skips.

The rendering itself is checked in a real browser in tests/test_html_browser.py.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
from cli_helpers import prob_predictions, soft_labels, write
from helpers import random_distributions, run_job

from pipeline.html import MAX_CLASSES_SHOWN


def test_page_is_self_contained(tmp_path: Path) -> None:
    _, out = run_job(tmp_path, soft_labels(), prob_predictions())
    page = (out / "report.html").read_text(encoding="utf-8")
    # Nothing is fetched: no external scripts, stylesheets, images or frames.
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", page, re.IGNORECASE)
    assert page.count("<script") >= 4  # the plotly.js bundle and one call per figure
    assert len(page) > 1_000_000  # the bundle is inlined, not linked


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


def test_a_run_without_the_page_does_not_import_plotly(tmp_path: Path) -> None:
    labels = write(soft_labels(), tmp_path / "labels.parquet")
    predictions = write(prob_predictions(), tmp_path / "predictions.parquet")
    out = tmp_path / "out"
    script = (
        "import sys\n"
        "from jobs.cli import run_cli\n"
        f"sys.argv = ['klrank', 'run', '--labels', {str(labels)!r}, '--predictions',"
        f" {str(predictions)!r}, '--out', {str(out)!r}, '--no-html']\n"
        "assert run_cli() == 0\n"
        "print('plotly' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "False", result
    assert (out / "report.parquet").exists() and not (out / "report.html").exists()
