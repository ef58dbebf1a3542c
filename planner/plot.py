"""Draw a frontier as a hand-written SVG: quality against cost, and against latency.

Contract: :func:`svg` is a pure function of a :class:`~planner.frontier.Frontier` and named
points, returning the document text (no plotting library: matplotlib is heavy and not a
dependency). Left panel: predicted quality against dollars per query on a log axis (the
costs span orders of magnitude); right panel: against latency on a linear axis. Grey dots
are the Pareto-optimal sub-plans, the blue line the staircase for that axis, red diamonds
the named pipelines with their names.
"""

from __future__ import annotations

import math
from html import escape

from planner.frontier import Frontier, Point

WIDTH, HEIGHT = 1000, 460
PANEL_W, PANEL_H = 390, 330
LEFT, TOP = 80, 60
GAP = 110


def svg(front: Frontier, named: list[Point] = ()) -> str:
    points = list(front.pareto) + list(named)
    quality = [p.quality for p in points]
    q_lo, q_hi = _padded(min(quality), max(quality))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="16">'
             f'{escape(front.pipeline)}: predicted quality against cost and latency '
             f'({front.mode} case, {front.prompt_tokens}-token prompt)</text>']
    panels = (("usd", "cost per query (USD, log scale)", True),
              ("latency_s", "latency per query (s)", False))
    for index, (axis, title, log) in enumerate(panels):
        x0 = LEFT + index * (PANEL_W + GAP)
        values = [getattr(p, axis) for p in points]
        lo, hi = min(values), max(values)
        if log:
            lo, hi = max(lo, 1e-9), max(hi, lo * 1.0001)
            lo, hi = lo / 1.3, hi * 1.3
            xs = _log_ticks(lo, hi)
        else:
            lo, hi = _padded(lo, hi, floor_zero=True)
            xs = _ticks(lo, hi)

        def fx(v, lo=lo, hi=hi, log=log, x0=x0):
            if log:
                return x0 + PANEL_W * (math.log10(v) - math.log10(lo)) / (
                    math.log10(hi) - math.log10(lo))
            return x0 + PANEL_W * (v - lo) / (hi - lo)

        def fy(q):
            return TOP + PANEL_H * (q_hi - q) / (q_hi - q_lo)

        parts.append(f'<rect x="{x0}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" '
                     'fill="none" stroke="#333"/>')
        for t in xs:
            x = fx(t)
            label = _money(t) if log else f"{t:g}"
            parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + PANEL_H}" '
                         'stroke="#eee"/>')
            parts.append(f'<text x="{x:.1f}" y="{TOP + PANEL_H + 16}" '
                         f'text-anchor="middle">{label}</text>')
        for t in _ticks(q_lo, q_hi):
            y = fy(t)
            parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PANEL_W}" y2="{y:.1f}" '
                         'stroke="#eee"/>')
            parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
        parts.append(f'<text x="{x0 + PANEL_W / 2}" y="{TOP + PANEL_H + 38}" '
                     f'text-anchor="middle">{title}</text>')
        cy = TOP + PANEL_H / 2
        parts.append(f'<text x="{x0 - 44}" y="{cy}" text-anchor="middle" '
                     f'transform="rotate(-90 {x0 - 44} {cy})">predicted AlpacaEval 2.0 LC win '
                     'rate (%)</text>')
        for p in front.pareto:
            parts.append(f'<circle cx="{fx(getattr(p, axis)):.1f}" cy="{fy(p.quality):.1f}" '
                         'r="2.2" fill="#bbb"/>')
        stairs = front.by_axis[axis]
        path = " ".join(f"{fx(getattr(p, axis)):.1f},{fy(p.quality):.1f}" for p in stairs)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" '
                     'stroke-width="1.8"/>')
        for p in stairs:
            parts.append(f'<circle cx="{fx(getattr(p, axis)):.1f}" cy="{fy(p.quality):.1f}" '
                         'r="3" fill="#1f77b4"><title>'
                         f'{escape(p.label)}</title></circle>')
        for p in named:
            x, y = fx(getattr(p, axis)), fy(p.quality)
            parts.append(f'<path d="M{x:.1f},{y - 6:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},'
                         f'{y + 6:.1f} L{x - 6:.1f},{y:.1f} Z" fill="#d62728"/>')
            parts.append(f'<text x="{x + 9:.1f}" y="{y + 14:.1f}" fill="#d62728">'
                         f'{escape(p.label)}</text>')
    legend_y = HEIGHT - 14
    parts.append(f'<text x="{LEFT}" y="{legend_y}" fill="#555">grey: Pareto-optimal sub-plans'
                 ' · blue: best quality for the cost · red: named pipelines</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _padded(lo: float, hi: float, floor_zero: bool = False) -> tuple[float, float]:
    span = max(hi - lo, 1.0)
    lo, hi = lo - 0.08 * span, hi + 0.08 * span
    return (max(lo, 0.0) if floor_zero else lo), hi


def _ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    raw = (hi - lo) / target
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= step * m)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    out = []
    for exponent in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            value = m * 10 ** exponent
            if lo <= value <= hi:
                out.append(value)
    return out


def _money(value: float) -> str:
    return f"${value:.{max(0, -math.floor(math.log10(value)))}f}"
