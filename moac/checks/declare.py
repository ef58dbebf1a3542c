"""Pass 1: enter every declaration of every file into the symbol tables.

Providers, models, pipelines-or-routes and judges are four namespaces (``--pipeline``
selects a pipeline or a route, so those two share one). A name declared twice in one namespace, in
one file or across imports, is an error at the second declaration.
"""

from __future__ import annotations

from moac.lang import ast
from moac.checks.state import CheckState, Declared


def declare_names(state: CheckState) -> None:
    for module in state.workspace.modules:
        for item in module.items:
            if isinstance(item, ast.Provider):
                _declare(state, state.providers, "provider", item, module.path)
            elif isinstance(item, ast.Model):
                _declare(state, state.models, "model", item, module.path)
            elif isinstance(item, ast.Pipeline):
                if _free_of(state.routes, "route", item, module.path, state):
                    _declare(state, state.pipelines, "pipeline", item, module.path)
            elif isinstance(item, ast.Route):
                if _free_of(state.pipelines, "pipeline", item, module.path, state):
                    _declare(state, state.routes, "route", item, module.path)
            elif isinstance(item, ast.Judge):
                _declare(state, state.judges, "judge", item, module.path)


def _declare(state: CheckState, table: dict, kind: str, item, path: str) -> None:
    name = item.name.name
    if name in table:
        first = table[name]
        state.report("E102", f"{kind} '{name}' is declared twice", path, item.name.span,
                     hint=f"first declared at {first.path}:{first.node.name.span.line}")
        return
    table[name] = Declared(item, path)


def _free_of(other: dict, other_kind: str, item, path: str, state: CheckState) -> bool:
    name = item.name.name
    if name in other:
        first = other[name]
        state.report("E102", f"'{name}' is already the name of a {other_kind}", path,
                     item.name.span,
                     hint=f"declared at {first.path}:{first.node.name.span.line}; pipelines "
                          "and routes share one namespace")
        return False
    return True
