"""What the checker passes share: the workspace, the symbol tables, the specs built so far,
and the diagnostics found. Each pass reads what earlier passes left and adds its own part."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from moac.lang import ast
from moac import constants
from moac.constants import SUGGESTION_CUTOFF
from moac.lang.diagnostics import Diagnostic, Span
from moac.lang.loader import Workspace
from moac.ir.spec import (
    BudgetSpec, JudgeSpec, ModelSpec, PipelineSpec, ProviderSpec, QualitySpec, RouteSpec,
)

Node = TypeVar("Node")


@dataclass(frozen=True)
class Declared(Generic[Node]):
    """A declaration and the file it was found in."""

    node: Node
    path: str


@dataclass(frozen=True)
class AgentSite:
    """Where an agent of a checked pipeline was written, for diagnostics after expansion."""

    path: str
    span: Span


@dataclass
class CheckState:
    workspace: Workspace
    diagnostics: list[Diagnostic] = field(default_factory=list)
    providers: dict[str, Declared[ast.Provider]] = field(default_factory=dict)
    models: dict[str, Declared[ast.Model]] = field(default_factory=dict)
    pipelines: dict[str, Declared[ast.Pipeline]] = field(default_factory=dict)
    routes: dict[str, Declared[ast.Route]] = field(default_factory=dict)
    judges: dict[str, Declared[ast.Judge]] = field(default_factory=dict)
    provider_specs: dict[str, ProviderSpec] = field(default_factory=dict)
    model_specs: dict[str, ModelSpec] = field(default_factory=dict)
    pipeline_specs: dict[str, PipelineSpec] = field(default_factory=dict)
    route_specs: dict[str, RouteSpec] = field(default_factory=dict)
    judge_specs: dict[str, JudgeSpec] = field(default_factory=dict)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    quality: QualitySpec = field(default_factory=QualitySpec)
    # (pipeline, layer index or -1 for the aggregator, -2 for the fallback, agent index)
    agent_sites: dict[tuple[str, int, int], AgentSite] = field(default_factory=dict)
    # Each pipeline setting's value as read (None: reported), by (id of the setting, copies).
    setting_values: dict[tuple[int, int | None], object] = field(default_factory=dict)
    # Agents the pipelines still to expand may add (MAX_WORKSPACE_AGENTS); -1 once passed.
    agents_left: int = field(default_factory=lambda: constants.MAX_WORKSPACE_AGENTS)

    def report(self, code: str, message: str, path: str, span: Span | None,
               hint: str | None = None, *, redact: bool = False) -> None:
        if span is not None and span.line == 0:
            span = None
        self.diagnostics.append(Diagnostic(code, message, path, span, hint, redact=redact))

    def unknown(self, kind: str, ident: ast.Ident, path: str, known, *, elsewhere: str | None
                = None) -> None:
        """Report ``ident`` as an unknown ``kind``, suggesting the closest known names."""
        if elsewhere:
            self.report("E105", f"'{ident.name}' is a {elsewhere}, not a {kind}", path,
                        ident.span)
            return
        self.report("E101", f"unknown {kind} '{ident.name}'", path, ident.span,
                    hint=suggest(ident.name, known))

    def kind_of(self, name: str) -> str | None:
        """What a name is declared as, if anything."""
        for kind, table in (("model", self.models), ("provider", self.providers),
                            ("pipeline", self.pipelines), ("route", self.routes),
                            ("judge", self.judges)):
            if name in table:
                return kind
        return None


_SUGGESTION_CALL_COST = 50
# The comparisons left for suggestions in the check running (see SUGGESTION_COMPARISONS);
# None outside one: unlimited.
_SUGGESTIONS_LEFT: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "moac_suggestions_left", default=None)


@contextlib.contextmanager
def suggestion_budget(comparisons: int | None = None):
    """Within it, :func:`suggest` compares at most ``comparisons`` names in all (default
    :data:`~moac.constants.SUGGESTION_COMPARISONS`), then stops suggesting: a flood of
    unknown names among many known ones stays linear."""
    if comparisons is None:
        comparisons = constants.SUGGESTION_COMPARISONS
    token = _SUGGESTIONS_LEFT.set([comparisons])
    try:
        yield
    finally:
        _SUGGESTIONS_LEFT.reset(token)


def suggest(name: str, known) -> str | None:
    known = sorted(known)
    left = _SUGGESTIONS_LEFT.get()
    if left is not None:
        # A call costs about as much as comparing this many names, whatever it compares.
        cost = len(known) + _SUGGESTION_CALL_COST
        if left[0] < cost:
            return None
        left[0] -= cost
    close = difflib.get_close_matches(name, known, n=3, cutoff=SUGGESTION_CUTOFF)
    if not close:
        return None
    if len(close) == 1:
        return f"did you mean '{close[0]}'?"
    return "did you mean " + ", ".join(f"'{c}'" for c in close[:-1]) + f" or '{close[-1]}'?"
