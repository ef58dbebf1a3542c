"""Sub-plans: which agents of a lowered plan to keep, and the plan that keeps only them.

A :class:`Choice` names, for each intermediate layer of a plan (every layer but the final
stage), the 0-based positions of the agents kept (an empty tuple drops the layer), whether
the declared fallback replaces the aggregator, and whether it is dropped (its model's context
cannot take the query: :mod:`moac.run.start_fit`). :func:`build` re-lowers the kept part with
:func:`moac.ir.lower.lower`, so the result keeps every IR invariant (full edges between
consecutive layers, positions 0..n-1, layer indices, models and providers actually used).

What pruning changes besides dropping calls, all reported by :mod:`planner.report`:
- the first kept layer becomes the proposer layer: its agents read no answers, so its
  aggregate-and-synthesize template goes (as a first layer has none);
- with every layer dropped the aggregator answers the prompt alone, with no template;
- a layer's ``min_ok`` is lowered to the number of agents it keeps when that is fewer (the
  safer choice: the quorum stays satisfiable);
- with the fallback swapped in as aggregator the plan has no fallback left.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moac.ir.spec import AgentSpec, LayerSpec, PipelineSpec

if TYPE_CHECKING:
    from moac.ir import CallNode, Plan


@dataclass(frozen=True, order=True)
class Choice:
    keep: tuple[tuple[int, ...], ...]
    use_fallback: bool = False
    drop_fallback: bool = False

    def agents(self) -> int:
        return sum(len(kept) for kept in self.keep)


def intermediate(plan: "Plan") -> list[list["CallNode"]]:
    """The calls of every layer but the final stage, in order."""
    return [[plan.call(n) for n in layer.nodes] for layer in plan.layers[:-1]]


def final_calls(plan: "Plan") -> tuple["CallNode", "CallNode | None"]:
    """The aggregator and its fallback (None when the plan declares none)."""
    calls = [plan.call(n) for n in plan.layers[-1].nodes]
    aggregator = next(c for c in calls if c.role == "aggregate")
    fallback = next((c for c in calls if c.role == "fallback"), None)
    return aggregator, fallback


def full_choice(plan: "Plan") -> Choice:
    return Choice(tuple(tuple(range(len(layer))) for layer in intermediate(plan)))


def build(plan: "Plan", choice: Choice) -> "Plan":
    """The plan keeping only what ``choice`` keeps, re-lowered; annotations are copied."""
    from moac.ir.lower import lower
    layers = []
    for calls, info, kept in zip(intermediate(plan), plan.layers, choice.keep):
        if not kept:
            continue
        agents = tuple(_agent(calls[i]) for i in kept)
        layers.append(LayerSpec(name=info.name, agents=agents,
                                min_ok=min(info.min_ok, len(agents)),
                                prompt=calls[0].prompt if layers else None))
    aggregator, fallback = final_calls(plan)
    if choice.use_fallback:
        if fallback is None:
            raise ValueError(f"pipeline '{plan.pipeline}' declares no fallback")
        aggregator, fallback = fallback, None
    if choice.drop_fallback:
        fallback = None
    spec = PipelineSpec(name=plan.pipeline, layers=tuple(layers), aggregator=_agent(aggregator),
                        aggregator_prompt=aggregator.prompt if layers else None,
                        fallback=_agent(fallback) if fallback else None,
                        path=plan.graph.graph.get("source", ""))
    pruned = lower(spec, plan.models, plan.providers, plan.budget)
    pruned.graph.graph["annotations"] = copy.deepcopy(plan.annotations)
    return pruned


def describe(plan: "Plan", choice: Choice) -> str:
    """One line: ``propose[all] refine[qwen110 wizardlm] -> qwen110``."""
    parts = []
    for calls, info, kept in zip(intermediate(plan), plan.layers, choice.keep):
        if not kept:
            continue
        names = "all" if len(kept) == len(calls) else " ".join(calls[i].model for i in kept)
        parts.append(f"{info.name}[{names}]")
    aggregator, fallback = final_calls(plan)
    final = fallback.model + " (fallback)" if choice.use_fallback else aggregator.model
    return " ".join(parts + ["->", final])


def _agent(call: "CallNode") -> AgentSpec:
    return AgentSpec(model=call.model, sampling=call.sampling, system=call.system)
