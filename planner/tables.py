"""The numeric form of a plan that the search and the frontier work on.

For each intermediate layer, every *canonical* subset of its agents as a row of numpy arrays:
agents that the estimates and the quality model cannot tell apart (same model, ``max_tokens``
and system prompt: seeds and temperatures do not enter them) are interchangeable, so only
subsets keeping the first c of each such class are listed. :func:`layer_costs` then gives, for
an input of X answer tokens, every subset's dollars, TFLOPs and seconds at once. The numbers
equal :func:`planner.estimate.estimate` on the built sub-plan (a test holds them to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moac.ir.prompts import input_tokens

from planner import constants as k
from planner.estimate import Mode, billed_tokens, output_tokens
from planner.quality import MoaQualityModel
from planner.subplan import final_calls, intermediate

if TYPE_CHECKING:
    from moac.ir import CallNode, Plan

# Tokens each answer adds to its reader's input besides itself ("1. " and a blank line).
PER_ANSWER = input_tokens(0, template="", answers=(0,)) - input_tokens(0, template="")


@dataclass
class Agents:
    """Per-agent vectors: input tokens without answers (as a first layer and after one),
    output tokens (billed: thinking included), $ per input / output token, TFLOPs per token,
    speeds, priors, and the answer tokens a later layer reads."""

    base_first: np.ndarray
    base_next: np.ndarray
    out: np.ndarray
    pin: np.ndarray
    pout: np.ndarray
    act: np.ndarray
    ttft: np.ndarray
    prefill: np.ndarray
    rate: np.ndarray
    prior: np.ndarray
    unknown: np.ndarray  # True where the model declares no quality (its prior is assumed)
    groups: list[tuple[int, np.ndarray]]  # (parallel limit, agent indices) per provider
    answer: np.ndarray  # of `out`, the answer: what a later layer reads

    def costs(self, tokens_in):
        """(usd, tflops, seconds) per agent for input token counts ``tokens_in``."""
        usd = tokens_in * self.pin + self.out * self.pout
        tflops = self.act * (tokens_in + self.out)
        seconds = self.ttft + tokens_in / self.prefill + self.out / self.rate
        return usd, tflops, seconds


@dataclass
class LayerTable:
    name: str
    calls: list["CallNode"]
    agents: Agents
    masks: np.ndarray    # canonical subsets as bit masks, 0 (drop the layer) first
    bits: np.ndarray     # (subsets, agents) 0/1 membership
    count: np.ndarray    # answers
    distinct: np.ndarray  # distinct model ids
    prior_sum: np.ndarray
    unknown: np.ndarray  # True where the subset keeps a model of undeclared quality
    written: np.ndarray  # tokens the subset's answers add to the next reader's input

    def keep(self, row: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.flatnonzero(self.bits[row]))


def agents_of(plan: "Plan", calls: list["CallNode"], prompt_tokens: int, mode: Mode,
              quality: MoaQualityModel) -> Agents:
    models = [plan.models[c.model] for c in calls]
    providers: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        providers.setdefault(call.provider, []).append(i)
    template = next((c.prompt for c in calls if c.prompt is not None), "")
    return Agents(
        base_first=np.array([input_tokens(prompt_tokens, system=c.system) for c in calls],
                            float),
        base_next=np.array([input_tokens(prompt_tokens, system=c.system,
                                         template=c.prompt or template) for c in calls], float),
        out=np.array([billed_tokens(m, c.sampling, mode) for m, c in zip(models, calls)], float),
        answer=np.array([output_tokens(m, c.sampling, mode) for m, c in zip(models, calls)],
                        float),
        # Per-token rates from the one cost formula (ModelSpec.usd, ModelSpec.tflops).
        pin=np.array([m.usd(1, 0) for m in models]),
        pout=np.array([m.usd(0, 1) for m in models]),
        act=np.array([m.tflops(1) for m in models]),
        ttft=np.array([m.ttft_s for m in models]),
        prefill=np.array([m.prefill_tokens_per_s for m in models]),
        rate=np.array([m.output_tokens_per_s for m in models]),
        prior=np.array([quality.prior(m) for m in models]),
        unknown=np.array([m.quality is None for m in models], bool),
        groups=[(plan.providers[name].parallel, np.array(idx)) for name, idx in
                sorted(providers.items())])


def layer_tables(plan: "Plan", prompt_tokens: int, mode: Mode,
                 quality: MoaQualityModel) -> list[LayerTable]:
    tables = []
    for info, calls in zip(plan.layers, intermediate(plan)):
        size = len(calls)
        if size > k.MAX_AGENTS_PER_LAYER:
            raise ValueError(f"layer '{info.name}' has {size} agents; the planner enumerates "
                             f"at most {k.MAX_AGENTS_PER_LAYER} per layer")
        masks = np.arange(1 << size, dtype=np.int64)
        classes: dict[tuple, list[int]] = {}
        for i, c in enumerate(calls):
            classes.setdefault((c.model, c.sampling.max_tokens, c.system), []).append(i)
        valid = np.ones(len(masks), bool)
        for members in classes.values():
            for earlier, later in zip(members, members[1:]):
                valid &= ~(((masks >> later) & 1).astype(bool) & ~((masks >> earlier) & 1)
                           .astype(bool))
        masks = masks[valid]
        bits = ((masks[:, None] >> np.arange(size)) & 1).astype(float)
        agents = agents_of(plan, calls, prompt_tokens, mode, quality)
        ids = [plan.models[c.model].model_id for c in calls]
        distinct = sum(bits[:, [i for i, m in enumerate(ids) if m == name]].max(axis=1)
                       for name in set(ids)) if size else np.zeros(1)
        tables.append(LayerTable(
            name=info.name, calls=calls, agents=agents, masks=masks, bits=bits,
            count=bits.sum(axis=1), distinct=np.asarray(distinct, float),
            prior_sum=bits @ agents.prior, unknown=(bits @ agents.unknown) > 0,
            written=bits @ (agents.answer + PER_ANSWER)))
    return tables


def final_agents(plan: "Plan", use_fallback: bool, prompt_tokens: int, mode: Mode,
                 quality: MoaQualityModel) -> tuple[Agents, float]:
    """The final stage as Agents (the aggregator; in the worst mode its fallback after it,
    both reading the same input) and the aggregator's prior (``agents.unknown[0]``: assumed)."""
    aggregator, fallback = final_calls(plan)
    if use_fallback:
        aggregator, fallback = fallback, None
    calls = [aggregator] + ([fallback] if fallback is not None and mode == "worst" else [])
    agents = agents_of(plan, calls, prompt_tokens, mode, quality)
    return agents, float(agents.prior[0])


def layer_costs(table: LayerTable, answer_tokens: float, first: bool):
    """Every subset's (usd, tflops, seconds) when the layer reads ``answer_tokens`` tokens
    of earlier answers (``first``: it reads none and has no template)."""
    a = table.agents
    tokens_in = a.base_first if first else a.base_next + answer_tokens
    usd, tflops, seconds = a.costs(tokens_in)
    bits = table.bits
    slowest = np.zeros(len(bits))
    for parallel, idx in a.groups:
        if len(idx) <= parallel:
            slowest = np.maximum(slowest, (bits[:, idx] * seconds[idx]).max(axis=1))
            continue
        slots = np.zeros((len(bits), max(parallel, 1)))
        rows = np.arange(len(bits))
        for i in idx:  # greedy list scheduling, in declaration order, every subset at once
            member = bits[:, i] > 0
            free = slots.argmin(axis=1)
            slots[rows[member], free[member]] += seconds[i]
        slowest = np.maximum(slowest, slots.max(axis=1))
    return bits @ usd, bits @ tflops, slowest


def final_costs(agents: Agents, answer_tokens, first):
    """(usd, tflops, seconds) of the final stage for arrays of inputs; ``first`` marks rows
    where no layer is kept (the aggregator reads the prompt alone)."""
    answer_tokens = np.asarray(answer_tokens, float)
    usd = np.zeros(answer_tokens.shape)
    tflops = np.zeros(answer_tokens.shape)
    seconds = np.zeros(answer_tokens.shape)
    for i in range(len(agents.out)):
        tokens_in = np.where(first, agents.base_first[i], agents.base_next[i] + answer_tokens)
        u = tokens_in * agents.pin[i] + agents.out[i] * agents.pout[i]
        t = agents.act[i] * (tokens_in + agents.out[i])
        s = agents.ttft[i] + tokens_in / agents.prefill[i] + agents.out[i] / agents.rate[i]
        usd, tflops, seconds = usd + u, tflops + t, seconds + s
    return usd, tflops, seconds
