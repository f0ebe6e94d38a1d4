"""report.html rendered by a real headless browser (Debian chromium driven by playwright).

The page is opened as a file with every non-file request aborted, as on a machine without a
network: it must render its plots from the inlined plotly.js, log no errors, and list the models
in rank order. Skipped when chromium or playwright is missing, unless KLRANK_REQUIRE_BROWSER=1
(CI sets it where it installed chromium), in which case it fails. KLRANK_SCREENSHOTS=DIR keeps
the screenshots for a person to look at.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from cli_helpers import expect, inputs, invoke, prob_predictions, set_value, soft_labels

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# The browser must not try to reach anything: no updates, no sync, no field trials.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
FIGURES = ("#klrank-mean", "#klrank-ecdf", "#klrank-contributions")


def _missing(reason: str) -> None:
    if os.environ.get("KLRANK_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KLRANK_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """report.html opened offline, with what the browser logged and tried to fetch."""

    def __init__(self, browser: Any, path: Path, figures: tuple[str, ...] = FIGURES) -> None:
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.page.on(
            "console",
            lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.route("**/*", self._route)
        self.page.goto(path.as_uri())
        for figure in figures:
            self.page.wait_for_selector(f"{figure} .main-svg")

    def _route(self, route: Any) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def traces(self, figure: str) -> int:
        """Traces plotly drew in the figure's SVG."""
        return int(self.page.locator(f"#{figure} .main-svg .trace").count())

    def screenshot(self, name: str, tmp_path: Path) -> Path:
        path = tmp_path / name
        self.page.screenshot(path=path, full_page=True)
        keep = os.environ.get("KLRANK_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / name)
        return path


def test_example_report_renders_offline_with_plots_and_the_ranking(
    browser: Any, tmp_path: Path
) -> None:
    out = tmp_path / "demo-out"
    result = invoke(
        "run",
        "--labels",
        EXAMPLES / "labels.parquet",
        "--predictions",
        EXAMPLES / "predictions",
        "--slice-by",
        "region",
        "--out",
        out,
    )
    expect(result, 0)
    page = Page(browser, out / "report.html")
    report = pl.read_parquet(out / "report.parquet")
    overall = report.filter(pl.col("slice") == "ALL").sort("rank")
    models = overall.get_column("model").to_list()
    assert page.errors == [] and page.blocked == []
    ranking = page.page.locator("table.ranking").first.locator("tbody td.model")
    assert ranking.all_inner_texts() == models == ["sharp", "blurry", "uniform"]
    # One marker trace of means with error bars; one ECDF curve and one bar series per model.
    assert page.traces("klrank-mean") == 1
    assert page.page.locator("#klrank-mean .errorbar").count() == len(models)
    assert page.traces("klrank-ecdf") == len(models)
    assert page.traces("klrank-contributions") == len(models)
    assert page.page.locator("#klrank-contributions .bars .point").count() == len(models) * 4
    legend = page.page.locator("#klrank-ecdf .legendtext").all_text_contents()
    assert legend == models
    # The three slice tables follow, one per region.
    assert page.page.locator("table.ranking").count() == 4
    screenshot = page.screenshot("example-report.png", tmp_path)
    assert screenshot.stat().st_size > 50_000  # a page of plots, not a blank one


def test_zeros_infinities_and_markup_in_names_are_shown_as_they_are(
    browser: Any, tmp_path: Path
) -> None:
    # Model m predicts the truth exactly (every KL is 0: nothing to place on a log axis), and
    # the other model, named with markup, gives p_a = 0.1 of id 3 probability 0 (KL = inf).
    name = "</script><script>window.pwned = 1</script><b>n</b>"
    labels = soft_labels()
    predictions = prob_predictions().with_columns(pl.col("model").replace("n", name))
    for c in ("a", "b", "c"):
        truth = dict(zip(labels.get_column("id"), labels.get_column(f"prob_{c}"), strict=True))
        predictions = predictions.with_columns(
            pl.when(pl.col("model") == "m")
            .then(pl.col("id").replace_strict(truth))
            .otherwise(pl.col(f"prob_{c}"))
            .alias(f"prob_{c}")
        )
    predictions = set_value(predictions, "prob_a", 0.0, model=name, id=3)
    predictions = set_value(predictions, "prob_c", 0.7, model=name, id=3)
    out = tmp_path / "out"
    result = invoke(
        "run",
        *inputs(tmp_path, labels, predictions),
        "--out",
        out,
    )
    expect(result, 0)
    page = Page(browser, out / "report.html")
    assert page.errors == [] and page.blocked == []
    assert page.page.evaluate("window.pwned") is None
    ranking = page.page.locator("table.ranking tbody td.model").all_inner_texts()
    assert ranking == ["m", name]
    legend = page.page.locator("#klrank-ecdf .legendtext").all_text_contents()
    assert legend == ["m (KL≤0: 100%)", f"{name} (KL=∞: 25%)"]
    note = page.page.locator("p.note", has_text="Infinite contributions").inner_text()
    assert f"{name}: a" in note
    mean_note = page.page.locator("#klrank-mean .annotation").all_text_contents()
    assert mean_note == ["mean = ∞ (rows with KL = ∞)"]
    page.screenshot("edge-cases.png", tmp_path)


def test_history_chart_renders_offline_with_one_line_per_model(
    browser: Any, tmp_path: Path
) -> None:
    out = tmp_path / "nightly"
    for night in ("2026-11-23", "2026-11-24", "2026-11-25"):
        result = invoke(
            "run",
            "--labels",
            EXAMPLES / "labels.parquet",
            "--predictions",
            EXAMPLES / "predictions",
            "--out",
            out,
            "--run-date",
            night,
            "--no-html",
        )
        expect(result, 0)
    expect(invoke("history", out), 0)
    page = Page(browser, out / "history.html", figures=("#klrank-history",))
    assert page.errors == [] and page.blocked == []
    models = sorted(
        pl.read_parquet(out / "run_date=2026-11-25" / "report.parquet").get_column("model")
    )
    legend = page.page.locator(".legendtext").all_text_contents()
    assert sorted(legend) == models
    # One line with error bars per model, each through the three nights.
    assert page.page.locator(".main-svg .trace").count() == len(models)
    assert page.page.locator(".main-svg .trace .point").count() == 3 * len(models)
    screenshot = page.screenshot("history.png", tmp_path)
    assert screenshot.stat().st_size > 20_000
