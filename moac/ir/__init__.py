"""The plan stage: checked declarations lowered to a DAG of typed agent calls.

Takes the checker's declarations (:mod:`.spec`); gives the :class:`Plan` (:mod:`.plan`: a
networkx DiGraph, JSON both ways) built by :mod:`.lower`, drawn by :mod:`.render`, with the
prompts each call sends (:mod:`.prompts`). Imports :mod:`moac.constants` (networkx lazily);
never lark, the checker, the planner or aiohttp.
"""

from moac.ir.plan import CallNode, LayerInfo, Plan, PlanError, RoutePlan

__all__ = ["CallNode", "LayerInfo", "Plan", "PlanError", "RoutePlan"]
