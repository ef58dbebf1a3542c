"""Per-query routing: which of a route's candidate pipelines answers this query.

Pure functions of the candidates' plans, the query and (for the agreement policy) the first
answers; :class:`moac.run.router.RouteExecutor` carries them out. Every step returns a
:class:`Decision` naming the policy, the pipeline chosen, the ones not taken, the numbers
behind it and a sentence; the executor writes each to the trace.

The steps, in order:

1. **budget** (always on; naming it in ``policy`` changes nothing): every candidate is
   estimated for this prompt's length (:func:`planner.estimate.estimate`, the budget's mode)
   and its quality predicted (:class:`planner.quality.MoaQualityModel`). Candidates over a
   per-query bound are dropped: an unaffordable candidate is never picked. The target is the
   best predicted quality among the rest (ties: the cheaper). None fits: no target, and the
   query fails naming each candidate's excess. When a fitting candidate's quality is
   *unknown* (it rests on a model declaring none, :mod:`planner.quality`), quality cannot
   rank them, and the target is the fitting candidate that spends the most (expected
   dollars, then TFLOPs; ties: the first listed): the budget is what the user is willing to
   spend on a query, and MoA's larger pipelines are its better ones; it also leaves the
   later steps, which can only step down to cheaper candidates, something to weigh. The
   decision says that quality is unknown, and for which models.
   **learned** (before any call; a route uses it or preroute, not both): the router fitted
   by ``moac fit-router`` (:mod:`planner.learned`) chooses between its larger and smaller
   pipeline when both fit: the larger when its predicted chance of winning reaches the
   router's threshold.
2. **preroute** (before any call): the target (strong) against the cheapest fitting
   candidate (weak). The planner's average gain ``Q(strong) - Q(weak)`` is scaled by the
   query's gain factor (:mod:`planner.preroute`: how much proposers are predicted to disagree
   on a query like this one, relative to the average). With ``usd_per_point`` the strong
   pipeline is kept when ``gain x usd_per_point >= extra dollars``; with ``share`` when the
   factor is above the threshold that sends that share of AlpacaEval's instructions to it.
   With either quality unknown the gain is unknown: ``usd_per_point`` cannot price it, so
   the target stands (and the decision says why); ``share`` does not use the gain.
3. **agreement** (after the shared stages; :class:`moac.run.router.RouteExecutor` first checks
   that the target's remaining calls, estimated from the shared answers' real lengths,
   still fit ``max_usd``, and hands over to the early exit when not): when a cheaper
   fitting candidate starts with the
   same stages as the target (same calls, same quorum: :func:`shared_stages`; cheaper:
   :func:`cost_key`, dollars then TFLOPs), those stages
   are run once, and the agreement of their answers (:mod:`planner.agreement`) decides:
   at or above the threshold the cheaper candidate finishes (its aggregator reads the
   answers already paid for), below it the target goes on. Among several cheaper sharing
   candidates the one with the fewest stages left after the shared ones is the early exit
   (ties: best predicted quality).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from planner import constants as k
from planner.estimate import Estimate, estimate, violations
from planner.quality import MoaQualityModel, QualityModel, unknown_models
from planner.report import tflops_text

if TYPE_CHECKING:
    from moac.ir import Plan
    from moac.ir.spec import BudgetSpec, RouteSpec
    from planner.agreement import Agreement


@dataclass(frozen=True)
class Candidate:
    """One candidate pipeline, estimated for the query at hand."""

    name: str
    plan: "Plan"
    estimate: Estimate
    quality: float  # the quality model's number; only a prediction when ``known``
    over: tuple[str, ...]  # the per-query bounds its estimate exceeds; empty: it fits
    assumed: tuple[str, ...] = ()  # models of undeclared quality it rests on

    @property
    def fits(self) -> bool:
        return not self.over

    @property
    def known(self) -> bool:
        return not self.assumed

    @property
    def predicted(self) -> float | None:
        """The predicted quality, None when it is unknown."""
        return self.quality if self.known else None

    def numbers(self) -> dict[str, Any]:
        return {"usd": round(self.estimate.usd, 6),
                "latency_s": round(self.estimate.latency_s, 3),
                "tflops": round(self.estimate.tflops, 3),
                "quality": round(self.quality, 2) if self.known else None,
                **({"quality_unknown": list(self.assumed)} if self.assumed else {}),
                "fits": self.fits, **({"over": list(self.over)} if self.over else {})}


@dataclass(frozen=True)
class Decision:
    """One routing step: ``chosen`` (None: nothing can run) over ``alternatives``."""

    policy: str
    chosen: str | None
    alternatives: tuple[str, ...]
    numbers: dict[str, Any]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "chosen": self.chosen,
                "alternatives": list(self.alternatives), "numbers": self.numbers,
                "reason": self.reason}


@dataclass(frozen=True)
class PreCallChoice:
    """What is decided before any call: the pipeline to run, and the cheaper one that may
    take over after the first ``shared`` stages when the agreement policy applies."""

    target: str | None
    decisions: tuple[Decision, ...]
    early_exit: str | None = None
    shared: int = 0
    threshold: float | None = None


def assess(plans: Mapping[str, "Plan"], prompt_tokens: int, budget: "BudgetSpec",
           quality: QualityModel | None = None) -> list[Candidate]:
    """Each plan estimated for a prompt of ``prompt_tokens`` in ``budget``'s mode, with
    its predicted quality and the bounds of ``budget`` it would exceed."""
    out = []
    for name, plan in plans.items():
        totals = estimate(plan, prompt_tokens, budget.mode)
        model = quality or MoaQualityModel.of(plan)
        out.append(Candidate(name, plan, totals, float(model.predict(plan)),
                             tuple(violations(totals, budget)),
                             tuple(unknown_models(model, plan))))
    return out


def shared_stages(first: "Plan", second: "Plan") -> int:
    """How many leading stages (before the final one) the two plans have in common: the
    same nodes with the same calls and the same quorum. Their answers serve both plans."""
    count = 0
    for a, b in zip(first.layers[:-1], second.layers[:-1]):
        if a != b or any(first.call(n) != second.call(n) for n in a.nodes):
            break
        count += 1
    return count


def choose_before_calls(route: "RouteSpec", candidates: Sequence[Candidate], query: str,
                        preroute=None) -> PreCallChoice:
    """Steps 1 and 2 of the module docstring, and the early exit step 3 will weigh.
    ``preroute`` is a :class:`planner.preroute.PrerouteModel` (default: the fitted one)."""
    by_name = {c.name: c for c in candidates}
    table = {c.name: c.numbers() for c in candidates}
    fitting = [c for c in candidates if c.fits]
    if not fitting:
        why = "; ".join(f"{c.name}: {', '.join(c.over)}" for c in candidates)
        return PreCallChoice(None, (Decision(
            "budget", None, tuple(by_name), {"candidates": table},
            f"no candidate fits the per-query bounds ({why})"),))
    dropped = [c.name for c in candidates if not c.fits]
    unknown = [c for c in fitting if not c.known]
    if not unknown:
        best = min(fitting, key=lambda c: (-c.quality, c.estimate.usd))
        reason = f"{best.name} has the best predicted quality ({best.quality:.1f})"
        reason += " of the candidates that fit" if dropped else ""
    else:
        # Quality cannot rank them: the one that spends the most (module docstring);
        # max keeps the first listed of equals.
        best = max(fitting, key=cost_key)
        models = sorted({m for c in unknown for m in c.assumed})
        reason = (f"quality unknown for {', '.join(c.name for c in unknown)} "
                  f"({', '.join(models)} declare{'s' * (len(models) == 1)} no quality), so "
                  f"quality cannot rank the candidates: {best.name} spends the most of "
                  f"those that fit (${best.estimate.usd:.4f}, "
                  f"{tflops_text(best.estimate.tflops)} TFLOPs expected)")
    reason += ("; " + ", ".join(dropped) + " over budget") if dropped else ""
    decisions = [Decision("budget", best.name,
                          tuple(c.name for c in candidates if c is not best),
                          {"candidates": table}, reason)]
    target = best
    if "learned" in route.policies and route.router is not None:
        decision = _learned(route, by_name, fitting, query)
        if decision is not None:
            decisions.append(decision)
            target = by_name[decision.chosen]
    if "preroute" in route.policies:
        weak = min(fitting, key=lambda c: (c.estimate.usd, _by_quality(c),
                                           c.estimate.tflops))
        if weak is not best:
            decision = _preroute(route, best, weak, query, preroute)
            decisions.append(decision)
            target = by_name[decision.chosen]
    choice = PreCallChoice(target.name, tuple(decisions))
    if "agreement" in route.policies:
        exits = [(shared_stages(target.plan, c.plan), c) for c in fitting
                 if cost_key(c) < cost_key(target)]
        exits = [(n, c) for n, c in exits if n > 0]
        if exits:
            shared, early = min(exits, key=lambda e: (len(e[1].plan.layers) - 1 - e[0],
                                                      _by_quality(e[1]), e[1].estimate.usd))
            threshold = route.agreement if route.agreement is not None \
                else k.DEFAULT_AGREEMENT_THRESHOLD
            choice = PreCallChoice(target.name, tuple(decisions), early.name, shared,
                                   threshold)
    return choice


def cost_key(c: Candidate) -> tuple[float, float]:
    """What "cheaper" means between candidates: expected dollars, then TFLOPs (so that
    free candidates, a local model's, are still told apart)."""
    return (c.estimate.usd, c.estimate.tflops)


def _by_quality(c: Candidate) -> tuple:
    """Sort key, best predicted quality first; an unknown one after every known one."""
    return (0, -c.quality) if c.known else (1, 0.0)


def _preroute(route: "RouteSpec", strong: Candidate, weak: Candidate, query: str,
              model) -> Decision:
    from planner.features import query_features
    from planner.preroute import default_model
    model = model or default_model()
    factor = float(model.gain_factor(query))
    known = strong.known and weak.known
    average_gain = strong.quality - weak.quality if known else None
    gain = average_gain * factor if known else None
    extra = strong.estimate.usd - weak.estimate.usd
    numbers: dict[str, Any] = {
        "category": query_features(query).category, "gain_factor": round(factor, 3),
        "average_gain": None if average_gain is None else round(average_gain, 2),
        "predicted_gain": None if gain is None else round(gain, 2),
        "extra_usd": round(extra, 6)}
    if route.usd_per_point is not None and not known:
        numbers.update(usd_per_point=route.usd_per_point)
        unknown = [c.name for c in (strong, weak) if not c.known]
        return Decision("preroute", strong.name, (weak.name,), numbers,
                        f"quality unknown for {', '.join(unknown)}: the gain of {strong.name} "
                        f"cannot be priced at ${route.usd_per_point:g}/point, so the budget's "
                        "choice stands")
    if route.usd_per_point is not None:
        worth = gain * route.usd_per_point
        numbers.update(usd_per_point=route.usd_per_point, gain_worth_usd=round(worth, 6))
        take = worth >= extra
        reason = (f"{gain:.2f} predicted points x ${route.usd_per_point:g}/point = "
                  f"${worth:.4f} {'>=' if take else '<'} ${extra:.4f} extra")
    else:
        threshold = float(model.threshold_for_share(route.target_share))
        numbers.update(share=route.target_share, threshold=round(threshold, 3))
        take = factor > threshold  # as threshold_for_share counts: share=0 sends none
        reason = (f"gain factor {factor:.2f} {'>' if take else '<='} {threshold:.2f}, the "
                  f"threshold sending {route.target_share:.0%} of queries to {strong.name}")
    chosen, other = (strong, weak) if take else (weak, strong)
    return Decision("preroute", chosen.name, (other.name,), numbers, reason)


def _learned(route: "RouteSpec", by_name: dict[str, Candidate], fitting: list[Candidate],
             query: str) -> Decision | None:
    """The router's choice between its two pipelines, when both fit (else the budget's
    choice stands)."""
    from planner.features import query_features
    router = _cached_router(route.router)
    larger, smaller = by_name.get(router.larger), by_name.get(router.smaller)
    if larger is None or smaller is None or larger not in fitting or smaller not in fitting:
        return None
    p = router.probability(query)
    take = p >= router.threshold
    chosen, other = (larger, smaller) if take else (smaller, larger)
    return Decision("learned", chosen.name, (other.name,), {
        "probability": round(p, 4), "threshold": router.threshold,
        "category": query_features(query).category,
        "held_out_accuracy": router.held_out_accuracy},
        f"P({larger.name} wins) = {p:.2f} {'>=' if take else '<'} {router.threshold:g}")


@functools.lru_cache(maxsize=16)
def _cached_router(path: str):
    from planner.learned import load_router
    return load_router(path)


def choose_on_agreement(choice: PreCallChoice, measured: "Agreement | None") -> Decision:
    """Step 3: the early exit when the shared stages' answers agree, else the target.
    ``measured`` is None when fewer than two answers came back (nothing to compare)."""
    target, early = choice.target, choice.early_exit
    if measured is None:
        return Decision("agreement", target, (early,), {"threshold": choice.threshold},
                        f"fewer than two answers to compare: {target} goes on")
    # The score unrounded: a decision must be reproducible from the trace's numbers.
    numbers = {**measured.as_dict(digits=17), "threshold": choice.threshold}
    if measured.score >= choice.threshold:
        return Decision("agreement", early, (target,), numbers,
                        f"the answers agree ({measured.score:.3f} >= {choice.threshold:g}): "
                        f"{early} aggregates them now")
    return Decision("agreement", target, (early,), numbers,
                    f"the answers disagree ({measured.score:.3f} < {choice.threshold:g}): "
                    f"{target} goes on")
