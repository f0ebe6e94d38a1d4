"""pipeline/html.py without a browser: what the page is made of, and what a run without it skips.

The rendering itself is checked in a real browser in tests/pipeline/test_html_browser.py.
"""

import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import polars as pl
from cli_helpers import prob_predictions, soft_labels
from helpers import random_distributions, run_job
from klrank.pipeline.aggregate import ECDF_POINTS
from klrank.pipeline.html import MAX_CLASSES_SHOWN

SVG = "{http://www.w3.org/2000/svg}"


def _figures(page: str) -> dict[str, ET.Element]:
    """Each chart of the page, parsed as XML (the SVG is well formed), by its figure's id."""
    found = re.findall(r'<figure class="chart" id="([^"]+)">.*?</figure>', page, re.DOTALL)
    figures = {
        match.group(1): ET.fromstring(match.group(0))
        for match in re.finditer(
            r'<figure class="chart" id="([^"]+)">.*?</figure>', page, re.DOTALL
        )
    }
    assert list(figures) == found
    return figures


def _texts(figure: ET.Element, kind: str) -> list[str]:
    """What the ``<text class=KIND>`` elements show (their own text, not their tooltip)."""
    return [
        "".join([e.text or "", *(child.tail or "" for child in e)])
        for e in figure.iter(f"{SVG}text")
        if e.get("class") == kind
    ]


def test_page_is_self_contained_and_has_no_script(tmp_path: Path) -> None:
    _, out = run_job(tmp_path, soft_labels(), prob_predictions())
    page = (out / "report.html").read_text(encoding="utf-8")
    # Nothing is fetched: no external scripts, stylesheets, images or frames; nothing runs.
    assert not re.search(r"\b(src|href)=", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    figures = _figures(page)
    assert list(figures) == ["klrank-mean", "klrank-ecdf", "klrank-contributions"]
    assert all(f.find(f"{SVG}svg") is not None for f in figures.values())


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
    # The bars' categories are the figure's axis labels: the largest class is there, the smallest not.
    shown = _texts(_figures(page)["klrank-contributions"], "category")
    assert len(shown) == MAX_CLASSES_SHOWN
    assert largest[0] in shown and largest[-1] not in shown


def test_the_page_stays_small_at_the_nightly_benchmarks_shape(tmp_path: Path) -> None:
    # The 2M-row benchmark's shape: 3 models, 10 classes, and here 6 slices. The page grows with
    # models, slices and classes, not rows: 2,000 rows already give each ECDF curve all its
    # points (ECDF_POINTS, plus the two edges), as 2M rows do.
    n_rows, n_classes, models = 2_000, 10, ("a", "b", "c")
    rng = np.random.default_rng(4)
    ids = pl.Series("id", range(n_rows))
    region = pl.Series("region", [f"r{k % 6}" for k in range(n_rows)])
    p = random_distributions(rng, n_rows, n_classes)
    labels = pl.DataFrame(
        [ids, region, *(pl.Series(f"prob_{k}", p[:, k]) for k in range(n_classes))]
    )
    predictions = pl.concat(
        pl.DataFrame(
            [ids, *(pl.Series(f"prob_{k}", q[:, k]) for k in range(n_classes))]
        ).with_columns(model=pl.lit(m))
        for m, q in ((m, random_distributions(rng, n_rows, n_classes)) for m in models)
    )
    _, out = run_job(tmp_path, labels, predictions, inputs={"slice_by": ("region",)})
    page = (out / "report.html").read_bytes()
    assert len(page) <= 500_000
    ecdf = _figures(page.decode("utf-8"))["klrank-ecdf"]
    curves = [e.get("d", "") for e in ecdf.iter(f"{SVG}path") if e.get("class") == "curve"]
    assert [d.count("H") + 1 for d in curves] == [ECDF_POINTS + 2] * len(models)
    assert page.count(b"<table class='ranking'>") == 1 + 6


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
    assert "<script" not in pages[1] and pages[1].count("<") == pages[0].count("<")
    figures = _figures(pages[1])
    # The name is text wherever it goes: whole in the legends, cut on the mean chart's axis.
    legend = [
        e.text
        for e in figures["klrank-contributions"].iter("span")
        if e.get("class") == "legendtext"
    ]
    assert legend == ["m", name]
    (cut,) = [t for t in _texts(figures["klrank-mean"], "category") if t != "m"]
    assert cut.endswith("…") and name.startswith(cut[:-1])
    # In the table it is text, never markup.
    assert f"<td class='model'>{html.escape(name)}</td>" in pages[1]
