"""`moac plan --plot` draws a valid, readable SVG for every frontier: free plans ($0 on a
log axis used to crash), a single point, equal points, many decades, unknown quality.

Positions are checked against the drawing's own tick labels: a point whose cost equals a
tick's value sits on that tick, whatever the scale.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moac.cli.main import main
from planner import plot
from planner.frontier import AXES, Frontier, Point, pareto_points, staircase

from conftest import EXAMPLES

NS = "{http://www.w3.org/2000/svg}"
LOCAL = str(EXAMPLES / "local.moa")


def front_of(points: list[Point], name: str = "p") -> Frontier:
    pareto = pareto_points(points)
    unknown = tuple(p for p in points if not p.known)
    return Frontier(name, "expected", 256, len(points), True, tuple(pareto),
                    {axis: staircase(pareto, axis) for axis, _ in AXES}, unknown,
                    ("m",) if unknown else ())


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)  # raises on anything that is not well-formed XML


def panels(root: ET.Element) -> list[float]:
    """The x of each panel's frame, left to right."""
    return sorted(float(r.get("x")) for r in root.iter(NS + "rect") if r.get("stroke"))


def panel_of(x: float, starts: list[float]) -> int:
    return max(i for i, x0 in enumerate(starts) if x >= x0 - 12)


def x_ticks(root: ET.Element, panel: int) -> dict[str, float]:
    """Tick label -> x, for the labels under panel ``panel``."""
    starts = panels(root)
    base = plot.TOP + plot.PANEL_H + 16
    return {t.text: float(t.get("x")) for t in root.iter(NS + "text")
            if t.get("y") is not None and float(t.get("y")) == base
            and panel_of(float(t.get("x")), starts) == panel}


def markers(root: ET.Element) -> dict[str, dict[int, tuple[float, float]]]:
    """Each titled marker's label -> panel -> its (x, y)."""
    starts = panels(root)
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for element in root.iter():
        title = element.find(NS + "title")
        if title is None:
            continue
        label = title.text.split(": quality")[0]
        if element.tag == NS + "circle":
            x, y = float(element.get("cx")), float(element.get("cy"))
        else:  # a diamond: M x,y-6 ...
            x, top = map(float, re.match(r"M([\d.]+),([\d.]+)", element.get("d")).groups())
            y = top + 6
        out.setdefault(label, {})[panel_of(x, starts)] = (x, y)
    return out


def assert_finite_and_inside(text: str) -> None:
    for number in re.findall(r'\s(?:x|y|cx|cy|x1|x2|y1|y2)="([^"]*)"', text):
        value = float(number)
        assert math.isfinite(value) and -1 <= value <= plot.WIDTH + 1, number
    for pair in re.findall(r'points="([^"]*)"', text):
        for xy in pair.split():
            assert all(math.isfinite(float(v)) for v in xy.split(","))


def point(label, quality, usd, latency, tflops, known=True) -> Point:
    return Point(label, quality, usd, latency, tflops, known=known)


def test_a_free_plan_draws_its_points_at_zero_dollars():
    points = [point("a", 40, 0.0, 2.0, 0.1), point("b", 50, 0.0, 4.0, 0.3)]
    text = plot.svg(front_of(points), [point("named", 50, 0.0, 4.0, 0.3)])
    root = parse(text)
    assert_finite_and_inside(text)
    ticks = x_ticks(root, 0)
    assert list(ticks) == ["$0"]  # one tick, nothing on a log scale of zero
    for label in ("a", "b", "named"):
        assert markers(root)[label][0][0] == pytest.approx(ticks["$0"], abs=0.15)
    assert "cost per query (USD): all zero" in [t.text for t in root.iter(NS + "text")]


def test_zeros_beside_positive_costs_get_a_slot_left_of_the_log_axis():
    points = [point("free", 30, 0.0, 1.0, 0.0), point("cheap", 40, 0.001, 2.0, 10.0),
              point("dear", 60, 0.1, 5.0, 1000.0)]
    root = parse(plot.svg(front_of(points)))
    at = markers(root)
    cost, compute = x_ticks(root, 0), x_ticks(root, 2)
    assert at["free"][0][0] == pytest.approx(cost["$0"], abs=0.15)
    assert at["cheap"][0][0] == pytest.approx(cost["$0.001"], abs=0.15)
    assert at["dear"][0][0] == pytest.approx(cost["$0.1"], abs=0.15)
    assert cost["$0"] < cost["$0.001"] < cost["$0.01"] < cost["$0.1"]
    # log: equal ratios, equal distances
    assert cost["$0.01"] - cost["$0.001"] == pytest.approx(cost["$0.1"] - cost["$0.01"],
                                                            abs=0.2)
    assert at["free"][2][0] == pytest.approx(compute["0"], abs=0.15)
    assert at["cheap"][2][0] == pytest.approx(compute["10"], abs=0.15)
    # higher quality, higher up
    assert at["free"][0][1] > at["cheap"][0][1] > at["dear"][0][1]


def test_a_single_point_and_equal_points_draw_inside_the_panels():
    for points in ([point("only", 44.9, 0.002, 3.0, 5.0)],
                   [point(f"p{i}", 50, 0.002, 3.0, 5.0) for i in range(3)]):
        text = plot.svg(front_of(points), [points[0]])
        root = parse(text)
        assert_finite_and_inside(text)
        starts = panels(root)
        for label, spots in markers(root).items():
            for index, (x, y) in spots.items():
                assert starts[index] < x < starts[index] + plot.PANEL_W
                assert plot.TOP < y < plot.TOP + plot.PANEL_H


def test_a_huge_range_gets_a_few_readable_ticks_and_no_overlap():
    points = [point(f"p{e}", 10 + e, 10.0 ** e, 10.0 ** (e / 2), 10.0 ** e)
              for e in range(-9, 4)]
    text = plot.svg(front_of(points))
    root = parse(text)
    assert_finite_and_inside(text)
    for panel in range(3):
        ticks = sorted(x_ticks(root, panel).items(), key=lambda t: t[1])
        assert 2 <= len(ticks) <= plot.MAX_TICKS
        for (a, xa), (b, xb) in zip(ticks, ticks[1:]):  # labels do not overlap
            assert xb - xa > (plot._text_width(a) + plot._text_width(b)) / 2
        assert all(len(label) <= 8 for label, _ in ticks)
    assert "$1e-09" in x_ticks(root, 0) or "$1e-08" in x_ticks(root, 0)


def test_unknown_quality_is_drawn_hollow_in_its_own_band():
    points = [point("known", 50, 0.01, 10.0, 100.0),
              point("unknown", 20, 0.02, 12.0, 200.0, known=False)]
    named = [point("mystery", 20, 0.02, 12.0, 200.0, known=False)]
    root = parse(plot.svg(front_of(points), named))
    at = markers(root)
    band_top = plot.TOP + plot.PANEL_H - plot.BAND_H
    assert at["known"][0][1] < band_top < at["unknown"][0][1] < plot.TOP + plot.PANEL_H
    assert at["mystery"][0][1] == at["unknown"][0][1]
    texts = [t.text for t in root.iter(NS + "text")]
    assert texts.count("unknown") == 3 and "mystery" in texts
    # a quality axis of known points only: its labels start at 50's neighbours, not at 20
    hollow = [c for c in root.iter(NS + "circle") if c.get("fill") == "none"]
    assert len(hollow) == 3  # one per panel


def test_labels_stay_inside_their_panel():
    points = [point("a", 40, 0.001, 1.0, 1.0), point("b", 60, 0.1, 9.0, 100.0)]
    named = [point("a_long_pipeline_name", 60, 0.1, 9.0, 100.0)]
    root = parse(plot.svg(front_of(points), named))
    starts = panels(root)
    for t in root.iter(NS + "text"):
        if t.text == "a_long_pipeline_name":
            x = float(t.get("x"))
            index = panel_of(x, starts)
            width = plot._text_width(t.text)
            left = x - width if t.get("text-anchor") == "end" else x
            assert starts[index] <= left and left + width <= starts[index] + plot.PANEL_W


costs = st.one_of(st.just(0.0), st.floats(1e-9, 1e4))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), costs, costs, costs, st.booleans()),
                min_size=1, max_size=12))
def test_any_frontier_draws_finite_well_formed_svg(rows):
    points = [point(f"p{i}", q, u, l, t, known) for i, (q, u, l, t, known) in
              enumerate(rows)]
    text = plot.svg(front_of(points), points[:2])
    parse(text)
    assert_finite_and_inside(text)


def test_moac_plan_plot_on_the_local_example(tmp_path, capsys):
    out = tmp_path / "local.svg"
    assert main(["plan", LOCAL, "-p", "local_self_moa", "--plot", str(out)]) == 0
    root = ET.parse(out).getroot()
    texts = [t.text for t in root.iter(NS + "text")]
    assert "local_self_moa" in texts and "local_moa_lite" in texts
    assert "$0" in texts
    assert "unknown" in capsys.readouterr().out
