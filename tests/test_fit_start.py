"""Each query is fit to its budget and to every model's context before anything is spent
(moac/run/start_fit.py), over real HTTP to the fake server, which counts a token a byte (the
densest any tokeniser counts) and refuses, as providers do, a request past a model's context.

- Long prompts (past every context of the paper's MoA), CJK and dense ones, against tight
  budgets: a query answers, or fails before any call saying why; it never spends and then
  fails for budget; no request is sent that cannot fit; every call that did not run is
  recorded with its reason, and every shrink of the plan in the query's fit notes.
- ``on_over_budget = fail`` keeps the plan exact and refuses before spending.
- The start fit and the run time fit agree on the smallest plan.
- What is left of the run's total bounds a query as its own max_usd does.
- A provider's context_length_exceeded is named and never retried; keys that cannot be keys
  are refused before any call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import Behavior, FakeOpenAI
from test_executor import ENV, KEY, arun, example_plan, query, solo_plan

import moac
from moac.ir.spec import BudgetSpec
from moac.providers.errors import MissingApiKey
from moac.run import Runner
from moac.run.executor import Executor, as_history
from moac.text import dollars
from moac.traces.trace import read_trace

ROOT = Path(__file__).resolve().parent.parent


def billed_usd(server: FakeOpenAI, plan) -> float:
    by_id = {m.model_id: m for m in plan.models.values()}
    return sum(by_id[model].usd(p, c) for model, p, c in server.billed)


def enforce_contexts(server: FakeOpenAI, plan) -> None:
    """The fake refuses what each model's declared context cannot take."""
    for model in plan.models.values():
        server.context_limits[model.model_id] = model.context_tokens


def words(count: int) -> str:
    vocabulary = ("budget", "context", "mixture", "agents", "layer", "query", "answer", "fit")
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(count))


# Bytes a token at most is what the budget holds count; these reach every context of the
# paper's MoA (8k for llama70, 32k for the Qwens and dbrx, 64k for WizardLM and Mixtral) and
# past them all.
PROMPTS = {
    "short": "Explain budgets.",
    "words_1000": words(1000),
    "words_6500": words(6500),       # the issue's long document
    "words_9000": words(9000),
    "cjk_3k": "日本語の長い文章です。" * 300,      # 3 bytes a character
    "cjk_20k": "混合代理人の予算と文脈。" * 2000,
    "dense_numbers": " ".join(str(10 ** 12 + i) for i in range(4000)),
    "emoji": "🙂🧪🚀" * 5000,                       # 60k bytes
    "past_every_context": words(12000),            # ~80k bytes
}


def calls_of(records):
    return [r for r in records if r["type"] == "call"]


@pytest.mark.parametrize("limit", [0.05, 0.01, 0.002])
@pytest.mark.parametrize("shape", sorted(PROMPTS))
def test_no_query_spends_then_fails_for_budget_and_no_request_cannot_fit(tmp_path, shape,
                                                                         limit):
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(count="bytes", tokens=200)) as server:
            plan = example_plan(server, "moa", BudgetSpec(max_usd=limit))
            enforce_contexts(server, plan)
            return server, plan, await query(plan, PROMPTS[shape], trace)

    server, plan, result = arun(main())
    records = read_trace(trace)
    assert not server.context_refused  # no request was sent that its model could not take
    assert billed_usd(server, plan) <= limit
    if not result.ok:  # failed before any call, saying why
        assert not server.requests and result.cost_usd == 0, result.errors
        assert result.errors[0].startswith(("budget: not even the smallest plan fits",
                                            "context: ")), result.errors
        assert "nothing was sent" in result.errors[0]
        return
    # Every declared call ran, or is recorded with why it did not (a fallback that was
    # not needed aside).
    ran = {r["node"] for r in calls_of(records) if r["status"] != "skipped"}
    skipped = {s.node: s.reason for s in result.skipped}
    for node in plan.graph.nodes:
        assert node in ran or skipped.get(node) or \
            (node.startswith("fallback") and result.answered_by != node), node
    fitted = result.fitted
    if fitted is not None:  # the start fit shrank the plan: said, with what it gave up
        assert set(fitted["dropped"]) <= set(skipped)
        assert result.fit[0].startswith("fit at query start (")
        assert all("max_usd" in o or "max_latency" in o for o in fitted["over"])
        assert fitted["agents"] == 13 - sum(1 for n in fitted["dropped"]
                                            if n.startswith(("propose", "refine")))
        assert records[-1]["fitted"] == fitted
        for node in fitted["dropped"]:
            assert skipped[node].startswith(("fit: dropped at query start", "context: "))
    for node, reason in skipped.items():
        if fitted is None or node not in fitted["dropped"]:
            # Left out at run time: in the notes too (or the query did not need it).
            assert any(node in note for note in result.fit) or \
                node.startswith("fallback") or reason.startswith("not run"), (node, reason)


def test_the_issues_long_document_never_spends_and_then_fails(tmp_path):
    """The issue's case: the paper's MoA at $0.05 and a 6,500-word prompt started three
    proposers, skipped the rest and failed after spending $0.038. Counted as the budget
    counts it (a token a byte: 43k here), that prompt fits neither aggregator's 32k context,
    so it now fails before any call, naming both; a 4,000-word one (27k) is fit at its start
    to the aggregator alone, and answers within its budget. llama70 (8k) is never sent what
    it cannot take."""
    async def main(count):
        trace = tmp_path / f"{count}.jsonl"
        async with FakeOpenAI(api_key=KEY, default=Behavior(count="bytes", tokens=300)) as server:
            plan = example_plan(server, "moa", BudgetSpec(max_usd=0.05))
            enforce_contexts(server, plan)
            return server, await query(plan, words(count), trace), read_trace(trace)

    server, refused, _ = arun(main(6500))
    assert not refused.ok and not server.requests and refused.cost_usd == 0
    assert refused.errors[0].startswith("context: aggregate.qwen110: its input of up to 43,")
    assert "32,768-token context of qwen72" in refused.errors[0]

    server, result, records = arun(main(4000))
    assert result.ok and result.cost_usd <= 0.05, result.errors
    assert not server.context_refused
    assert "meta-llama/Llama-3-70b-chat-hf" not in {r.model for r in server.requests}
    fitted = result.fitted
    assert fitted["agents"] == len(server.requests) and fitted["estimate_usd"] <= 0.05
    assert {"propose.3.llama70", "refine.3.llama70"} <= set(fitted["dropped"])
    assert any(g.startswith("propose.3.llama70: context: its input of up to 26,")
               for g in fitted["gave_up"])
    assert records[-1]["fitted"] == fitted and records[-1]["fit"] == result.fit


def test_a_prompt_no_final_model_can_take_fails_before_any_call(tmp_path):
    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = example_plan(server, "moa", BudgetSpec(max_usd=5.0))
            return server, await query(plan, words(12000), tmp_path / "t.jsonl")

    server, result = arun(main())
    assert not result.ok and not server.requests
    error = result.errors[0]
    assert error.startswith("context: aggregate.qwen110: its input of up to ")
    assert "fallback.qwen72: its input" in error and "32,768-token context" in error
    assert error.endswith("nothing was sent")


# --- the smallest plan: the start fit and the run time fit agree -------------------------------

def _reserve(plan, prompt: str):
    executor = Executor(plan, {name: None for name in plan.providers})
    return executor.final_reserve(as_history(prompt))


@pytest.mark.parametrize("prompt", ["Too poor.", "日本語" * 400])
def test_the_smallest_plan_is_refused_exactly_when_the_run_time_fit_could_not_hold_it(prompt):
    """Just under the final stage's reserve (what the run time keeps for it), the query
    fails before any call naming that cost; at the reserve, the aggregator alone answers."""
    async def main(limit):
        async with FakeOpenAI(api_key=KEY) as server:
            plan = solo_plan(server, max_tokens=100, max_usd=limit)
            plan.graph.graph["models"]["a"] = plan.models["a"].model_copy(
                update={"answer_tokens": 40})
            return server, await query(plan, prompt)

    async def reserve():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = solo_plan(server, max_tokens=100)
            plan.graph.graph["models"]["a"] = plan.models["a"].model_copy(
                update={"answer_tokens": 40})
            return _reserve(plan, prompt).usd

    need = arun(reserve())
    server, refused = arun(main(need * 0.999))
    assert not refused.ok and not server.requests
    assert refused.errors[0].startswith("budget: not even the smallest plan fits")
    assert f"up to {dollars(need)}, over max_usd" in refused.errors[0]
    server, answered = arun(main(need * 1.0001))
    assert answered.ok and len(server.requests) == 1
    assert answered.cost_usd <= need * 1.0001


# --- on_over_budget = fail ----------------------------------------------------------------------

def test_on_over_budget_fail_refuses_before_spending_and_names_the_worst_case(tmp_path):
    async def main(limit):
        async with FakeOpenAI(api_key=KEY) as server:
            plan = example_plan(server, "moa", BudgetSpec(max_usd=limit,
                                                          on_over_budget="fail"))
            worst = Executor(plan, {n: None for n in plan.providers}).worst_case_usd(
                as_history("Explain budgets."))
            result = await query(plan, "Explain budgets.", tmp_path / f"{limit}.jsonl")
            return server, worst, result

    server, worst, refused = arun(main(0.05))
    assert not refused.ok and not server.requests and refused.cost_usd == 0
    error = refused.errors[0]
    assert error.startswith("budget: the declared plan's worst case")
    assert f"over max_usd $0.0500" in error and "on_over_budget = fail" in error
    assert "nothing was sent" in error
    # With room for its worst case the plan runs exact: nothing dropped, clamped or cut.
    server, _, exact = arun(main(worst * 1.01))
    assert exact.ok and exact.fitted is None and not exact.skipped and not exact.fit
    assert len(server.requests) == 13
    assert all(r.body["max_tokens"] in (512, 2048) for r in server.requests)


def test_on_over_budget_fail_refuses_a_call_its_context_cannot_take(tmp_path):
    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = example_plan(server, "moa", BudgetSpec(max_usd=50.0,
                                                          on_over_budget="fail"))
            return server, await query(plan, words(2000))

    server, result = arun(main())
    assert not result.ok and not server.requests
    assert result.errors[0].startswith("context: on_over_budget = fail keeps the plan exact")
    assert "propose.3.llama70 cannot run" in result.errors[0]


def test_on_over_budget_is_checked_in_the_budget_block():
    base = ('provider p {\n  kind = openai\n  base_url = "http://127.0.0.1:9/v1"\n'
            '  api_key = env K\n}\nmodel a = p "m" {\n  price = $1/M\n  params = 1B\n'
            '  context = 8k\n}\npipeline solo {\n  aggregate a\n}\n')
    plan = moac.compile_string(base + "budget {\n  on_over_budget = fail\n}\n").plan("solo")
    assert plan.budget.on_over_budget == "fail"
    assert moac.compile_string(base).plan("solo").budget.on_over_budget == "shrink"
    with pytest.raises(Exception) as caught:
        moac.compile_string(base + "budget {\n  on_over_budget = maybe\n}\n")
    assert "'on_over_budget' must be shrink or fail, not 'maybe'" in str(caught.value)


# --- the run's total ----------------------------------------------------------------------------

def test_what_is_left_of_the_run_bounds_a_query_as_max_usd_does(tmp_path):
    """Per query $0.05, the run $0.004 in all: the first query is fit to the $0.004 the run
    has (the planner's choice, the aggregator's reserve kept against it); the next, with
    less left than the aggregator alone needs, fails before any call."""
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(count="bytes", tokens=100)) as server:
            plan = example_plan(server, "moa", BudgetSpec(max_usd=0.05))
            async with Runner(plan, environ=ENV, trace_path=trace, max_usd_total=0.004) as r:
                first = await r.run("Explain budgets.", query_id="a")
                sent = len(server.requests)
                second = await r.run(words(3000), query_id="b")
                return server, plan, first, sent, second, r.run_ledger

    server, plan, first, sent, second, ledger = arun(main())
    assert first.ok and first.cost_usd <= 0.004
    assert first.fitted["room_by"].startswith("what is left of the run's max_usd_total ($0.0040")
    assert first.fitted["agents"] == sent
    assert not second.ok and len(server.requests) == sent
    assert second.errors[0] == "the run's budget is spent"
    assert "not even the smallest plan fits" in second.errors[1]
    assert "over what is left of the run's max_usd_total" in second.errors[1]
    assert ledger.spent_usd <= 0.004 and billed_usd(server, plan) <= 0.004


# --- context_length_exceeded ---------------------------------------------------------------------

def test_a_context_smaller_than_declared_is_named_and_not_retried(tmp_path):
    """The catalog says 32k; the provider's model takes 100 tokens. Its 400 is named for
    what it means, once: no retry can fit it."""
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(count="bytes")) as server:
            plan = solo_plan(server, max_tokens=50, max_retries=2)
            server.context_limits["model-a"] = 100
            return server, await query(plan, words(100), trace)

    server, result = arun(main())
    assert not result.ok and len(server.requests) == 1 and server.context_refused
    error = next(e for e in result.errors if e.startswith("aggregate.a: "))
    assert "the input did not fit model a's context of 32,768 tokens (as declared" in error
    assert "declare a smaller context for a, or shorten the prompt" in error
    assert "maximum context length is 100 tokens" in error
    [line] = [r for r in read_trace(trace) if r["type"] == "call"]
    assert line["error_type"] == "ContextLengthExceeded" and "declare a smaller" in line["error"]


# --- keys that cannot be keys --------------------------------------------------------------------

@pytest.mark.parametrize("value", ["x", "sk-1234", "  abc  "])
def test_a_key_too_short_to_be_one_is_refused_before_any_call(value):
    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = solo_plan(server)
            with pytest.raises(MissingApiKey) as caught:
                async with Runner(plan, environ={"FAKE_OPENAI_KEY": value}):
                    pass
            return server, caught.value

    server, error = arun(main())
    assert not server.requests
    text = str(error)
    assert "FAKE_OPENAI_KEY holds fewer than 8 characters" in text
    assert value.strip() not in text.replace("FAKE_OPENAI_KEY", "").replace("provider", "")


def test_a_short_key_and_a_missing_one_are_named_together(tmp_path):
    text = f'''provider p {{
  kind = openai
  base_url = "http://127.0.0.1:9/v1"
  api_key = env SHORT_KEY
}}
provider q {{
  kind = openai
  base_url = "http://127.0.0.1:9/v1"
  api_key = env UNSET_KEY
}}
model a = p "m-a" {{
  price = $1/M
  params = 1B
  context = 8k
}}
model b = q "m-b" {{
  price = $1/M
  params = 1B
  context = 8k
}}
pipeline two {{
  layer propose = [a]
  aggregate b
}}
'''
    path = tmp_path / "two.moa"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("SHORT_KEY", "UNSET_KEY")}
    env.update(SHORT_KEY="k", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "moac", "run", str(path), "--prompt", "hi"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "2 environment variables are not usable" in done.stderr
    assert "SHORT_KEY holds fewer than 8 characters" in done.stderr
    assert "UNSET_KEY is not set" in done.stderr
    assert "[REDACTED]" not in done.stderr  # nothing mangled


# --- routes ---------------------------------------------------------------------------------------

def test_a_route_chooses_within_what_is_left_of_the_run(tmp_path):
    """No per-query bound, the run's total between full's and lite's cost: the budget
    policy takes the cheaper candidate, the run's rest standing for max_usd; lite's
    estimate with the prompt at its bound fits that rest, so it runs whole, and its calls
    are held against the rest (the aggregator's answer and references are cut to it)."""
    from test_route import BUDGET_ROUTE, PROMPT, costs, route_plan, run_route
    cost = costs("http://127.0.0.1:9/v1")
    between = (cost["full"] + cost["lite"]) / 2
    ran = run_route(lambda url: route_plan(url, BUDGET_ROUTE), [PROMPT], tmp_path,
                    max_usd_total=between)
    result = ran.results[0]
    assert result.ok and result.pipeline == "lite", result.errors
    decision = result.decisions[0]
    assert decision["chosen"] == "lite" and "full over budget" in decision["reason"]
    assert result.cost_usd <= between and result.fitted is None
    assert "aggregate.agg: its references were shortened to fit the budget" in result.fit


def test_moac_run_fits_the_query_and_says_so(tmp_path):
    """`moac run --max-usd` runs the declared plan, fit at the query's start (no planner
    report for an assumed prompt): the summary line names the sub-plan it ran."""
    from fake_openai import serve_in_thread
    source = '''provider p {{
  kind = openai
  base_url = "{url}"
  api_key = env FAKE_OPENAI_KEY
  max_retries = 0
}}
model a = p "model-a" {{
  price = $1.00/M
  params = 10B
  context = 32k
  length = 50 tok
}}
model b = p "model-b" {{
  price = $1.00/M
  params = 10B
  context = 32k
  length = 50 tok
}}
pipeline trio {{
  max_tokens = 100
  layer propose = a x 3 (seed = 1)
  aggregate b
}}
'''
    with serve_in_thread(api_key=KEY) as server:
        path = tmp_path / "trio.moa"
        path.write_text(source.format(url=server.url))
        env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "moac", "run", str(path), "--prompt",
                               words(300), "--max-usd", "$0.005"], capture_output=True,
                              text=True, env=env, timeout=60)
        sent = len(server.requests)
    assert done.returncode == 0, done.stderr
    assert "fit to propose[a] -> b (2 of 4 agents)" in done.stderr
    assert "before" not in done.stderr  # no compile-time planner report
    assert sent == 2
