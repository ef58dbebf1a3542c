"""The numbers and the report of an evaluation: ``report.json``, ``report.md`` and
``quality_cost.svg`` in the report directory.

:func:`pipeline_stats` is a pure function of one pipeline's answers and verdicts (and its
plan, for the planner's predictions). Quality is what the judge measured: for a pairwise
judge the win rate against the reference (ties half) with a percentile-bootstrap 95%
interval and the length-controlled win rate (AlpacaEval 2.0's method, lengths in
characters); for a single-score judge the mean score per category and overall. Turns whose
verdict could not be parsed, or whose judge call failed, are counted and left out; for the
unparsed, the report quotes what the judge wrote instead (:func:`unparsed_note`), so that
"judged 0" never passes for an evaluation that measured something.
"""

from __future__ import annotations

import json
import math
import os
from html import escape
from statistics import fmean
from typing import Any

import numpy as np

from moac.evaluation import stats
from moac.evaluation.verdicts import EXPECTED
from moac.ir import RoutePlan
from planner.estimate import tflops_text

PICTURE = "quality_cost.svg"
# Distinct excerpts of unparsed verdicts a report row keeps.
UNPARSED_QUOTES = 3


def predicted(plan, answers: dict[str, dict], prompt_tokens: int) -> dict[str, Any]:
    """The planner's predicted quality and expected dollars per query; a route's are its
    candidates' weighted by how often each answered. A prediction resting on a model that
    declares no quality is unknown: ``quality`` None and ``unknown_quality`` naming the
    models (printed "unknown", never the quality model's assumed number)."""
    from planner.estimate import estimate
    from planner.quality import MoaQualityModel, unknown_models

    def unknown_of(p) -> list[str]:
        return unknown_models(MoaQualityModel.of(p), p)

    if isinstance(plan, RoutePlan):
        counts: dict[str, int] = {}
        for row in answers.values():
            if row.get("status") != "ok":
                continue
            chosen = row.get("routed_to")
            for name in (chosen if isinstance(chosen, list) else [chosen]):
                if name in plan.plans:
                    counts[name] = counts.get(name, 0) + 1
        total = sum(counts.values())
        if not total:
            return {"quality": None, "usd": None}
        usd = sum(n * estimate(plan.plans[c], prompt_tokens, "expected").usd
                  for c, n in counts.items()) / total
        unknown = sorted({m for c in counts for m in unknown_of(plan.plans[c])})
        if unknown:
            return {"quality": None, "unknown_quality": unknown, "usd": usd}
        return {"quality": sum(n * MoaQualityModel.of(plan.plans[c]).predict(plan.plans[c])
                               for c, n in counts.items()) / total, "usd": usd}
    usd = estimate(plan, prompt_tokens, "expected").usd
    unknown = unknown_of(plan)
    if unknown:
        return {"quality": None, "unknown_quality": unknown, "usd": usd}
    return {"quality": MoaQualityModel.of(plan).predict(plan), "usd": usd}


def predicted_text(prediction: dict[str, Any], spec: str = ".1f") -> str:
    """The predicted quality as a table shows it: a number, "unknown", or "-" (none)."""
    if prediction.get("unknown_quality"):
        return "unknown"
    value = prediction.get("quality")
    return "-" if value is None else format(value, spec)


def pipeline_stats(run, protocol: str, prompt_tokens: int) -> dict[str, Any]:
    ok = [row for row in run.answers.values() if row.get("status") == "ok"]
    verdicts = [v for v in run.verdicts if v.get("parsed")]
    out: dict[str, Any] = {
        "pipeline": run.name, "answered": len(ok),
        "failed": sum(1 for row in run.answers.values() if row.get("status") != "ok"),
        "judged": len(verdicts), "unparsed": sum(1 for v in run.verdicts
                                                 if not v.get("parsed") and not v.get("error")),
        "unparsed_said": _quotes(v.get("judge_said") for v in run.verdicts
                                 if not v.get("parsed") and not v.get("error")),
        "judge_failed": sum(1 for v in run.verdicts if v.get("error")),
        # What a query costs the pipeline, answers from a response cache at their recorded
        # price (else a replayed or partly cached run would look free); what was billed.
        "usd_per_query": _mean([_number(row.get("cost_usd")) + _number(row.get("cached_usd"))
                                for row in ok]),
        "billed_usd_per_query": _mean([row.get("cost_usd") for row in ok]),
        "tflops_per_query": _mean([_number(row.get("tflops"))
                                   + _number(row.get("cached_tflops")) for row in ok]),
        "latency_s_per_query": _mean([row.get("latency_s") for row in ok]),
        "judge_usd": sum(float(v.get("judge_cost_usd") or 0) for v in run.verdicts),
        "predicted": predicted(run.plan, run.answers, prompt_tokens),
    }
    if isinstance(run.plan, RoutePlan):
        routed: dict[str, int] = {}
        for row in ok:
            for name in (row["routed_to"] if isinstance(row.get("routed_to"), list)
                         else [row.get("routed_to")]):
                routed[str(name)] = routed.get(str(name), 0) + 1
        out["routed_to"] = routed
    if protocol == "pairwise" and verdicts:
        preferences = np.array([v["preference"] for v in verdicts], dtype=float)
        low, high = stats.bootstrap_interval(preferences)
        lc = stats.length_controlled_win_rate(
            preferences, [v["candidate_chars"] for v in verdicts],
            [v["reference_chars"] for v in verdicts], interval=len(verdicts) >= 2)
        out.update(win_rate=stats.win_rate(preferences),
                   win_rate_interval=[100 * low, 100 * high],
                   lc_win_rate=lc.rate, lc_interval=list(lc.interval) if lc.interval else None,
                   length_coef=lc.length_coef)
        out["quality"] = lc.rate
    elif protocol == "single" and verdicts:
        # Every judged turn, unparsed ones as None: score_means counts them as ignored.
        scores = [v.get("score") if v.get("parsed") else None for v in run.verdicts]
        by_category = stats.score_means(scores, [v.get("category") or "all"
                                                 for v in run.verdicts])
        overall = stats.score_means(scores)["all"]
        out["scores"] = {str(c): m._asdict() for c, m in sorted(by_category.items())}
        out.update(mean_score=overall.mean, score_interval=[overall.low, overall.high])
        out["quality"] = overall.mean
    else:
        out["quality"] = None
    return out


def _quotes(said) -> list[str]:
    out: list[str] = []
    for text in said:
        if isinstance(text, str) and text not in out and len(out) < UNPARSED_QUOTES:
            out.append(text)
    return out


def unparsed_note(row: dict[str, Any], judge: dict[str, Any]) -> str | None:
    """One sentence on a pipeline's unparsed verdicts (None when there are none): how many,
    what the judge should have written and, briefly, what it wrote instead; when no verdict
    at all was parsed, that nothing was measured and a stronger judge is needed."""
    count = row.get("unparsed") or 0
    if not count:
        return None
    total = count + row["judged"]
    expected = EXPECTED.get(judge.get("protocol"), "a verdict")
    who = f"judge {judge.get('name')} (model {judge.get('model')}) did not write {expected}"
    said = row.get("unparsed_said") or []
    quote = f', it wrote e.g. "{said[0]}"' if said else ""
    if not row["judged"]:
        return (f"{row['pipeline']}: {count} answer{'s' * (count != 1)} judged but every "
                f"verdict was unparsed ({who}{quote}): no quality was measured; a stronger "
                "judge model is needed")
    return (f"{row['pipeline']}: {count} of {total} verdicts unparsed ({who}{quote}); left "
            "out of the quality")


def write_report(report_dir: str, runs, settings, judge_run_id: str) -> dict[str, Any]:
    """Compute every pipeline's numbers and write the three files; the JSON document."""
    from moac.ir.prompts import messages_tokens
    items = settings.prompts.items
    # As the executor and router count a prompt: the message, with its chat overhead.
    prompt_tokens = round(fmean(messages_tokens([{"role": "user", "content": i.prompt}])
                                for i in items)) if items else 0
    rows = [pipeline_stats(run, settings.judge.protocol, prompt_tokens) for run in runs]
    measured = [(r["usd_per_query"], r["quality"]) for r in rows
                if r["quality"] is not None and r["usd_per_query"] is not None]
    front = iter(stats.pareto_front(measured)) if measured else iter(())
    for row in rows:
        row["pareto"] = bool(next(front)) if row["quality"] is not None and \
            row["usd_per_query"] is not None else False
    document = {"format": "moac-eval", "version": 1, "prompts": settings.prompts.name,
                "items": len(items), "judge": settings.judge.model_dump(mode="json"),
                "judge_run_id": judge_run_id, "prompt_tokens_mean": prompt_tokens,
                "pipelines": rows}
    with open(os.path.join(report_dir, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(_finite(document), handle, indent=2, ensure_ascii=False)
    with open(os.path.join(report_dir, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(document))
    with open(os.path.join(report_dir, PICTURE), "w", encoding="utf-8") as handle:
        handle.write(picture(document))
    return document


def markdown(doc: dict[str, Any]) -> str:
    judge = doc["judge"]
    pairwise = judge["protocol"] == "pairwise"
    lines = [f"# moac eval: {doc['prompts']} ({doc['items']} items)", "",
             f"Judge `{judge['name']}`: model `{judge['model']}`, {judge['protocol']}"
             + (" against the reference, both orders" if pairwise else " score 1-10"), ""]
    head = ("| pipeline | LC win rate | win rate (95% CI) | predicted | $/query | "
            "predicted $ | TFLOPs/query | latency/query | judged | Pareto |") if pairwise \
        else ("| pipeline | mean score (95% CI) | predicted (LC %) | $/query | predicted $ | "
              "TFLOPs/query | latency/query | judged | Pareto |")
    lines += [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in doc["pipelines"]:
        p = r["predicted"]
        common = [predicted_text(p), _usd(r["usd_per_query"]), _usd(p.get("usd")),
                  "-" if r["tflops_per_query"] is None else tflops_text(r["tflops_per_query"]), _num(r["latency_s_per_query"], ".2f", "s"),
                  f"{r['judged']}" + (f" ({r['unparsed']} unparsed)" if r["unparsed"] else ""),
                  "yes" if r["pareto"] else ""]
        if pairwise:
            quality = [_num(r.get("lc_win_rate"), ".1f"),
                       _num(r.get("win_rate"), ".1f") + _interval(r.get("win_rate_interval"))]
        else:
            quality = [_num(r.get("mean_score"), ".2f") + _interval(r.get("score_interval"),
                                                                    ".2f")]
        lines.append("| " + " | ".join([r["pipeline"]] + quality + common) + " |")
    lines += ["", f"![quality against cost]({PICTURE})", ""]
    for r in doc["pipelines"]:
        note = unparsed_note(r, judge)
        if note:
            lines.append(f"- **{note}**" if not r["judged"] else f"- {note}")
        if r["predicted"].get("unknown_quality"):
            models = r["predicted"]["unknown_quality"]
            lines.append(f"- `{r['pipeline']}`: predicted quality unknown: "
                         + ", ".join(models)
                         + f" declare{'s' * (len(models) == 1)} no `quality`")
        if r.get("routed_to"):
            lines.append(f"- `{r['pipeline']}` routed: " + ", ".join(
                f"{k} {v}" for k, v in sorted(r["routed_to"].items())))
        if r.get("scores"):
            lines.append(f"- `{r['pipeline']}` by category: " + ", ".join(
                f"{c} {_num(m['mean'], '.2f')} (n={m['n']})" for c, m in r["scores"].items()))
    lines.append("")
    lines.append("Quality is the judge's; *predicted* is the planner's (AlpacaEval LC points), "
                 "for comparison. Costs are the answers' own, answers from a response cache "
                 "counted at their recorded price; judging cost "
                 + ", ".join(f"{r['pipeline']} ${r['judge_usd']:.4f}" for r in doc["pipelines"])
                 + ".")
    return "\n".join(lines) + "\n"


def picture(doc: dict[str, Any]) -> str:
    """Measured quality against dollars per query; hollow markers are the planner's
    predictions (pairwise judges only: same scale); the line joins the measured Pareto
    front. The dollar axis is :func:`planner.plot.cost_axis`'s: logarithmic over a wide
    range, with free pipelines (a local model's $0) at a slot of their own, never left out."""
    from planner.plot import axis_ticks, cost_axis
    rows = [r for r in doc["pipelines"] if r["quality"] is not None
            and r["usd_per_query"] is not None]
    width, height, left, top, pw, ph = 720, 460, 80, 50, 580, 330
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15">'
             f'{escape(doc["prompts"])}: measured quality against cost per query</text>']
    if not rows:
        unparsed = sum(r.get("unparsed") or 0 for r in doc["pipelines"])
        why = (f"no quality measured: every verdict was unparsed ({unparsed})" if unparsed
               else "no judged answers")
        parts += [f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">'
                  f'{escape(why)}</text>', "</svg>"]
        return "\n".join(parts) + "\n"
    pairwise = doc["judge"]["protocol"] == "pairwise"
    guesses = [r for r in rows if pairwise and r["predicted"].get("quality") is not None
               and r["predicted"].get("usd") is not None]
    qs = [r["quality"] for r in rows] + [r["predicted"]["quality"] for r in guesses]
    axis = cost_axis([r["usd_per_query"] for r in rows]
                     + [r["predicted"]["usd"] for r in guesses])
    q_lo, q_hi = min(qs) - 3, max(qs) + 3

    def fx(u):
        return left + pw * axis.frac(u)

    def fy(q):
        return top + ph * (q_hi - q) / (q_hi - q_lo)

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
                 'stroke="#333"/>')
    label = "LC win rate (%)" if pairwise else "mean score (1-10)"
    parts.append(f'<text x="{left - 50}" y="{top + ph / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 {left - 50} {top + ph / 2})">{label}</text>')
    scale = {"log": " (log scale)", "zero": ": every pipeline $0"}.get(axis.scale, "")
    parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 36}" text-anchor="middle">'
                 f'USD per query{scale}</text>')
    for x, tick in axis_ticks(axis, "money", pw):
        if tick is not None:
            parts.append(f'<text x="{left + x:.1f}" y="{top + ph + 16}" '
                         f'text-anchor="middle">{escape(tick)}</text>')
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["usd_per_query"])
    if len(front) > 1:
        points = " ".join(f"{fx(r['usd_per_query']):.1f},{fy(r['quality']):.1f}" for r in front)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#1f77b4" '
                     'stroke-width="1.5"/>')
    for r in rows:
        x, y = fx(r["usd_per_query"]), fy(r["quality"])
        if r in guesses:
            guess = r["predicted"]["quality"]
            gx = fx(r["predicted"]["usd"])
            parts.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{gx:.1f}" y2="{fy(guess):.1f}" '
                         'stroke="#999" stroke-dasharray="3,3"/>')
            parts.append(f'<circle cx="{gx:.1f}" cy="{fy(guess):.1f}" r="5" fill="none" '
                         'stroke="#d62728"/>')
        colour = "#1f77b4" if r["pareto"] else "#555"
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>')
        parts.append(f'<text x="{x + 8:.1f}" y="{y - 6:.1f}">{escape(r["pipeline"])}</text>')
    parts.append(f'<text x="{left}" y="{height - 14}" fill="#555">filled: measured (blue: '
                 'Pareto-optimal) · hollow red: the planner\'s prediction</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def _mean(values) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return fmean(numbers) if numbers else None


def _num(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def _usd(value) -> str:
    return "-" if value is None else f"${value:.5f}"


def _interval(pair, spec: str = ".1f") -> str:
    if not pair or pair[0] is None:
        return ""
    return f" ({format(pair[0], spec)}-{format(pair[1], spec)})"


def _finite(value):
    """JSON without Infinity/NaN (strict readers refuse them): None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
