"""plotly.js figures as plain dicts, and the HTML that draws them, without plotly's Python side.

A figure is ``{"data": [trace, ...], "layout": {...}}`` exactly as ``Plotly.newPlot`` takes it.
The JavaScript bundle comes from the installed ``plotly`` package, which
:mod:`klrank.io.plotly_bundle` reads as a file and never imports: plotly's Python side (its import, validators and templates) took 0.2 s of every
page, for a figure that plotly.js draws by itself.

Notes
-----
* Nothing here validates a figure as plotly's Python side did: a misspelt attribute is ignored
  by plotly.js, so the browser tests (tests/pipeline/test_html_browser.py) check what is drawn.
* plotly.js 3 and later take an axis or figure title only as ``{"text": ...}``, never a string.
* The JSON is strict (:func:`script_json`): a non-finite number raises instead of being written
  as ``NaN``, which JSON has not; callers turn them into ``None`` (:func:`finite`) and say in
  the text what they were.
"""

import html
import json
import math
from typing import Any

Figure = dict[str, Any]

PLOT_CONFIG = {"displaylogo": False, "responsive": True}
FONT_COLOR = "#2a3f5f"
GRID_COLOR = "#ebf0f8"
COLORWAY = (
    "#636efa",
    "#EF553B",
    "#00cc96",
    "#ab63fa",
    "#FFA15A",
    "#19d3f3",
    "#FF6692",
    "#B6E880",
    "#FF97FF",
    "#FECB52",
)
_AXIS: dict[str, Any] = {
    "gridcolor": GRID_COLOR,
    "linecolor": GRID_COLOR,
    "zerolinecolor": GRID_COLOR,
    "zerolinewidth": 2,
    "ticks": "",
    "title": {"standoff": 15},
    "automargin": True,
}
# plotly's "plotly_white" template, reduced to what these figures use. A template, not layout
# settings: plotly.js draws an axis line or a category grid when a figure sets its colour, but
# not when only the template does, as with plotly_white.
TEMPLATE: dict[str, Any] = {
    "layout": {
        "font": {"color": FONT_COLOR},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "colorway": list(COLORWAY),
        "hovermode": "closest",
        "hoverlabel": {"align": "left"},
        # Names such as "1" or "2024" stay categories, not numbers on a linear axis.
        "autotypenumbers": "strict",
        "title": {"x": 0.05},
        "xaxis": _AXIS,
        "yaxis": _AXIS,
    },
    "data": {"bar": [{"marker": {"line": {"color": "white", "width": 0.5}}}]},
}


def finite(value: float | None) -> float | None:
    """The value where JSON and a plot can hold it, else None (the text says what it was)."""
    return value if value is not None and math.isfinite(value) else None


def label(text: str) -> str:
    """A name for plotly.js, which reads a few HTML tags in labels: shown as typed."""
    return html.escape(text)


def axis(title: str, **settings: Any) -> dict[str, Any]:
    """An axis with a title (an object, as plotly.js 3 and later need) and ``settings``.

    >>> axis("class", type="category")
    {'title': {'text': 'class'}, 'type': 'category'}
    """
    return {"title": {"text": title}, **settings}


def layout(**settings: Any) -> dict[str, Any]:
    """A figure's layout: ``settings`` over the :data:`TEMPLATE` (white, light grid)."""
    return {"template": TEMPLATE, **settings}


def script_json(value: Any) -> str:
    r"""``value`` as JSON that can sit inside ``<script>``, whatever strings it holds.

    Every ``<`` is written as ``\u003c``, so no name can close the script (``</script>``) or
    open an HTML comment (``<!--``) that changes how the parser looks for its end. NaN and
    infinities raise ``ValueError``: JSON has no such numbers.

    >>> script_json({"name": "</script>"})
    '{"name":"\\u003c/script>"}'
    """
    text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c")


def plotly_js_lines(bundle: str) -> list[str]:
    """Lines of a page that inline ``bundle`` in a ``<script>``: it opens without a network.

    ``bundle`` is plotly.js itself, as :func:`klrank.io.plotly_bundle.plotly_js` reads it.

    Lines, not one string, so the page joins the 4.8 MB once rather than copying it twice.
    """
    return [
        # plotly.js reads this before it loads: it must leave any MathJax on the page alone.
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
        "<script>",
        bundle,
        "</script>",
    ]


def figure_html(name: str, figure: Figure) -> str:
    """A ``<div id="klrank-NAME">`` and the script that draws ``figure`` in it.

    The div is as tall as the layout's ``height`` (else its container) and as wide as the page;
    :func:`plotly_js_lines` must come before it.
    """
    div_id = f"klrank-{name}"
    height = figure["layout"].get("height")
    style = f"height:{height}px; width:100%;" if height is not None else "height:100%; width:100%;"
    call = ", ".join(
        [
            script_json(div_id),
            script_json(figure["data"]),
            script_json(figure["layout"]),
            script_json(PLOT_CONFIG),
        ]
    )
    return (
        f'<div id="{html.escape(div_id)}" style="{style}"></div>\n'
        f"<script>Plotly.newPlot({call});</script>"
    )
