"""The executor against a real local OpenAI-compatible server (tests/fake_openai.py), never a
patched client: the paper's MoA and MoA-Lite end to end, answer order, quorum, fail-over,
the deadline and the budget stop (per call and per retry).

Helpers here (``point_at``, ``example_plan``, ``solo_plan``, ``arun``) are shared with
``test_run.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from fake_openai import Behavior, FakeOpenAI, expected_text

import moac
from moac.constants import DEFAULT_AGGREGATE_PROMPT
from moac.run.executor import BudgetLedger
from moac.ir import Plan
from moac.ir.prompts import SHORTENED, render_template
from moac.run import Runner
from moac.ir.spec import BudgetSpec
from moac.traces.trace import read_trace

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KEY = "sk-test-executor-0123456789abcdef"
ENV = {"FAKE_OPENAI_KEY": KEY}
PROPOSERS = ["qwen110", "qwen72", "wizardlm", "llama70", "mixtral", "dbrx"]


def arun(coro):
    return asyncio.run(coro)


def point_at(plan: Plan, server: FakeOpenAI, **fields) -> Plan:
    """The plan with every provider replaced by one pointing at ``server``."""
    fields.setdefault("parallel", 32)
    plan.graph.graph["providers"] = {name: server.provider_spec(name, **fields)
                                     for name in plan.providers}
    return plan


def example_plan(server: FakeOpenAI, name: str = "moa", budget: BudgetSpec | None = None,
                 **fields) -> Plan:
    file = {"moa": "moa.moa", "moa_lite": "moa_lite.moa"}[name]
    return point_at(moac.compile_file(EXAMPLES / file).plan(name, budget), server, **fields)


def with_models(plan: Plan, **fields) -> Plan:
    """The plan with every model's profile changed by ``fields`` (a catalog declaring, say,
    the fake's short answers or its speed, so the planner's estimates fit the fake)."""
    models = plan.graph.graph["models"]
    for name, model in list(models.items()):
        models[name] = model.model_copy(update=fields)
    return plan


# The fake answers at once: profiled so, the planner fits a short deadline with every layer.
FAST = dict(ttft_s=0.001, output_tokens_per_s=1e6, prefill_tokens_per_s=1e7)


def solo_plan(server: FakeOpenAI, *, max_tokens: int = 100, max_usd: float | None = None,
              max_retries: int = 0) -> Plan:
    """One aggregator, nothing else: model 'a' at $1.00/M in and out."""
    budget = f"budget {{\n  max_usd = ${max_usd}\n}}\n" if max_usd is not None else ""
    text = (f'provider p {{\n  kind = openai\n  base_url = "{server.url}"\n'
            f'  api_key = env FAKE_OPENAI_KEY\n  max_retries = {max_retries}\n}}\n'
            'model a = p "model-a" {\n  price = $1.00/M\n  params = 10B\n  context = 32k\n}\n'
            f'pipeline solo {{\n  max_tokens = {max_tokens}\n  aggregate a\n}}\n' + budget)
    return moac.compile_string(text).plan("solo")


def model_id(plan: Plan, name: str) -> str:
    return plan.models[name].model_id


def user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def with_answers(answers: list[str], prompt: str) -> list[dict]:
    return [{"role": "system", "content": render_template(DEFAULT_AGGREGATE_PROMPT, answers)},
            {"role": "user", "content": prompt}]


async def query(plan: Plan, prompt: str, trace_path=None, **run):
    async with Runner(plan, environ=ENV, trace_path=trace_path) as runner:
        return await runner.run(prompt, **run)


# --- end to end ----------------------------------------------------------------------------

def test_paper_moa_end_to_end_in_declaration_order(tmp_path):
    """Proposers finish in reverse order; every aggregator still reads the answers numbered
    in declaration order, and the trace records every call."""
    prompt = "What is a Mixture-of-Agents?"
    trace = tmp_path / "trace.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = example_plan(server, "moa")
            for i, name in enumerate(PROPOSERS):  # the first declared is the slowest
                server.set_default(Behavior(latency_s=0.02 * (6 - i)),
                                   model=model_id(plan, name))
            deltas: list[str] = []
            result = await query(plan, prompt, trace, on_delta=deltas.append)
            return plan, server, result, deltas

    plan, server, result, deltas = arun(main())
    ids = [model_id(plan, m) for m in PROPOSERS]
    proposed = [expected_text(i, user(prompt)) for i in ids]
    refined = [expected_text(i, with_answers(proposed, prompt)) for i in ids]
    final_messages = with_answers(refined, prompt)
    assert result.status == "ok", result.errors
    assert result.answer == expected_text(ids[0], final_messages)
    assert "".join(deltas) == result.answer  # only the final aggregator streamed
    aggregate = [r for r in server.requests if r.body["max_tokens"] == 2048]
    assert len(aggregate) == 1 and aggregate[0].body["messages"] == final_messages
    system = final_messages[0]["content"]
    positions = [system.index(f"{n}. {answer}") for n, answer in enumerate(refined, 1)]
    assert positions == sorted(positions)
    assert len(server.requests) == 13 and result.started_calls == 13  # fallback not needed

    records = read_trace(trace)
    assert [r["type"] for r in records].count("run") == 1
    calls = [r for r in records if r["type"] == "call"]
    assert len(calls) == 13 and all(r["status"] == "ok" for r in calls)
    proposers = sorted((r for r in calls if r["layer"] == "propose"), key=lambda r: r["ended_at"])
    assert [r["model"] for r in proposers] == PROPOSERS[::-1]  # they did finish in reverse
    summary = records[-1]
    assert summary["type"] == "query" and summary["answer"] == result.answer
    assert summary["critical_path"] == ["propose.0.qwen110", "refine.0.qwen110",
                                        "aggregate.qwen110"]
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in calls))
    assert summary["estimate"]["usd"] > 0 and summary["tflops"] > 0
    assert all(r["tokens_reported"] for r in calls)


def test_moa_lite_end_to_end(tmp_path):
    prompt = "Name three prime numbers."

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(latency_s=0.01)) as server:
            plan = example_plan(server, "moa_lite")
            return plan, server, await query(plan, prompt, tmp_path / "t.jsonl")

    plan, server, result = arun(main())
    ids = [model_id(plan, m) for m in PROPOSERS]
    answers = [expected_text(i, user(prompt)) for i in ids]
    assert result.status == "ok"
    assert result.answer == expected_text(model_id(plan, "qwen72"), with_answers(answers, prompt))
    assert len(server.requests) == 7 and result.answered_by == "aggregate.qwen72"
    assert result.prompt_tokens > 0 and result.completion_tokens == 7 * 8
    assert result.latency_s >= result.critical_path_s > 0


# --- partial failure ------------------------------------------------------------------------

def test_failed_proposer_above_quorum_is_left_out():
    prompt = "Summarise the paper."

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = example_plan(server, "moa_lite")
            server.set_default(Behavior.server_error(), model=model_id(plan, "dbrx"))
            return plan, server, await query(plan, prompt)

    plan, server, result = arun(main())
    answers = [expected_text(model_id(plan, m), user(prompt)) for m in PROPOSERS[:5]]
    assert result.status == "ok" and result.failures == 1
    aggregate = server.requests[-1]
    assert aggregate.body["messages"] == with_answers(answers, prompt)
    assert any("propose.5.dbrx" in e and "HTTP 500" in e for e in result.errors)


def test_below_quorum_fails_naming_every_error_and_cancels_the_rest(tmp_path):
    """Refine needs 4 of 6; three fail fast, so the three still running are cancelled at
    once and the query fails with all six named."""
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = example_plan(server, "moa")
            faults = {"qwen72": Behavior.server_error(503),
                      "wizardlm": Behavior(malformed=True),
                      "llama70": Behavior(status=400, error={"error": {"message": "bad seed"}})}
            for name in PROPOSERS:  # each model's first request is its proposer's
                second = faults.get(name, Behavior(latency_s=3.0))
                server.script(Behavior(), second, model=model_id(plan, name))
            start = time.monotonic()
            result = await query(plan, "q", trace)
            return result, time.monotonic() - start

    result, elapsed = arun(main())
    assert result.status == "failed" and elapsed < 2.0
    text = "\n".join(result.errors)
    assert result.errors[0] == ("layer refine: 0 of 6 agents answered (3 failed, 3 cancelled), "
                                "below its quorum of 4")
    assert "refine.1.qwen72" in text and "HTTP 503" in text
    assert "refine.2.wizardlm" in text and "not a JSON object" in text
    assert "refine.3.llama70" in text and "bad seed" in text
    for node in ("refine.0.qwen110", "refine.4.mixtral", "refine.5.dbrx"):
        assert f"{node}: cancelled: layer refine can no longer reach its quorum of 4" in text
    records = read_trace(trace)
    statuses = {r["node"]: r["status"] for r in records if r["type"] == "call"}
    assert statuses["refine.0.qwen110"] == "cancelled"
    assert statuses["aggregate.qwen110"] == "skipped"
    assert "fallback.qwen72" not in statuses
    assert records[-1]["status"] == "failed" and records[-1]["answer"] is None


def test_aggregator_that_fails_mid_stream_fails_over_to_the_fallback():
    prompt = "Write a haiku."

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = example_plan(server, "moa")
            # qwen110's third request is the aggregator's: it streams 3 tokens, then drops.
            server.script(Behavior(), Behavior(), Behavior(abort_after=3),
                          model=model_id(plan, "qwen110"))
            events: list = []
            result = await query(plan, prompt, on_delta=lambda t: events.append(("d", t)),
                                 on_restart=lambda n, why: events.append(("restart", n, why)))
            return plan, result, events

    plan, result, events = arun(main())
    assert result.status == "ok" and result.answered_by == "fallback.qwen72"
    restarts = [i for i, e in enumerate(events) if e[0] == "restart"]
    assert len(restarts) == 1 and events[restarts[0]][1] == "aggregate.qwen110"
    before = "".join(e[1] for e in events[:restarts[0]])
    after = "".join(e[1] for e in events[restarts[0] + 1:])
    assert before and after == result.answer
    assert result.answer.startswith(model_id(plan, "qwen72"))
    assert result.critical_path[-2:] == ["aggregate.qwen110", "fallback.qwen72"]


def test_retried_aggregator_restarts_the_stream(tmp_path):
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = solo_plan(server, max_retries=1)
            server.script(Behavior(abort_after=2))
            events: list = []
            result = await query(plan, "hi", trace, on_delta=lambda t: events.append(t),
                                 on_restart=lambda n, why: events.append(None))
            return result, events

    result, events = arun(main())
    assert result.status == "ok" and result.answered_by == "aggregate.a"
    cut = events.index(None)
    assert "".join(events[cut + 1:]) == result.answer and cut > 0
    attempts = [r for r in read_trace(trace) if r["type"] == "call"]
    assert [(r["attempt"], r["status"]) for r in attempts] == [(1, "failed"), (2, "ok")]


# --- the deadline ----------------------------------------------------------------------------

def test_deadline_cuts_a_hanging_layer():
    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = with_models(example_plan(server, "moa_lite", BudgetSpec(max_latency_s=1.2)),
                               **FAST)
            server.set_default(Behavior.hanging(), model=model_id(plan, "dbrx"))
            start = time.monotonic()
            result = await query(plan, "q")
            return result, time.monotonic() - start

    result, elapsed = arun(main())
    assert result.status == "failed"
    assert 1.1 < elapsed < 1.8
    assert any("deadline" in e for e in result.errors), result.errors


def test_deadline_never_starts_an_attempt_that_cannot_finish(tmp_path):
    """0.7 s left after the proposers; an attempt needs 1 s: the aggregator is not sent."""
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(latency_s=0.5)) as server:
            plan = with_models(example_plan(server, "moa_lite", BudgetSpec(max_latency_s=1.2)),
                               **FAST)
            start = time.monotonic()
            result = await query(plan, "q", trace)
            return server, result, time.monotonic() - start

    server, result, elapsed = arun(main())
    assert result.status == "failed" and elapsed < 1.0
    assert len(server.requests) == 6
    aggregate = [r for r in read_trace(trace) if r.get("node") == "aggregate.qwen72"]
    assert aggregate[0]["status"] == "skipped" and "deadline" in aggregate[0]["error"]


# --- the budget ---------------------------------------------------------------------------------

def test_a_tight_budget_shrinks_the_query_and_never_passes_its_limit(tmp_path):
    """At $0.005, with models profiled as the fake answers (8 tokens), the start fit keeps
    the paper's MoA whole (its expected cost fits), but not every worst case fits at once
    (the refiners each hold their input at a token a byte and 512 tokens out), so they wait
    for one another's holds; the aggregator, whose worst case no longer fits, asks for a
    shorter answer. Nothing is skipped, nothing spent past the limit."""
    trace = tmp_path / "t.jsonl"
    limit = 0.005

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = with_models(example_plan(server, "moa", BudgetSpec(max_usd=limit)),
                               answer_tokens=8)
            return server, await query(plan, "Explain budgets.", trace)

    server, result = arun(main())
    records = read_trace(trace)
    calls = [r for r in records if r["type"] == "call"]
    assert result.status == "ok" and result.answered_by == "aggregate.qwen110"
    assert not result.skipped and all(r["status"] == "ok" for r in calls)
    assert result.fitted is None and records[-1]["fitted"] is None  # kept whole at start
    assert sum(r["cost_usd"] for r in calls) == pytest.approx(result.cost_usd)
    assert result.cost_usd <= limit
    assert len(server.requests) == len(calls) == 13
    aggregate = next(r for r in calls if r["node"] == "aggregate.qwen110")
    assert 8 <= aggregate["max_tokens"] < 2048  # clamped, down to no less than its typical
    assert server.requests[-1].body["max_tokens"] == aggregate["max_tokens"]
    # The refiners did not all run at once: their worst cases did not fit together.
    refine = sorted((q.started, q.ended) for q in server.requests
                    if q.body["messages"][0]["role"] == "system" and q.body["max_tokens"] == 512)
    assert len(refine) == 6 and max(start for start, _ in refine) >= min(end for _, end in refine)


def test_a_tight_budget_is_fit_at_query_start_by_the_planner(tmp_path):
    """At $0.005 with the catalog's real answer lengths the paper's MoA cannot fit: before
    any call the planner's search (with the prompt at its byte bound) keeps the proposers
    and the aggregator it predicts best, and drops the rest, saying what each drop gave up;
    only the kept calls are sent, and nothing is left out at run time."""
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = example_plan(server, "moa", BudgetSpec(max_usd=0.005))
            return server, await query(plan, "Explain budgets.", trace)

    server, result = arun(main())
    records = read_trace(trace)
    fitted = result.fitted
    assert result.ok and result.cost_usd <= 0.005
    assert fitted["agents"] == len(server.requests) < fitted["declared_agents"] == 13
    assert fitted["estimate_usd"] <= fitted["room_usd"] == 0.005
    assert set(fitted["dropped"]) == {s.node for s in result.skipped}
    assert all(s.reason.startswith("fit: dropped at query start") for s in result.skipped)
    assert any(g.startswith("dropped layer refine (6 agents)") for g in fitted["gave_up"])
    assert result.fit[0].startswith("fit at query start (expected $0.0312 > max_usd $0.0050, "
                                    "the prompt at its bound of 48 tokens): propose[")
    assert fitted["over"] == ["$0.0312 > max_usd $0.0050"]
    assert result.fit[1:] == fitted["gave_up"]  # and nothing was left out at run time
    line = records[-1]
    assert line["fitted"] == fitted and line["fit"] == result.fit
    skipped = [r for r in records if r["type"] == "call" and r["status"] == "skipped"]
    assert sorted(r["node"] for r in skipped) == fitted["dropped"]
    # The estimate recorded is the fitted plan's, not the declared one's.
    assert line["estimate"]["usd"] < result.fitted["estimate_usd"]


def test_answers_longer_than_expected_refit_the_layers_left(tmp_path):
    """The start fit keeps the whole plan (models profiled at 8-token answers, expected
    $0.0031 of $0.004), but the proposers answer 300 words: no refiner's worst case fits
    beside what is kept for the final stage, so the refine layer is left out whole and the
    aggregator reads the proposers' answers shortened, with its typical answer length. The
    query answers within its budget, and its trace says how it was fit."""
    trace = tmp_path / "t.jsonl"

    def long_proposal(model_id):
        return lambda messages: None if messages[0]["role"] == "system" else \
            " ".join(f"{model_id[:4]}{i}" for i in range(300))

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = with_models(example_plan(server, "moa", BudgetSpec(max_usd=0.004)),
                               answer_tokens=8)
            for name in PROPOSERS:
                server.responders[model_id(plan, name)] = long_proposal(model_id(plan, name))
            return server, await query(plan, "Explain budgets.", trace)

    server, result = arun(main())
    records = read_trace(trace)
    assert result.status == "ok" and result.answered_by == "aggregate.qwen110", result.errors
    assert result.cost_usd <= 0.004 and not result.errors and result.fitted is None
    assert {s.node for s in result.skipped} == {f"refine.{i}.{m}" for i, m in
                                                enumerate(PROPOSERS)}
    assert all(s.reason.startswith("budget:") for s in result.skipped)
    assert "kept for the aggregator" in result.skipped[0].reason
    fit = records[-1]["fit"]
    assert "layer refine left out: none of its 6 agents fit (budget)" in fit
    assert "aggregate.qwen110: its references were shortened to fit the budget" in fit
    final = server.requests[-1].body
    assert final["max_tokens"] == 8  # qwen110's typical answer, as profiled here
    assert final["messages"][0]["content"].count(SHORTENED) == 6


def test_a_retry_is_made_only_when_the_budget_has_room_for_it(tmp_path):
    """Attempt 1 streams 50 tokens then is cut (billed: it was a 200; no usage came, so its
    tokens are counted at their bounds). An attempt's worst case is $0.000134: 34 tokens in
    (the 2 bytes of "Hi" and at most 32 of chat template), 100 out, at $1/M."""

    async def main(limit: float):
        trace = tmp_path / f"{limit}.jsonl"
        async with FakeOpenAI(api_key=KEY) as server:
            plan = solo_plan(server, max_usd=limit, max_retries=2)
            server.script(Behavior(tokens=100, truncate_after=50))
            return await query(plan, "Hi", trace), read_trace(trace)

    refused, records = arun(main(0.00025))
    assert refused.status == "failed"
    assert "retry 2 not made: budget" in " ".join(refused.errors)
    calls = [(r["attempt"], r["status"], r["error_type"]) for r in records if r["type"] == "call"]
    assert calls == [(1, "failed", "MalformedResponse"), (2, "skipped", None)]
    assert refused.cost_usd == pytest.approx(134e-6)
    assert 0 < refused.cost_usd <= 0.00025 < refused.cost_usd + 134e-6

    allowed, records = arun(main(0.0003))
    assert allowed.status == "ok" and allowed.attempts == 2
    assert allowed.cost_usd <= 0.0003


def test_ledger_counts_calls_in_flight_and_its_parent():
    run = BudgetLedger(1.0, name="run")
    first, second = BudgetLedger(0.6, parent=run), BudgetLedger(0.6, parent=run)
    assert first.reserve(0.5) is None and second.reserve(0.4) is None
    assert "the run past its max_usd" in second.reserve(0.2)
    assert run.refused == 1
    first.settle(0.5, 0.0, 0.1, 0.0)  # it cost less than its worst case
    assert second.reserve(0.2) is None
    assert run.spent_usd == pytest.approx(0.1) and run.reserved_usd == pytest.approx(0.6)
    assert "the query past its max_usd" in first.reserve(0.55)


def test_trace_never_holds_a_request_or_header(tmp_path):
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            await query(example_plan(server, "moa_lite"), "secret question?", trace)

    arun(main())
    text = trace.read_text()
    assert KEY not in text and "Authorization" not in text and "Bearer" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert all("messages" not in line for line in lines)
    assert '"secret question?"' not in text  # prompts are not traced, answers are


def test_budget_clamps_max_tokens_when_a_shorter_answer_fits(tmp_path):
    """$1.00/M: 100 answer tokens cost $0.0001; with room for ~60 output tokens the call is
    sent with a lower max_tokens instead of being skipped, and never overspends."""
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            # About 20 prompt tokens (x1.25 margin) plus 60 answer tokens fit; 100 do not.
            plan = solo_plan(server, max_tokens=100, max_usd=0.000085)
            plan.graph.graph["models"]["a"] = plan.models["a"].model_copy(
                update={"answer_tokens": 40})
            return server, await query(plan, "Clamp me.", trace)

    server, result = arun(main())
    [call] = [r for r in read_trace(trace) if r["type"] == "call"]
    assert call["status"] == "ok"
    assert 40 <= call["max_tokens"] < 100
    assert server.requests[0].body["max_tokens"] == call["max_tokens"]
    assert result.cost_usd <= 0.000085


def test_a_query_whose_smallest_plan_cannot_fit_fails_before_any_call(tmp_path):
    """Not even the aggregator alone, with its typical answer, fits $0.00004: the query
    fails at once, nothing sent, saying what the smallest plan would cost."""
    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = solo_plan(server, max_tokens=100, max_usd=0.00004)
            plan.graph.graph["models"]["a"] = plan.models["a"].model_copy(
                update={"answer_tokens": 40})
            return server, await query(plan, "Too poor.", tmp_path / "t.jsonl")

    server, result = arun(main())
    assert result.status == "failed" and not server.requests and result.cost_usd == 0
    assert result.errors[0].startswith("budget: not even the smallest plan fits")
    assert "over max_usd $0.0000400" in result.errors[0] and "nothing was sent" in result.errors[0]
    [line] = [r for r in read_trace(tmp_path / "t.jsonl") if r["type"] == "query"]
    assert line["status"] == "failed" and line["calls"] == 0
