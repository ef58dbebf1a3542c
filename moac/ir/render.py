"""Plans as diagrams: Mermaid (for Markdown) and Graphviz DOT.

Layers become clusters left to right; a fallback's edges are dashed, since it runs only
when the aggregator fails. A route draws each candidate in a box of its own.
"""

from __future__ import annotations

from moac.ir import Plan, RoutePlan


def _label(plan: Plan, node_id: str) -> str:
    call = plan.call(node_id)
    parts = [call.model]
    sampling = call.sampling
    details = [f"T={sampling.temperature:g}", f"max {sampling.max_tokens}"]
    if sampling.seed is not None:
        details.append(f"seed {sampling.seed}")
    parts.append(", ".join(details))
    if call.role == "fallback":
        parts[0] += " (fallback)"
    return "\n".join(parts)


def to_mermaid(plan: Plan | RoutePlan) -> str:
    if isinstance(plan, RoutePlan):
        lines = ["flowchart LR"]
        for index, (name, candidate) in enumerate(plan.plans.items()):
            lines.append(f'  subgraph C{index}["{_mermaid_text(name)}"]')
            lines += ["  " + line for line in _mermaid_body(candidate, f"c{index}")]
            lines.append("  end")
        return "\n".join(lines) + "\n"
    return "\n".join(["flowchart LR"] + _mermaid_body(plan, "")) + "\n"


def _mermaid_body(plan: Plan, prefix: str) -> list[str]:
    ids = {node: f"{prefix}n{i}" for i, node in enumerate(n for layer in plan.layers
                                                          for n in layer.nodes)}
    lines = []
    for layer in plan.layers:
        title = layer.name if layer.index < len(plan.layers) - 1 else "aggregate"
        quorum = f" (min_ok {layer.min_ok})" if layer.min_ok > 1 else ""
        lines.append(f'  subgraph {prefix}L{layer.index}["{_mermaid_text(title + quorum)}"]')
        for node in layer.nodes:
            label = _mermaid_text(_label(plan, node)).replace("\n", "<br/>")
            lines.append(f'    {ids[node]}["{label}"]')
        lines.append("  end")
    for source, target in plan.graph.edges:
        arrow = "-.->" if plan.call(target).role == "fallback" else "-->"
        lines.append(f"  {ids[source]} {arrow} {ids[target]}")
    return lines


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def to_dot(plan: Plan | RoutePlan) -> str:
    lines = [f"digraph {_dot_quote(plan.pipeline)} {{", "  rankdir=LR;",
             "  node [shape=box, style=rounded, fontname=Helvetica];"]
    if isinstance(plan, RoutePlan):
        for index, (name, candidate) in enumerate(plan.plans.items()):
            lines += [f"  subgraph cluster_c{index} {{", f"    label={_dot_quote(name)};"]
            lines += ["  " + line for line in _dot_body(candidate, f"{name}/", f"c{index}_")]
            lines.append("  }")
    else:
        lines += _dot_body(plan, "", "")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_body(plan: Plan, prefix: str, cluster: str) -> list[str]:
    lines = []
    for layer in plan.layers:
        quorum = f" (min_ok {layer.min_ok})" if layer.min_ok > 1 else ""
        lines.append(f"  subgraph cluster_{cluster}{layer.index} {{")
        lines.append(f"    label={_dot_quote(layer.name + quorum)};")
        for node in layer.nodes:
            lines.append(f"    {_dot_quote(prefix + node)} "
                         f"[label={_dot_quote(_label(plan, node))}];")
        lines.append("  }")
    for source, target in plan.graph.edges:
        style = " [style=dashed]" if plan.call(target).role == "fallback" else ""
        lines.append(f"  {_dot_quote(prefix + source)} -> {_dot_quote(prefix + target)}"
                     f"{style};")
    return lines


def _dot_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
