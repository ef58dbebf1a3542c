"""Per-call and total estimates of a plan: tokens, dollars, TFLOPs and latency.

Contract: :func:`estimate` is a pure function of a :class:`~moac.ir.Plan`, a prompt length in
tokens and a mode; it reads only the plan (its calls, models and providers).

- **Tokens.** A call reads the prompt, its system prompt and, when it aggregates, the template
  with the answers it is fed (:func:`moac.ir.prompts.input_tokens`). It writes its model's typical
  answer (``answer_tokens``) capped by its ``max_tokens`` in the *expected* mode, and exactly
  ``max_tokens`` in the *worst* mode, where every answer it reads is at its cap as well.
  A reasoning model thinks first (``thinking_tokens``, within the same ``max_tokens``): its
  thinking is billed and timed as output, but a later call reads the answer alone
  (:meth:`moac.ir.spec.ModelSpec.expected_output`).
- **Dollars** from the per-million prices of input and output tokens.
- **TFLOPs** = 2 x active parameters x (input + output tokens): parameters are held in
  billions, so ``2 * active_params_b * tokens / 1000`` (1e9 / 1e12).
- **Latency** along the critical path. A call takes ``ttft + input / prefill rate + output /
  output rate``; a layer waits for its slowest call. Where a layer sends more calls to a
  provider than its ``parallel`` limit, the calls queue: they are started in declaration order
  on the first free slot (greedy list scheduling) and the layer waits for the last to end.
  Layers run one after the other; the plan's latency is the sum of its layers'.
- **Fallbacks.** In the expected mode a fallback never runs: it counts for nothing. In the
  worst mode the aggregator writes its whole ``max_tokens`` and fails, then the fallback runs
  on the same input: its dollars and TFLOPs are added, and its time follows the aggregator's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from moac.constants import ASSUMED_PROMPT_TOKENS
from moac.ir.prompts import input_tokens
from moac.ir.spec import BudgetSpec, ModelSpec, Sampling


if TYPE_CHECKING:
    from moac.ir import Plan

Mode = Literal["expected", "worst"]


@dataclass(frozen=True)
class CallEstimate:
    id: str
    layer: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int  # billed: a reasoning model's thinking included
    usd: float
    tflops: float
    seconds: float
    counted: bool  # False for a fallback in the expected mode


@dataclass(frozen=True)
class Estimate:
    mode: str
    prompt_tokens: int
    calls: tuple[CallEstimate, ...]
    layer_seconds: tuple[tuple[str, float], ...]
    usd: float
    tflops: float
    latency_s: float
    input_tokens: int
    output_tokens: int

    def as_dict(self) -> dict:
        """The totals, JSON-ready (what ``plan.annotations["planner"]`` stores)."""
        return {"mode": self.mode, "prompt_tokens": self.prompt_tokens,
                "usd": round(self.usd, 6), "latency_s": round(self.latency_s, 3),
                "tflops": round(self.tflops, 3), "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens}


def output_tokens(model: ModelSpec, sampling: Sampling, mode: Mode) -> int:
    """Tokens of a call's answer (what a later call reads): its model's typical answer
    within ``max_tokens`` (after its thinking), or the cap."""
    if mode == "worst":
        return sampling.max_tokens
    return model.expected_output(sampling.max_tokens)[1]


def billed_tokens(model: ModelSpec, sampling: Sampling, mode: Mode) -> int:
    """Completion tokens a call is billed and takes time to write: its thinking and its
    answer within ``max_tokens``, or the cap."""
    if mode == "worst":
        return sampling.max_tokens
    return model.expected_output(sampling.max_tokens)[0]


def call_cost(model: ModelSpec, tokens_in: int, tokens_out: int) -> tuple[float, float, float]:
    """(dollars, TFLOPs, seconds) of one call of ``model``."""
    usd = model.usd(tokens_in, tokens_out)
    tflops = model.tflops(tokens_in + tokens_out)
    seconds = (model.ttft_s + tokens_in / model.prefill_tokens_per_s
               + tokens_out / model.output_tokens_per_s)
    return usd, tflops, seconds


def makespan(durations: list[float], parallel: int) -> float:
    """When the last of ``durations`` ends, started in order on ``parallel`` slots."""
    if len(durations) <= parallel:
        return max(durations, default=0.0)
    slots = [0.0] * max(parallel, 1)
    for duration in durations:
        first_free = min(range(len(slots)), key=slots.__getitem__)
        slots[first_free] += duration
    return max(slots)


def estimate(plan: "Plan", prompt_tokens: int = ASSUMED_PROMPT_TOKENS,
             mode: Mode | None = None) -> Estimate:
    """Every call's tokens, dollars, TFLOPs and seconds, and the plan's totals.
    ``mode`` defaults to the plan's budget mode."""
    mode = mode or plan.budget.mode
    written: dict[str, int] = {}
    calls: list[CallEstimate] = []
    layer_seconds: list[tuple[str, float]] = []
    for layer in plan.layers:
        by_provider: dict[str, list[float]] = {}
        serial = 0.0  # a fallback's time, after the aggregator's (worst mode)
        for node in layer.nodes:
            call = plan.call(node)
            model = plan.models[call.model]
            answers = [written[u] for u in plan.inputs(node)]
            tokens_in = input_tokens(prompt_tokens, system=call.system, template=call.prompt,
                                     answers=answers)
            tokens_out = billed_tokens(model, call.sampling, mode)
            written[node] = output_tokens(model, call.sampling, mode)
            usd, tflops, seconds = call_cost(model, tokens_in, tokens_out)
            counted = call.role != "fallback" or mode == "worst"
            calls.append(CallEstimate(node, layer.name, call.model, call.provider, tokens_in,
                                      tokens_out, usd, tflops, seconds, counted))
            if call.role == "fallback":
                serial += seconds if counted else 0.0
            else:
                by_provider.setdefault(call.provider, []).append(seconds)
        slowest = max((makespan(times, plan.providers[name].parallel)
                       for name, times in by_provider.items()), default=0.0)
        layer_seconds.append((layer.name, slowest + serial))
    counted_calls = [c for c in calls if c.counted]
    return Estimate(
        mode=mode, prompt_tokens=prompt_tokens, calls=tuple(calls),
        layer_seconds=tuple(layer_seconds),
        usd=sum(c.usd for c in counted_calls), tflops=sum(c.tflops for c in counted_calls),
        latency_s=sum(seconds for _, seconds in layer_seconds),
        input_tokens=sum(c.input_tokens for c in counted_calls),
        output_tokens=sum(c.output_tokens for c in counted_calls))


def violations(totals: Estimate, budget: BudgetSpec) -> list[str]:
    """The bounds ``totals`` exceeds, each as ``"$0.061 > max_usd $0.050"``; empty if it fits."""
    out = []
    for value, bound, label in _bounds(totals, budget):
        if bound is not None and value > bound * (1 + 1e-12):
            out.append(f"{_format(value, label)} > {label} {_format(bound, label)}")
    return out


def fits(totals: Estimate, budget: BudgetSpec) -> bool:
    return not violations(totals, budget)


def _bounds(totals: Estimate, budget: BudgetSpec):
    return ((totals.usd, budget.max_usd, "max_usd"),
            (totals.latency_s, budget.max_latency_s, "max_latency"),
            (totals.tflops, budget.max_tflops, "max_tflops"))


def tflops_text(value: float) -> str:
    """TFLOPs readable at every scale: whole numbers from 10 up (``3,657``), three
    significant digits below (``0.0691``, ``1.25``: a small local model is not 0)."""
    if not math.isfinite(value) or abs(value) >= 10 or value == 0:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _format(value: float, label: str) -> str:
    if label == "max_usd":
        return f"${value:.4f}"
    if label == "max_latency":
        return f"{value:.1f}s"
    return f"{tflops_text(value)} TFLOPs"
