"""Budgeted pruning: the sub-plan of highest predicted quality that fits every bound.

Contract: :func:`optimize` returns the :class:`~planner.subplan.Choice` of highest predicted
quality whose estimate (in ``budget.mode``) fits ``max_usd``, ``max_latency_s`` and
``max_tflops``, and the proven upper bound on any fitting choice; it raises
:class:`NothingFits` (naming the cheapest plan and its cost) when none fits. A choice may drop
agents from any layer and whole layers; the aggregator stays, unless no choice with it fits,
then its declared fallback takes its place (and none is left behind it).

Method: depth-first branch and bound over the layers. At each layer every canonical subset
of its agents (:mod:`planner.tables`) is evaluated at once with numpy; a child survives if
(a) what it has spent plus a lower bound of what the rest must spend (the final stage reading
the fewest answer tokens any completion can give it) fits, and (b) an upper bound of the
quality any completion reaches beats the best plan found. The bound is exact algebra, not a
guess: with :class:`~planner.quality.MoaQualityModel` a layer's potential is
``h(S) + kappa (1 - alpha) E_in``, so the best completion from a potential E is the maximum,
over which later layers are kept, of increasing affine maps of E with each layer's largest
``h``; a second bound limits each later layer to the subsets that the budget left (after the
final stage's least cost) could buy that layer alone, and the smaller of the two is used.
Children are visited best bound first, so the first dives give a good incumbent.
Exact up to ties (equal predicted quality keeps the cheaper plan found first). A model that
declares no quality is ranked with :data:`~planner.constants.UNKNOWN_QUALITY` in its place
(:mod:`planner.quality`); ``known`` is False when the choice rests on such a model, and its
``quality`` and ``upper_bound`` are then only the ranking's, not predictions to report.
If the search outlives ``time_limit`` it stops and reports the best plan found, as "stopped", with the
largest bound left unexplored: the true optimum lies between the two. The clock is only
obeyed once some fitting plan is found, so "nothing fits" is always proven, never timed out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moac.constants import ASSUMED_PROMPT_TOKENS
from moac.ir.spec import BudgetSpec

from planner import constants as k
from planner.estimate import estimate, tflops_text
from planner.quality import MoaQualityModel
from planner.subplan import Choice, build, final_calls, intermediate
from planner.tables import final_agents, final_costs, layer_costs, layer_tables

if TYPE_CHECKING:
    from moac.ir import Plan


class NothingFits(ValueError):
    """No sub-plan fits the budget; the message names the cheapest plan and its cost."""


@dataclass(frozen=True)
class SearchResult:
    choice: Choice
    quality: float
    usd: float
    latency_s: float
    tflops: float
    exact: bool
    upper_bound: float  # no fitting sub-plan predicts more than this
    nodes: int          # layer expansions
    seconds: float
    known: bool = True  # False: the choice keeps a model of undeclared quality

    @property
    def method(self) -> str:
        if self.exact:
            return f"exact branch and bound ({self.nodes} expansions)"
        if not self.known:  # the gap would be in assumed points: not a figure to give
            return (f"branch and bound stopped after {self.nodes} expansions: best found "
                    "(its quality is unknown, so no gap to a bound is given)")
        return (f"branch and bound stopped after {self.nodes} expansions: best found, within "
                f"{self.upper_bound - self.quality:.2f} points of the proven upper bound "
                f"{self.upper_bound:.2f}")


def limits(budget: BudgetSpec) -> np.ndarray:
    return np.array([math.inf if v is None else v
                     for v in (budget.max_usd, budget.max_latency_s, budget.max_tflops)])


def optimize(plan: "Plan", budget: BudgetSpec | None = None, *,
             prompt_tokens: int = ASSUMED_PROMPT_TOKENS, quality: MoaQualityModel | None = None,
             time_limit: float = k.SEARCH_TIME_LIMIT_S) -> SearchResult:
    budget = budget or plan.budget
    quality = quality or MoaQualityModel.of(plan)
    started = time.perf_counter()
    tables = layer_tables(plan, prompt_tokens, budget.mode, quality)
    options = [False] + ([True] if final_calls(plan)[1] is not None else [])
    for use_fallback in options:
        final, prior = final_agents(plan, use_fallback, prompt_tokens, budget.mode, quality)
        search = _Search(tables, final, prior, limits(budget), quality,
                         started + time_limit)
        search.run()
        if search.best is not None:
            q, usd, lat, tfl, rows = search.best
            keep = _prefer_earlier(tables, [t.keep(r) for t, r in zip(tables, rows)])
            bound = max(q, search.open_bound)
            known = not (bool(final.unknown[0])
                         or any(bool(t.unknown[r]) for t, r in zip(tables, rows)))
            return SearchResult(Choice(keep, use_fallback), q, usd, lat, tfl,
                                search.open_bound == -math.inf, bound, search.nodes,
                                time.perf_counter() - started, known)
    raise NothingFits(_nothing_fits(plan, budget, prompt_tokens))


class _Search:
    def __init__(self, tables, final, prior, bounds, quality, deadline):
        self.tables, self.final, self.prior, self.bounds = tables, final, prior, bounds
        self.q, self.deadline = quality, deadline
        self.best = None
        self.best_q = -math.inf
        self.open_bound = -math.inf
        self.nodes = 0
        slope = quality.kappa * (1.0 - quality.alpha)
        self.slope = slope
        for t in tables:
            mean = t.prior_sum / np.maximum(t.count, 1)
            t.h_first = quality.potential(mean, t.count, t.distinct)
            t.h_next = quality.potential(quality.alpha * mean, t.count, t.distinct)
        n = len(tables)
        # pieces[l]: affine maps (slope, intercept) whose maximum bounds the best potential
        # reachable from potential E once layers l.. are decided (something already kept).
        pieces = [None] * (n + 1)
        pieces[n] = np.array([[1.0, 0.0]])
        for l in range(n - 1, -1, -1):
            hmax = tables[l].h_next[1:].max() if len(tables[l].masks) > 1 else -math.inf
            kept = np.column_stack([pieces[l + 1][:, 0] * slope,
                                    pieces[l + 1][:, 0] * hmax + pieces[l + 1][:, 1]])
            pieces[l] = _undominated(np.vstack([pieces[l + 1], kept]))
        self.pieces = pieces
        # Budget-aware bound: per layer and cost, subsets sorted by the least they can cost
        # (no answers to read, no template), with the best h among those no costlier.
        self.cheapest = []
        for t in tables:
            lowest = layer_costs(t, 0.0, first=True)  # (usd, tflops, seconds)
            per_cost = []
            for cost in (lowest[0], lowest[2], lowest[1]):  # usd, latency, tflops order
                order = np.argsort(cost[1:], kind="stable") + 1
                per_cost.append((cost[order], np.maximum.accumulate(t.h_first[order]),
                                 np.maximum.accumulate(t.h_next[order])))
            self.cheapest.append(per_cost)
        # best potential reachable when nothing is kept yet, and fewest answer tokens.
        self.none_bound = [-math.inf] * (n + 1)
        self.fewest = [math.inf] * (n + 1)
        for l in range(n - 1, -1, -1):
            t = tables[l]
            first = t.h_first[1:].max() if len(t.masks) > 1 else -math.inf
            reach = (pieces[l + 1][:, 0] * first + pieces[l + 1][:, 1]).max()
            self.none_bound[l] = max(self.none_bound[l + 1], reach)
            single = t.written[t.count == 1]
            self.fewest[l] = min(self.fewest[l + 1], single.min() if len(single) else math.inf)

    def final_quality(self, potential, kept):
        return np.where(kept, self.q.write(self.prior, potential), self.prior)

    def affordable(self, l, left):
        """Best h_first and h_next of layer l among subsets each cost alone could afford."""
        first = nxt = np.full(len(left[0]), np.inf)
        for (cost, best_first, best_next), room in zip(self.cheapest[l], left):
            at = np.searchsorted(cost, room * (1 + 1e-12), side="right")
            ok = at > 0
            idx = np.maximum(at - 1, 0)
            first = np.minimum(first, np.where(ok, best_first[idx], -np.inf))
            nxt = np.minimum(nxt, np.where(ok, best_next[idx], -np.inf))
        return first, nxt

    def upper_budgeted(self, l, potential, kept, left):
        """Like :meth:`upper`, with each later layer limited to what the budget left could
        buy it alone (``left``: usd, latency, tflops still unspent after the final's least)."""
        n = len(self.tables)
        hs = [self.affordable(j, left) for j in range(l, n)]

        def reach(j, e):
            if j == n:
                return e
            rest = reach(j + 1, e)
            h_next = hs[j - l][1]
            grown = np.where(h_next > -np.inf, h_next + self.slope * e, -np.inf)
            return np.maximum(rest, reach(j + 1, grown))

        with np.errstate(invalid="ignore"):
            from_kept = reach(l, np.where(kept, potential, -np.inf))
            from_none = np.full(len(potential), -np.inf)
            for j in range(l, n):
                from_none = np.maximum(from_none, reach(j + 1, hs[j - l][0]))
        q_kept = self.q.write(self.prior, from_kept)
        q_none = np.maximum(self.prior, self.q.write(self.prior, from_none))
        bound = np.where(kept, q_kept, q_none)
        return np.minimum(bound, self.upper(l, potential, kept))

    def upper(self, l, potential, kept):
        p = self.pieces[l]
        reach = (np.multiply.outer(potential, p[:, 0]) + p[:, 1]).max(axis=-1)
        reach = np.where(kept, reach, self.none_bound[l])
        best_none = np.maximum(self.prior, self.q.write(self.prior, self.none_bound[l]))
        return np.where(kept, self.q.write(self.prior, reach), best_none)

    def rest_lower(self, l, written, kept):
        fewest = np.minimum(written, self.fewest[l])
        as_read = final_costs(self.final, fewest, np.zeros(len(written), bool))
        alone = final_costs(self.final, fewest, np.ones(len(written), bool))
        return [np.where(kept, r, np.minimum(r, a)) for r, a in zip(as_read, alone)]

    def run(self):
        if not self.tables:  # the aggregator alone: nothing to choose
            usd, tfl, lat = (float(v[0]) for v in final_costs(self.final, [0.0], [True]))
            if np.all(np.array([usd, lat, tfl]) <= self.bounds):
                self.best_q, self.best = self.prior, (self.prior, usd, lat, tfl, ())
            return
        self.expand(0, 0.0, 0.0, False, 0.0, 0.0, 0.0, ())

    def expand(self, l, potential, written, kept, usd, lat, tfl, rows):
        self.nodes += 1
        t = self.tables[l]
        has = t.count > 0
        u, f, s = layer_costs(t, written, first=not kept)
        new_e = np.where(has, t.h_first if not kept else t.h_next + self.slope * potential,
                         potential)
        new_w = np.where(has, t.written, written)
        new_k = has | kept
        usd, tfl, lat = usd + u, tfl + f, lat + s
        if l == len(self.tables) - 1:
            fu, ff, fs = final_costs(self.final, new_w, ~new_k)
            usd, lat, tfl = usd + fu, lat + fs, tfl + ff
            ok = (usd <= self.bounds[0]) & (lat <= self.bounds[1]) & (tfl <= self.bounds[2])
            if not ok.any():
                return
            q = np.where(ok, self.final_quality(new_e, new_k), -math.inf)
            top = q.max()
            ties = np.flatnonzero(q >= top - k.QUALITY_EPSILON)
            row = ties[np.argmin(usd[ties])]
            if top > self.best_q + k.QUALITY_EPSILON or (
                    top >= self.best_q - k.QUALITY_EPSILON and usd[row] < self.best[1]):
                self.best_q = max(top, self.best_q)
                self.best = (float(q[row]), float(usd[row]), float(lat[row]), float(tfl[row]),
                             rows + (int(row),))
            return
        ru, rf, rs = self.rest_lower(l + 1, new_w, new_k)
        ok = ((usd + ru <= self.bounds[0]) & (lat + rs <= self.bounds[1])
              & (tfl + rf <= self.bounds[2]))
        left = (self.bounds[0] - usd - ru, self.bounds[1] - lat - rs, self.bounds[2] - tfl - rf)
        ub = np.where(ok, self.upper_budgeted(l + 1, new_e, new_k, left), -math.inf)
        for row in np.argsort(-ub, kind="stable"):
            if ub[row] <= self.best_q + k.QUALITY_EPSILON:
                break
            if self.best is not None and time.perf_counter() > self.deadline:
                self.open_bound = max(self.open_bound, float(ub[row]))
                break
            self.expand(l + 1, float(new_e[row]), float(new_w[row]), bool(new_k[row]),
                        float(usd[row]), float(lat[row]), float(tfl[row]), rows + (int(row),))


def _prefer_earlier(tables, keep: list[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    """Of equal plans, name the one keeping earlier layers: when the first kept layer's agents
    have twins (same model, max_tokens and system prompt) in a dropped layer before it, keep
    those instead ("propose[x]" rather than "refine[x]"; as the first layer both only
    propose, so quality and cost are the same)."""
    first = next((j for j, kept in enumerate(keep) if kept), None)
    for i in range(first or 0):
        free = [(c.model, c.sampling.max_tokens, c.system) for c in tables[i].calls]
        moved = []
        for j in keep[first]:
            c = tables[first].calls[j]
            key = (c.model, c.sampling.max_tokens, c.system)
            at = next((n for n, other in enumerate(free) if other == key), None)
            if at is None:
                break
            free[at] = None
            moved.append(at)
        else:
            keep[i], keep[first] = tuple(sorted(moved)), ()
            break
    return tuple(keep)


def _undominated(pieces: np.ndarray) -> np.ndarray:
    keep = [i for i, (a, b) in enumerate(pieces)
            if not any((c >= a and d >= b) and (c > a or d > b) for c, d in pieces)]
    return np.unique(pieces[keep], axis=0)


def _nothing_fits(plan: "Plan", budget: BudgetSpec, prompt_tokens: int) -> str:
    alone = [Choice(tuple(() for _ in intermediate(plan)), False)]
    if final_calls(plan)[1] is not None:
        alone.append(Choice(alone[0].keep, True))
    costs = []
    for choice in alone:
        totals = estimate(build(plan, choice), prompt_tokens, budget.mode)
        costs.append((totals.usd, totals.latency_s, totals.tflops, choice))
    usd, lat, tfl, choice = min(costs, key=lambda c: c[:3])
    aggregator, fallback = final_calls(plan)
    who = f"{fallback.model} (the fallback)" if choice.use_fallback else aggregator.model
    asked = ", ".join(f"{name} {value}" for name, value in
                      (("max_usd", f"${budget.max_usd:.4f}" if budget.max_usd is not None
                        else None),
                       ("max_latency", f"{budget.max_latency_s:.1f}s"
                        if budget.max_latency_s is not None else None),
                       ("max_tflops", f"{tflops_text(budget.max_tflops)} TFLOPs"
                        if budget.max_tflops is not None else None)) if value)
    return (f"no sub-plan of pipeline '{plan.pipeline}' fits the budget ({asked}, "
            f"{budget.mode} case): the cheapest, {who} answering alone, costs ${usd:.4f}, "
            f"{lat:.1f}s, {tflops_text(tfl)} TFLOPs")
