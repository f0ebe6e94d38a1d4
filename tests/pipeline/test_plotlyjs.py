"""pipeline/plotlyjs.py: figures as dicts, JSON that cannot end a script, plotly.js found unimported."""

import doctest
import json
import math
import re
import subprocess
import sys

import pytest
from klrank.io.plotly_bundle import plotly_js
from klrank.pipeline import plotlyjs
from klrank.pipeline.plotlyjs import axis, figure_html, layout, script_json


def test_examples_in_the_docstrings_hold() -> None:
    assert doctest.testmod(plotlyjs).failed == 0


@pytest.mark.parametrize(
    "text", ["</script><script>alert(1)</script>", "<!--<script>", "</SCRIPT >", "a\u2028b"]
)
def test_json_cannot_end_or_change_the_script_it_sits_in(text: str) -> None:
    written = script_json({"name": text, "values": [1.5, None]})
    assert "<" not in written
    assert json.loads(written) == {"name": text, "values": [1.5, None]}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_has_no_place_for_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        script_json({"x": [value]})


def test_figure_div_has_a_fixed_id_and_the_layouts_height() -> None:
    figure = {"data": [{"type": "bar", "x": ["a"], "y": [1.0]}], "layout": layout(height=300)}
    page = figure_html("bars", figure)
    assert page.startswith('<div id="klrank-bars" style="height:300px; width:100%;"></div>')
    call = re.fullmatch(r".*<script>Plotly\.newPlot\((.*)\);</script>", page, re.DOTALL)
    assert call is not None
    div_id, data, drawn_layout, config = json.loads(f"[{call.group(1)}]")
    assert (div_id, data, drawn_layout) == ("klrank-bars", figure["data"], figure["layout"])
    assert config == {"displaylogo": False, "responsive": True}
    assert 'style="height:100%; width:100%;"' in figure_html("all", {"data": [], "layout": {}})


def test_axis_titles_are_objects_as_plotly_js_3_needs() -> None:
    assert axis("x", type="log") == {"title": {"text": "x"}, "type": "log"}


def test_the_look_is_a_template_so_plotly_js_draws_no_axis_lines() -> None:
    # plotly.js draws an axis line when a figure sets linecolor, not when its template does.
    drawn = layout(xaxis=axis("x"))
    assert "linecolor" not in drawn["xaxis"]
    assert drawn["template"]["layout"]["xaxis"]["linecolor"] == "#ebf0f8"


def test_plotly_js_is_read_without_importing_plotly() -> None:
    script = (
        "import sys\n"
        "from klrank.io.plotly_bundle import plotly_js\n"
        "assert 'plotly.js v' in plotly_js()[:200]\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('plotly', '_plotly_utils')])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
    assert "</script" not in plotly_js().lower()  # the bundle is inlined as it is
