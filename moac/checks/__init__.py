"""The check stage: an ordered tuple of passes over the loaded workspace.

Takes the workspace :mod:`moac.lang` loaded; gives checked declarations
(:class:`moac.ir.spec.Spec`) and semantic diagnostics. May import :mod:`moac.lang` and
:mod:`moac.ir` (declarations, prompt templates), and the router file reader of the planner.

Each pass reads what the earlier ones left in :class:`CheckState` and reports every
problem it finds; none stops at the first, so one run of ``moac check`` shows them all.
"""

from __future__ import annotations

from moac.checks.catalog import read_budgets, read_models, read_providers
from moac.checks.context import check_context_windows
from moac.checks.declare import declare_names
from moac.checks.pipelines import expand_pipelines
from moac.checks.judges import read_judges
from moac.checks.planner_block import read_planner_blocks
from moac.checks.routes import read_routes
from moac.checks.state import CheckState, suggestion_budget
from moac.lang.loader import Workspace

CHECKS = (
    declare_names,
    read_providers,
    read_models,
    read_budgets,
    read_planner_blocks,
    expand_pipelines,
    check_context_windows,
    read_routes,
    read_judges,
)


def check(workspace: Workspace) -> CheckState:
    state = CheckState(workspace)
    with suggestion_budget():
        for check_pass in CHECKS:
            check_pass(state)
    return state
