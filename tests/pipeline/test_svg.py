"""pipeline/svg.py: nice ticks, scales, names as text, and marks only for finite values.

Where the marks land on a real screen is checked in tests/pipeline/test_html_browser.py.
"""

import datetime as dt
import doctest
import math
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st
from klrank.pipeline import svg
from klrank.pipeline.svg import (
    Curve,
    DatedSeries,
    Scale,
    bar_chart,
    date_ticks,
    dot_chart,
    line_chart,
    linear_range,
    linear_ticks,
    log_ticks,
    step_chart,
)

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "</figure><script>alert(1)</script><b>&amp;'\"</b>"


def _parse(figure: str) -> ET.Element:
    return ET.fromstring(figure)  # well formed: an XML parser takes it as it is


def _of_class(root: ET.Element, tag: str, kind: str) -> list[ET.Element]:
    return [e for e in root.iter(tag) if e.get("class") == kind]


def _shown(text: ET.Element) -> str:
    """A <text>'s own words, without its <title> (the tooltip)."""
    return "".join([text.text or "", *(child.tail or "" for child in text)])


def test_examples_in_the_docstrings_hold() -> None:
    assert doctest.testmod(svg).failed == 0


def _parsed(text: str) -> float:
    return float(text.replace("−", "-"))


@given(st.floats(-1e6, 1e6), st.floats(1e-6, 1e6))
def test_linear_ticks_are_few_evenly_spaced_and_read_as_their_values(
    low: float, span: float
) -> None:
    # Spans down to a millionth of the values: finer than any chart of KL needs.
    span = max(span, 1e-6 * abs(low))
    high = low + span
    ticks = linear_ticks(low, high)
    values = [t.value for t in ticks]
    noise = 1e-9 * max(span, abs(low))  # of floats at the values' magnitude
    assert 3 <= len(ticks) <= 7
    assert low - noise <= values[0] and values[-1] <= high + noise
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert max(steps) - min(steps) <= noise
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5, 10)) < 1e-6
    # Each label reads as its value, so that neighbours never read alike.
    assert all(abs(_parsed(t.text) - t.value) <= noise for t in ticks)
    assert len({t.text for t in ticks}) == len(ticks)


@given(st.floats(1e-12, 1e3), st.floats(4.0, 1e12))
def test_log_ticks_are_decades_or_their_2_and_5_multiples(low: float, ratio: float) -> None:
    high = low * ratio
    ticks = log_ticks(low, high)
    assert ticks and all(low * (1 - 1e-9) <= t.value <= high * (1 + 1e-9) for t in ticks)
    for t in ticks:
        mantissa = t.value / 10 ** math.floor(math.log10(t.value) + 1e-9)
        assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-6
        assert math.isclose(_parsed(t.text), t.value, rel_tol=1e-6)
    assert len(ticks) <= 12


def test_an_axis_range_keeps_its_zero_and_pads_the_other_side() -> None:
    assert linear_range(0.0, 2.0) == (0.0, 2.08)
    assert linear_range(-1.0, 0.0) == (-1.04, 0.0)
    low, high = linear_range(0.2, 0.4)
    assert low < 0.2 and high > 0.4
    assert linear_range(0.0, 0.0) == (0.0, 1.0) and linear_range(2.0, 2.0) == (1.0, 3.0)
    with pytest.raises(ValueError, match="no linear axis"):
        linear_range(0.0, math.inf)


def test_scales_map_the_ends_and_a_log_scale_decades_evenly() -> None:
    scale = Scale(1e-3, 1e1, 100.0, 500.0, log=True)
    assert [scale(v) for v in (1e-3, 1e-2, 1e-1, 1.0, 1e1)] == pytest.approx(
        [100, 200, 300, 400, 500]
    )
    assert Scale(-1.0, 1.0, 300.0, 100.0)(0.0) == 200.0  # y axes run upwards


def test_dates_tick_every_day_over_a_month_and_every_week_over_a_quarter() -> None:
    month = date_ticks(dt.date(2026, 1, 1), dt.date(2026, 1, 8))
    assert [t.text for t in month][:2] == ["2026-01-01", "2026-01-02"] and len(month) == 8
    quarter = date_ticks(dt.date(2026, 1, 1), dt.date(2026, 3, 31))
    assert len(quarter) <= 10 and quarter[1].value - quarter[0].value == 14


def test_names_are_text_in_every_chart_whatever_they_hold() -> None:
    figures = [
        dot_chart("a", [HOSTILE], [0.5], [0.4], [0.6], x_title=HOSTILE),
        step_chart(
            "b",
            [Curve(HOSTILE, [0.1, 1.0], [0.0, 1.0])],
            x_range=(0.05, 2.0),
            y_range=(0.0, 1.02),
            x_title=HOSTILE,
            y_title=HOSTILE,
            x_log=True,
        ),
        bar_chart("c", [HOSTILE], [(HOSTILE, [0.5])], x_title=HOSTILE, y_title=HOSTILE),
        line_chart(
            "d",
            [DatedSeries(HOSTILE, [dt.date(2026, 1, 1)], [0.5], [0.4], [0.6])],
            x_title=HOSTILE,
            y_title=HOSTILE,
        ),
    ]
    for figure in figures:
        root = _parse(figure)
        assert root.tag == "figure" and list(root.iter("script")) == list(root.iter("b")) == []
        legend = [e.text for e in _of_class(root, "span", "legendtext")]
        assert legend in ([], [HOSTILE])
        assert any(
            _shown(e).rstrip("…") and HOSTILE.startswith(_shown(e).rstrip("…"))
            for e in root.iter(f"{SVG}text")
            if _shown(e)
        )
        tips = [e.text or "" for e in root.iter(f"{SVG}title")]
        assert any(HOSTILE in tip for tip in tips)  # the tooltips have the name whole


def test_only_finite_values_get_a_mark() -> None:
    dots = _parse(
        dot_chart(
            "m",
            ["a", "b", "c"],
            [0.5, None, 0.2],
            [0.4, None, None],
            [0.6, None, None],
            x_title="x",
            notes=["", "mean = ∞", ""],
        )
    )
    assert len(list(dots.iter(f"{SVG}circle"))) == 2
    assert len(_of_class(dots, f"{SVG}path", "errorbar")) == 1
    assert [e.text for e in _of_class(dots, f"{SVG}text", "annotation")] == ["mean = ∞"]
    bars = _parse(
        bar_chart(
            "c", ["a", "b"], [("m", [math.inf, -0.1]), ("n", [None, 0.3])], x_title="", y_title=""
        )
    )
    assert len(list(bars.iter(f"{SVG}rect"))) == 2


def test_many_long_categories_are_slanted_and_cut() -> None:
    categories = [f"a-rather-long-class-name-{k:02d}" for k in range(40)]
    root = _parse(bar_chart("c", categories, [("m", [0.1] * 40)], x_title="class", y_title="y"))
    labels = _of_class(root, f"{SVG}text", "category")
    assert all("rotate(-45" in e.get("transform", "") for e in labels)
    assert all(len(_shown(e)) <= 20 and _shown(e).endswith("…") for e in labels)
    assert [e.findtext(f"{SVG}title") for e in labels] == categories


def test_the_same_values_give_the_same_bytes() -> None:
    def draw() -> str:
        return step_chart(
            "e",
            [Curve("m", [0.1, 0.3, 2.0], [0.0, 0.5, 1.0])],
            x_range=(0.05, 4.0),
            y_range=(0.0, 1.02),
            x_title="x",
            y_title="y",
            x_log=True,
        )

    assert draw() == draw()
