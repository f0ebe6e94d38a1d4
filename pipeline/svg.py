"""Charts as static SVG, drawn in Python: a page that holds them needs no script and no network.

Four kinds, each a ``<figure class="chart" id="klrank-NAME">`` holding one ``<svg>`` and, for
several series, a legend (an HTML list, so that the browser lays out names of any length):

* :func:`dot_chart`: one value with its interval per category (mean KL with its 95% CI),
* :func:`step_chart`: step curves on a log or linear x axis (the KL ECDFs),
* :func:`bar_chart`: grouped bars per category (per-class contributions),
* :func:`line_chart`: values with intervals over dates (mean KL per night).

The pages inlined all of plotly.js (4.8 MB) for these few traces; as SVG the figures weigh a
few kilobytes each and the same frames give the same bytes. Each point and bar carries its value
as an SVG ``<title>``, which the browser shows on hover.

Notes
-----
* Text from the data (model and class names) is escaped (:func:`html.escape`) wherever it
  goes: SVG inside HTML is parsed as HTML, and a name is shown as typed, never as markup.
  Long names are cut on the axes (``…``); their tooltip and the legend have them whole.
* Non-finite values have no place on an axis: callers pass ``None`` for them and say in text
  what they were (a dot chart's ``notes``). A log axis has no place for values <= 0 either: a
  step curve is clipped to the axis' range, which callers choose to hold its points.
* Ticks are "nice" numbers (1, 2, 2.5 or 5 times a power of ten, every decade on a log axis)
  and their labels the numbers themselves, so a reader can read any mark off the axis; the
  browser tests read the rendered ticks to check that every mark sits where its value says.
"""

import datetime as dt
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# plotly's default colours and look ("plotly_white"), which the pages had so far.
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
FONT_COLOR = "#2a3f5f"
GRID_COLOR = "#ebf0f8"
ZERO_COLOR = "#c8d4e3"
WIDTH = 1000  # of the viewBox; the drawing scales to the width of its container
FONT_SIZE = 12
_CHAR_WIDTH = 0.6 * FONT_SIZE  # a generous mean glyph width: no font metrics here
_MAX_LABEL_CHARS = 36  # longer names are cut on the axes (the tooltip has them whole)

# What a page that holds charts adds to its <style>.
CHART_STYLE = """
figure.chart { margin: 0.5rem 0 1rem; }
figure.chart svg { display: block; width: 100%; height: auto; overflow: visible; }
figure.chart .point:hover, figure.chart .bar:hover { opacity: 0.7; }
ul.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 0.2rem 1.4rem;
            margin: 0.2rem 0 0; padding: 0; font-size: 0.85rem; color: #2a3f5f; }
ul.legend .swatch { display: inline-block; width: 1.6em; height: 0.3em; margin-right: 0.4em;
                    vertical-align: middle; border-radius: 1px; }
"""


@dataclass(frozen=True)
class Scale:
    """Values to pixels along one axis: ``low`` lands on ``start`` and ``high`` on ``end``.

    >>> Scale(0.0, 10.0, 100.0, 200.0)(2.5)
    125.0
    >>> Scale(0.01, 10.0, 0.0, 300.0, log=True)(1.0)
    200.0
    """

    low: float
    high: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        """The pixel of ``value``."""
        if self.log:
            low, high, value = math.log10(self.low), math.log10(self.high), math.log10(value)
        else:
            low, high = self.low, self.high
        return self.start + (value - low) / (high - low) * (self.end - self.start)


@dataclass(frozen=True)
class Tick:
    """A mark on an axis: where (a value of the axis) and what it reads."""

    value: float
    text: str


def value_text(value: float | None, digits: int = 4) -> str:
    """A value as the tooltips show it: ``digits`` significant digits, ``∞``, or ``–``.

    >>> value_text(0.123456), value_text(float("inf")), value_text(None)
    ('0.1235', '∞', '–')
    """
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return _minus(f"{value:.{digits}g}")


def _minus(text: str) -> str:
    return text.replace("-", "−")


def tick_text(value: float, step: float | None = None) -> str:
    """A tick's label: the number to the digits that ``step`` needs, in ``1e-5`` style.

    Without a ``step``, 6 significant digits. Either way without the float noise of
    ``k * step``.

    >>> [tick_text(v) for v in (3 * 0.1, 0.0, -2.5, 1e-05, 2000.0, 1e6)]
    ['0.3', '0', '−2.5', '1e−5', '2000', '1e6']
    >>> tick_text(1.0000002, step=2e-7)
    '1.0000002'
    """
    digits = 6
    if step is not None:
        magnitude = math.floor(math.log10(max(abs(value), step)))
        digits = max(1, min(15, magnitude - math.floor(math.log10(step)) + 2))
    text = f"{value:.{digits}g}"
    text = re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m[1] == "-" else "") + m[2], text)
    return _minus("0" if text == "-0" else text)


def percent_text(value: float) -> str:
    """A share as a tick's label: ``0.2`` reads ``20%``.

    >>> percent_text(0.2), percent_text(1.0)
    ('20%', '100%')
    """
    return f"{float(f'{100 * value:.12g}'):g}%"


def _nice_step(span: float, count: int) -> float:
    raw = span / count
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if raw <= m * power * (1 + 1e-9))


def linear_ticks(low: float, high: float, count: int = 6) -> list[Tick]:
    """About ``count`` evenly spaced nice ticks from ``low`` to ``high``, both included.

    >>> [t.text for t in linear_ticks(-0.013, 0.41, count=5)]
    ['0', '0.1', '0.2', '0.3', '0.4']
    """
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"no linear axis from {low} to {high}")
    step = _nice_step(high - low, count)
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [Tick(k * step, tick_text(k * step, step)) for k in range(first, last + 1)]


def linear_range(low: float, high: float, pad: float = 0.04) -> tuple[float, float]:
    """An axis' range: ``low`` to ``high`` with ``pad`` of it to spare, but on a side at 0.

    A side at 0 stays there: bars start at 0, and it is KL's least value.

    >>> linear_range(0.0, 0.5)
    (0.0, 0.52)

    Notes
    -----
    ``low == high`` widens to a unit around it (``[0, 1]`` for 0), so the axis has a range.
    """
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"no linear axis from {low} to {high}")
    if low == high:
        return (0.0, 1.0) if low == 0 else (low - abs(low) / 2, high + abs(high) / 2)
    spare = pad * (high - low)
    return (low - spare if low != 0 else 0.0, high + spare if high != 0 else 0.0)


def log_ticks(low: float, high: float) -> list[Tick]:
    """Ticks from ``low`` to ``high`` (> 0) on a log axis: decades, and 2 and 5 times them.

    Every decade, or every few over many; 2 and 5 times each where the range spans few.

    >>> [t.text for t in log_ticks(0.004, 2.0)]
    ['0.01', '0.1', '1']
    >>> [t.text for t in log_ticks(0.3, 4.0)]
    ['0.5', '1', '2']
    """
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"no log axis from {low} to {high}")
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    stride = max(1, math.ceil((last - first) / 10))
    multiples = (1, 2, 5) if last - first <= 2 else (1,)
    values = [m * 10.0**e for e in range(first, last + 1) if e % stride == 0 for m in multiples]
    return [Tick(v, tick_text(v)) for v in values if low <= v * (1 + 1e-12) and v <= high]


def date_ticks(first: dt.date, last: dt.date) -> list[Tick]:
    """Whole days from ``first`` to ``last``, every day or every few, at most about 10.

    Values are proleptic ordinals (:meth:`datetime.date.toordinal`).

    >>> [t.text for t in date_ticks(dt.date(2026, 1, 30), dt.date(2026, 2, 1))]
    ['2026-01-30', '2026-01-31', '2026-02-01']
    """
    days = (last - first).days
    step = next((s for s in (1, 2, 7, 14, 28) if days / s <= 10), math.ceil(days / 10))
    return [
        Tick(float(first.toordinal() + k), (first + dt.timedelta(days=k)).isoformat())
        for k in range(0, days + 1, step)
    ]


def _n(value: float) -> str:
    """A coordinate: one decimal is a tenth of a pixel, fine enough and short."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _cut(text: str, chars: int = _MAX_LABEL_CHARS) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _text_width(text: str) -> float:
    return len(text) * _CHAR_WIDTH


def _color(index: int) -> str:
    return COLORWAY[index % len(COLORWAY)]


@dataclass(frozen=True)
class _Frame:
    """The plot area and what is drawn around it: grid, ticks and the axis titles."""

    left: float
    top: float
    right: float
    bottom: float
    height: float  # of the whole drawing

    def svg_open(self, title: str) -> str:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {_n(self.height)}" '
            f'role="img" aria-label="{_e(title)}" font-family="system-ui, -apple-system, '
            f'&quot;Segoe UI&quot;, Roboto, sans-serif" font-size="{FONT_SIZE}" '
            f'fill="{FONT_COLOR}"><title>{_e(title)}</title>'
        )

    def x_axis(self, ticks: Sequence[Tick], scale: Scale, title: str) -> list[str]:
        parts = ['<g class="xaxis">']
        for t in ticks:
            x = _n(scale(t.value))
            parts.append(
                f'<line class="grid" x1="{x}" x2="{x}" y1="{_n(self.top)}" '
                f'y2="{_n(self.bottom)}" stroke="{ZERO_COLOR if t.value == 0 else GRID_COLOR}"/>'
            )
            parts.append(
                f'<text class="tick" x="{x}" y="{_n(self.bottom + 18)}" '
                f'text-anchor="middle">{_e(t.text)}</text>'
            )
        parts.append(
            f'<text class="title" x="{_n((self.left + self.right) / 2)}" '
            f'y="{_n(self.bottom + 40)}" text-anchor="middle" font-size="13">{_e(title)}</text>'
        )
        return [*parts, "</g>"]

    def y_axis(self, ticks: Sequence[Tick], scale: Scale, title: str) -> list[str]:
        parts = ['<g class="yaxis">']
        for t in ticks:
            y = _n(scale(t.value))
            parts.append(
                f'<line class="grid" x1="{_n(self.left)}" x2="{_n(self.right)}" y1="{y}" '
                f'y2="{y}" stroke="{ZERO_COLOR if t.value == 0 else GRID_COLOR}"/>'
            )
            parts.append(
                f'<text class="tick" x="{_n(self.left - 6)}" y="{y}" dy="0.35em" '
                f'text-anchor="end">{_e(t.text)}</text>'
            )
        middle = _n((self.top + self.bottom) / 2)
        parts.append(
            f'<text class="title" x="14" y="{middle}" transform="rotate(-90 14 {middle})" '
            f'text-anchor="middle" font-size="13">{_e(title)}</text>'
        )
        return [*parts, "</g>"]


def _y_margin(ticks: Sequence[Tick]) -> float:
    """Room left of the plot for the y tick labels and the axis title."""
    return 30 + max((_text_width(t.text) for t in ticks), default=0.0) + 8


def _legend(names: Sequence[str]) -> str:
    items = [
        f'<li><span class="swatch" style="background:{_color(i)}"></span>'
        f'<span class="legendtext">{_e(name)}</span></li>'
        for i, name in enumerate(names)
    ]
    return "<ul class='legend'>" + "".join(items) + "</ul>"


def _figure(name: str, svg: Sequence[str], legend: Sequence[str] = ()) -> str:
    return "\n".join(
        [
            f'<figure class="chart" id="klrank-{_e(name)}">',
            *svg,
            "</svg>",
            *([_legend(legend)] if legend else []),
            "</figure>",
        ]
    )


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def dot_chart(
    name: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
    *,
    x_title: str,
    notes: Sequence[str] = (),
) -> str:
    """One row per label, top to bottom: a dot at its value and a bar from low to high.

    The x axis starts at 0 or below (the values are compared by their size), a label's row is
    empty where its value is ``None``, and ``notes[i]`` (when not empty) is written at the right
    end of row ``i``. Each dot's tooltip holds the label, value and interval.
    """
    row, top, bottom_room = 40.0, 10.0, 50.0
    finite = _finite([*values, *lows, *highs])
    x_low, x_high = linear_range(min([0.0, *finite]), max([0.0, *finite]))
    ticks = linear_ticks(x_low, x_high)
    left = 16 + max((_text_width(_cut(label)) for label in labels), default=0.0)
    bottom = top + row * len(labels)
    frame = _Frame(left, top, WIDTH - 20, bottom, bottom + bottom_room)
    x = Scale(x_low, x_high, frame.left, frame.right)
    parts = [frame.svg_open(x_title), *frame.x_axis(ticks, x, x_title), '<g class="yaxis">']
    for i, label in enumerate(labels):
        parts.append(
            f'<text class="category" x="{_n(left - 8)}" y="{_n(top + row * (i + 0.5))}" dy="0.35em" '
            f'text-anchor="end"><title>{_e(label)}</title>{_e(_cut(label))}</text>'
        )
    parts += ["</g>", f'<g class="series" fill="{_color(0)}" stroke="{_color(0)}">']
    for i, (label, value, low, high) in enumerate(zip(labels, values, lows, highs, strict=True)):
        y = top + row * (i + 0.5)
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            a, b = _n(x(low)), _n(x(high))
            parts.append(
                f'<path class="errorbar" d="M{a} {_n(y)}H{b}M{a} {_n(y - 6)}V{_n(y + 6)}'
                f'M{b} {_n(y - 6)}V{_n(y + 6)}" stroke-width="1.5" fill="none"/>'
            )
        if value is not None and math.isfinite(value):
            tip = f"{label}: {value_text(value)} [{value_text(low)}, {value_text(high)}]"
            parts.append(
                f'<circle class="point" cx="{_n(x(value))}" cy="{_n(y)}" r="5">'
                f"<title>{_e(tip)}</title></circle>"
            )
    parts.append("</g>")
    for i, note in enumerate(notes):
        if note:
            parts.append(
                f'<text class="annotation" x="{_n(frame.right - 4)}" '
                f'y="{_n(top + row * (i + 0.5))}" dy="0.35em" text-anchor="end">{_e(note)}</text>'
            )
    return _figure(name, parts)


@dataclass(frozen=True)
class Curve:
    """One series of a step chart: a name and its points, by increasing ``x``."""

    name: str
    x: Sequence[float]
    y: Sequence[float]


def step_chart(
    name: str,
    curves: Sequence[Curve],
    *,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    x_title: str,
    y_title: str,
    x_log: bool = False,
    y_percent: bool = False,
) -> str:
    """Step curves (each level held until the next point's x, then a rise), one colour each.

    ``x_range`` and ``y_range`` are the axes' ranges (the curves' points must lie in them); a
    log x axis has its ticks on decades, a ``y_percent`` axis reads shares as percentages. The
    legend lists the curves' names, and a curve's tooltip its name.
    """
    top, bottom_room, height = 10.0, 50.0, 420.0
    y_ticks = linear_ticks(*y_range, count=5)
    if y_percent:
        y_ticks = [Tick(t.value, percent_text(t.value)) for t in y_ticks]
    frame = _Frame(_y_margin(y_ticks), top, WIDTH - 20, height - bottom_room, height)
    x = Scale(*x_range, frame.left, frame.right, log=x_log)
    y = Scale(*y_range, frame.bottom, frame.top)
    x_ticks = log_ticks(*x_range) if x_log else linear_ticks(*x_range)
    parts = [
        frame.svg_open(f"{y_title} against {x_title}"),
        *frame.x_axis(x_ticks, x, x_title),
        *frame.y_axis(y_ticks, y, y_title),
    ]
    for i, curve in enumerate(curves):
        if not curve.x:
            continue
        d = [f"M{_n(x(curve.x[0]))} {_n(y(curve.y[0]))}"]
        for px, py in zip(curve.x[1:], curve.y[1:], strict=True):
            d.append(f"H{_n(x(px))}V{_n(y(py))}")
        parts.append(
            f'<g class="series"><path class="curve" d="{"".join(d)}" fill="none" '
            f'stroke="{_color(i)}" stroke-width="2"><title>{_e(curve.name)}</title></path></g>'
        )
    return _figure(name, parts, [c.name for c in curves])


def bar_chart(
    name: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    x_title: str,
    y_title: str,
) -> str:
    """Grouped bars: for each category, one bar per series (``(name, values)``), side by side.

    A ``None`` value has no bar. The y axis holds 0 and every value; each bar's tooltip holds
    its category, value and series.
    """
    top, height = 10.0, 420.0
    values = _finite([v for _, vs in series for v in vs])
    low, high = linear_range(min([0.0, *values]), max([0.0, *values]))
    y_ticks = linear_ticks(low, high)
    left = _y_margin(y_ticks)
    band = (WIDTH - 20 - left) / max(len(categories), 1)
    widest = max((_text_width(_cut(c, 20)) for c in categories), default=0.0)
    slanted = widest > band - 4
    # Labels slanted at 45°: their height is their width over √2.
    bottom_room = 50.0 + (widest / math.sqrt(2) if slanted else 0.0)
    frame = _Frame(left, top, WIDTH - 20, height - bottom_room, height)
    y = Scale(low, high, frame.bottom, frame.top)
    parts = [frame.svg_open(y_title), *frame.y_axis(y_ticks, y, y_title), '<g class="xaxis">']
    for k, category in enumerate(categories):
        cx, ly = frame.left + band * (k + 0.5), frame.bottom + 16
        placement = (
            f'x="{_n(cx)}" y="{_n(ly)}" text-anchor="end" transform="rotate(-45 {_n(cx)} {_n(ly)})"'
            if slanted
            else f'x="{_n(cx)}" y="{_n(ly)}" text-anchor="middle"'
        )
        parts.append(
            f'<text class="category" {placement}><title>{_e(category)}</title>'
            f"{_e(_cut(category, 20))}</text>"
        )
    parts.append(
        f'<text class="title" x="{_n((frame.left + frame.right) / 2)}" '
        f'y="{_n(height - 10)}" text-anchor="middle" font-size="13">{_e(x_title)}</text></g>'
    )
    width = band * 0.8 / max(len(series), 1)
    zero = y(0.0)
    for i, (series_name, bars) in enumerate(series):
        parts.append(f'<g class="series" fill="{_color(i)}">')
        for k, (category, value) in enumerate(zip(categories, bars, strict=True)):
            if value is None or not math.isfinite(value):
                continue
            bx = frame.left + band * (k + 0.1) + width * i
            top_y, bottom_y = min(zero, y(value)), max(zero, y(value))
            tip = f"{category}: {value_text(value)} ({series_name})"
            parts.append(
                f'<rect class="bar" x="{_n(bx)}" y="{_n(top_y)}" width="{_n(width)}" '
                f'height="{_n(bottom_y - top_y)}" stroke="white" stroke-width="0.5">'
                f"<title>{_e(tip)}</title></rect>"
            )
        parts.append("</g>")
    return _figure(name, parts, [n for n, _ in series])


@dataclass(frozen=True)
class DatedSeries:
    """One series of a line chart: a name and a value with its interval on each date."""

    name: str
    dates: Sequence[dt.date]
    values: Sequence[float]
    lows: Sequence[float | None]
    highs: Sequence[float | None]


def line_chart(name: str, series: Sequence[DatedSeries], *, x_title: str, y_title: str) -> str:
    """Each series as a line through its dates' values, with a dot and an interval bar on each.

    The dates are whole days on the x axis; the y axis holds every value and interval. The
    values must be finite (a caller leaves the others out, which the line then skips).
    """
    top, bottom_room, height = 10.0, 50.0, 480.0
    all_dates = [d for s in series for d in s.dates]
    first, last = (min(all_dates), max(all_dates)) if all_dates else (dt.date(1970, 1, 1),) * 2
    if first == last:
        first, last = first - dt.timedelta(days=1), last + dt.timedelta(days=1)
    values = _finite([v for s in series for v in (*s.values, *s.lows, *s.highs)])
    y_low, y_high = linear_range(min(values, default=0.0), max(values, default=0.0))
    y_ticks = linear_ticks(y_low, y_high)
    frame = _Frame(_y_margin(y_ticks), top, WIDTH - 40, height - bottom_room, height)
    pad = 0.03 * (last - first).days  # the first and last dots clear the plot's edges
    x = Scale(first.toordinal() - pad, last.toordinal() + pad, frame.left, frame.right)
    y = Scale(y_low, y_high, frame.bottom, frame.top)
    parts = [
        frame.svg_open(f"{y_title} per {x_title}"),
        *frame.x_axis(date_ticks(first, last), x, x_title),
        *frame.y_axis(y_ticks, y, y_title),
    ]
    for i, s in enumerate(series):
        color = _color(i)
        points = [(x(d.toordinal()), y(v)) for d, v in zip(s.dates, s.values, strict=True)]
        line = "".join(
            f"{'M' if k == 0 else 'L'}{_n(px)} {_n(py)}" for k, (px, py) in enumerate(points)
        )
        parts.append(f'<g class="series" fill="{color}" stroke="{color}">')
        if points:
            parts.append(f'<path class="line" d="{line}" fill="none" stroke-width="2"/>')
        for d, value, low, high, (px, py) in zip(
            s.dates, s.values, s.lows, s.highs, points, strict=True
        ):
            if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
                a, b = _n(y(low)), _n(y(high))
                parts.append(
                    f'<path class="errorbar" d="M{_n(px)} {a}V{b}M{_n(px - 5)} {a}H{_n(px + 5)}'
                    f'M{_n(px - 5)} {b}H{_n(px + 5)}" stroke-width="1.5" fill="none"/>'
                )
            tip = f"{s.name}, {d.isoformat()}: {value_text(value)} [{value_text(low)}, {value_text(high)}]"
            parts.append(
                f'<circle class="point" cx="{_n(px)}" cy="{_n(py)}" r="4">'
                f"<title>{_e(tip)}</title></circle>"
            )
        parts.append("</g>")
    return _figure(name, parts, [s.name for s in series])
