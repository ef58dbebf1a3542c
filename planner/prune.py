"""Prune a plan to its budget and say what was dropped and why.

Contract: :func:`prune` returns a new :class:`~moac.ir.Plan` (the input is not changed) that
fits ``budget`` (default: the plan's own), with ``annotations["planner"]`` holding the
estimates and predicted quality before and after, the search method and its proven bound, and
the drops, one line each. A plan that already fits is kept whole: drops must pay for
themselves in budget, never in predicted quality alone (the model is an approximation; the
file is what the user asked for). Raises :class:`~planner.search.NothingFits` when even the
cheapest sub-plan is over budget.

The drops are applied one at a time, whole layers first, then single agents in declaration
order, then the fallback swap; each line's change is measured from the plan before it, so the
lines add up to the total (``dropped dbrx from layer refine: -0.4 quality, -9% cost``, the
percentage of the declared plan's cost; of its TFLOPs when it costs nothing, as a local
model does).

A quality resting on a model that declares none is unknown (:mod:`planner.quality`): it is
stored as None ("quality" of before or after, and of a drop whose either side is unknown),
a note names the models, and the report prints "unknown". The search still ranks by the
quality model with an assumed prior, so the choice is deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moac.constants import ASSUMED_PROMPT_TOKENS
from moac.ir.spec import BudgetSpec

from planner import constants as k
from planner.estimate import Estimate, estimate, fits, violations
from planner.quality import MoaQualityModel, predicted_or_none, unknown_models
from planner.search import optimize
from planner.subplan import Choice, build, describe, final_calls, full_choice, intermediate

if TYPE_CHECKING:
    from moac.ir import Plan


def prune(plan: "Plan", budget: BudgetSpec | None = None, *,
          prompt_tokens: int = ASSUMED_PROMPT_TOKENS, quality: MoaQualityModel | None = None,
          time_limit: float = k.SEARCH_TIME_LIMIT_S) -> "Plan":
    budget = budget or plan.budget
    quality = quality or MoaQualityModel.of(plan)
    before = estimate(plan, prompt_tokens, budget.mode)
    full = full_choice(plan)
    if fits(before, budget):
        choice, search = full, {"method": "the declared plan fits: nothing dropped",
                                "exact": True, "upper_bound": None, "expansions": 0,
                                "seconds": 0.0}
    else:
        result = optimize(plan, budget, prompt_tokens=prompt_tokens, quality=quality,
                          time_limit=time_limit)
        choice = result.choice
        search = {"method": result.method, "exact": result.exact,
                  "upper_bound": round(result.upper_bound, 3) if result.known else None,
                  "expansions": result.nodes,
                  "seconds": round(result.seconds, 4)}
    pruned = build(plan, choice)
    pruned.graph.graph["budget"] = budget
    after = estimate(pruned, prompt_tokens, budget.mode)
    q_before, q_after = predicted_or_none(quality, plan), predicted_or_none(quality, pruned)
    pruned.annotations["planner"] = {
        "pipeline": plan.pipeline,
        "budget": budget.model_dump(mode="json"),
        "search": search,
        "before": _totals(before, q_before, budget),
        "after": _totals(after, q_after, budget),
        "drops": drops(plan, choice, before, prompt_tokens, budget.mode, quality),
        "notes": notes(plan, choice, quality),
        "choice": {"keep": [list(kept) for kept in choice.keep],
                   "use_fallback": choice.use_fallback},
        "plan": describe(plan, choice),
    }
    return pruned


def _agent_name(layer: list, position: int) -> str:
    """The model, told apart from its copies in the same layer by its seed or position."""
    call = layer[position]
    if sum(1 for other in layer if other.model == call.model) == 1:
        return call.model
    seed = call.sampling.seed
    return f"{call.model} ({f'seed {seed}' if seed is not None else f'#{position + 1}'})"


def steps(plan: "Plan", choice: Choice) -> list[tuple[str, Choice]]:
    """The path from the declared plan to ``choice``: (what changed, the choice after it)."""
    layers = intermediate(plan)
    keep = [list(kept) for kept in full_choice(plan).keep]
    path = []
    for index, kept in enumerate(choice.keep):
        if not kept:
            keep[index] = []
            path.append((f"dropped layer {plan.layers[index].name} ({len(layers[index])} "
                         f"agent{'s' if len(layers[index]) != 1 else ''})", _choice(keep)))
    for index, kept in enumerate(choice.keep):
        for position in range(len(layers[index])):
            if kept and position not in kept:
                keep[index].remove(position)
                path.append((f"dropped {_agent_name(layers[index], position)} from layer "
                             f"{plan.layers[index].name}", _choice(keep)))
    if choice.use_fallback:
        aggregator, fallback = final_calls(plan)
        path.append((f"replaced aggregator {aggregator.model} by its fallback "
                     f"{fallback.model}", _choice(keep, True)))
    return path


def drops(plan: "Plan", choice: Choice, before: Estimate, prompt_tokens: int, mode: str,
          quality: MoaQualityModel) -> list[dict]:
    """One line per step of :func:`steps`; its quality change is None (printed "quality
    unknown") when either side rests on a model of undeclared quality."""
    out = []
    previous_q, previous = predicted_or_none(quality, plan), before
    for what, step in steps(plan, choice):
        built = build(plan, step)
        q, totals = predicted_or_none(quality, built), estimate(built, prompt_tokens, mode)
        dq = None if q is None or previous_q is None else q - previous_q
        dusd = totals.usd - previous.usd
        if before.usd > 0:
            cost = f"{dusd / before.usd:+.0%} cost"
        elif before.tflops > 0:  # a free (local) plan: what it saves is compute
            cost = f"{(totals.tflops - previous.tflops) / before.tflops:+.0%} TFLOPs"
        else:
            cost = f"{dusd:+.4f} USD"
        change = "quality unknown" if dq is None else f"{dq:+.1f} quality"
        out.append({"change": what, "quality": None if dq is None else round(dq, 3),
                    "usd": round(dusd, 6), "text": f"{what}: {change}, {cost}"})
        previous_q, previous = q, totals
    return out


def notes(plan: "Plan", choice: Choice, quality: MoaQualityModel) -> list[str]:
    out = []
    first = next((i for i, kept in enumerate(choice.keep) if kept), None)
    if first is not None and first > 0:
        out.append(f"layer {plan.layers[first].name} now proposes: it reads no earlier "
                   "answers, so its aggregate-and-synthesize prompt is dropped")
    for info, kept in zip(plan.layers, choice.keep):
        if kept and len(kept) < info.min_ok:
            out.append(f"lowered min_ok of layer {info.name} from {info.min_ok} to "
                       f"{len(kept)}: it keeps {len(kept)} agent{'s' * (len(kept) != 1)}")
    unknown = sorted(set(unknown_models(quality, plan)) | set(
        unknown_models(quality, build(plan, choice))))
    if unknown:
        out.append(f"quality unknown: {_names(unknown)} declare{'s' * (len(unknown) == 1)} "
                   "no quality (AlpacaEval 2.0 LC win rate alone); sub-plans were ranked "
                   f"as if {'it' if len(unknown) == 1 else 'each'} scored "
                   f"{getattr(quality, 'unknown', k.UNKNOWN_QUALITY):g}, an assumption, not "
                   "a prediction")
    return out


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _choice(keep: list[list[int]], use_fallback: bool = False) -> Choice:
    return Choice(tuple(tuple(kept) for kept in keep), use_fallback)


def _totals(totals: Estimate, predicted: float | None, budget: BudgetSpec) -> dict:
    return {"quality": None if predicted is None else round(predicted, 3), **totals.as_dict(),
            "calls": sum(1 for c in totals.calls if c.counted),
            "over": violations(totals, budget)}
