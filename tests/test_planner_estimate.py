"""Estimates worked by hand on a small pipeline: tokens, dollars, TFLOPs, queueing, fallbacks."""

from __future__ import annotations

import pytest

import moac
from moac.constants import DEFAULT_AGGREGATE_PROMPT
from moac.ir.prompts import estimate_tokens
from moac.ir.spec import BudgetSpec
from planner.estimate import estimate, makespan, violations

SOURCE = """
provider p {
  kind = openai
  base_url = "http://127.0.0.1:9/v1"
  parallel = PARALLEL
}
model a = p "org/a" {
  price = $1/M in, $2/M out
  params = 10B
  context = 128k
  speed = 1s ttft, 10 tok/s, 1000 tok/s prefill
  quality = 30
  length = 100 tok
}
model b = p "org/b" {
  price = $3/M
  params = 20B
  context = 128k
  speed = 2s ttft, 20 tok/s, 1000 tok/s prefill
  length = 300 tok
}
pipeline s {
  layer l0 = [a, a] (max_tokens = 50)
  aggregate a (max_tokens = 200) fallback b (max_tokens = 400)
}
"""


def plan(parallel: int = 1):
    return moac.compile_string(SOURCE.replace("PARALLEL", str(parallel)), "s.moa").plan("s")


TEMPLATE = estimate_tokens(DEFAULT_AGGREGATE_PROMPT)


def test_expected_case_by_hand():
    e = estimate(plan(), prompt_tokens=100, mode="expected")
    proposer, _, aggregator, fallback = e.calls
    # Proposer: 100 prompt + 8 per message; writes its 100-token answer capped at 50.
    assert (proposer.input_tokens, proposer.output_tokens) == (108, 50)
    assert proposer.usd == pytest.approx(108e-6 + 50 * 2e-6)
    assert proposer.tflops == pytest.approx(2 * 10 * (108 + 50) / 1000)  # 2 x 10e9 x 158 / 1e12
    assert proposer.seconds == pytest.approx(1 + 108 / 1000 + 50 / 10)
    # Aggregator: prompt, template, two numbered answers of 50 (+3 each); writes 100 of 200.
    assert aggregator.input_tokens == 108 + TEMPLATE + 8 + 2 * 53
    assert aggregator.output_tokens == 100
    assert not fallback.counted
    # Parallel 1: the two proposers queue; then the aggregator alone (the fallback never runs).
    assert e.latency_s == pytest.approx(2 * proposer.seconds + aggregator.seconds)
    assert e.usd == pytest.approx(2 * proposer.usd + aggregator.usd)
    assert e.tflops == pytest.approx(2 * proposer.tflops + aggregator.tflops)


def test_parallel_slots_remove_the_queue():
    e = estimate(plan(parallel=2), prompt_tokens=100, mode="expected")
    proposer, _, aggregator, _ = e.calls
    assert e.latency_s == pytest.approx(proposer.seconds + aggregator.seconds)


def test_worst_case_caps_every_answer_and_runs_the_fallback_after_the_aggregator():
    e = estimate(plan(parallel=2), prompt_tokens=100, mode="worst")
    proposer, _, aggregator, fallback = e.calls
    assert proposer.output_tokens == 50 and aggregator.output_tokens == 200
    assert fallback.counted and fallback.output_tokens == 400
    assert fallback.input_tokens == aggregator.input_tokens
    assert e.latency_s == pytest.approx(proposer.seconds + aggregator.seconds + fallback.seconds)
    assert e.usd == pytest.approx(2 * proposer.usd + aggregator.usd + fallback.usd)
    assert e.usd > estimate(plan(parallel=2), prompt_tokens=100, mode="expected").usd


def test_mode_defaults_to_the_plans_budget():
    p = plan()
    p.graph.graph["budget"] = BudgetSpec(mode="worst")
    assert estimate(p).mode == "worst"


def test_makespan_is_greedy_list_scheduling_in_order():
    assert makespan([3, 1, 1, 1], 2) == 3
    assert makespan([1, 1, 1, 3], 2) == 4
    assert makespan([2, 2, 2], 5) == 2
    assert makespan([], 3) == 0


def test_violations_name_each_bound():
    e = estimate(plan(), prompt_tokens=100)
    assert violations(e, BudgetSpec()) == []
    over = violations(e, BudgetSpec(max_usd=e.usd / 2, max_latency_s=1, max_tflops=1e9))
    assert len(over) == 2 and over[0].endswith("max_usd $" + format(e.usd / 2, ".4f"))
    assert "max_latency" in over[1]
