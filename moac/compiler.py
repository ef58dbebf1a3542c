"""The public compile API: a path or a string in, a :class:`Program` out.

    >>> program = compile_file("examples/moa.moa")
    >>> plan = program.plan("moa")

Errors are raised as :class:`~moac.lang.diagnostics.MoaSyntaxError` (some file does not parse)
or :class:`~moac.lang.diagnostics.MoaSemanticError` (it parses but is wrong), each carrying
every diagnostic found, with the source text attached for rendering.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moac.lang import ast
from moac.checks import check
from moac.lang.diagnostics import Diagnostic, MoaError, MoaSemanticError, MoaSyntaxError
from moac.lang.loader import Workspace, load
from moac.ir.spec import (
    BudgetSpec, JudgeSpec, ModelSpec, PipelineSpec, ProviderSpec, QualitySpec, RouteSpec,
)

if TYPE_CHECKING:  # networkx costs ~100 ms to import; `moac check` never needs it
    from moac.ir import Plan, RoutePlan
    from moac.ir.spec import Sampling


class SelectionError(ValueError):
    """``--pipeline NAME`` names nothing, or a file declares several and none was named."""


@dataclass(frozen=True)
class Program:
    """Everything a checked workspace declares, ready to lower."""

    root: str
    providers: dict[str, ProviderSpec]
    models: dict[str, ModelSpec]
    pipelines: dict[str, PipelineSpec]
    routes: dict[str, RouteSpec]
    budget: BudgetSpec
    # Pipelines and routes declared in the root file itself, in order.
    own_names: tuple[str, ...]
    judges: dict[str, JudgeSpec] = dataclasses.field(default_factory=dict)
    quality: QualitySpec = dataclasses.field(default_factory=QualitySpec)

    def default_name(self) -> str:
        """The pipeline or route to use when none is named: the root file's only one."""
        if len(self.own_names) == 1:
            return self.own_names[0]
        candidates = self.own_names or tuple(self.pipelines) + tuple(self.routes)
        if not candidates:
            raise SelectionError(f"{self.root} declares no pipeline")
        if not self.own_names:
            raise SelectionError(f"{self.root} declares no pipeline of its own; choose an "
                                 f"imported one with --pipeline: {', '.join(candidates)}")
        raise SelectionError(f"{self.root} declares {self._what_it_declares()}; choose one "
                             f"with --pipeline: {', '.join(candidates)}")

    def _what_it_declares(self) -> str:
        """The root file's pipelines and routes, in words that name only what it has."""
        pipelines = sum(1 for name in self.own_names if name in self.pipelines)
        routes = len(self.own_names) - pipelines
        if not routes:
            return f"{pipelines} pipelines"
        if not pipelines:
            return f"{routes} routes"
        return (f"{pipelines} pipeline{'s' * (pipelines != 1)} and {routes} "
                f"route{'s' * (routes != 1)}")

    def select(self, name: str | None = None) -> PipelineSpec | RouteSpec:
        name = name or self.default_name()
        if name in self.pipelines:
            return self.pipelines[name]
        if name in self.routes:
            return self.routes[name]
        known = ", ".join(list(self.pipelines) + list(self.routes)) or "none"
        raise SelectionError(f"no pipeline or route named '{name}' (known: {known})")

    def plan(self, name: str | None = None, budget: BudgetSpec | None = None) -> "Plan":
        """The lowered plan of a pipeline; ``budget`` overrides the file's limits."""
        from moac.ir.lower import lower
        selected = self.select(name)
        if isinstance(selected, RouteSpec):
            raise SelectionError(f"'{selected.name}' is a route; plan one of its candidates "
                                 f"({', '.join(selected.candidates)})")
        return lower(selected, self.models, self.providers, self.budget.merged(budget),
                     self.quality)

    def single_plan(self, name: str, model: str, sampling: "Sampling",
                    budget: BudgetSpec | None = None) -> "Plan":
        """A plan of one call: ``model`` answering alone (``moac eval``'s ``single:MODEL``,
        a judge), named ``name``, under ``budget`` (default: the file's)."""
        from moac.ir.lower import lower
        from moac.ir.spec import AgentSpec
        spec = PipelineSpec(name=name, layers=(), path=self.root,
                            aggregator=AgentSpec(model=model, sampling=sampling))
        return lower(spec, self.models, self.providers, budget or self.budget,
                     self.quality)

    def route_plan(self, name: str, budget: BudgetSpec | None = None) -> "RoutePlan":
        """A route lowered: every candidate's plan under the route's per-query limits
        (the file's budget, then the route's own, then ``budget``, each overriding)."""
        from moac.ir import RoutePlan
        from moac.ir.lower import lower
        route = self.routes[name]
        limits = self.budget.merged(route.budget).merged(budget)
        plans = {c: lower(self.pipelines[c], self.models, self.providers, limits,
                          self.quality) for c in route.candidates}
        return RoutePlan(route, plans, limits)

    def runnable(self, name: str | None = None,
                 budget: BudgetSpec | None = None) -> "Plan | RoutePlan":
        """What ``moac run --pipeline NAME`` runs: a pipeline's plan or a route's."""
        selected = self.select(name)
        if isinstance(selected, RouteSpec):
            return self.route_plan(selected.name, budget)
        return self.plan(selected.name, budget)


def compile_file(path: str | os.PathLike) -> Program:
    return _compile(*load(path))


def compile_string(text: str, name: str = "<string>") -> Program:
    """Compile source text; its imports resolve relative to the current directory."""
    return _compile(*load(text=text, name=name))


def check_file(path: str | os.PathLike) -> list[Diagnostic]:
    """Every diagnostic for a file, raising nothing."""
    try:
        compile_file(path)
    except MoaError as error:
        return list(error.diagnostics)
    return []


def _compile(workspace: Workspace, load_diagnostics: list[Diagnostic]) -> Program:
    sources = workspace.sources()
    if any(d.code < "E100" for d in load_diagnostics):
        raise MoaSyntaxError(_with_sources(load_diagnostics, sources))
    # A missing import would make every name it declares look unknown: stop before that
    # flood. A cycle loses no declaration, so the check goes on and reports it with the rest.
    if any(d.code != "E104" for d in load_diagnostics):
        raise MoaSemanticError(_with_sources(load_diagnostics, sources))
    state = check(workspace)
    if state.diagnostics or load_diagnostics:
        raise MoaSemanticError(_with_sources(load_diagnostics + state.diagnostics, sources))
    own = tuple(item.name.name for item in workspace.root_module.items
                if isinstance(item, (ast.Pipeline, ast.Route)))
    return Program(workspace.root, state.provider_specs, state.model_specs,
                   state.pipeline_specs, state.route_specs, state.budget, own,
                   state.judge_specs, state.quality)


def _with_sources(diagnostics: list[Diagnostic], sources: dict[str, str]) -> list[Diagnostic]:
    """Attach source text and drop repeats (a base pipeline's error seen via each child)."""
    seen = set()
    out = []
    for diagnostic in diagnostics:
        key = (diagnostic.code, diagnostic.path, diagnostic.span, diagnostic.message)
        if key in seen:
            continue
        seen.add(key)
        if diagnostic.source is None and diagnostic.path in sources:
            diagnostic = dataclasses.replace(diagnostic, source=sources[diagnostic.path])
        out.append(diagnostic)
    return out
