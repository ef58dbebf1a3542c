"""The planner: cost, latency, compute and quality estimates for lowered plans, budgeted
pruning, the Pareto frontier of sub-plans, and routing decisions.

Takes plans (:mod:`moac.ir`); gives estimates, pruned plans, frontiers and route choices.
May import :mod:`moac.ir`, :mod:`moac.data` and numpy; never lark or aiohttp.

    from planner import prune, render
    pruned = prune(program.plan("moa", BudgetSpec(max_usd=0.02)))
    print(render(pruned.annotations["planner"]))

Modules: ``estimate`` (tokens, dollars, TFLOPs, latency), ``quality`` (the replaceable quality
model), ``subplan`` (choices and the plans they build), ``tables`` (the numeric form the search
reads), ``search`` (exact branch and bound), ``prune`` (what compile runs), ``report`` (its
text), ``frontier`` and ``plot`` (``moac plan``). Imported lazily by the CLI: it loads numpy.
"""

from planner.estimate import Estimate, estimate, fits, violations
from planner.frontier import Frontier, Point, frontier, point_of
from planner.frontier import table as frontier_table
from planner.prune import prune
from planner.quality import MoaQualityModel, QualityModel
from planner.report import render
from planner.search import NothingFits, SearchResult, optimize

__all__ = [
    "Estimate", "Frontier", "MoaQualityModel", "NothingFits", "Point", "QualityModel",
    "SearchResult", "estimate", "fits", "frontier", "frontier_table", "optimize", "point_of",
    "prune", "render", "violations",
]
