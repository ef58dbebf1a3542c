"""``moac trace summarize``: what a trace says, per model and per layer.

Contract: :func:`summarize` is a pure function of trace records (as :func:`moac.traces.trace.read_trace`
returns them; unknown or torn lines are ignored) and :func:`render_summary` of its result.
Counted per model and per layer: calls (agent calls that started), attempts (HTTP attempts,
retries included), failed and cancelled attempts, calls skipped (budget, deadline, an earlier
stage below quorum), dollars, and the latency percentiles (p50, p90, p99) of the attempts that
succeeded. Per query: status counts, latency percentiles, and the planner's expected-case
estimate against what happened (summed over the queries that carry an estimate). Per route:
the queries each candidate answered (share, cost, latency), each policy's decisions, the
agreement scores measured, and what every query would have cost on each candidate alone
(the planner's estimates, from the budget step's numbers). Per judged pipeline (quality
lines): verdicts, and the raw win rate or mean score (``moac eval``'s report has the
intervals and the length-controlled rate).
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from moac.traces.trace import read_trace


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linearly interpolated; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Group:
    """Totals of one model or one layer."""
    name: str
    calls: set = field(default_factory=set)
    attempts: int = 0
    failed: int = 0
    cancelled: int = 0
    skipped: int = 0
    cost_usd: float = 0.0
    tokens: int = 0
    durations: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)

    def add(self, record: dict) -> None:
        status = record.get("status")
        if status == "skipped":
            if record.get("attempt", 0) == 0:
                self.skipped += 1
            return
        self.calls.add((record.get("run_id"), record.get("query_id"), record.get("node")))
        self.attempts += 1
        self.failed += status == "failed"
        self.cancelled += status == "cancelled"
        self.cost_usd += _number(record.get("cost_usd"))
        self.tokens += int(_number(record.get("prompt_tokens"))
                           + _number(record.get("completion_tokens")))
        if status == "ok":
            if record.get("duration_s") is not None:
                self.durations.append(_number(record["duration_s"]))
            if record.get("ttft_s") is not None:
                self.ttfts.append(_number(record["ttft_s"]))


@dataclass
class Summary:
    runs: list[dict]
    queries: Counter
    query_latencies: list[float]
    query_costs: list[float]
    models: dict[str, Group]
    layers: dict[str, Group]
    errors: Counter               # (model, error type) -> attempts
    skip_reasons: Counter         # the reason's first words -> calls
    estimate: dict[str, float]    # summed over queries that have one
    actual: dict[str, float]      # the same queries' actual totals
    estimated_queries: int
    total_cost_usd: float
    total_tokens: int
    total_tflops: float
    routes: dict[str, "RouteView"] = field(default_factory=dict)
    # (pipeline, judge, protocol) -> [verdicts, parsed, sum of preference or score]
    quality: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)


@dataclass
class RouteView:
    """How one route's queries were routed: per pipeline chosen, per policy, the agreement
    scores measured, and each candidate's estimated dollars had every query run it."""
    name: str
    chosen: Counter = field(default_factory=Counter)          # pipeline -> queries
    failed: Counter = field(default_factory=Counter)          # pipeline -> not ok
    costs: dict[str, list[float]] = field(default_factory=dict)  # pipeline -> actual $
    latencies: dict[str, list[float]] = field(default_factory=dict)
    steps: dict[str, Counter] = field(default_factory=dict)   # policy -> chosen -> n
    agreement: list[float] = field(default_factory=list)
    thresholds: set = field(default_factory=set)
    always_usd: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    estimated_queries: int = 0
    unroutable: int = 0

    def add_decision(self, record: dict) -> None:
        policy = str(record.get("policy"))
        chosen = record.get("chosen")
        self.steps.setdefault(policy, Counter())[str(chosen)] += 1
        numbers = record.get("numbers") if isinstance(record.get("numbers"), dict) else {}
        if policy == "budget":
            if chosen is None:
                self.unroutable += 1
            table = numbers.get("candidates")
            if isinstance(table, dict):
                self.estimated_queries += 1
                for name, row in table.items():
                    if isinstance(row, dict):
                        self.always_usd[name] += _number(row.get("usd"))
        if policy == "agreement" and isinstance(numbers.get("score"), (int, float)):
            self.agreement.append(_number(numbers["score"]))
            if isinstance(numbers.get("threshold"), (int, float)):
                self.thresholds.add(numbers["threshold"])

    def add_query(self, record: dict) -> None:
        pipeline = str(record.get("pipeline"))
        if pipeline == self.name:  # the route's own name: no candidate fitted, none ran
            pipeline = "(none fitted)"
        self.chosen[pipeline] += 1
        self.failed[pipeline] += record.get("status") != "ok"
        self.costs.setdefault(pipeline, []).append(_number(record.get("cost_usd")))
        self.latencies.setdefault(pipeline, []).append(_number(record.get("latency_s")))


def summarize(records: Iterable[dict[str, Any]], run_id: str | None = None) -> Summary:
    runs, latencies, costs = [], [], []
    queries: Counter = Counter()
    models: dict[str, Group] = {}
    layers: dict[str, Group] = {}
    errors: Counter = Counter()
    skips: Counter = Counter()
    estimate: dict[str, float] = defaultdict(float)
    actual: dict[str, float] = defaultdict(float)
    estimated = 0
    total_cost = total_tflops = 0.0
    total_tokens = 0
    routes: dict[str, RouteView] = {}
    quality: dict[tuple[str, str, str], list[float]] = {}
    for record in records:
        if run_id is not None and record.get("run_id") != run_id:
            continue
        kind = record.get("type")
        if kind == "run":
            runs.append(record)
        elif kind == "call":
            model = str(record.get("model"))
            layer = str(record.get("layer"))
            models.setdefault(model, Group(model)).add(record)
            layers.setdefault(layer, Group(layer)).add(record)
            if record.get("status") in ("failed", "cancelled"):
                errors[(model, record.get("error_type") or record.get("status"))] += 1
            if record.get("status") == "skipped" and record.get("attempt", 0) == 0:
                skips[_reason_kind(record.get("error"))] += 1
        elif kind == "quality":
            key = (str(record.get("pipeline")), str(record.get("judge")),
                   str(record.get("protocol")))
            row = quality.setdefault(key, [0, 0, 0.0])
            row[0] += 1
            value = record.get("preference" if key[2] == "pairwise" else "score")
            if record.get("parsed") and isinstance(value, (int, float)):
                row[1] += 1
                row[2] += float(value)
        elif kind == "route":
            name = str(record.get("route"))
            routes.setdefault(name, RouteView(name)).add_decision(record)
        elif kind == "query":
            if record.get("route"):
                name = str(record["route"])
                routes.setdefault(name, RouteView(name)).add_query(record)
            queries[str(record.get("status"))] += 1
            latencies.append(_number(record.get("latency_s")))
            costs.append(_number(record.get("cost_usd")))
            tokens = int(_number(record.get("prompt_tokens"))
                         + _number(record.get("completion_tokens")))
            total_cost += _number(record.get("cost_usd"))
            total_tflops += _number(record.get("tflops"))
            total_tokens += tokens
            guess = record.get("estimate")
            if isinstance(guess, dict):
                estimated += 1
                estimate["usd"] += _number(guess.get("usd"))
                estimate["latency_s"] += _number(guess.get("latency_s"))
                estimate["tflops"] += _number(guess.get("tflops"))
                estimate["tokens"] += _number(guess.get("input_tokens")) + \
                    _number(guess.get("output_tokens"))
                actual["usd"] += _number(record.get("cost_usd"))
                actual["latency_s"] += _number(record.get("latency_s"))
                actual["tflops"] += _number(record.get("tflops"))
                actual["tokens"] += tokens
    return Summary(runs, queries, latencies, costs, models, layers, errors, skips,
                   dict(estimate), dict(actual), estimated, total_cost, total_tokens,
                   total_tflops, routes, quality)


def summarize_files(paths: list[str], run_id: str | None = None) -> Summary:
    records: list[dict] = []
    for path in paths:
        records.extend(read_trace(os.fspath(path)))
    return summarize(records, run_id)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else 0.0


def _reason_kind(reason: Any) -> str:
    text = str(reason or "unknown")
    return text.split(":", 1)[0].strip() or "unknown"


# --- text ---------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _table(title: str, groups: dict[str, Group]) -> list[str]:
    width = max([len(title)] + [len(name) for name in groups])
    lines = [f"{title:<{width}}  {'calls':>6} {'attempts':>8} {'failed':>6} {'cancel':>6} "
             f"{'skipped':>7} {'cost':>10} {'p50':>8} {'p90':>8} {'p99':>8} {'ttft p50':>8}"]
    for name, g in groups.items():
        lines.append(
            f"{name:<{width}}  {len(g.calls):>6,} {g.attempts:>8,} {g.failed:>6,} "
            f"{g.cancelled:>6,} {g.skipped:>7,} {'$' + format(g.cost_usd, '.4f'):>10} "
            f"{_seconds(percentile(g.durations, 50)):>8} "
            f"{_seconds(percentile(g.durations, 90)):>8} "
            f"{_seconds(percentile(g.durations, 99)):>8} "
            f"{_seconds(percentile(g.ttfts, 50)):>8}")
    return lines


def render_summary(s: Summary) -> str:
    pipelines = sorted({str(r.get("pipeline")) for r in s.runs})
    total_queries = sum(s.queries.values())
    statuses = ", ".join(f"{n:,} {status}" for status, n in sorted(s.queries.items()))
    lines = [f"{len(s.runs)} run{'s' if len(s.runs) != 1 else ''}"
             + (f" of {', '.join(pipelines)}" if pipelines else "")
             + f": {total_queries:,} quer{'ies' if total_queries != 1 else 'y'}"
             + (f" ({statuses})" if statuses else ""),
             f"total ${s.total_cost_usd:.4f} · {s.total_tokens:,} tokens · "
             f"{s.total_tflops:,.1f} TFLOPs"]
    if s.query_latencies:
        lines.append("query latency p50 {} · p90 {} · p99 {}; cost p50 ${:.4f} · p90 ${:.4f}"
                     .format(_seconds(percentile(s.query_latencies, 50)),
                             _seconds(percentile(s.query_latencies, 90)),
                             _seconds(percentile(s.query_latencies, 99)),
                             percentile(s.query_costs, 50), percentile(s.query_costs, 90)))
    lines.append("")
    lines += _table("model", s.models) + [""] + _table("layer", s.layers)
    if s.errors:
        lines += ["", "failed or cancelled attempts:"]
        for (model, kind), n in s.errors.most_common():
            lines.append(f"  {model}: {kind} x{n:,}")
    if s.skip_reasons:
        lines += ["", "skipped calls: " + ", ".join(
            f"{kind} x{n:,}" for kind, n in s.skip_reasons.most_common())]
    lines.append("")
    if s.estimated_queries:
        lines.append(f"estimate (expected case) against actual, over {s.estimated_queries:,} "
                     "queries:")
        lines.append(f"  {'':10}{'estimate':>14}{'actual':>14}{'actual/est':>12}")
        rows = (("cost", "usd", lambda v: f"${v:.4f}"),
                ("latency", "latency_s", lambda v: f"{v:.2f}s"),
                ("TFLOPs", "tflops", lambda v: f"{v:,.1f}"),
                ("tokens", "tokens", lambda v: f"{v:,.0f}"))
        for label, key, fmt in rows:
            guess, real = s.estimate.get(key, 0.0), s.actual.get(key, 0.0)
            ratio = f"{real / guess:.2f}x" if guess else "-"
            lines.append(f"  {label:<10}{fmt(guess):>14}{fmt(real):>14}{ratio:>12}")
    else:
        lines.append("no planner estimates in this trace")
    for view in s.routes.values():
        lines += [""] + _route_lines(view)
    if s.quality:
        lines += ["", "judged answers (moac eval; pairwise: win rate against the reference, "
                      "ties half; single: mean score):"]
        width = max(len(p) for p, _, _ in s.quality)
        for (pipeline, judge, protocol), (n, parsed, total) in sorted(s.quality.items()):
            mean = "-" if not parsed else (f"{100 * total / parsed:.1f}%"
                                           if protocol == "pairwise" else
                                           f"{total / parsed:.2f}/10")
            lines.append(f"  {pipeline:<{width}}  judge {judge} ({protocol}): {mean} over "
                         f"{int(parsed):,} verdicts" + (f", {int(n - parsed):,} unparsed or "
                                                         "failed" if n > parsed else ""))
    return "\n".join(lines) + "\n"


def _route_lines(view: RouteView) -> list[str]:
    total = sum(view.chosen.values())
    lines = [f"route {view.name}: {total:,} quer{'ies' if total != 1 else 'y'} routed"]
    width = max([8] + [len(name) for name in view.chosen])
    lines.append(f"  {'pipeline':<{width}}  {'queries':>7} {'share':>6} {'failed':>6} "
                 f"{'cost/query':>11} {'latency p50':>11}")
    for name, n in view.chosen.most_common():
        costs = view.costs.get(name, [])
        lines.append(f"  {name:<{width}}  {n:>7,} {n / total:>6.1%} {view.failed[name]:>6,} "
                     f"{'$' + format(sum(costs) / max(len(costs), 1), '.5f'):>11} "
                     f"{_seconds(percentile(view.latencies.get(name, []), 50)):>11}")
    for policy, chosen in view.steps.items():
        taken = ", ".join(f"{name} {n:,}" for name, n in chosen.most_common())
        lines.append(f"  {policy}: {sum(chosen.values()):,} decisions ({taken})")
    if view.agreement:
        thresholds = ", ".join(f"{t:g}" for t in sorted(view.thresholds))
        lines.append("  agreement p10 {:.3f} · p50 {:.3f} · p90 {:.3f} (threshold {})".format(
            percentile(view.agreement, 10), percentile(view.agreement, 50),
            percentile(view.agreement, 90), thresholds or "-"))
    if view.unroutable:
        lines.append(f"  no candidate fit: {view.unroutable:,} quer"
                     f"{'ies' if view.unroutable != 1 else 'y'}")
    if view.estimated_queries:
        spent = sum(sum(c) for c in view.costs.values())
        always = ", ".join(f"{name} ${usd:.4f}" for name, usd in sorted(
            view.always_usd.items(), key=lambda item: -item[1]))
        lines.append(f"  estimated if every query ran one candidate: {always}; "
                     f"routed, actual: ${spent:.4f}")
    return lines
