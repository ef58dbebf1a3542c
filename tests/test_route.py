"""Routes, query by query, against a real local OpenAI-compatible server (tests/fake_openai.py):
each policy on crafted cases where the right choice is known, the shared first layer paid once,
the hard budget holding with routing on, and every decision in the trace.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
from fake_openai import Behavior, FakeOpenAI

import moac
import moac.cli.main as cli
from moac.ir import RoutePlan
from moac.run import Runner
from moac.ir.spec import BudgetSpec
from moac.traces.trace import read_trace
from planner.route import assess, choose_before_calls

KEY = "sk-test-route-0123456789abcdef"
ENV = {"FAKE_OPENAI_KEY": KEY}
PROMPT = "Name three uses of copper."


def source(url: str, route: str, budget: str = "") -> str:
    """Three proposers, a refine layer and an aggregator (``full``); ``lite`` is ``full``
    without the refine layer (the paper's MoA and MoA-Lite, small); ``solo`` one model."""
    return f'''
provider p {{
  kind = openai
  base_url = "{url}"
  api_key = env FAKE_OPENAI_KEY
  max_retries = 0
  parallel = 16
}}
model a1 = p "m-a1" {{
  price = $1.00/M
  params = 10B
  context = 32k
  quality = 40
  length = 50 tok
}}
model a2 = p "m-a2" {{
  price = $1.00/M
  params = 10B
  context = 32k
  quality = 35
  length = 50 tok
}}
model a3 = p "m-a3" {{
  price = $1.00/M
  params = 10B
  context = 32k
  quality = 30
  length = 50 tok
}}
model agg = p "m-agg" {{
  price = $2.00/M
  params = 70B
  context = 32k
  quality = 45
  length = 50 tok
}}
pipeline full {{
  max_tokens = 100
  layer propose = [a1, a2, a3]
  layer refine = [a1, a2, a3]
  aggregate agg
}}
pipeline lite from full {{
  without refine
}}
pipeline solo {{
  max_tokens = 100
  aggregate a3
}}
{route}
{budget}
'''


def route_plan(url: str, route: str, budget: str = "", name: str = "auto",
               override: BudgetSpec | None = None) -> RoutePlan:
    return moac.compile_string(source(url, route, budget)).route_plan(name, override)


@dataclass
class Ran:
    results: list
    requests: list
    records: list


def run_route(plan_of, prompts, tmp_path, *, behaviors=None, default=None, **runner) -> Ran:
    """Serve, build the route plan from the server's URL, answer ``prompts`` one by one."""
    trace = tmp_path / "trace.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            if default is not None:
                server.set_default(default)
            for model, behavior in (behaviors or {}).items():
                server.set_default(behavior, model=model)
            plan = plan_of(server.url)
            async with Runner(plan, environ=ENV, trace_path=str(trace), **runner) as r:
                results = [await r.run(p, query_id=str(i)) for i, p in enumerate(prompts)]
            return results, list(server.requests)

    results, requests = asyncio.run(main())
    return Ran(results, requests, read_trace(trace))


def models_asked(requests) -> list[str]:
    return sorted(r.body["model"] for r in requests)


AGREE = {m: Behavior(text="copper wires pipes and coins") for m in ("m-a1", "m-a2", "m-a3")}
DISAGREE = {"m-a1": Behavior(text="electrical wiring in houses"),
            "m-a2": Behavior(text="plumbing tubes for water"),
            "m-a3": Behavior(text="minted pennies, statues")}
AGREEMENT_ROUTE = ("route auto {\n  candidates = [full, lite]\n  policy = [budget, agreement]\n"
                   "  agreement = 0.5\n}")


# --- agreement: the shared first layer runs once ---------------------------------------------

def test_identical_proposer_answers_exit_early_and_nothing_is_paid_twice(tmp_path):
    ran = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), [PROMPT], tmp_path,
                    behaviors=AGREE)
    result = ran.results[0]
    assert result.status == "ok", result.errors
    assert result.pipeline == "lite" and result.route == "auto"
    # three proposers once, then lite's aggregator: no refine layer, nothing twice
    assert models_asked(ran.requests) == ["m-a1", "m-a2", "m-a3", "m-agg"]
    assert result.started_calls == 4
    agreement = result.decisions[-1]
    assert agreement["policy"] == "agreement" and agreement["chosen"] == "lite"
    assert agreement["alternatives"] == ["full"]
    assert agreement["numbers"]["score"] == pytest.approx(1.0)
    assert agreement["numbers"]["threshold"] == 0.5
    # the aggregator read the answers already paid for
    aggregate = next(r for r in ran.requests if r.body["model"] == "m-agg")
    assert aggregate.body["messages"][0]["content"].count("copper wires pipes and coins") == 3


def test_disagreeing_proposer_answers_go_on_to_the_refine_layer(tmp_path):
    ran = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), [PROMPT], tmp_path,
                    behaviors=DISAGREE)
    result = ran.results[0]
    assert result.status == "ok", result.errors
    assert result.pipeline == "full"
    # proposers once, refiners once, the aggregator: full's 7 calls, no more
    assert models_asked(ran.requests) == ["m-a1", "m-a1", "m-a2", "m-a2", "m-a3", "m-a3",
                                          "m-agg"]
    decision = result.decisions[-1]
    assert decision["chosen"] == "full" and decision["numbers"]["score"] < 0.5
    refine_inputs = [r for r in ran.requests if r.body["messages"][0]["role"] == "system"
                     and r.body["model"] != "m-agg"]
    assert len(refine_inputs) == 3
    assert all("electrical wiring in houses" in r.body["messages"][0]["content"]
               for r in refine_inputs)


def test_a_failed_proposer_leaves_fewer_answers_to_compare(tmp_path):
    """With one of three proposers down the other two still agree: early exit."""
    behaviors = dict(AGREE)
    behaviors["m-a3"] = Behavior.server_error()
    ran = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), [PROMPT], tmp_path,
                    behaviors=behaviors)
    result = ran.results[0]
    assert result.status == "ok" and result.pipeline == "lite"
    assert result.decisions[-1]["numbers"]["answers"] == 2


def test_one_answer_left_is_nothing_to_compare_and_the_target_goes_on(tmp_path):
    behaviors = {"m-a1": Behavior(text="only me"), "m-a2": Behavior.server_error(),
                 "m-a3": Behavior.server_error()}
    ran = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), [PROMPT], tmp_path,
                    behaviors=behaviors)
    result = ran.results[0]
    assert result.decisions[-1]["chosen"] == "full"
    assert "fewer than two answers" in result.decisions[-1]["reason"]


# --- budget -----------------------------------------------------------------------------------

BUDGET_ROUTE = "route auto {\n  candidates = [full, lite, solo]\n  policy = [budget]\n}"


def costs(url: str) -> dict[str, float]:
    plan = route_plan(url, BUDGET_ROUTE)
    return {c.name: c.estimate.usd for c in assess(plan.plans, 10, plan.budget)}


def test_budget_picks_the_best_predicted_candidate_that_fits(tmp_path):
    cost = costs("http://127.0.0.1:9/v1")
    assert cost["full"] > cost["lite"] > cost["solo"]
    between = (cost["full"] + cost["lite"]) / 2  # full cannot fit, lite can
    ran = run_route(lambda url: route_plan(url, BUDGET_ROUTE,
                                           override=BudgetSpec(max_usd=between)),
                    [PROMPT], tmp_path)
    result = ran.results[0]
    assert result.status == "ok" and result.pipeline == "lite"
    (decision,) = result.decisions
    assert decision["policy"] == "budget" and decision["chosen"] == "lite"
    assert decision["numbers"]["candidates"]["full"]["fits"] is False
    assert "full over budget" in decision["reason"]
    assert "m-a1" in models_asked(ran.requests) and len(ran.requests) == 4


def test_without_a_bound_the_best_predicted_quality_wins(tmp_path):
    ran = run_route(lambda url: route_plan(url, BUDGET_ROUTE), [PROMPT], tmp_path)
    assert ran.results[0].pipeline == "full"


def test_nothing_fits_fails_before_any_call_and_names_each_excess(tmp_path):
    cost = costs("http://127.0.0.1:9/v1")
    ran = run_route(lambda url: route_plan(url, BUDGET_ROUTE,
                                           override=BudgetSpec(max_usd=cost["solo"] / 2)),
                    [PROMPT], tmp_path)
    result = ran.results[0]
    assert result.status == "failed" and ran.requests == []
    assert "no candidate fits" in result.errors[0] and "solo: $" in result.errors[0]
    route_lines = [r for r in ran.records if r["type"] == "route"]
    assert [r["chosen"] for r in route_lines] == [None]
    query = next(r for r in ran.records if r["type"] == "query")
    assert query["status"] == "failed" and query["route"] == "auto"
    assert result.pipeline is None and query["pipeline"] == "auto"  # no candidate ran
    assert query["estimate"] is None  # and no candidate's estimate stands for it


def test_an_unaffordable_candidate_is_never_picked_whatever_the_prompt():
    """For prompts from 1 to 20,000 tokens, the chosen candidate's estimate fits."""
    plan = route_plan("http://127.0.0.1:9/v1", AGREEMENT_ROUTE.replace(
        "[full, lite]", "[full, lite, solo]"), override=BudgetSpec(max_usd=0.0009))
    for tokens in (1, 10, 100, 300, 1000, 5000, 20000):
        candidates = assess(plan.plans, tokens, plan.budget)
        choice = choose_before_calls(plan.route, candidates, PROMPT)
        by_name = {c.name: c for c in candidates}
        for name in (choice.target, choice.early_exit):
            if name is not None:
                assert by_name[name].fits, (tokens, name, by_name[name].over)
        if not any(c.fits for c in candidates):
            assert choice.target is None


def test_a_target_that_no_longer_fits_after_the_shared_layer_hands_over(tmp_path):
    """Proposer answers twice as long as profiled and disagreeing: with their real lengths
    the full pipeline's remaining calls no longer fit max_usd, so Lite finishes (a budget
    decision) instead of the ledger stopping full's calls one by one."""
    cost = costs("http://127.0.0.1:9/v1")
    limit = cost["full"] * 1.05
    long_and_apart = {m: Behavior(text=" ".join(f"{m[-1]}q{i}" for i in range(100)))
                      for m in ("m-a1", "m-a2", "m-a3")}
    ran = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE,
                                           override=BudgetSpec(max_usd=limit)),
                    [PROMPT], tmp_path, behaviors=long_and_apart)
    result = ran.results[0]
    assert result.ok and result.pipeline == "lite" and result.cost_usd <= limit
    step = result.decisions[-1]
    assert step["policy"] == "budget" and step["chosen"] == "lite"
    assert step["alternatives"] == ["full"]
    need = step["numbers"]["remaining_usd"]
    assert need["full"] > step["numbers"]["left_usd"] >= need["lite"]
    assert models_asked(ran.requests) == ["m-a1", "m-a2", "m-a3", "m-agg"]


def test_the_hard_budget_holds_with_routing_on(tmp_path):
    """Disagreeing proposer answers about as long as profiled (full goes on) and refine
    answers twice as long: the per-query ledger stops calls (here the aggregator, which then
    cannot fit) so that the query never spends past max_usd, shared layer and continuation
    together."""
    cost = costs("http://127.0.0.1:9/v1")
    limit = cost["full"] * 1.05

    def answer(model):
        def respond(messages):
            if messages[0]["role"] == "system":  # refining: long
                return " ".join(f"{model}r{i}" for i in range(100))
            return " ".join(f"{model}p{i}" for i in range(45))  # as profiled, nothing shared
        return respond

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            for m in ("a1", "a2", "a3"):
                server.responders[f"m-{m}"] = answer(m)
            plan = route_plan(server.url, AGREEMENT_ROUTE, override=BudgetSpec(max_usd=limit))
            async with Runner(plan, environ=ENV, trace_path=str(tmp_path / "t.jsonl")) as r:
                return [await r.run(PROMPT, query_id=str(i)) for i in range(3)]

    results = asyncio.run(main())
    for result in results:
        assert result.pipeline == "full"  # they disagree and the target still fitted
        assert result.cost_usd <= limit + 1e-12
        assert result.skipped  # the ledger had to stop calls to keep to the limit
    spent = [r for r in read_trace(tmp_path / "t.jsonl") if r["type"] == "query"]
    assert len(spent) == 3 and all(r["cost_usd"] <= limit + 1e-12 for r in spent)


def test_a_run_budget_admits_a_routed_query_on_its_worst_case(tmp_path):
    """--max-usd-total: the first query is admitted, and the run never spends past it."""
    from moac.run.executor import Executor
    plans = route_plan("http://127.0.0.1:9/v1", AGREEMENT_ROUTE).plans.values()
    worst = max(Executor(p, {n: None for n in p.providers}).worst_case_usd(
        [{"role": "user", "content": PROMPT}]) for p in plans)
    total = 1.05 * worst  # room for three queries: a routed one costs 1/64 of its worst case
    ran = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), [PROMPT] * 12, tmp_path,
                    behaviors=AGREE, max_usd_total=total)
    assert sum(r.cost_usd for r in ran.results) <= total + 1e-12
    assert ran.results[0].status == "ok"
    assert any("run's budget" in " ".join(r.errors) for r in ran.results[1:])


# --- preroute ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FixedFactor:
    """A pre-route model that predicts the same gain factor for every query."""
    factor: float
    threshold: float = 1.0

    def gain_factor(self, text: str) -> float:
        return self.factor

    def threshold_for_share(self, share: float) -> float:
        return self.threshold


def preroute_choice(setting: str, factor: float, threshold: float = 1.0):
    route = ("route auto {\n  candidates = [full, lite]\n  policy = [budget, preroute]\n"
             f"  {setting}\n}}")
    plan = route_plan("http://127.0.0.1:9/v1", route)
    candidates = assess(plan.plans, 10, plan.budget)
    return choose_before_calls(plan.route, candidates, PROMPT, FixedFactor(factor, threshold))


def test_preroute_pays_for_the_larger_pipeline_when_the_gain_is_worth_it():
    rich = preroute_choice("usd_per_point = $1", 1.0)
    assert rich.target == "full"
    step = rich.decisions[-1]
    assert step.policy == "preroute" and step.alternatives == ("lite",)
    assert step.numbers["predicted_gain"] > 0 and step.numbers["extra_usd"] > 0
    poor = preroute_choice("usd_per_point = $0.0000001", 1.0)
    assert poor.target == "lite" and poor.decisions[-1].alternatives == ("full",)


def test_preroute_gain_scales_with_the_query_factor():
    """At a willingness to pay that just buys the average gain, an easier-than-average query
    goes to lite and a harder one to full."""
    base = preroute_choice("usd_per_point = $1", 1.0).decisions[-1].numbers
    fair = base["extra_usd"] / base["average_gain"]
    setting = f"usd_per_point = ${fair * 1.01:.10f}"
    assert preroute_choice(setting, 0.5).target == "lite"
    assert preroute_choice(setting, 1.5).target == "full"


def test_preroute_share_compares_the_factor_with_the_calibrated_threshold():
    assert preroute_choice("share = 0.3", 1.2, threshold=1.1).target == "full"
    low = preroute_choice("share = 0.3", 0.9, threshold=1.1)
    assert low.target == "lite"
    assert low.decisions[-1].numbers["share"] == 0.3


def test_preroute_and_agreement_combine():
    """Preroute keeps full; agreement may still stop after the shared layer."""
    route = ("route auto {\n  candidates = [full, lite]\n  policy = [preroute, agreement]\n"
             "  usd_per_point = $1\n}")
    plan = route_plan("http://127.0.0.1:9/v1", route)
    choice = choose_before_calls(plan.route, assess(plan.plans, 10, plan.budget), PROMPT,
                                 FixedFactor(1.0))
    assert choice.target == "full" and choice.early_exit == "lite" and choice.shared == 1


# --- trace, CLI and plans ----------------------------------------------------------------------

def test_every_decision_is_in_the_trace_with_its_numbers(tmp_path):
    ran = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), [PROMPT, PROMPT], tmp_path,
                    behaviors=AGREE)
    lines = [r for r in ran.records if r["type"] == "route"]
    assert [(r["query_id"], r["step"], r["policy"]) for r in lines] == [
        ("0", 1, "budget"), ("0", 2, "agreement"), ("1", 1, "budget"), ("1", 2, "agreement")]
    assert all(r["route"] == "auto" and r["alternatives"] and r["reason"] for r in lines)
    assert set(lines[0]["numbers"]["candidates"]) == {"full", "lite"}
    queries = [r for r in ran.records if r["type"] == "query"]
    assert [(q["route"], q["pipeline"]) for q in queries] == [("auto", "lite")] * 2
    header = ran.records[0]
    assert header["type"] == "run" and header["plan"]["format"] == "moac-route"


def test_route_plan_json_round_trips():
    plan = route_plan("http://127.0.0.1:9/v1", AGREEMENT_ROUTE,
                      override=BudgetSpec(max_usd=0.5))
    again = RoutePlan.from_dict(json.loads(plan.to_json()))
    assert again.route == plan.route and again.budget.max_usd == 0.5
    assert list(again.plans) == ["full", "lite"]
    assert again.plans["full"].to_dict() == plan.plans["full"].to_dict()


def test_moac_compile_and_run_work_on_a_route(tmp_path, capsys, monkeypatch):
    async def serve_and_run():
        async with FakeOpenAI(api_key=KEY) as server:
            for model, behavior in AGREE.items():
                server.set_default(behavior, model=model)
            path = tmp_path / "auto.moa"
            path.write_text(source(server.url, AGREEMENT_ROUTE))
            monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
            compiled = await asyncio.to_thread(
                cli.main, ["compile", str(path), "-p", "auto", "--max-usd", "$0.5"])
            plan_json = capsys.readouterr().out
            code = await asyncio.to_thread(
                cli.main, ["run", str(path), "-p", "auto", "--prompt", PROMPT,
                           "--trace", str(tmp_path / "t.jsonl")])
            return compiled, plan_json, code

    compiled, plan_json, code = asyncio.run(serve_and_run())
    assert compiled == 0
    data = json.loads(plan_json)
    assert data["format"] == "moac-route" and data["budget"]["max_usd"] == 0.5
    assert code == 0
    err = capsys.readouterr().err
    assert "route auto: agreement: the answers agree" in err
    assert "routed to lite" in err


def test_trace_summarize_shows_how_queries_were_routed(tmp_path):
    from moac.traces.summarize import render_summary, summarize
    mixed = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), [PROMPT], tmp_path,
                      behaviors=AGREE).records
    (tmp_path / "second").mkdir()
    mixed += run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), [PROMPT, PROMPT],
                       tmp_path / "second", behaviors=DISAGREE).records
    text = render_summary(summarize(mixed))
    routed = text[text.index("route auto:"):].splitlines()
    assert routed[0] == "route auto: 3 queries routed"
    rows = {line.split()[0]: line.split() for line in routed[2:4]}
    assert rows["full"][1:4] == ["2", "66.7%", "0"] and rows["lite"][1:4] == ["1", "33.3%", "0"]
    assert "  agreement: 3 decisions (full 2, lite 1)" in routed
    assert any(line.startswith("  estimated if every query ran one candidate: full $")
               for line in routed)


def test_a_batch_through_a_route_says_which_candidate_answered(tmp_path):
    from moac.run import PromptItem, read_answers
    out = tmp_path / "answers.jsonl"
    items = [PromptItem(str(i), (PROMPT,), "prompt", {"prompt": PROMPT}) for i in range(3)]

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            for model, behavior in AGREE.items():
                server.set_default(behavior, model=model)
            plan = route_plan(server.url, AGREEMENT_ROUTE)
            async with Runner(plan, environ=ENV) as runner:
                return await runner.run_batch(items, str(out), concurrency=3)

    state = asyncio.run(main())
    assert state.ok == 3
    rows = read_answers(str(out))
    assert [r["routed_to"] for r in rows] == ["lite"] * 3
    assert all(r["generator"] == "auto" and r["tflops"] > 0 for r in rows)


def test_a_query_waiting_for_the_run_budget_writes_its_decisions_once(tmp_path):
    """In a batch, a query the run's budget cannot admit yet waits and is asked again; its
    route lines are written when it is finally admitted (or given up), once."""
    from moac.run import PromptItem
    out = tmp_path / "answers.jsonl"
    trace = tmp_path / "trace.jsonl"
    items = [PromptItem(str(i), (PROMPT,), "prompt", {"prompt": PROMPT}) for i in range(4)]

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            server.set_default(Behavior(latency_s=0.05))
            for model, behavior in AGREE.items():
                server.set_default(Behavior(text=behavior.text, latency_s=0.05), model=model)
            plan = route_plan(server.url, AGREEMENT_ROUTE)
            async with Runner(plan, environ=ENV, trace_path=str(trace),
                              max_usd_total=0.006) as runner:
                return await runner.run_batch(items, str(out), concurrency=4)

    asyncio.run(main())
    records = read_trace(trace)
    steps = [(r["query_id"], r["step"]) for r in records if r["type"] == "route"]
    assert len(steps) == len(set(steps))  # no decision written twice
    queries = {r["query_id"] for r in records if r["type"] == "query"}
    assert {q for q, _ in steps} == queries
