"""Charts drawn on the server as SVG: no script, no third-party code, nothing fetched.

``line_chart`` takes buckets of counts per series and returns one ``<svg>``
element (as text, every value escaped) with axes, a grid, a line per series
and a legend; the page's stylesheet colours the series by class name.
``stacked_bars`` draws the same input as a bar per bucket, its series stacked;
series there are any words (bounce reasons), coloured by their place (``p0``...).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 52


def nice_ceiling(value: int) -> int:
    """The axis maximum: ``value`` rounded up to 1, 2 or 5 times a power of ten (at least 1)."""
    if value <= 1:
        return 1
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _label(start: int, bucket: int) -> str:
    moment = datetime.datetime.fromtimestamp(start, datetime.UTC)
    return moment.strftime("%H:%M" if bucket < 86400 else "%m-%d")


def _frame(starts: Sequence[int], bucket: int, highest: int, title: str,
           x: Callable[[int], float]) -> tuple[list[str], Callable[[int], float]]:
    """The ``<svg>`` opening, grid, value axis (four even steps up to ``highest`` or more) and time
    labels (at ``x`` of a bucket's index); and the y of a value."""
    step = nice_ceiling(-(-highest // 4))
    top = 4 * step
    plot_h = HEIGHT - TOP - BOTTOM

    def y(value: int) -> float:
        return TOP + plot_h - plot_h * value / top

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{escape(title, {chr(34): "&quot;"})}"><title>{escape(title)}</title>']
    for tick in range(5):
        value = step * tick
        level = y(value)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{level:.1f}" '
                     f'y2="{level:.1f}"/><text class="axis" x="{LEFT - 6}" y="{level + 4:.1f}" '
                     f'text-anchor="end">{value}</text>')
    count = len(starts)
    every = max(1, count // 8)
    for index in range(0, count, every):
        parts.append(f'<text class="axis" x="{x(index):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                     f'{escape(_label(starts[index], bucket))}</text>')
    return parts, y


def _legend(number: int, css: str, name: str, total: int) -> str:
    lx = LEFT + (number % 5) * 140
    ly = HEIGHT - 20 + (number // 5) * 14 - 6
    return (f'<rect class="key {css}" x="{lx}" y="{ly - 8}" width="10" height="10"/>'
            f'<text class="legend" x="{lx + 14}" y="{ly + 1}">{escape(name)} ({total})</text>')


def line_chart(starts: Sequence[int], bucket: int, series: Mapping[str, Sequence[int]], title: str) -> str:
    """An SVG line chart: ``series`` maps a name to one count per bucket start in ``starts``."""
    count = len(starts)
    plot_w = WIDTH - LEFT - RIGHT

    def x(index: int) -> float:
        return LEFT + (plot_w * index / (count - 1) if count > 1 else plot_w / 2)

    highest = max((max(values) for values in series.values() if values), default=0)
    parts, y = _frame(starts, bucket, highest, title, x)
    for number, (name, values) in enumerate(series.items()):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        css = escape(name.replace(" ", "-"))
        parts.append(f'<polyline class="line s-{css}" fill="none" points="{points}"><title>{escape(name)}: '
                     f'{sum(values)}</title></polyline>')
        parts.append(_legend(number, f"s-{css}", name, sum(values)))
    parts.append("</svg>")
    return "".join(parts)


def stacked_bars(starts: Sequence[int], bucket: int, series: Mapping[str, Sequence[int]], title: str) -> str:
    """An SVG bar chart, a bar per bucket start in ``starts`` with ``series`` (name -> one count per
    bucket) stacked in it, the first at the bottom; each series is coloured by its place (``p0``...)."""
    count = len(starts)
    slot = (WIDTH - LEFT - RIGHT) / max(count, 1)
    width = max(1.0, slot * 0.8)

    def x(index: int) -> float:
        return LEFT + slot * (index + 0.5)

    highest = max((sum(values[i] for values in series.values()) for i in range(count)), default=0)
    parts, y = _frame(starts, bucket, highest, title, x)
    below = [0] * count
    for number, (name, values) in enumerate(series.items()):
        css = f"p{number}"
        for index, value in enumerate(values):
            if value:
                top, bottom = y(below[index] + value), y(below[index])
                parts.append(f'<rect class="bar {css}" x="{x(index) - width / 2:.1f}" y="{top:.1f}" '
                             f'width="{width:.1f}" height="{bottom - top:.1f}"><title>{escape(name)}: {value}'
                             f'</title></rect>')
                below[index] += value
        parts.append(_legend(number, css, name, sum(values)))
    parts.append("</svg>")
    return "".join(parts)
