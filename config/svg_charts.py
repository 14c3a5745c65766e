"""Bar and line charts drawn on the server as inline SVG: no script, no asset from elsewhere.

    bar_chart(title="Spend by day", categories=["12-01", "12-02"],
              bars=[Series("llama3", [1.5, 2])], lines=[Series("provider", [1.2, 2.1])])

returns a SafeString to put straight into a template. Bars of several series stack (values
below zero stack downwards from the zero line); lines are drawn over them on the same
scale. Every bar segment and line point carries a <title> (the browser's tooltip) and
`data-category` / `data-series` / `data-value` attributes with the value as it was given
(a Decimal stays exact there), so the numbers behind a chart can be read back.

Text comes from the caller (model ids, tenant names): every piece of it is escaped, and
colours must be #rrggbb (or currentColor), so nothing given can break out of the markup.
Chart text and axes use `currentColor`, so they follow the page's theme, dark or light.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# #rrggbb, or the text's own colour (dark on a light theme, light on a dark one).
COLOUR = re.compile(r"#[0-9a-fA-F]{6}|currentColor")
CHARACTER_WIDTH = 6.5  # a 11px sans-serif character, roughly, for laying out the legend
Number = float | int | Decimal


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[Number]
    colour: str

    def __post_init__(self) -> None:
        if not COLOUR.fullmatch(self.colour):
            raise ValueError(
                f"colour must look like #1f77b4 or be currentColor, not {self.colour!r}"
            )


def _number(value: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high == low:
        high = low + 1
    raw_step = (high - low) / count
    exponent = math.floor(math.log10(raw_step))
    # float("1e-5") is the nearest double to 10^-5; 10 ** -5 can land a hair off it.
    multiple, step = next(
        (m, float(f"{m}e{exponent}"))
        for m in (1, 2, 5, 10)
        if float(f"{m}e{exponent}") >= raw_step * (1 - 1e-9)
    )
    # The tolerance keeps float noise (4.0000000001 steps) from adding an empty tick.
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [float(f"{i * multiple}e{exponent}") for i in range(first, last + 1)]


def default_format(value: float) -> str:
    return f"{value:,.2f}"


def _tick_format(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:,.{decimals}f}"


@dataclass(frozen=True)
class _Layout:
    width: int
    height: int
    left: int = 64
    right: int = 16
    top: int = 12
    bottom: int = 28  # x labels
    legend_row_height: int = 18

    def legend_rows(self, names: list[str]) -> list[list[tuple[str, int]]]:
        """Legend entries (index, name) laid out in rows that fit the width."""
        rows: list[list[tuple[str, int]]] = [[]]
        x = self.left
        for index, name in enumerate(names):
            item = 18 + int(len(name) * CHARACTER_WIDTH) + 16
            if rows[-1] and x + item > self.width - self.right:
                rows.append([])
                x = self.left
            rows[-1].append((name, index))
            x += item
        return rows if rows[-1] else rows[:-1]


def bar_chart(
    *,
    title: str,
    categories: Sequence[str],
    bars: Sequence[Series],
    lines: Sequence[Series] = (),
    format_value: Callable[[Number], str] = default_format,
    width: int = 1100,
    height: int = 260,
    max_labels: int | None = None,
) -> SafeString:
    """Stacked bars per category, with optional lines over them, as an <svg> element.

    `height` is the plot's; the legend adds rows below it as needed.
    """
    count = len(categories)
    for series in (*bars, *lines):
        if len(series.values) != count:
            raise ValueError(
                f"series {series.name!r} has {len(series.values)} values for {count} categories"
            )
    layout = _Layout(width=width, height=height)
    legend = layout.legend_rows([series.name for series in (*bars, *lines)])
    total_height = height + len(legend) * layout.legend_row_height + 6
    plot_left, plot_right = layout.left, width - layout.right
    plot_top, plot_bottom = layout.top, height - layout.bottom

    highs = [0.0]
    lows = [0.0]
    for index in range(count):
        values = [float(series.values[index]) for series in bars]
        highs.append(sum(v for v in values if v > 0))
        lows.append(sum(v for v in values if v < 0))
    for series in lines:
        highs += [float(v) for v in series.values]
        lows += [float(v) for v in series.values]
    ticks = nice_ticks(min(lows), max(highs))
    low, high = ticks[0], ticks[-1]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0

    def y(value: float) -> float:
        return plot_bottom - (value - low) / (high - low) * (plot_bottom - plot_top)

    band = (plot_right - plot_left) / max(count, 1)
    bar_width = max(1.0, band * 0.72)

    def x_centre(index: int) -> float:
        return plot_left + band * (index + 0.5)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'aria-label="{escape(title)}" viewBox="0 0 {width} {total_height}" '
        f'width="{width}" height="{total_height}" '
        'font-family="system-ui, -apple-system, sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
    ]
    # Grid and y axis labels.
    for tick in ticks:
        is_zero = abs(tick) < step / 1e6
        parts.append(
            f'<line x1="{plot_left}" x2="{plot_right}" y1="{_number(y(tick))}" '
            f'y2="{_number(y(tick))}" class="{"axis" if is_zero else "grid"}" '
            f'stroke="currentColor" stroke-opacity="{0.6 if is_zero else 0.12}"/>'
        )
        parts.append(
            f'<text x="{plot_left - 6}" y="{_number(y(tick) + 4)}" text-anchor="end" '
            f'fill="currentColor" fill-opacity="0.7">{escape(_tick_format(tick, step))}</text>'
        )
    # Bars: positives stack up from zero, negatives down.
    for index, category in enumerate(categories):
        above = below = 0.0
        x = x_centre(index) - bar_width / 2
        for series in bars:
            value = series.values[index]
            number = float(value)
            if number == 0:
                continue
            if number > 0:
                top, bottom = y(above + number), y(above)
                above += number
            else:
                top, bottom = y(below), y(below + number)
                below += number
            parts.append(
                f'<rect x="{_number(x)}" y="{_number(top)}" width="{_number(bar_width)}" '
                f'height="{_number(max(bottom - top, 0.5))}" fill="{series.colour}" '
                f'data-category="{escape(category)}" data-series="{escape(series.name)}" '
                f'data-value="{escape(str(value))}"><title>{escape(category)} · '
                f"{escape(series.name)}: {escape(format_value(value))}</title></rect>"
            )
    # Lines, with a dot (and tooltip) per point.
    for series in lines:
        points = " ".join(
            f"{_number(x_centre(i))},{_number(y(float(v)))}" for i, v in enumerate(series.values)
        )
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{series.colour}" '
            'stroke-width="2" stroke-linejoin="round"/>'
        )
        for index, value in enumerate(series.values):
            category = categories[index]
            parts.append(
                f'<circle cx="{_number(x_centre(index))}" cy="{_number(y(float(value)))}" '
                f'r="2.5" fill="{series.colour}" data-category="{escape(category)}" '
                f'data-series="{escape(series.name)}" data-value="{escape(str(value))}">'
                f"<title>{escape(category)} · {escape(series.name)}: "
                f"{escape(format_value(value))}</title></circle>"
            )
    # X labels: as many as fit, counted back from the last category (today, say).
    fitting = max_labels or max(1, int((plot_right - plot_left) // 56))
    every = max(1, math.ceil(count / fitting))
    for index in range(count - 1, -1, -every):
        category = categories[index]
        parts.append(
            f'<text x="{_number(x_centre(index))}" y="{plot_bottom + 16}" text-anchor="middle" '
            f'fill="currentColor" fill-opacity="0.7">{escape(category)}</text>'
        )
    # Legend below the plot.
    every_series = [*bars, *lines]
    for row_number, row in enumerate(legend):
        y_row = height + row_number * layout.legend_row_height + 4
        x = float(plot_left)
        for name, index in row:
            series = every_series[index]
            if index < len(bars):
                swatch = (
                    f'<rect x="{_number(x)}" y="{y_row}" width="12" height="12" rx="2" '
                    f'fill="{series.colour}"/>'
                )
            else:
                swatch = (
                    f'<line x1="{_number(x)}" x2="{_number(x + 12)}" y1="{y_row + 6}" '
                    f'y2="{y_row + 6}" stroke="{series.colour}" stroke-width="3"/>'
                )
            parts.append(
                f'<g class="legend-item">{swatch}<text x="{_number(x + 18)}" y="{y_row + 10}" '
                f'fill="currentColor">{escape(name)}</text></g>'
            )
            x += 18 + len(name) * CHARACTER_WIDTH + 16
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every piece of text above is escaped
