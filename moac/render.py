"""Plans as diagrams: Mermaid (for Markdown) and Graphviz DOT.

Layers become clusters left to right; a fallback's edges are dashed, since it runs only
when the aggregator fails.
"""

from __future__ import annotations

from moac.ir import Plan


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


def to_mermaid(plan: Plan) -> str:
    ids = {node: f"n{i}" for i, node in enumerate(n for layer in plan.layers
                                                   for n in layer.nodes)}
    lines = ["flowchart LR"]
    for layer in plan.layers:
        title = layer.name if layer.index < len(plan.layers) - 1 else "aggregate"
        quorum = f" (min_ok {layer.min_ok})" if layer.min_ok > 1 else ""
        lines.append(f'  subgraph L{layer.index}["{_mermaid_text(title + quorum)}"]')
        for node in layer.nodes:
            label = _mermaid_text(_label(plan, node)).replace("\n", "<br/>")
            lines.append(f'    {ids[node]}["{label}"]')
        lines.append("  end")
    for source, target in plan.graph.edges:
        arrow = "-.->" if plan.call(target).role == "fallback" else "-->"
        lines.append(f"  {ids[source]} {arrow} {ids[target]}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def to_dot(plan: Plan) -> str:
    lines = [f"digraph {_dot_quote(plan.pipeline)} {{", "  rankdir=LR;",
             "  node [shape=box, style=rounded, fontname=Helvetica];"]
    for layer in plan.layers:
        quorum = f" (min_ok {layer.min_ok})" if layer.min_ok > 1 else ""
        lines.append(f"  subgraph cluster_{layer.index} {{")
        lines.append(f"    label={_dot_quote(layer.name + quorum)};")
        for node in layer.nodes:
            lines.append(f"    {_dot_quote(node)} [label={_dot_quote(_label(plan, node))}];")
        lines.append("  }")
    for source, target in plan.graph.edges:
        style = " [style=dashed]" if plan.call(target).role == "fallback" else ""
        lines.append(f"  {_dot_quote(source)} -> {_dot_quote(target)}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
