"""The human report of a pruning, rendered from ``plan.annotations["planner"]`` alone.

Contract: :func:`render` is a pure function of that annotation (so a plan JSON written
yesterday renders the same report today); ``timing=False`` leaves out the one line that varies
from run to run (how long the search took), for golden files.
"""

from __future__ import annotations

from typing import Any

from planner.estimate import tflops_text

UNKNOWN = "unknown"  # what a quality resting on a model of undeclared quality prints as

_LIMITS = (("max_usd", "max_usd", lambda v: f"${v:.4f}"),
           ("max_latency_s", "max_latency", lambda v: f"{v:g}s"),
           ("max_tflops", "max_tflops", lambda v: f"{tflops_text(v)} TFLOPs"))


def quality_text(value: float | None, spec: str = ".1f") -> str:
    """A predicted quality, or "unknown" (None: it rests on a model declaring none)."""
    return UNKNOWN if value is None else format(value, spec)


def budget_text(budget: dict[str, Any]) -> str:
    bounds = [f"{label} {fmt(budget[key])}" for key, label, fmt in _LIMITS
              if budget.get(key) is not None]
    return ", ".join(bounds) or "no bounds"


def render(annotation: dict[str, Any], *, timing: bool = True) -> str:
    a = annotation
    lines = [f"pipeline {a['pipeline']}: budget {budget_text(a['budget'])} "
             f"({a['budget']['mode']} case, {a['before']['prompt_tokens']}-token prompt)"]
    lines.append(f"  {'':8}{'quality':>8}{'cost':>10}{'latency':>10}{'TFLOPs':>10}"
                 f"{'calls':>7}")
    for label in ("before", "after"):
        t = a[label]
        lines.append(f"  {label:8}{quality_text(t['quality']):>8}"
                     f"{'$' + format(t['usd'], '.4f'):>10}"
                     f"{format(t['latency_s'], '.1f') + 's':>10}{tflops_text(t['tflops']):>10}"
                     f"{t['calls']:7d}")
    if a["before"]["over"]:
        lines.append("  over budget as declared: " + "; ".join(a["before"]["over"]))
    for drop in a["drops"]:
        lines.append("  " + drop["text"])
    for note in a["notes"]:
        lines.append("  note: " + note)
    search = a["search"]
    method = f"  search: {search['method']}"
    if timing and search.get("seconds"):
        method += f", {search['seconds'] * 1000:.1f} ms"
    lines.append(method)
    lines.append(f"  plan: {a['plan']}")
    return "\n".join(lines) + "\n"
