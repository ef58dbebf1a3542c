"""The Pareto frontier of a plan's sub-plans: predicted quality against dollars, latency, TFLOPs.

Contract: :func:`frontier` is a pure function of a plan, a prompt length, a mode and a quality
model. Up to :data:`FRONTIER_MAX_SUBPLANS` sub-plans it enumerates every one (canonical
subsets of each layer, with the aggregator and, where declared, the fallback in its place) and
is exact; above that it runs the budgeted search at :data:`FRONTIER_SWEEP_POINTS` dollar
budgets and keeps what it finds (``exact`` is False and the table says so).

A point is on the frontier (``pareto``) when no other point is at least as good on quality
and every cost and better on one. ``by_axis`` holds, per cost, the staircase of quality
against that cost alone (each point better than every cheaper one): these are the tables
:func:`table` prints and the lines :mod:`planner.plot` draws.

A point whose quality is unknown (``known`` False: it keeps a model that declares no quality,
:mod:`planner.quality`) has no place on a quality axis: it neither dominates nor is dominated,
so it is on no staircase and not in ``pareto``. Such points are kept apart in ``unknown``,
cheapest first (dollars, then TFLOPs, then latency), and printed with their costs and
"unknown" for quality; a named pipeline of unknown quality is marked "quality unknown", never
"dominated".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from moac.ir.spec import BudgetSpec

from planner import constants as k
from planner.estimate import estimate
from planner.quality import MoaQualityModel, unknown_models
from planner.report import UNKNOWN, quality_text, tflops_text
from planner.search import NothingFits, optimize
from planner.subplan import Choice, describe, final_calls
from planner.tables import final_agents, final_costs, layer_costs, layer_tables

if TYPE_CHECKING:
    from moac.ir import Plan

AXES = (("usd", "cost"), ("latency_s", "latency"), ("tflops", "TFLOPs"))


@dataclass(frozen=True)
class Point:
    label: str
    quality: float
    usd: float
    latency_s: float
    tflops: float
    choice: Choice | None = None
    known: bool = True  # False: ``quality`` is only the search's ranking, not a prediction
    assumed: tuple[str, ...] = ()  # the models of undeclared quality (set by point_of)

    def costs(self) -> tuple[float, float, float]:
        return (self.usd, self.latency_s, self.tflops)

    @property
    def predicted(self) -> float | None:
        """The predicted quality, None when it is unknown."""
        return self.quality if self.known else None

    def dominates(self, other: "Point") -> bool:
        """At least as good on quality and every cost, better on one; never claimed when
        either quality is unknown."""
        if not (self.known and other.known):
            return False
        better = [self.quality >= other.quality - 1e-9] + [
            a <= b + 1e-12 for a, b in zip(self.costs(), other.costs())]
        strictly = [self.quality > other.quality + 1e-9] + [
            a < b - 1e-12 for a, b in zip(self.costs(), other.costs())]
        return all(better) and any(strictly)


@dataclass(frozen=True)
class Frontier:
    pipeline: str
    mode: str
    prompt_tokens: int
    subplans: int
    exact: bool
    pareto: tuple[Point, ...]
    by_axis: dict[str, tuple[Point, ...]]
    unknown: tuple[Point, ...] = ()         # every point of unknown quality, cheapest first
    unknown_models: tuple[str, ...] = ()    # the models of undeclared quality behind them


def count_subplans(plan: "Plan") -> int:
    tables = layer_tables(plan, 1, "expected", MoaQualityModel())
    return math.prod(len(t.masks) for t in tables) * (2 if final_calls(plan)[1] else 1)


def point_of(plan: "Plan", label: str, prompt_tokens: int, mode: str,
             quality: MoaQualityModel) -> Point:
    totals = estimate(plan, prompt_tokens, mode)
    assumed = tuple(unknown_models(quality, plan))
    return Point(label, quality.predict(plan), totals.usd, totals.latency_s, totals.tflops,
                 known=not assumed, assumed=assumed)


def frontier(plan: "Plan", prompt_tokens: int, mode: str = "expected",
             quality: MoaQualityModel | None = None) -> Frontier:
    quality = quality or MoaQualityModel.of(plan)
    total = count_subplans(plan)
    if total <= k.FRONTIER_MAX_SUBPLANS:
        points, exact = _enumerate(plan, prompt_tokens, mode, quality), True
    else:
        points, exact = _sweep(plan, prompt_tokens, mode, quality), False
    pareto = pareto_points(points)
    by_axis = {axis: staircase(pareto, axis) for axis, _ in AXES}
    unknown = tuple(sorted((p for p in points if not p.known), key=_cheapest_first))
    return Frontier(plan.pipeline, mode, prompt_tokens, total, exact, tuple(pareto), by_axis,
                    unknown, tuple(sorted(name for name, m in plan.models.items()
                                          if m.quality is None)) if unknown else ())


def _cheapest_first(p: Point) -> tuple:
    return (p.usd, p.tflops, p.latency_s, p.choice.agents() if p.choice else 0, p.label)


def pareto_points(points: list[Point]) -> list[Point]:
    """The points of known quality no other point dominates, best quality first (cheapest
    first on ties). Points of unknown quality are left out: none can be placed on quality."""
    ordered = sorted((p for p in points if p.known),
                     key=lambda p: (-p.quality, p.usd, p.latency_s, p.tflops,
                                    _earlier_layers_first(p)))
    kept: list[Point] = []
    costs = np.empty((0, 3))
    for p in ordered:
        c = np.array(p.costs())
        if len(kept) and np.any(np.all(costs <= c + 1e-12, axis=1)):
            continue  # an earlier point is as good on quality and no costlier anywhere
        kept.append(p)
        costs = np.vstack([costs, c])
    return kept


def _earlier_layers_first(p: Point) -> tuple:
    """Of equal plans, name the one keeping earlier layers ("propose[x]", not "refine[x]")."""
    return tuple(not kept for kept in p.choice.keep) if p.choice else ()


def staircase(points: list[Point], axis: str) -> tuple[Point, ...]:
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (getattr(p, axis), -p.quality)):
        if not out or p.quality > out[-1].quality + 1e-9:
            out.append(p)
    return tuple(out)


def dominated_by(point: Point, front: Frontier) -> Point | None:
    """A frontier point dominating ``point``; None when none does or its quality is
    unknown (quality dominance is not claimed then)."""
    return next((p for p in front.pareto if p.dominates(point)), None)


def _enumerate(plan, prompt_tokens, mode, quality) -> list[Point]:
    tables = layer_tables(plan, prompt_tokens, mode, quality)
    slope = quality.kappa * (1 - quality.alpha)
    # potential, tokens, kept, usd, latency, tflops, an unknown prior kept, rows
    states = [(0.0, 0.0, False, 0.0, 0.0, 0.0, False, ())]
    for t in tables:
        mean = t.prior_sum / np.maximum(t.count, 1)
        first_e = quality.potential(mean, t.count, t.distinct)
        next_e = quality.potential(quality.alpha * mean, t.count, t.distinct)
        grown = []
        for e, w, kept, usd, lat, tfl, unknown, rows in states:
            u, f, s = layer_costs(t, w, first=not kept)
            has = t.count > 0
            new_e = np.where(has, next_e + slope * e if kept else first_e, e)
            new_w = np.where(has, t.written, w)
            for r in range(len(t.masks)):
                grown.append((float(new_e[r]), float(new_w[r]), kept or bool(has[r]),
                              usd + u[r], lat + s[r], tfl + f[r],
                              unknown or bool(t.unknown[r]), rows + (r,)))
        states = grown
    options = [False] + ([True] if final_calls(plan)[1] is not None else [])
    e, w, kept = (np.array([s[i] for s in states]) for i in range(3))
    spent = [np.array([s[i] for s in states]) for i in (3, 4, 5)]
    points = []
    for use_fallback in options:
        final, prior = final_agents(plan, use_fallback, prompt_tokens, mode, quality)
        fu, ff, fs = final_costs(final, w, ~kept.astype(bool))
        q = np.where(kept.astype(bool), quality.write(prior, e), prior)
        usd, lat, tfl = spent[0] + fu, spent[1] + fs, spent[2] + ff
        for i, state in enumerate(states):
            keep = tuple(t.keep(r) for t, r in zip(tables, state[7]))
            choice = Choice(keep, use_fallback)
            points.append(Point(describe(plan, choice), float(q[i]), float(usd[i]),
                                float(lat[i]), float(tfl[i]), choice,
                                known=not (state[6] or bool(final.unknown[0]))))
    return points


def _sweep(plan, prompt_tokens, mode, quality) -> list[Point]:
    """The budgeted search at budgets from 1% to 100% of the whole plan's cost: dollars, or
    TFLOPs for a plan that costs nothing (a local model), or latency for one that has none."""
    from planner.subplan import build, full_choice
    full = point_of(plan, describe(plan, full_choice(plan)), prompt_tokens, mode, quality)
    points = [replace(full, choice=full_choice(plan))]
    axis = next((name for name, value in (("max_usd", full.usd), ("max_tflops", full.tflops),
                                          ("max_latency_s", full.latency_s)) if value > 0),
                None)
    if axis is None:
        return points
    whole = {"max_usd": full.usd, "max_tflops": full.tflops,
             "max_latency_s": full.latency_s}[axis]
    time_limit = max(0.05, k.SEARCH_TIME_LIMIT_S / k.FRONTIER_SWEEP_POINTS)
    for share in np.geomspace(0.01, 1.0, k.FRONTIER_SWEEP_POINTS):
        try:
            found = optimize(plan, BudgetSpec(**{axis: whole * share}, mode=mode),
                             prompt_tokens=prompt_tokens, quality=quality,
                             time_limit=time_limit)
        except NothingFits:
            continue
        built = build(plan, found.choice)
        points.append(replace(point_of(built, describe(plan, found.choice), prompt_tokens,
                                       mode, quality), choice=found.choice))
    return points


def table(front: Frontier, named: list[Point] = ()) -> str:
    """The frontier as text: one staircase per cost, the sub-plans of unknown quality (at
    most :data:`~planner.constants.FRONTIER_UNKNOWN_ROWS`, cheapest first), then the named
    pipelines, each marked on the frontier, dominated (and by what) or of unknown quality."""
    how = "every sub-plan enumerated" if front.exact else \
        "approximate: swept with the budgeted search"
    counted = f"{len(front.pareto)} on the Pareto frontier"
    if front.unknown:
        counted += f", {len(front.unknown):,} of unknown quality"
    lines = [f"pipeline {front.pipeline}: {front.subplans:,} sub-plans ({how}), "
             f"{counted}; {front.mode} case, {front.prompt_tokens}-token prompt"]
    unknown_named = [p for p in named if not p.known]
    if front.unknown or unknown_named:
        lines.append(_unknown_sentence(sorted(set(front.unknown_models).union(
            *(p.assumed for p in unknown_named)))))
    header = f"  {'#':>3} {'quality':>7} {'cost':>9} {'latency':>8} {'TFLOPs':>8}  plan"
    if front.pareto:
        for axis, title in AXES:
            lines += ["", f"quality against {title}", header]
            for i, p in enumerate(front.by_axis[axis], 1):
                lines.append(_row(str(i), p))
    if front.unknown:
        shown = front.unknown[:k.FRONTIER_UNKNOWN_ROWS]
        lines += ["", "sub-plans of unknown quality, cheapest first", header]
        lines += [_row(str(i), p) for i, p in enumerate(shown, 1)]
        if len(front.unknown) > len(shown):
            lines.append(f"  ... and {len(front.unknown) - len(shown):,} more")
    if named:
        lines += ["", "named pipelines", header.replace("  plan", "  pipeline")]
        for p in named:
            by = dominated_by(p, front)
            verdict = ("quality unknown, so not compared" if not p.known else
                       f"dominated by {by.label}" if by else "on the frontier")
            lines.append(_row("", replace(p, label=f"{p.label}: {verdict}")))
    return "\n".join(lines) + "\n"


def _unknown_sentence(models: list[str]) -> str:
    who = ", ".join(models) if models else "a model"
    verb = "declare" if len(models) > 1 else "declares"
    it = "them" if len(models) > 1 else "it"
    return (f"quality {UNKNOWN}: {who} {verb} no `quality` (the AlpacaEval 2.0 LC win rate "
            f"alone): a sub-plan using {it} gets no predicted quality and is not compared on "
            "quality, only its costs are shown")


def _row(index: str, p: Point) -> str:
    return (f"  {index:>3} {quality_text(p.predicted):>7} {'$' + format(p.usd, '.4f'):>9} "
            f"{format(p.latency_s, '.1f') + 's':>8} {tflops_text(p.tflops):>8}  {p.label}")
