"""report.html and history.html rendered by a real headless browser (Debian chromium, playwright).

The page is opened as a file with JavaScript disabled and every non-file request aborted, as on a
machine without a network: the charts are static SVG and must render from the file alone. The
test then reads each chart as a person would: it takes the rendered axis ticks (label and grid
line position) as the axis' scale, reads every dot, bar, interval and curve off that scale, and
compares it with the published parquet files (rows.parquet for the ECDF, an independent oracle:
the page is drawn from points the run computed, never from that file). Marks must also be hit
where they are drawn (``elementFromPoint``), so they are on screen and on top.

Skipped when chromium or playwright is missing, unless KLRANK_REQUIRE_BROWSER=1 (CI sets it where
it installed chromium), in which case it fails. KLRANK_SCREENSHOTS=DIR keeps the screenshots for
a person to look at.
"""

import datetime as dt
import math
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
PIXELS = 1.5  # how far a mark may sit from where its value says, in CSS pixels

# What a chart shows, measured by the browser's layout (all in CSS pixels of the viewport, after
# the figure is scrolled into view). Run by playwright in its own world: the page has no script.
GEOMETRY = """
(id) => {
  const figure = document.getElementById(id);
  figure.scrollIntoView({block: "center"});
  const box = (e) => { const r = e.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom,
            x: (r.left + r.right) / 2, y: (r.top + r.bottom) / 2}; };
  const shown = (e) => [...e.childNodes].filter((n) => n.nodeType === 3)
    .map((n) => n.textContent).join("");
  const hit = (e) => { const b = box(e); return document.elementFromPoint(b.x, b.y) === e; };
  const axis = (name) => [...figure.querySelectorAll(`g.${name}`)].flatMap((g) => {
    const lines = [...g.querySelectorAll("line.grid")], texts = [...g.querySelectorAll("text.tick")];
    return texts.map((t, i) => ({text: shown(t), ...box(lines[i])}));
  });
  const series = [...figure.querySelectorAll("g.series")];
  const marks = (selector) => series.flatMap((g, s) =>
    [...g.querySelectorAll(selector)].map((e) => ({series: s, hit: hit(e), ...box(e)})));
  const curves = series.flatMap((g, s) => [...g.querySelectorAll("path.curve")].map((p) => {
    const length = p.getTotalLength(), matrix = p.getScreenCTM(), samples = [];
    for (let k = 0; k <= 4000; k++) {
      const q = p.getPointAtLength(length * k / 4000).matrixTransform(matrix);
      samples.push([q.x, q.y]);
    }
    return {series: s, color: getComputedStyle(p).stroke, samples};
  }));
  return {
    width: box(figure.querySelector("svg")).right - box(figure.querySelector("svg")).left,
    x: axis("xaxis"), y: axis("yaxis"),
    categories: [...figure.querySelectorAll("text.category")].map((e) => ({text: shown(e), ...box(e)})),
    points: marks("circle.point"), errorbars: marks("path.errorbar"), bars: marks("rect.bar"),
    curves,
    colors: series.map((g) => getComputedStyle(g).fill),
    legend: [...figure.querySelectorAll("ul.legend li")].map((li) => ({
      text: li.querySelector(".legendtext").textContent,
      color: getComputedStyle(li.querySelector(".swatch")).backgroundColor})),
    annotations: [...figure.querySelectorAll("text.annotation")].map((e) => e.textContent),
  };
}
"""


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


def _tick_value(text: str) -> float:
    """A tick label as a number: ``−0.2``, ``1e−5``, ``25%`` or a date (its ordinal)."""
    text = text.replace("−", "-")
    if text.endswith("%"):
        return float(text[:-1]) / 100
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        return float(dt.date.fromisoformat(text).toordinal())
    return float(text)


class Axis:
    """An axis as read off the rendered page: its ticks' values against their grid lines."""

    def __init__(self, ticks: list[dict[str, Any]], coordinate: str, log: bool = False) -> None:
        assert len(ticks) >= 2, ticks
        self.log = log
        values = [self._f(_tick_value(t["text"])) for t in ticks]
        pixels = [float(t[coordinate]) for t in ticks]
        # Least squares: pixel = a + b·f(value); the ticks themselves must lie on that line.
        n, mean_v, mean_p = len(values), sum(values) / len(values), sum(pixels) / len(pixels)
        self.b = sum(
            (v - mean_v) * (p - mean_p) for v, p in zip(values, pixels, strict=True)
        ) / sum((v - mean_v) ** 2 for v in values)
        self.a = mean_p - self.b * mean_v
        assert n >= 2 and all(
            abs(self.pixel_f(v) - p) < 0.5 for v, p in zip(values, pixels, strict=True)
        )

    def _f(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def pixel_f(self, f: float) -> float:
        return self.a + self.b * f

    def pixel(self, value: float) -> float:
        """Where ``value`` belongs on the screen."""
        return self.pixel_f(self._f(value))


def _near(pixel: float, expected: float) -> bool:
    return abs(pixel - expected) <= PIXELS


class Page:
    """A page opened offline without JavaScript, with what the browser logged and tried to fetch."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.page = browser.new_page(
            viewport={"width": 1200, "height": 900}, java_script_enabled=False
        )
        self.page.on(
            "console",
            lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.route("**/*", self._route)
        self.page.goto(path.as_uri())
        assert self.page.locator("script").count() == 0  # nothing to run: the charts are drawn

    def _route(self, route: Any) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def chart(self, name: str) -> dict[str, Any]:
        """The rendered geometry of the figure ``klrank-NAME`` (:data:`GEOMETRY`)."""
        geometry: dict[str, Any] = self.page.evaluate(GEOMETRY, f"klrank-{name}")
        assert geometry["width"] > 800  # drawn, at the page's width
        return geometry

    def screenshot(self, name: str, tmp_path: Path) -> Path:
        path = tmp_path / name
        self.page.screenshot(path=path, full_page=True)
        keep = os.environ.get("KLRANK_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / name)
        return path


def _level_reached(samples: list[list[float]], y: float) -> list[float]:
    """The first point of a rising curve (screen y falls as it rises) at or above level ``y``."""
    return next(s for s in samples if s[1] <= y)


def _order_statistic(kl: list[float], share: float) -> float:
    """The least x with at least ``share`` of the rows at or below it: the ECDF's step there."""
    return sorted(kl)[math.ceil(share * len(kl)) - 1]


def _series_then_x(mark: dict[str, Any]) -> tuple[int, float]:
    return mark["series"], mark["x"]


def _check_legend(chart: dict[str, Any], names: list[str]) -> None:
    assert [item["text"] for item in chart["legend"]] == names
    series_colors = [c["color"] for c in chart["curves"]] or chart["colors"]
    assert [item["color"] for item in chart["legend"]] == series_colors
    assert len(set(series_colors)) == len(names)  # one colour per model


def test_example_report_renders_offline_and_every_mark_reads_as_its_value(
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
    overall = pl.read_parquet(out / "report.parquet").filter(pl.col("slice") == "ALL").sort("rank")
    models = overall.get_column("model").to_list()
    assert page.errors == [] and page.blocked == []
    ranking = page.page.locator("table.ranking").first.locator("tbody td.model")
    assert ranking.all_inner_texts() == models == ["sharp", "blurry", "uniform"]

    # Mean KL: one dot per model, in rank order from the top, at its mean; its bar spans the CI.
    mean = page.chart("mean")
    x = Axis(mean["x"], "x")
    assert [c["text"] for c in sorted(mean["categories"], key=lambda c: c["y"])] == models
    points = sorted(mean["points"], key=lambda p: p["y"])
    bars = sorted(mean["errorbars"], key=lambda p: p["y"])
    assert len(points) == len(bars) == len(models) and all(p["hit"] for p in points)
    for r, point, bar, category in zip(
        overall.iter_rows(named=True),
        points,
        bars,
        sorted(mean["categories"], key=lambda c: c["y"]),
        strict=True,
    ):
        assert _near(point["x"], x.pixel(r["mean_kl"])), (r["model"], point)
        assert _near(bar["left"], x.pixel(r["ci95_low"])) and _near(
            bar["right"], x.pixel(r["ci95_high"])
        )
        assert abs(point["y"] - category["y"]) < 3  # on its model's row

    # ECDF: one rising curve per model that reaches each share at the order statistic of the
    # model's per-row KL in rows.parquet (the example has 300 rows: every step is drawn).
    rows = pl.read_parquet(out / "rows.parquet")
    ecdf = page.chart("ecdf")
    x, y = Axis(ecdf["x"], "x", log=True), Axis(ecdf["y"], "y")
    assert len(ecdf["curves"]) == len(models)
    for model, curve in zip(models, ecdf["curves"], strict=True):
        samples = curve["samples"]
        assert all(b[1] <= a[1] + 0.01 for a, b in zip(samples, samples[1:], strict=False))
        assert all(b[0] >= a[0] - 0.01 for a, b in zip(samples, samples[1:], strict=False))
        assert _near(samples[0][1], y.pixel(0.0)) and _near(samples[-1][1], y.pixel(1.0))
        kl = rows.filter(pl.col("model") == model).get_column("kl").to_list()
        assert len(kl) == 300 and min(kl) > 0
        for share in (0.105, 0.255, 0.505, 0.755, 0.905):
            reached = _level_reached(samples, y.pixel(share))
            assert _near(reached[0], x.pixel(_order_statistic(kl, share))), (model, share)
    _check_legend(ecdf, models)

    # Contributions: per class, one bar per model from 0 to its contribution.
    contributions = pl.read_parquet(out / "class_contributions.parquet").filter(
        pl.col("slice") == "ALL"
    )
    bars_chart = page.chart("contributions")
    y = Axis(bars_chart["y"], "y")
    categories = sorted(bars_chart["categories"], key=lambda c: c["x"])
    classes = [c["text"] for c in categories]
    assert classes == ["bird", "cat", "dog", "fish"]
    band = categories[1]["x"] - categories[0]["x"]
    assert len(bars_chart["bars"]) == len(models) * len(classes)
    for bar in bars_chart["bars"]:
        model = models[bar["series"]]
        category = min(categories, key=lambda c: abs(c["x"] - bar["x"]))
        assert abs(category["x"] - bar["x"]) < band / 2
        value = contributions.filter(
            (pl.col("model") == model) & (pl.col("class") == category["text"])
        ).get_column("contribution")[0]
        tip, base = (bar["top"], bar["bottom"]) if value >= 0 else (bar["bottom"], bar["top"])
        assert _near(tip, y.pixel(value)) and _near(base, y.pixel(0.0)), (model, category, bar)
        assert bar["hit"] or bar["bottom"] - bar["top"] < 2  # a sliver may be too thin to hit
    _check_legend(bars_chart, models)
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
    result = invoke("run", *inputs(tmp_path, labels, predictions), "--out", out)
    expect(result, 0)
    page = Page(browser, out / "report.html")
    assert page.errors == [] and page.blocked == []
    assert page.page.locator("b").count() == 0  # the name's markup is text
    ranking = page.page.locator("table.ranking tbody td.model").all_inner_texts()
    assert ranking == ["m", name]
    ecdf = page.chart("ecdf")
    legend = [item["text"] for item in ecdf["legend"]]
    assert legend == ["m (KL≤0: 100%)", f"{name} (KL=∞: 25%)"]
    # m is at 100% from the left edge; the other ends at 75%, below 100% by its infinite rows.
    y = Axis(ecdf["y"], "y")
    m, other = (curve["samples"] for curve in ecdf["curves"])
    assert all(_near(s[1], y.pixel(1.0)) for s in m)
    assert _near(other[-1][1], y.pixel(0.75))
    note = page.page.locator("p.note", has_text="Infinite contributions").inner_text()
    assert f"{name}: a" in note
    mean = page.chart("mean")
    assert mean["annotations"] == ["mean = ∞ (rows with KL = ∞)"]
    assert [c["text"] for c in sorted(mean["categories"], key=lambda c: c["y"])][0] == "m"
    assert len(mean["points"]) == 1  # the infinite mean has no dot, only its note
    # The infinite contribution has no bar: m's bars are all 0, the other's a is missing.
    assert len(page.chart("contributions")["bars"]) == 3 + 2
    page.screenshot("edge-cases.png", tmp_path)


def test_history_chart_renders_offline_with_one_line_per_model(
    browser: Any, tmp_path: Path
) -> None:
    out = tmp_path / "nightly"
    nights = ("2026-11-23", "2026-11-24", "2026-11-25")
    for night in nights:
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
    page = Page(browser, out / "history.html")
    assert page.errors == [] and page.blocked == []
    chart = page.chart("history")
    x, y = Axis(chart["x"], "x"), Axis(chart["y"], "y")
    legend = [item["text"] for item in chart["legend"]]
    reports = {
        night: pl.read_parquet(out / f"run_date={night}" / "report.parquet").filter(
            pl.col("slice") == "ALL"
        )
        for night in nights
    }
    assert sorted(legend) == sorted(reports[nights[-1]].get_column("model"))
    _check_legend(chart, legend)
    # One dot with an interval per model and night, where that night's report puts it.
    assert len(chart["points"]) == len(chart["errorbars"]) == 3 * len(legend)
    points, bars = (sorted(chart[k], key=_series_then_x) for k in ("points", "errorbars"))
    for point, bar in zip(points, bars, strict=True):
        model = legend[point["series"]]
        night = min(
            nights, key=lambda d: abs(x.pixel(dt.date.fromisoformat(d).toordinal()) - point["x"])
        )
        r = reports[night].filter(pl.col("model") == model).row(0, named=True)
        assert _near(point["x"], x.pixel(dt.date.fromisoformat(night).toordinal()))
        assert _near(point["y"], y.pixel(r["mean_kl"])) and point["hit"]
        assert _near(bar["top"], y.pixel(r["ci95_high"])) and _near(
            bar["bottom"], y.pixel(r["ci95_low"])
        )
    screenshot = page.screenshot("history.png", tmp_path)
    assert screenshot.stat().st_size > 20_000
