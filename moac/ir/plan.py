"""The lowered plan: a ``networkx.DiGraph`` of typed agent calls.

Each node is one call (a :class:`CallNode` under the ``call`` attribute); an edge ``u -> v``
says that ``u``'s answer is fed into ``v``'s prompt, at the 0-based ``position`` of the
numbered list ``v`` receives. The graph's own attributes hold what the calls refer to:
the models, providers, layers and budget. :meth:`Plan.to_json` and :meth:`Plan.from_json`
round-trip every bit of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from moac.constants import PLAN_FORMAT_VERSION
from moac.ir.spec import (
    BudgetSpec, ModelSpec, ProviderSpec, References, RouteSpec, Sampling, Spec,
)

if TYPE_CHECKING:
    import networkx as nx

Role = Literal["propose", "refine", "aggregate", "fallback"]


class CallNode(Spec):
    """One agent call. ``prompt`` is the aggregate-and-synthesize template when the call
    receives earlier answers, else None. A fallback names the node it stands in for.
    ``references``: whether the answers it reads come with their thinking."""

    id: str
    layer: str
    layer_index: int
    role: Role
    position: int
    model: str
    provider: str
    sampling: Sampling
    system: str | None = None
    prompt: str | None = None
    fallback_for: str | None = None
    references: References = "answer"
    omit_default = ("references",)


class LayerInfo(Spec):
    """A stage of the plan. The final stage holds the aggregator (and its fallback)."""

    name: str
    index: int
    min_ok: int
    nodes: tuple[str, ...]


class PlanError(ValueError):
    """A plan document that is not one moac wrote (wrong format, version or shape)."""


def _expect_format(data: Any, fmt: str, noun: str) -> None:
    """PlanError unless ``data`` is a document of format ``fmt`` at this moac's version."""
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise PlanError(f"not a moac {noun} (no \"format\": \"{fmt}\")")
    if data.get("version") != PLAN_FORMAT_VERSION:
        raise PlanError(f"{noun} format version {data.get('version')!r} is not supported "
                        f"(this moac reads version {PLAN_FORMAT_VERSION})")


@dataclass
class Plan:
    graph: nx.DiGraph

    # --- reading --------------------------------------------------------------------------

    @property
    def pipeline(self) -> str:
        return self.graph.graph["pipeline"]

    @property
    def source(self) -> str:
        """The ``.moa`` file the plan was compiled from ("" when unknown)."""
        return self.graph.graph.get("source", "")

    @property
    def layers(self) -> list[LayerInfo]:
        return self.graph.graph["layers"]

    @property
    def models(self) -> dict[str, ModelSpec]:
        return self.graph.graph["models"]

    @property
    def providers(self) -> dict[str, ProviderSpec]:
        return self.graph.graph["providers"]

    @property
    def budget(self) -> BudgetSpec:
        return self.graph.graph["budget"]

    @property
    def quality(self) -> dict[str, float]:
        """The quality model's coefficients a ``planner`` block set (by their .moa names);
        empty: the planner's defaults."""
        return self.graph.graph.get("quality") or {}

    @property
    def annotations(self) -> dict[str, Any]:
        """Free-form sections later stages add (the planner's estimates, what it dropped)."""
        return self.graph.graph.setdefault("annotations", {})

    def call(self, node_id: str) -> CallNode:
        return self.graph.nodes[node_id]["call"]

    def calls(self) -> list[CallNode]:
        """Every call, layer by layer, in declaration order."""
        return [self.call(n) for layer in self.layers for n in layer.nodes]

    def inputs(self, node_id: str) -> list[str]:
        """The nodes whose answers ``node_id`` reads, in the order they are numbered."""
        preds = self.graph.in_edges(node_id, data="position")
        return [u for u, _, _ in sorted(preds, key=lambda edge: edge[2])]

    # --- serialising ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        g = self.graph.graph
        return {
            "format": "moac-plan",
            "version": PLAN_FORMAT_VERSION,
            "pipeline": g["pipeline"],
            "source": g.get("source", ""),
            "budget": g["budget"].model_dump(mode="json"),
            "providers": {k: v.model_dump(mode="json") for k, v in g["providers"].items()},
            "models": {k: v.model_dump(mode="json") for k, v in g["models"].items()},
            "layers": [layer.model_dump(mode="json") for layer in g["layers"]],
            "nodes": [self.call(n).model_dump(mode="json") for n in self.graph.nodes],
            "edges": [{"source": u, "target": v, "position": p}
                      for u, v, p in self.graph.edges(data="position")],
            "annotations": g.get("annotations", {}),
            **({"quality": dict(g["quality"])} if g.get("quality") else {}),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        _expect_format(data, "moac-plan", "plan")
        import networkx as nx  # imported here so that `moac check` never pays for it

        try:
            graph = nx.DiGraph(
                pipeline=data["pipeline"], source=data.get("source", ""),
                budget=BudgetSpec.model_validate(data["budget"]),
                providers={k: ProviderSpec.model_validate(v)
                           for k, v in data["providers"].items()},
                models={k: ModelSpec.model_validate(v) for k, v in data["models"].items()},
                layers=[LayerInfo.model_validate(layer) for layer in data["layers"]],
                annotations=data.get("annotations", {}),
                quality={str(k): float(v) for k, v in data.get("quality", {}).items()})
            for node in data["nodes"]:
                call = CallNode.model_validate(node)
                graph.add_node(call.id, call=call)
            for edge in data["edges"]:
                if edge["source"] not in graph or edge["target"] not in graph:
                    raise PlanError(f"edge {edge['source']} -> {edge['target']} names a "
                                    "missing node")
                graph.add_edge(edge["source"], edge["target"], position=edge["position"])
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, PlanError):
                raise
            raise PlanError(f"malformed plan: {error}") from None
        return cls(graph)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PlanError(f"plan is not JSON: {error}") from None
        return cls.from_dict(data)


@dataclass
class RoutePlan:
    """A route, lowered: its spec, each candidate's plan (lowered with the route's budget)
    and that budget. It reads like a :class:`Plan` where a run needs one (``pipeline`` is the
    route's name; ``providers`` and ``models`` cover every candidate), so a
    :class:`moac.run.Runner` runs either; :class:`moac.run.router.RouteExecutor` chooses, query
    by query, which candidate answers."""

    route: RouteSpec
    plans: dict[str, Plan]
    budget: BudgetSpec

    @property
    def pipeline(self) -> str:
        return self.route.name

    @property
    def source(self) -> str:
        return self.route.path

    @property
    def providers(self) -> dict[str, ProviderSpec]:
        merged = {k: v for plan in self.plans.values() for k, v in plan.providers.items()}
        return dict(sorted(merged.items()))

    @property
    def models(self) -> dict[str, ModelSpec]:
        merged = {k: v for plan in self.plans.values() for k, v in plan.models.items()}
        return dict(sorted(merged.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"format": "moac-route", "version": PLAN_FORMAT_VERSION,
                "route": self.route.model_dump(mode="json"),
                "budget": self.budget.model_dump(mode="json"),
                "candidates": {name: plan.to_dict() for name, plan in self.plans.items()}}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoutePlan":
        _expect_format(data, "moac-route", "route plan")
        try:
            route = RouteSpec.model_validate(data["route"])
            budget = BudgetSpec.model_validate(data["budget"])
            plans = {name: Plan.from_dict(plan) for name, plan in data["candidates"].items()}
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, PlanError):
                raise
            raise PlanError(f"malformed route plan: {error}") from None
        if list(plans) != list(route.candidates):
            raise PlanError("malformed route plan: its candidates do not match its route")
        return cls(route, plans, budget)
