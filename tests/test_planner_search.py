"""Budgeted pruning: exact against brute force, consistent with the estimates, and honest
about what it drops."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moac
from moac.ir.prompts import input_tokens
from moac.ir.spec import BudgetSpec
from planner import NothingFits, estimate, optimize, prune
from planner.estimate import billed_tokens, call_cost, fits, makespan, output_tokens
from planner.quality import MoaQualityModel
from planner.subplan import Choice, build, final_calls, full_choice, intermediate

ROOT = Path(__file__).resolve().parent.parent
QUALITY = MoaQualityModel()


# --- random pipelines --------------------------------------------------------------------

@st.composite
def pipelines(draw, max_layers=4, max_agents=5, max_total=12):
    models = draw(st.integers(1, 4))
    lines = []
    for p in range(2):
        lines += [f"provider p{p} {{", "  kind = openai", '  base_url = "http://x/v1"',
                  f"  parallel = {draw(st.integers(1, 4))}", "}"]
    for m in range(models):
        quality = draw(st.one_of(st.none(), st.floats(10, 60).map(lambda q: round(q, 1))))
        lines += [f'model m{m} = p{draw(st.integers(0, 1))} "org/m{m}" {{',
                  f"  price = ${draw(st.integers(1, 300)) / 100}/M in, "
                  f"${draw(st.integers(1, 900)) / 100}/M out",
                  f"  params = {draw(st.integers(1, 200))}B", "  context = 128k",
                  f"  speed = {draw(st.integers(1, 9)) / 10}s ttft, "
                  f"{draw(st.integers(10, 90))} tok/s, {draw(st.integers(500, 4000))} tok/s prefill",
                  f"  length = {draw(st.integers(50, 900))} tok"]
        lines += [f"  quality = {quality}"] if quality is not None else []
        if draw(st.booleans()) and draw(st.booleans()):  # a reasoning model: it thinks first
            lines.append(f"  thinking = {draw(st.integers(0, 1500))} tok")
        lines.append("}")
    sizes = draw(st.lists(st.integers(1, max_agents), min_size=0, max_size=max_layers))
    while sum(sizes) > max_total:
        sizes[sizes.index(max(sizes))] -= 1
    lines.append("pipeline r {")
    for i, size in enumerate(sizes):
        agents = []
        for _ in range(size):
            settings_ = [f"max_tokens = {draw(st.sampled_from([64, 256, 600, 1024]))}"]
            if draw(st.booleans()) and draw(st.booleans()):
                settings_.append('system = "Answer in the style of a careful reviewer."')
            agents.append(f"m{draw(st.integers(0, models - 1))} ({', '.join(settings_)})")
        lines.append(f"  layer l{i} = [{', '.join(agents)}] (min_ok = "
                     f"{draw(st.integers(1, size))})")
    fallback = f" fallback m{draw(st.integers(0, models - 1))}" if draw(st.booleans()) else ""
    lines.append(f"  aggregate m{draw(st.integers(0, models - 1))} "
                 f"(max_tokens = {draw(st.sampled_from([128, 700]))}){fallback}")
    lines.append("}")
    plan = moac.compile_string("\n".join(lines), "random.moa").plan("r")
    mode = draw(st.sampled_from(["expected", "worst"]))
    full = estimate(plan, mode=mode)
    shares = [draw(st.one_of(st.none(), st.floats(0.02, 1.2))) for _ in range(3)]
    budget = BudgetSpec(**{key: None if share is None else total * share for key, share, total
                           in zip(("max_usd", "max_latency_s", "max_tflops"), shares,
                                  (full.usd, full.latency_s, full.tflops))}, mode=mode)
    return plan, budget


# --- an independent evaluator: the estimate's rules applied to a choice directly ---------

def evaluate(plan, choice, mode, prompt=256):
    """(quality, usd, latency, tflops) of a sub-plan without building it."""
    usd = tfl = lat = 0.0
    previous_tokens, potential = None, None
    for calls, kept in zip(intermediate(plan), choice.keep):
        if not kept:
            continue
        chosen = [calls[i] for i in kept]
        written, times = [], {}
        for c in chosen:
            model = plan.models[c.model]
            out = output_tokens(model, c.sampling, mode)
            tokens = input_tokens(prompt, system=c.system,
                                  template=c.prompt if previous_tokens is not None else None,
                                  answers=previous_tokens or ())
            u, f, s = call_cost(model, tokens, billed_tokens(model, c.sampling, mode))
            usd, tfl = usd + u, tfl + f
            times.setdefault(c.provider, []).append(s)
            written.append(out)
        lat += max(makespan(t, plan.providers[p].parallel) for p, t in times.items())
        models = [plan.models[c.model] for c in chosen]
        potential = QUALITY.layer_potential([QUALITY.prior(m) for m in models],
                                            [m.model_id for m in models], potential)
        previous_tokens = written
    aggregator, fallback = final_calls(plan)
    if choice.use_fallback:
        aggregator, fallback = fallback, None
    finals = [aggregator] + ([fallback] if fallback and mode == "worst" else [])
    for c in finals:
        model = plan.models[c.model]
        tokens = input_tokens(prompt, system=c.system,
                              template=c.prompt if previous_tokens is not None else None,
                              answers=previous_tokens or ())
        u, f, s = call_cost(model, tokens, billed_tokens(model, c.sampling, mode))
        usd, tfl, lat = usd + u, tfl + f, lat + s
    prior = QUALITY.prior(plan.models[aggregator.model])
    q = prior if potential is None else float(QUALITY.write(prior, potential))
    return q, usd, lat, tfl


def all_choices(plan, use_fallback):
    subsets = [[tuple(i for i in range(len(calls)) if mask >> i & 1)
                for mask in range(1 << len(calls))] for calls in intermediate(plan)]
    return [Choice(tuple(keep), use_fallback) for keep in itertools.product(*subsets)]


def within(values, budget):
    bounds = (budget.max_usd, budget.max_latency_s, budget.max_tflops)
    return all(b is None or v <= b * (1 + 1e-9) for v, b in zip(values, bounds))


def brute_force(plan, budget):
    options = [False] + ([True] if final_calls(plan)[1] else [])
    for use_fallback in options:
        scored = [(evaluate(plan, c, budget.mode), c) for c in all_choices(plan, use_fallback)]
        feasible = [(v[0], c) for v, c in scored if within(v[1:], budget)]
        if feasible:
            return max(q for q, _ in feasible), use_fallback
    return None, None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines())
def test_search_is_exact_against_brute_force(case):
    plan, budget = case
    best, use_fallback = brute_force(plan, budget)
    if best is None:
        with pytest.raises(NothingFits):
            optimize(plan, budget)
        return
    found = optimize(plan, budget, time_limit=60)
    assert found.exact
    assert found.choice.use_fallback == use_fallback
    assert found.quality == pytest.approx(best, abs=1e-6)
    q, *costs = evaluate(plan, found.choice, budget.mode)
    assert q == pytest.approx(found.quality, abs=1e-6)
    assert within(costs, budget)
    assert found.upper_bound == pytest.approx(found.quality)


@settings(max_examples=30, deadline=None)
@given(pipelines(), st.randoms(use_true_random=False))
def test_the_independent_evaluator_agrees_with_estimate_on_built_plans(case, rnd):
    plan, budget = case
    keep = tuple(tuple(i for i in range(len(calls)) if rnd.random() < 0.6)
                 for calls in intermediate(plan))
    choice = Choice(keep, bool(final_calls(plan)[1]) and rnd.random() < 0.3)
    built = build(plan, choice)
    totals = estimate(built, mode=budget.mode)
    q, usd, lat, tfl = evaluate(plan, choice, budget.mode)
    assert QUALITY.predict(built) == pytest.approx(q)
    assert (totals.usd, totals.latency_s, totals.tflops) == pytest.approx((usd, lat, tfl))
    # The built plan keeps the IR's shape: positions 0..n-1, every edge between layers.
    for layer in built.layers:
        assert [built.call(n).position for n in layer.nodes] == list(range(len(layer.nodes)))
        assert layer.min_ok <= len(layer.nodes)
    for before, after in zip(built.layers, built.layers[1:]):
        for node in after.nodes:
            assert built.inputs(node) == list(before.nodes)[:len(built.inputs(node))]
            assert set(built.inputs(node)) == set(before.nodes)
    assert moac.Plan.from_json(built.to_json()).to_dict() == built.to_dict()


# --- the paper's MoA -------------------------------------------------------------------

@pytest.fixture(scope="module")
def moa():
    return moac.compile_file(ROOT / "examples" / "moa.moa").plan("moa")


def test_a_plan_that_fits_is_kept_whole(moa):
    pruned = prune(moa)  # the file's own budget: $0.05, 60 s
    assert pruned.to_dict()["nodes"] == moa.to_dict()["nodes"]
    assert pruned.annotations["planner"]["drops"] == []


def test_pruning_to_a_tight_budget(moa):
    pruned = prune(moa, BudgetSpec(max_usd=0.02))
    info = pruned.annotations["planner"]
    assert fits(estimate(pruned), BudgetSpec(max_usd=0.02))
    assert info["after"]["usd"] <= 0.02 < info["before"]["usd"]
    assert info["search"]["exact"]
    assert len(pruned.graph) < len(moa.graph)
    assert info["drops"] and all("quality" in d["text"] and "% cost" in d["text"]
                                 for d in info["drops"])
    # The lines add up to the total change.
    total = sum(d["quality"] for d in info["drops"])
    assert total == pytest.approx(info["after"]["quality"] - info["before"]["quality"], abs=0.01)
    assert moac.Plan.from_json(pruned.to_json()).annotations["planner"] == info


def test_quorum_is_lowered_to_what_a_layer_keeps():
    source = (f'import "{(ROOT / "examples" / "catalog.moa").as_posix()}"\n'
              "pipeline q {\n  max_tokens = 512\n"
              "  layer propose = [qwen110, qwen72, wizardlm, llama70, mixtral, dbrx] (min_ok = 5)\n"
              "  layer refine = [qwen110, qwen72, wizardlm, llama70, mixtral, dbrx]\n"
              "  aggregate qwen110 (max_tokens = 2048)\n}\n")
    plan = moac.compile_string(source, "q.moa").plan("q")
    pruned = prune(plan, BudgetSpec(max_usd=0.02))
    propose = pruned.layers[0]
    assert propose.name == "propose" and len(propose.nodes) < 5
    assert propose.min_ok == len(propose.nodes)
    assert any(n.startswith("lowered min_ok of layer propose from 5 to")
               for n in pruned.annotations["planner"]["notes"])


def test_fallback_takes_over_when_the_aggregator_cannot_fit(moa):
    budget = BudgetSpec(max_latency_s=60, mode="worst")  # qwen110 x 2048 tokens: 68 s alone
    pruned = prune(moa, budget)
    assert [pruned.call(n).model for n in pruned.layers[-1].nodes] == ["qwen72"]
    assert pruned.annotations["planner"]["choice"]["use_fallback"]


def test_nothing_fits_names_the_cheapest_plan(moa):
    with pytest.raises(NothingFits) as caught:
        prune(moa, BudgetSpec(max_usd=0.0001))
    message = str(caught.value)
    assert "cheapest" in message and "qwen72 (the fallback) answering alone" in message
    assert "$0.0006" in message


def test_a_stopped_search_reports_its_gap(moa):
    found = optimize(moa, BudgetSpec(max_usd=0.02), time_limit=0.0)
    assert not found.exact
    assert found.upper_bound >= found.quality
    assert "upper bound" in found.method
