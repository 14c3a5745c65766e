"""Server-drawn SVG charts: well-formed, escaped, exact about their numbers, on scale."""

from __future__ import annotations

from decimal import Decimal
from xml.etree import ElementTree

import pytest

from config.svg_charts import Series, bar_chart, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ElementTree.Element:
    return ElementTree.fromstring(svg)  # noqa: S314 - our own output


def test_stacked_bars_carry_their_exact_values_and_stack_from_zero() -> None:
    svg = bar_chart(
        title="Spend",
        categories=["03-01", "03-02"],
        bars=[
            Series("a", [Decimal("1.5000000001"), Decimal(0)], "#4e79a7"),
            Series("b", [Decimal("0.5"), Decimal(2)], "#f28e2b"),
        ],
        lines=[Series("provider", [Decimal("1.2"), Decimal("2.5")], "#222222")],
        height=220,
    )
    root = parse(svg)
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("data-series")]
    values = [(r.get("data-category"), r.get("data-series"), r.get("data-value")) for r in rects]
    assert values == [
        ("03-01", "a", "1.5000000001"),
        ("03-01", "b", "0.5"),
        ("03-02", "b", "2"),  # a zero draws nothing
    ]
    # Segment heights are proportional to values; b sits on top of a.
    first_a, first_b, second_b = rects
    a_height, b_height = float(first_a.get("height")), float(first_b.get("height"))
    assert a_height == pytest.approx(3 * b_height, rel=0.01)
    assert float(first_b.get("y")) + b_height == pytest.approx(float(first_a.get("y")), abs=0.01)
    assert float(second_b.get("height")) == pytest.approx(4 * b_height, rel=0.01)
    points = [c.get("data-value") for c in root.iter(f"{SVG}circle")]
    assert points == ["1.2", "2.5"]
    assert root.find(f"{SVG}title").text == "Spend"
    assert (root.get("role"), root.get("aria-label")) == ("img", "Spend")
    tooltips = [t.text for r in rects for t in r.iter(f"{SVG}title")]
    assert tooltips[0] == "03-01 · a: 1.50"


def test_negative_values_go_below_the_zero_line() -> None:
    root = parse(
        bar_chart(
            title="Margin",
            categories=["x", "y"],
            bars=[Series("margin", [Decimal(2), Decimal(-1)], "#2e8540")],
        )
    )
    axis = next(line for line in root.iter(f"{SVG}line") if line.get("class") == "axis")
    zero = float(axis.get("y1"))
    up, down = [r for r in root.iter(f"{SVG}rect") if r.get("data-series")]
    assert float(up.get("y")) + float(up.get("height")) == pytest.approx(zero, abs=0.01)
    assert float(down.get("y")) == pytest.approx(zero, abs=0.01)


def test_text_from_callers_is_escaped_and_colours_are_checked() -> None:
    hostile = '"><script>alert(1)</script><x a="'
    svg = bar_chart(
        title=hostile,
        categories=[hostile],
        bars=[Series(hostile, [1], "#123456")],
        lines=[Series("l & m", [1], "currentColor")],
    )
    assert "<script" not in svg
    root = parse(svg)  # still one well-formed element
    assert root.get("aria-label") == hostile
    assert any(t.text == "l & m" for t in root.iter(f"{SVG}text"))
    with pytest.raises(ValueError, match="colour"):
        Series("x", [1], 'red" onload="alert(1)')
    with pytest.raises(ValueError, match="2 values for 1 categories"):
        bar_chart(title="t", categories=["a"], bars=[Series("x", [1, 2], "#000000")])


def test_labels_and_legend_fit_a_month_of_days_and_twelve_models() -> None:
    categories = [f"03-{day:02d}" for day in range(1, 31)]
    bars = [Series(f"meta.llama-model-{n}-instruct-v1:0", [1] * 30, "#4e79a7") for n in range(12)]
    root = parse(bar_chart(title="t", categories=categories, bars=bars))
    labels = [t.text for t in root.iter(f"{SVG}text") if t.text in categories]
    assert labels[0] == "03-30"  # the newest day is always labelled
    assert 5 <= len(labels) <= 15
    legend = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend-item"]
    assert len(legend) == 12
    rows = {float(g.find(f"{SVG}text").get("y")) for g in legend}
    assert len(rows) > 1  # wrapped onto several rows, inside the drawing
    width, height = (float(v) for v in root.get("viewBox").split()[2:])
    assert max(rows) < height
    for item in legend:
        assert float(item.find(f"{SVG}text").get("x")) < width


def test_an_empty_or_all_zero_chart_still_draws_axes() -> None:
    root = parse(bar_chart(title="t", categories=["a"], bars=[Series("x", [0], "#000000")]))
    assert [r for r in root.iter(f"{SVG}rect") if r.get("data-series")] == []
    assert any(line.get("class") == "axis" for line in root.iter(f"{SVG}line"))


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0, 1, [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]),
        (0, 7.3, [0, 2, 4, 6, 8]),
        (-1, 2, [-1, 0, 1, 2]),
        (0, 0, [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]),
        (0, 0.00004, [0, 1e-05, 2e-05, 3e-05, 4e-05]),
    ],
)
def test_nice_ticks(low: float, high: float, expected: list[float]) -> None:
    assert nice_ticks(low, high) == pytest.approx(expected)
