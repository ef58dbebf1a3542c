"""Reasoning models as agents, against the fake server's three kinds of thinker: inline
``<think>`` (DeepSeek-R1 served as it is), a separate ``reasoning_content`` field (DeepSeek's
API, vLLM) and hidden with OpenAI's parameter rules (o-series: ``max_completion_tokens``, no
temperature, 400 ``unsupported_parameter`` otherwise).

What is held: the parameters each model is sent; no thinking reaches another agent's prompt
or the final answer unless ``references = with_reasoning`` asks for it; traces and results
keep it; thinking tokens are billed and bounded by the completion limit the hold counts; the
planner counts a model's ``thinking``; a final aggregator streams its answer alone.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fake_openai import THOUGHT_WORDS, Behavior, FakeOpenAI, expected_text
from hypothesis import given, settings
from hypothesis import strategies as st

import moac
from moac.constants import DEFAULT_AGGREGATE_PROMPT, DEFAULT_THINKING_TOKENS
from moac import MoaSemanticError
from moac.ir.prompts import render_template
from moac.providers.errors import UnsupportedParameter
from moac.providers.parse import Where, http_error
from moac.providers.thinking import InlineSplitter, split_inline
from moac.run import Delta, Reasoning, Runner
from moac.traces.trace import read_trace
from planner.estimate import estimate

KEY = "sk-test-reasoning-0123456789abcdef"
ENV = {"FAKE_OPENAI_KEY": KEY}
PROMPT = "Why is the sky blue?"
THOUGHT = 12  # tokens each visible thinker thinks
HIDDEN = 30   # tokens the hidden ones think

# model name -> (model id, how the fake server answers it)
THINKERS = {
    "r1": ("deepseek-r1", Behavior(reasoning="inline", reasoning_tokens=THOUGHT)),
    "qwq": ("qwq-32b", Behavior(reasoning="field", reasoning_tokens=THOUGHT)),
    "o3": ("o3-mini", Behavior(reasoning="hidden", reasoning_tokens=HIDDEN, openai_rules=True)),
    "o4": ("o4-mini", Behavior(reasoning="hidden", reasoning_tokens=HIDDEN, openai_rules=True)),
}


def catalog(url: str, max_retries: int = 0, **extra: str) -> str:
    """A provider at ``url`` and the four thinkers; ``extra`` adds settings to a model."""
    text = (f'provider p {{\n  kind = openai\n  base_url = "{url}"\n'
            f'  api_key = env FAKE_OPENAI_KEY\n  max_retries = {max_retries}\n}}\n')
    for name, (model_id, _) in THINKERS.items():
        more = extra.get(name, "")
        text += (f'model {name} = p "{model_id}" {{\n  price = $1.00/M in, $4.00/M out\n'
                 f'  params = 30B\n  context = 32k\n  length = 8 tok\n{more}}}\n')
    return text


def program(url: str, pipelines: str, **extra: str):
    return moac.compile_string(catalog(url, **extra) + pipelines)


MOA = """
pipeline think {
  layer propose = [r1, qwq, o3]
  aggregate o4
}
"""


def behave(server: FakeOpenAI, **changes) -> None:
    for name, (model_id, behavior) in THINKERS.items():
        server.set_default(behavior.__class__(**{**behavior.__dict__, **changes}),
                           model=model_id)


async def ask(plan, prompt=PROMPT, trace=None, **run):
    async with Runner(plan, environ=ENV, trace_path=trace) as runner:
        return await runner.run(prompt, **run)


def thought_in(text: str) -> bool:
    return "<think>" in text or any(word in text for word in THOUGHT_WORDS)


def user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


# --- a pipeline of thinkers ---------------------------------------------------------------------


def test_pipeline_of_three_kinds_of_thinker_answers_without_their_thinking(tmp_path):
    trace = tmp_path / "trace.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server)
            plan = program(server.url, MOA).plan("think")
            return plan, server, await ask(plan, trace=trace)

    plan, server, result = asyncio.run(main())
    assert result.status == "ok", result.errors
    answers = [expected_text(THINKERS[m][0], user(PROMPT)) for m in ("r1", "qwq", "o3")]
    final = [{"role": "system", "content": render_template(DEFAULT_AGGREGATE_PROMPT, answers)},
             *user(PROMPT)]
    assert result.answer == expected_text("o4-mini", final)
    assert not thought_in(result.answer)
    for request in server.requests:  # no thinking reached anyone's prompt
        assert not thought_in(json.dumps(request.body["messages"], ensure_ascii=False))
    assert server.requests[-1].body["messages"] == final
    # The result keeps the final call's thinking apart (hidden here: none shown).
    assert result.reasoning == ""
    shown = {o.node: o.reasoning for o in result.calls}
    assert shown["propose.0.r1"] == shown["propose.1.qwq"] == \
        "".join(" " + THOUGHT_WORDS[i % 4] for i in range(THOUGHT)).strip()
    assert shown["propose.2.o3"] == ""
    # ...and so does the trace, with the thinking tokens of each call.
    calls = {r["node"]: r for r in read_trace(trace) if r["type"] == "call"}
    assert calls["propose.0.r1"]["reasoning"] == shown["propose.0.r1"]
    assert calls["propose.1.qwq"]["reasoning_tokens"] == THOUGHT
    assert calls["propose.2.o3"]["reasoning_tokens"] == HIDDEN
    assert calls["aggregate.o4"]["reasoning_tokens"] == HIDDEN
    assert calls["propose.2.o3"]["reasoning"] is None


def test_each_model_is_sent_the_parameters_its_api_takes():
    pipelines = """
pipeline think {
  temperature = 0.7
  top_p = 0.9
  reasoning_effort = high
  layer propose = [r1, qwq, o3]
  aggregate o4 (reasoning_effort = low)
}
"""

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server)
            plan = program(server.url, pipelines).plan("think")
            return server, await ask(plan)

    server, result = asyncio.run(main())
    assert result.status == "ok", result.errors
    bodies = {r.body["model"]: r.body for r in server.requests}
    for model in ("deepseek-r1", "qwq-32b"):  # as any other model
        body = bodies[model]
        assert body["max_tokens"] == 512 and body["temperature"] == 0.7
        assert body["top_p"] == 0.9 and "reasoning_effort" not in body
    for model, effort in (("o3-mini", "high"), ("o4-mini", "low")):  # OpenAI's rules
        body = bodies[model]
        assert body["max_completion_tokens"] == 512 and body["reasoning_effort"] == effort
        assert "max_tokens" not in body and "temperature" not in body and "top_p" not in body


@pytest.mark.parametrize("declared, param, fix", [
    ("  reasoning = false\n", "max_tokens", "`token_param = max_completion_tokens`"),
    ("  reasoning = false\n  token_param = max_completion_tokens\n", "temperature",
     "`temperature = fixed`"),
])
def test_an_unsupported_parameter_names_the_model_and_what_to_declare(declared, param, fix):
    """Declared as an ordinary model, an o-series model refuses the request with OpenAI's
    400: the error names the model and the parameter, says what to declare, and is never
    retried (max_retries 2)."""
    pipelines = "pipeline solo {\n  aggregate o3\n}\n"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server)
            text = catalog(server.url, max_retries=2, o3=declared) + pipelines
            plan = moac.compile_string(text).plan("solo")
            return server, await ask(plan)

    server, result = asyncio.run(main())
    assert result.status == "failed"
    assert len(server.requests) == 1  # not retried
    error = next(e for e in result.errors if "does not take" in e)
    assert "'o3-mini'" in error and f"'{param}'" in error and fix in error


def test_unsupported_parameter_is_read_from_openais_words():
    body = json.dumps({"error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                   "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error", "param": "max_tokens",
        "code": "unsupported_parameter"}})
    error = http_error(400, {"x-should-retry": "true"}, body, Where("openai", "o1"),
                       now_wall=0.0)
    assert isinstance(error, UnsupportedParameter) and error.param == "max_tokens"
    assert error.should_retry is False  # whatever the header said
    assert "declare `token_param = max_completion_tokens` on its model" in error.message
    value = json.dumps({"error": {"message": "Unsupported value: 'reasoning_effort' does "
                                             "not support 'minimal' with this model.",
                                  "type": "invalid_request_error"}})
    error = http_error(400, {}, value, Where("openai", "o1"), now_wall=0.0)
    assert isinstance(error, UnsupportedParameter) and error.param == "reasoning_effort"
    assert "another reasoning_effort" in error.message
    plain = json.dumps({"error": {"message": "Invalid 'messages'", "code": "invalid_value"}})
    assert not isinstance(http_error(400, {}, plain, Where("p", "m"), now_wall=0.0),
                          UnsupportedParameter)


# --- references = with_reasoning ----------------------------------------------------------------


def test_with_reasoning_references_hand_the_thinking_on_when_asked():
    pipelines = """
pipeline open {
  layer propose = [r1, qwq]
  layer refine = [qwq] (references = with_reasoning)
  aggregate qwq
}
"""

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server)
            plan = program(server.url, pipelines).plan("open")
            return plan, server, await ask(plan)

    plan, server, result = asyncio.run(main())
    assert result.status == "ok", result.errors
    assert plan.call("refine.0.qwq").references == "with_reasoning"
    refine, final = server.requests[2].body["messages"], server.requests[3].body["messages"]
    system = refine[0]["content"]
    thought = "".join(" " + THOUGHT_WORDS[i % 4] for i in range(THOUGHT)).strip()
    answer = expected_text("deepseek-r1", user(PROMPT))
    assert f"1. <think>\n{thought}\n</think>\n\n{answer}" in system
    assert not thought_in(json.dumps(final, ensure_ascii=False))  # the aggregator: answers
    assert not thought_in(result.answer) and thought_in(result.reasoning)
    # The worst case a run admits a query with counts the tags around each thinking read
    # (the thinking and the answer share their writer's limit).
    from moac.constants import REASONING_REFERENCE
    from moac.run.executor import Executor

    def worst(text):
        other = program("http://127.0.0.1:9/v1", text).plan("open")
        return Executor(other, {n: None for n in other.providers}).worst_case_usd(user(PROMPT))

    tags = len(REASONING_REFERENCE.encode())
    plain = pipelines.replace(" (references = with_reasoning)", "")
    assert worst(pipelines) - worst(plain) == pytest.approx(2 * tags * 1.0 / 1e6)


# --- tokens, costs and the budget ---------------------------------------------------------------


def test_costs_count_thinking_tokens_as_output():
    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server)
            plan = program(server.url, MOA).plan("think")
            return plan, server, await ask(plan)

    plan, server, result = asyncio.run(main())
    billed = {model: (prompt, completion) for model, prompt, completion in server.billed}
    assert billed["o3-mini"][1] == HIDDEN + 8 and billed["qwq-32b"][1] == THOUGHT + 8
    assert billed["deepseek-r1"][1] == THOUGHT + 3 + 8  # its tags are tokens too
    usd = sum((p * 1.0 + c * 4.0) / 1e6 for p, c in billed.values())
    assert result.cost_usd == pytest.approx(usd)
    assert result.completion_tokens == sum(c for _, c in billed.values())
    # What a later layer read: the answer's own length, not its thinking.
    assert {o.node: o.answer_tokens for o in result.calls}["propose.2.o3"] == 8


def test_budget_hold_bounds_thinking_by_the_completion_limit(tmp_path):
    """A hidden thinker that would think 5,000 tokens is held, sent and billed at its
    completion limit; its answer is empty, and nothing is spent past the hold."""
    pipelines = "pipeline solo {\n  max_tokens = 100\n  aggregate o3\n}\n" \
                "budget {\n  max_usd = $0.01\n}\n"
    trace = tmp_path / "trace.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server, reasoning_tokens=5000)
            plan = program(server.url, pipelines).plan("solo")
            return server, await ask(plan, trace=trace)

    server, result = asyncio.run(main())
    assert server.requests[0].body["max_completion_tokens"] == 100
    (call,) = [r for r in read_trace(trace) if r["type"] == "call"]
    assert call["completion_tokens"] == 100 and call["reasoning_tokens"] == 100
    assert call["finish_reason"] == "length"
    assert result.cost_usd <= 0.01
    assert result.cost_usd == pytest.approx((call["prompt_tokens"] * 1.0 + 100 * 4.0) / 1e6)


@pytest.mark.parametrize("max_usd, sent", [(0.005, None), (0.01, range(2008, 2500))])
def test_a_clamped_limit_leaves_room_for_the_thinking(max_usd, sent):
    """The budget shortens a reasoning model's limit only down to its thinking and its
    answer (2,000 + 8 tokens here): below that it would pay for thinking with no answer,
    so the query fails before any call instead."""
    pipelines = ("pipeline solo {\n  max_tokens = 4096\n  aggregate o3\n}\n"
                 f"budget {{\n  max_usd = ${max_usd}\n}}\n")

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server)
            plan = program(server.url, pipelines).plan("solo")
            return server, await ask(plan)

    server, result = asyncio.run(main())
    if sent is None:
        assert result.status == "failed" and not server.requests
        assert "not even the smallest plan fits" in result.errors[0]
    else:
        assert result.status == "ok", result.errors
        assert server.requests[0].body["max_completion_tokens"] in sent
        assert result.cost_usd <= max_usd


def test_unreported_usage_of_a_hidden_thinker_counts_at_the_limit():
    """No usage from a model that may think unseen: its completion is counted at the limit,
    not at the few tokens of the answer it showed."""
    pipelines = "pipeline solo {\n  max_tokens = 300\n  aggregate o3\n}\n"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server, missing_usage=True)
            plan = program(server.url, pipelines).plan("solo")
            return await ask(plan)

    result = asyncio.run(main())
    assert result.status == "ok" and result.completion_tokens == 300


def test_thinking_reported_apart_from_the_completion_is_added_to_it():
    pipelines = "pipeline solo {\n  aggregate qwq\n}\n"
    claimed = {"prompt_tokens": 10, "completion_tokens": 8,
               "completion_tokens_details": {"reasoning_tokens": 40}}

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server, claim_usage=claimed)
            plan = program(server.url, pipelines).plan("solo")
            return await ask(plan)

    result = asyncio.run(main())
    assert result.completion_tokens == 48
    assert result.cost_usd == pytest.approx((10 + 48 * 4.0) / 1e6)


# --- streaming ------------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregator", ["r1", "qwq"])
def test_a_thinking_aggregator_streams_its_answer_alone(aggregator, tmp_path):
    pipelines = f"pipeline solo {{\n  aggregate {aggregator}\n}}\n"
    trace = tmp_path / "trace.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server, token_delay_s=0.005)
            plan = program(server.url, pipelines).plan("solo")
            deltas: list[str] = []
            plain = await ask(plan, trace=trace, on_delta=deltas.append)
            events = []
            async with Runner(plan, environ=ENV) as runner:
                stream = runner.stream(PROMPT, reasoning=True)
                async for event in stream:
                    events.append(event)
            return plain, deltas, events, stream.result

    plain, deltas, events, streamed = asyncio.run(main())
    answer = expected_text(THINKERS[aggregator][0], user(PROMPT))
    assert plain.answer == answer == "".join(deltas) and not thought_in("".join(deltas))
    kinds = [type(e) for e in events]
    assert Reasoning in kinds and kinds.index(Delta) > max(
        i for i, kind in enumerate(kinds) if kind is Reasoning)  # all thinking first
    assert "".join(e.text for e in events if isinstance(e, Delta)) == answer
    assert "".join(e.text for e in events if isinstance(e, Reasoning)).strip() == \
        streamed.reasoning
    (call,) = [r for r in read_trace(trace) if r["type"] == "call"]
    # Time to first token: to the answer's, and apart, to the thinking's (which came first).
    assert 0 < call["reasoning_ttft_s"] < call["ttft_s"]
    assert call["ttft_s"] - call["reasoning_ttft_s"] >= 0.005 * (THOUGHT - 1)


@settings(max_examples=200, deadline=None)
@given(body=st.sampled_from(["<think>a b</think>\n\nthe answer", "  <think>\nx</think>y",
                             "no tags <think>here</think>", "<thin", "<think>cut off",
                             "   ", "<think></think>", "plain answer", "</think>odd"]),
       cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6))
def test_inline_split_is_the_same_in_any_chunking(body, cuts):
    points = sorted({c for c in cuts if c < len(body)})
    chunks = [body[i:j] for i, j in zip([0, *points], [*points, len(body)])]
    splitter = InlineSplitter()
    thought, answer = [], []
    for chunk in chunks:
        t, a = splitter.feed(chunk)
        thought.append(t)
        answer.append(a)
    t, a = splitter.close()
    assert (("".join(thought) + t).strip(), "".join(answer) + a) == split_inline(body)


def test_inline_split():
    assert split_inline("<think>\nhmm\n</think>\n\nYes.") == ("hmm", "Yes.")
    assert split_inline("  plain <think>x</think>") == ("", "  plain <think>x</think>")
    assert split_inline("<think>never closed") == ("never closed", "")
    assert split_inline("<thi") == ("", "<thi")


# --- the language and the planner -----------------------------------------------------------------


def test_openai_reasoning_ids_get_its_rules_by_default():
    text = catalog("http://127.0.0.1:9/v1") + (
        'model gpt5 = p "gpt-5.1" {\n  price = $1.00/M\n  params = 1B\n  context = 8k\n}\n'
        'model routed = p "openai/o3" {\n  price = $1.00/M\n  params = 1B\n  context = 8k\n}\n'
        'model custom = p "my-deployment" {\n  price = $1.00/M\n  params = 1B\n'
        '  context = 8k\n  reasoning = true\n  token_param = max_tokens\n  thinking = 300 tok\n}\n'
        'model loose = p "o1" {\n  price = $1.00/M\n  params = 1B\n  context = 8k\n'
        '  temperature = any\n}\n')
    models = moac.compile_string(text).models
    for name in ("o3", "o4", "gpt5"):
        m = models[name]
        assert m.reasoning and m.token_param == "max_completion_tokens"
        assert m.fixed_temperature and m.thinking_tokens == DEFAULT_THINKING_TOKENS
    for name in ("r1", "qwq", "routed"):
        m = models[name]
        assert not m.reasoning and m.token_param == "max_tokens"
        assert not m.fixed_temperature and m.thinking_tokens == 0
    custom = models["custom"]
    assert custom.reasoning and custom.token_param == "max_tokens"
    assert custom.fixed_temperature and custom.thinking_tokens == 300
    assert models["loose"].reasoning and not models["loose"].fixed_temperature


@pytest.mark.parametrize("model, pipeline, wanted", [
    ("  temperature = 0.5\n", "pipeline s {\n  aggregate r1\n}\n", "E202"),
    ("  token_param = max_length\n", "pipeline s {\n  aggregate r1\n}\n", "E206"),
    ("  thinking = 2s\n", "pipeline s {\n  aggregate r1\n}\n", "E203"),
    ("", "pipeline s {\n  layer a = [r1] (references = with_reasoning)\n  aggregate r1\n}\n",
     "E403"),
    ("", "pipeline s {\n  references = everything\n  aggregate r1\n}\n", "E206"),
    ("", "pipeline s {\n  aggregate o3 (top_p = 0.5)\n}\n", "E604"),
    ("", "pipeline s {\n  layer a = o3 x 2 (temperature = [0.2, 0.4])\n  aggregate r1\n}\n",
     "E604"),
    ("", "pipeline s {\n  reasoning_effort = extreme\n  aggregate o3\n}\n", "E206"),
])
def test_what_the_checker_refuses(model, pipeline, wanted):
    with pytest.raises(MoaSemanticError) as caught:
        moac.compile_string(catalog("http://127.0.0.1:9/v1", r1=model) + pipeline)
    assert wanted in [d.code for d in caught.value.diagnostics]


def test_inherited_settings_apply_where_they_can():
    text = catalog("http://127.0.0.1:9/v1") + (
        "pipeline s {\n  temperature = 0.3\n  reasoning_effort = medium\n"
        "  layer a = [r1, o3]\n  aggregate o4\n}\n")
    plan = moac.compile_string(text).plan("s")
    assert plan.call("a.1.o3").sampling.reasoning_effort == "medium"


def test_planner_counts_a_models_thinking():
    """Thinking is billed and timed as output within max_tokens; a later call reads the
    answer alone."""
    text = catalog("http://127.0.0.1:9/v1", qwq="  thinking = 100 tok\n") + (
        "pipeline s {\n  max_tokens = 512\n  layer a = [qwq]\n  aggregate r1\n}\n"
        "pipeline t {\n  max_tokens = 50\n  layer a = [qwq]\n  aggregate r1\n}\n")
    compiled = moac.compile_string(text)
    plan = compiled.plan("s")
    qwq, r1 = plan.models["qwq"], plan.models["r1"]
    calls = {c.id: c for c in estimate(plan, 256, "expected").calls}
    proposer, aggregator = calls["a.0.qwq"], calls["aggregate.r1"]
    assert proposer.output_tokens == 108  # 100 thinking + its 8-token answer
    assert proposer.usd == pytest.approx(qwq.usd(proposer.input_tokens, 108))
    assert proposer.seconds == pytest.approx(
        qwq.ttft_s + proposer.input_tokens / qwq.prefill_tokens_per_s
        + 108 / qwq.output_tokens_per_s)
    alone = {c.id: c for c in estimate(moac.compile_string(
        catalog("http://127.0.0.1:9/v1") + "pipeline s {\n  layer a = [qwq]\n"
        "  aggregate r1\n}\n").plan("s"), 256, "expected").calls}
    assert aggregator.input_tokens == alone["aggregate.r1"].input_tokens  # read: 8 tokens
    assert r1.thinking_tokens == 0
    # A limit below thinking and answer: thinking first, the answer cut.
    cut = {c.id: c for c in estimate(compiled.plan("t"), 256, "expected").calls}
    assert cut["a.0.qwq"].output_tokens == 50
    worst = {c.id: c for c in estimate(plan, 256, "worst").calls}
    assert worst["a.0.qwq"].output_tokens == 512


def test_calibrated_catalog_reads_back_with_its_api_settings():
    from moac.evaluation.calibrate import Calibration, ModelFit
    from moac.evaluation.calibrate_render import render_moa

    text = catalog("http://127.0.0.1:9/v1", qwq="  thinking = 100 tok\n",
                   o3="  temperature = any\n  thinking = 50 tok\n") + (
        'model plain = p "o1-mini" {\n  price = $1.00/M\n  params = 1B\n  context = 8k\n'
        '  reasoning = false\n}\n')
    compiled = moac.compile_string(text)
    models = compiled.models
    fits = {name: ModelFit(name, spec, spec) for name, spec in models.items()}
    calibration = Calibration(paths=[], run_ids=[], created_at=0.0,
                              providers=compiled.providers, fits=fits)
    again = moac.compile_string(render_moa(calibration))
    assert again.models == models


# --- record and replay ----------------------------------------------------------------------------


def test_replay_gives_back_the_thinking_it_recorded(tmp_path):
    """A with_reasoning pipeline replayed from the response cache sends its aggregator the
    very prompt it was recorded with: the thinking is stored with the answer."""
    from moac.run.cache import ResponseCache

    pipelines = """
pipeline open {
  layer propose = [qwq, o3]
  aggregate r1 (references = with_reasoning)
}
"""
    path = tmp_path / "cache.sqlite"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server)
            plan = program(server.url, pipelines).plan("open")
            with ResponseCache(path) as cache:
                async with Runner(plan, environ=ENV, cache=cache, cache_mode="record") as r:
                    recorded = await r.run(PROMPT)
            sent = [request.body["messages"] for request in server.requests]
            with ResponseCache(path, create=False) as cache:
                async with Runner(plan, environ={}, cache=cache, cache_mode="replay") as r:
                    replayed = await r.run(PROMPT)
            return sent, recorded, replayed, len(server.requests)

    sent, recorded, replayed, requests = asyncio.run(main())
    assert recorded.status == replayed.status == "ok" and requests == 3
    assert thought_in(sent[-1][0]["content"])  # the aggregator read qwq's thinking
    assert (replayed.answer, replayed.reasoning) == (recorded.answer, recorded.reasoning)
    assert [(o.reasoning, o.reasoning_tokens) for o in replayed.calls] == \
        [(o.reasoning, o.reasoning_tokens) for o in recorded.calls]


def test_a_cache_file_from_before_reasoning_is_opened_and_extended(tmp_path):
    import sqlite3

    from moac.constants import CACHE_APPLICATION_ID, CACHE_FORMAT_VERSION
    from moac.run.cache import ResponseCache

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA application_id = {CACHE_APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {CACHE_FORMAT_VERSION}")
    db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
               "created_at REAL NOT NULL, text TEXT NOT NULL, finish_reason TEXT NOT NULL, "
               "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
               "tokens_reported INTEGER NOT NULL)")
    db.execute("INSERT INTO responses VALUES ('k', 'm', 0, 'an answer', 'stop', 3, 4, 1)")
    db.commit()
    db.close()
    with ResponseCache(path, create=False) as cache:
        hit = cache.get("k")
    assert (hit.text, hit.reasoning, hit.reasoning_tokens) == ("an answer", "", 0)


def test_calibrate_fits_the_thinking_apart_from_the_answer(tmp_path):
    from moac.evaluation.calibrate import MIN_SAMPLES, calibrate

    pipelines = "pipeline solo {\n  aggregate qwq\n}\n"
    trace = tmp_path / "trace.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            behave(server)
            plan = program(server.url, pipelines).plan("solo")
            async with Runner(plan, environ=ENV, trace_path=str(trace)) as runner:
                for i in range(MIN_SAMPLES):
                    await runner.run(f"question {i}", query_id=f"q{i}")

    asyncio.run(main())
    fit = calibrate([str(trace)]).fits["qwq"]
    assert fit.declared.thinking_tokens == 0
    assert (fit.calibrated.answer_tokens, fit.calibrated.thinking_tokens) == (8, THOUGHT)
    assert f"thinking 0 -> {THOUGHT} tok" in fit.length
