"""Draw a frontier as a hand-written SVG: quality against cost, latency and TFLOPs.

Contract: :func:`svg` is a pure function of a :class:`~planner.frontier.Frontier` and named
points, returning the document text (no plotting library: matplotlib is heavy and not a
dependency). One panel per cost, the predicted quality up the side. Grey dots are the
Pareto-optimal sub-plans, the blue line the staircase for that axis, red diamonds the named
pipelines with their names. Sub-plans and pipelines of unknown quality (:mod:`planner.quality`)
have no height: they are drawn hollow in a band at the foot of the panel marked "quality
unknown" (the cheapest :data:`~planner.constants.FRONTIER_UNKNOWN_ROWS`, as the table lists).

Every input draws (no exception, every coordinate finite): a cost axis is logarithmic when its
positive values span a factor of :data:`LOG_RATIO` or more, with zeros (a free local model)
at a slot of their own left of a break; otherwise linear from zero up; an axis whose values are
all zero is one tick, "0", in the middle. A single point, equal points and ranges of many
decades (ticks thinned to a readable few) are drawn the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from planner import constants as k
from planner.frontier import Frontier, Point
from planner.report import quality_text, tflops_text

WIDTH, HEIGHT = 1200, 470
PANEL_W, PANEL_H = 300, 330
LEFT, TOP = 80, 60
GAP = 100
BAND_H = 36        # the "quality unknown" band, when there are such points
LOG_RATIO = 20.0   # positive values spanning at least this factor get a log axis
ZERO_SLOT = 0.05   # on a log axis with zeros: where 0 sits, and where the log range starts
LOG_START = 0.14
INSET = 0.06       # linear axes keep points this far (of the width) off the frame
MAX_TICKS = 7

PANELS = (("usd", "cost per query", "USD", "money"),
          ("latency_s", "latency per query", "s", "seconds"),
          ("tflops", "compute per query", "TFLOPs", "number"))


@dataclass(frozen=True)
class Axis:
    """Values (>= 0) to fractions of a panel's width, and the ticks to label."""

    scale: str            # "log", "linear" or "zero" (every value 0)
    lo: float
    hi: float
    zeros: bool = False   # log: zeros drawn at ZERO_SLOT, left of a break

    def frac(self, value: float) -> float:
        if self.scale == "zero":
            return 0.5
        if self.scale == "log":
            if value <= 0:
                return ZERO_SLOT
            start = LOG_START if self.zeros else 0.0
            span = math.log10(self.hi) - math.log10(self.lo)
            return start + (1 - start) * (math.log10(value) - math.log10(self.lo)) / span
        return INSET + (1 - 2 * INSET) * (value - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[float]:
        if self.scale == "zero":
            return [0.0]
        if self.scale == "log":
            return ([0.0] if self.zeros else []) + _log_ticks(self.lo, self.hi)
        return _ticks(self.lo, self.hi)

    def step(self) -> float:
        """The spacing the labels must resolve (linear axes; log labels use their value)."""
        ticks = self.ticks()
        return ticks[1] - ticks[0] if self.scale == "linear" and len(ticks) > 1 else 0.0


def cost_axis(values: list[float]) -> Axis:
    """The axis for these costs (module docstring); negative or non-finite ones count as 0."""
    values = [v if math.isfinite(v) and v > 0 else 0.0 for v in values]
    positive = [v for v in values if v > 0]
    if not positive:
        return Axis("zero", 0.0, 1.0)
    lo, hi = min(positive), max(positive)
    if hi / lo >= LOG_RATIO:
        return Axis("log", lo / 1.3, hi * 1.3, zeros=len(positive) < len(values))
    if hi == lo:  # one value (or all equal): show it between zero and a little above
        return Axis("linear", 0.0, hi * 1.25)
    low = min(values)
    span = hi - low
    return Axis("linear", max(low - 0.08 * span, 0.0), hi + 0.08 * span)


def quality_range(values: list[float]) -> tuple[float, float]:
    """The quality axis: the values padded, at least 4 points tall."""
    lo, hi = min(values), max(values)
    if hi - lo < 4.0:
        middle = (lo + hi) / 2
        lo, hi = middle - 2.0, middle + 2.0
    span = hi - lo
    return lo - 0.08 * span, hi + 0.08 * span


def svg(front: Frontier, named: list[Point] = ()) -> str:
    named = list(named)
    unknown = list(front.unknown[:k.FRONTIER_UNKNOWN_ROWS])
    drawn = list(front.pareto) + unknown + named
    known = [p.quality for p in drawn if p.known]
    has_band = any(not p.known for p in drawn)
    band = (PANEL_H if not known else BAND_H) if has_band else 0
    q_lo, q_hi = quality_range(known) if known else (0.0, 1.0)
    top_h = PANEL_H - band  # the quality axis's height
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="16">'
             f'{escape(front.pipeline)}: predicted quality against cost, latency and compute '
             f'({front.mode} case, {front.prompt_tokens}-token prompt)</text>']

    def fy(p: Point) -> float:
        if not p.known:
            return TOP + top_h + band / 2
        return TOP + top_h * (q_hi - p.quality) / (q_hi - q_lo)

    for index, (attr, title, unit, kind) in enumerate(PANELS):
        x0 = LEFT + index * (PANEL_W + GAP)
        axis = cost_axis([getattr(p, attr) for p in drawn])

        def fx(p: Point, axis=axis, x0=x0, attr=attr) -> float:
            return x0 + PANEL_W * axis.frac(getattr(p, attr))

        parts += _frame(x0, axis, kind, _title(title, unit, axis), top_h, band, q_lo, q_hi,
                        bool(known))
        for p in front.pareto:
            parts.append(f'<circle cx="{fx(p):.1f}" cy="{fy(p):.1f}" r="2.2" fill="#bbb">'
                         f'<title>{escape(_describe(p))}</title></circle>')
        stairs = front.by_axis.get(attr, ())
        if stairs:
            path = " ".join(f"{fx(p):.1f},{fy(p):.1f}" for p in stairs)
            parts.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" '
                         'stroke-width="1.8"/>')
        for p in stairs:
            parts.append(f'<circle cx="{fx(p):.1f}" cy="{fy(p):.1f}" r="3" fill="#1f77b4">'
                         f'<title>{escape(_describe(p))}</title></circle>')
        for p in unknown:
            parts.append(f'<circle cx="{fx(p):.1f}" cy="{fy(p):.1f}" r="3.5" fill="none" '
                         f'stroke="#777"><title>{escape(_describe(p))}</title></circle>')
        placed: list[tuple[float, float]] = []
        for p in named:
            x, y = fx(p), fy(p)
            fill = "#d62728" if p.known else "none"
            parts.append(f'<path d="M{x:.1f},{y - 6:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},'
                         f'{y + 6:.1f} L{x - 6:.1f},{y:.1f} Z" fill="{fill}" stroke="#d62728">'
                         f'<title>{escape(_describe(p))}</title></path>')
            # Right of the marker, or left of it where the name would cross the frame.
            right = x + 9 + _text_width(p.label) <= x0 + PANEL_W
            lx = x + 9 if right else x - 9
            ly = _free_line(lx, y + 14, placed)
            parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" fill="#d62728" text-anchor='
                         f'"{"start" if right else "end"}">{escape(p.label)}</text>')
    legend = ("grey: Pareto-optimal sub-plans · blue: best quality for the cost · red: named "
              "pipelines")
    if has_band:
        legend += (" · hollow, in the band: quality unknown (a model declares none; the "
                   f"{len(unknown)} cheapest sub-plans)")
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 14}" fill="#555">{escape(legend)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def axis_ticks(axis: Axis, kind: str, width: float) -> list[tuple[float, str | None]]:
    """Each tick's offset along an axis ``width`` pixels long and its label, None where the
    label would overlap another: zero and powers of ten claim their room first."""
    step = axis.step()
    ticks = [(width * axis.frac(t), _label(t, kind, step), t) for t in axis.ticks()]
    taken: list[tuple[float, float]] = []
    shown = set()
    for x, label, t in sorted(ticks, key=lambda tick: not _round(tick[2])):
        half = _text_width(label) / 2
        if any(abs(x - other) < half + other_half + 4 for other, other_half in taken):
            continue
        taken.append((x, half))
        shown.add(t)
    return [(x, label if t in shown else None) for x, label, t in ticks]


def _frame(x0: float, axis: Axis, kind: str, title: str, top_h: float, band: float,
           q_lo: float, q_hi: float, known: bool) -> list[str]:
    """A panel's frame, grid, tick labels, axis titles and the unknown band."""
    parts = [f'<rect x="{x0}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" '
             'stroke="#333"/>']
    for x, label in axis_ticks(axis, kind, PANEL_W):
        parts.append(f'<line x1="{x0 + x:.1f}" y1="{TOP}" x2="{x0 + x:.1f}" '
                     f'y2="{TOP + PANEL_H}" stroke="#eee"/>')
        if label is not None:
            parts.append(f'<text x="{x0 + x:.1f}" y="{TOP + PANEL_H + 16}" '
                         f'text-anchor="middle">{escape(label)}</text>')
    if axis.scale == "log" and axis.zeros:  # the break between 0 and the log range
        bx = x0 + PANEL_W * (ZERO_SLOT + LOG_START) / 2
        base = TOP + PANEL_H
        parts.append(f'<path d="M{bx - 5:.1f},{base + 5} L{bx - 1:.1f},{base - 5} '
                     f'M{bx + 1:.1f},{base + 5} L{bx + 5:.1f},{base - 5}" stroke="#333"/>')
    parts.append(f'<text x="{x0 + PANEL_W / 2}" y="{TOP + PANEL_H + 38}" '
                 f'text-anchor="middle">{escape(title)}</text>')
    if known:
        ticks = _ticks(q_lo, q_hi)
        q_step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        for t in ticks:
            y = TOP + top_h * (q_hi - t) / (q_hi - q_lo)
            parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PANEL_W}" y2="{y:.1f}" '
                         'stroke="#eee"/>')
            parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">'
                         f'{_label(t, "number", q_step)}</text>')
        cy = TOP + top_h / 2
        parts.append(f'<text x="{x0 - 44}" y="{cy}" text-anchor="middle" '
                     f'transform="rotate(-90 {x0 - 44} {cy})">predicted AlpacaEval 2.0 LC win '
                     'rate (%)</text>')
    if band:
        y = TOP + top_h
        if known:
            parts.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + PANEL_W}" y2="{y}" '
                         'stroke="#999" stroke-dasharray="4,3"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + band / 2 + 4}" text-anchor="end" '
                     'fill="#555">quality</text>')
        parts.append(f'<text x="{x0 - 6}" y="{y + band / 2 + 17}" text-anchor="end" '
                     'fill="#555">unknown</text>')
    return parts


def _title(name: str, unit: str, axis: Axis) -> str:
    if axis.scale == "zero":
        return f"{name} ({unit}): all zero"
    return f"{name} ({unit}{', log scale' if axis.scale == 'log' else ''})"


def _describe(p: Point) -> str:
    return (f"{p.label}: quality {quality_text(p.predicted)}, ${p.usd:.4f}, "
            f"{p.latency_s:.1f}s, {tflops_text(p.tflops)} TFLOPs")


def _round(value: float) -> bool:
    """Zero or a power of ten."""
    if value == 0:
        return True
    exponent = math.log10(abs(value))
    return abs(exponent - round(exponent)) < 1e-9


def _text_width(text: str) -> float:
    """About how wide ``text`` is at 12 px sans-serif (no font metrics at hand)."""
    return 6.8 * len(text)


def _free_line(x: float, y: float, placed: list[tuple[float, float]]) -> float:
    """A baseline near ``y`` where a label at ``x`` overlaps none placed before."""
    for shift in (0, -14, 14, -28, 28, -42, 42):
        if all(abs(x - px) > 90 or abs(y + shift - py) > 12 for px, py in placed):
            placed.append((x, y + shift))
            return y + shift
    placed.append((x, y))
    return y


def _ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round values from ``lo`` to ``hi`` (hi > lo), about ``target`` of them."""
    raw = (hi - lo) / target
    if not raw > 0 or not math.isfinite(raw):
        return [lo]
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= step * m)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2 and 5 per decade when that gives at most :data:`MAX_TICKS`; else powers of ten,
    thinned to at most that many."""
    low, high = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    out = [m * 10.0 ** e for e in range(low, high + 1) for m in (1, 2, 5)
           if lo <= m * 10.0 ** e <= hi]
    if len(out) <= MAX_TICKS:
        return out
    powers = [10.0 ** e for e in range(low, high + 1) if lo <= 10.0 ** e <= hi]
    every = math.ceil(len(powers) / MAX_TICKS)
    return powers[::every]


def _label(value: float, kind: str, step: float) -> str:
    """A tick's text: enough decimals for the step between ticks (or for the value, on a
    log axis), thousands compacted (``20k``, ``1.5M``), tiny values in powers of ten."""
    prefix = "$" if kind == "money" else ""
    suffix = "s" if kind == "seconds" else ""
    if value == 0:
        return f"{prefix}0{suffix}"
    size = abs(value)
    if size >= 1e4:
        for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if size >= scale:
                return f"{prefix}{value / scale:.3g}{unit}{suffix}"
    resolution = step if step > 0 else size
    decimals = max(0, -math.floor(math.log10(resolution) + 1e-9))
    if decimals > 6:
        return f"{prefix}{value:.0e}{suffix}"
    return f"{prefix}{value:,.{decimals}f}{suffix}"
