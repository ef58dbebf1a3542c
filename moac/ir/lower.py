"""Lower a checked pipeline to a :class:`~moac.ir.Plan`.

Every agent of layer ``i`` feeds every agent of layer ``i + 1``; the last layer feeds the
aggregator and its fallback. Node ids read as where the call sits: ``propose.0.qwen110``,
``refine.3.llama70``, ``aggregate.qwen110``, ``fallback.qwen72``.
"""

from __future__ import annotations

import networkx as nx

from moac.ir import CallNode, LayerInfo, Plan
from moac.ir.spec import AgentSpec, BudgetSpec, ModelSpec, PipelineSpec, ProviderSpec, QualitySpec

FINAL_STAGE = "aggregate"


def lower(pipeline: PipelineSpec, models: dict[str, ModelSpec],
          providers: dict[str, ProviderSpec], budget: BudgetSpec,
          quality: QualitySpec | None = None) -> Plan:
    """The plan of ``pipeline``; ``quality`` (a ``planner`` block's coefficients) travels
    with it, for the planner's quality predictions."""
    used_models = {a.model for layer in pipeline.layers for a in layer.agents}
    used_models.add(pipeline.aggregator.model)
    if pipeline.fallback is not None:
        used_models.add(pipeline.fallback.model)
    plan_models = {name: models[name] for name in sorted(used_models)}
    plan_providers = {m.provider: providers[m.provider] for m in plan_models.values()}
    graph = nx.DiGraph(pipeline=pipeline.name, source=pipeline.path, budget=budget,
                       providers=dict(sorted(plan_providers.items())), models=plan_models,
                       layers=[], annotations={},
                       quality=quality.settings() if quality is not None else {})

    def add(call: CallNode, feeders: list[str]) -> str:
        graph.add_node(call.id, call=call)
        for position, feeder in enumerate(feeders):
            graph.add_edge(feeder, call.id, position=position)
        return call.id

    previous: list[str] = []
    for index, layer in enumerate(pipeline.layers):
        role = "propose" if index == 0 else "refine"
        ids = [add(_call(f"{layer.name}.{i}.{agent.model}", layer.name, index, role, i, agent,
                         models, layer.prompt), previous)
               for i, agent in enumerate(layer.agents)]
        graph.graph["layers"].append(LayerInfo(name=layer.name, index=index,
                                               min_ok=layer.min_ok, nodes=tuple(ids)))
        previous = ids
    final_index = len(pipeline.layers)
    aggregator = add(_call(f"{FINAL_STAGE}.{pipeline.aggregator.model}", FINAL_STAGE,
                           final_index, "aggregate", 0, pipeline.aggregator, models,
                           pipeline.aggregator_prompt), previous)
    final_nodes = [aggregator]
    if pipeline.fallback is not None:
        final_nodes.append(add(_call(f"fallback.{pipeline.fallback.model}", FINAL_STAGE,
                                     final_index, "fallback", 1, pipeline.fallback, models,
                                     pipeline.aggregator_prompt, fallback_for=aggregator),
                               previous))
    graph.graph["layers"].append(LayerInfo(name=FINAL_STAGE, index=final_index, min_ok=1,
                                           nodes=tuple(final_nodes)))
    return Plan(graph)


def _call(node_id: str, layer: str, index: int, role: str, position: int, agent: AgentSpec,
          models: dict[str, ModelSpec], prompt: str | None, fallback_for: str | None = None
          ) -> CallNode:
    return CallNode(id=node_id, layer=layer, layer_index=index, role=role, position=position,
                    model=agent.model, provider=models[agent.model].provider,
                    sampling=agent.sampling, system=agent.system, prompt=prompt,
                    fallback_for=fallback_for, references=agent.references)
