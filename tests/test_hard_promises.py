"""Hard promises against hostile input, over real HTTP to the fake server.

- Text from outside (a provider's answer, a prompts file, argv, stdin, an answers file) is
  made valid before use: a lone surrogate never ends a run, and a batch goes on.
- The budget's hold is a true upper bound of what a provider can bill: with the fake
  counting tokens as densely as any tokeniser can (a token a UTF-8 byte, or a token a
  word), dense, CJK, emoji and numeric prompts never take spending past a cap, per query or
  per run; usage reported past a request's bounds is booked and named.
- Every response is bounded in bytes by the max_tokens it was asked for, streamed or not.
- A 200 that is not an answer (an HTML page) says what came back.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import Behavior, FakeOpenAI, serve_in_thread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_executor import ENV, KEY, arun, example_plan, query, solo_plan

import moac
from moac.ir.spec import BudgetSpec
from moac.providers.errors import MalformedResponse
from moac.providers.openai import ChatRequest, OpenAICompatibleClient, response_limit
from moac.run import PromptItem, Runner, load_prompts, read_answers
from moac.run.batch_files import RunError
from moac.traces.trace import read_trace

ROOT = Path(__file__).resolve().parent.parent


def billed_usd(server: FakeOpenAI, plan) -> float:
    """What the fake's own usage reports would cost at the plan's prices."""
    by_id = {m.model_id: m for m in plan.models.values()}
    return sum(by_id[model].usd(p, c) for model, p, c in server.billed)


# --- text that UTF-8 cannot hold ------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_with_a_lone_surrogate_is_repaired_everywhere_it_goes(tmp_path, stream):
    """A proposer answers with the JSON escape "\\ud800": the query still answers, the
    aggregator's request carries U+FFFD, and the trace and a response cache take it."""
    from moac.run.cache import ResponseCache
    trace = tmp_path / "t.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = example_plan(server, "moa_lite")
            server.set_default(Behavior(text="caf\ud800 au lait", ascii_json=True,
                                        ignore_stream=not stream))
            with ResponseCache(tmp_path / "c.sqlite") as cache:
                async with Runner(plan, environ=ENV, trace_path=trace, cache=cache,
                                  cache_mode="record") as runner:
                    result = await runner.run("Say it.")
                stored = len(cache)
            return server, result, stored

    server, result, stored = arun(main())
    assert result.ok and result.answer == "caf\ufffd au lait"
    aggregator = server.requests[-1].body["messages"][0]["content"]
    assert "caf\ufffd au lait" in aggregator and "\ud800" not in aggregator
    assert stored == 7
    assert any(r.get("answer") == "caf\ufffd au lait" for r in read_trace(trace))


def test_a_prompts_line_with_a_lone_surrogate_is_answered_and_the_batch_finishes(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "first"}\n'
                       '{"id": "b", "prompt": "caf\\ud800", "note": "\\udfff"}\n'
                       '{"id": "c", "prompt": "third"}\n', encoding="utf-8")
    items = load_prompts(str(prompts))
    assert items[1].prompt == "caf\ufffd" and items[1].record["note"] == "\ufffd"
    out = tmp_path / "a.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            async with Runner(example_plan(server, "moa_lite"), environ=ENV) as runner:
                return await runner.run_batch(items, str(out))

    state = arun(main())
    assert state.ok == 3 and state.failed == 0
    rows = read_answers(str(out))
    assert [r["id"] for r in rows] == ["a", "b", "c"] and rows[1]["prompt"] == "caf\ufffd"


def test_an_answers_file_holding_a_surrogate_escape_is_resumed_not_fatal(tmp_path):
    """An answers file written by anything (here: a JSON escape no UTF-8 holds) is read,
    its item skipped as answered, and compacted without an encoding error."""
    from moac.run.batch_files import compact_answers
    out = tmp_path / "a.jsonl"
    out.write_text('{"id": "0", "prompt": "x", "output": "bad \\ud800", "status": "ok"}\n')
    items = [PromptItem("0", ("x",), "prompt", {"prompt": "x"})]
    compact_answers(str(out), items)
    assert json.loads(out.read_text())["output"] == "bad \ufffd"


def test_one_item_whose_data_cannot_be_run_fails_alone_and_the_batch_goes_on(tmp_path):
    """A client that raises something unforeseen for one prompt: that item fails with the
    error named; the others are answered."""

    class Picky:
        def __init__(self, inner):
            self.inner = inner

        async def chat(self, request, **kwargs):
            if "poison" in json.dumps(request.messages):
                raise ValueError("cannot use this prompt")
            return await self.inner.chat(request, **kwargs)

    items = [PromptItem(str(i), (p,), "prompt", {"prompt": p})
             for i, p in enumerate(["one", "poison", "three"])]

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            plan = solo_plan(server)
            async with Runner(plan, environ=ENV) as probe:  # the real client, wrapped
                clients = {name: Picky(c) for name, c in probe.executor.clients.items()}
                async with Runner(plan, environ=ENV, clients=clients) as runner:
                    return await runner.run_batch(items, str(tmp_path / "a.jsonl"))

    state = arun(main())
    assert (state.ok, state.failed) == (2, 1)
    rows = {r["id"]: r for r in read_answers(str(tmp_path / "a.jsonl"))}
    assert rows["1"]["status"] == "failed"
    assert rows["1"]["errors"] == ["this item could not be run: ValueError: cannot use this "
                                   "prompt"]


def _moa_file(tmp_path: Path, url: str) -> Path:
    source = (f'provider p {{\n  kind = openai\n  base_url = "{url}"\n'
              '  api_key = env FAKE_OPENAI_KEY\n  max_retries = 0\n}\n'
              'model a = p "model-a" {\n  price = $1.00/M\n  params = 10B\n  context = 32k\n}\n'
              'pipeline solo {\n  max_tokens = 50\n  aggregate a\n}\n')
    path = tmp_path / "solo.moa"
    path.write_text(source)
    return path


def test_argv_and_stdin_bytes_that_are_not_utf8_are_repaired(tmp_path):
    """`moac run FILE --prompt $'caf\\xe9'` and the same bytes on stdin: answered, exit 0."""
    with serve_in_thread(api_key=KEY) as server:
        path = _moa_file(tmp_path, server.url)
        env = {**os.environ, **ENV}
        by_argv = subprocess.run([sys.executable, "-m", "moac", "run", str(path), "--prompt",
                                  b"caf\xe9 ?"], capture_output=True, env=env, timeout=60)
        by_stdin = subprocess.run([sys.executable, "-m", "moac", "run", str(path), "--prompt",
                                   "-"], input=b"caf\xe9 \xff?", capture_output=True, env=env,
                                  timeout=60)
        sent = [r.body["messages"][-1]["content"] for r in server.requests]
    assert by_argv.returncode == 0, by_argv.stderr.decode()
    assert by_stdin.returncode == 0, by_stdin.stderr.decode()
    assert b"Traceback" not in by_argv.stderr + by_stdin.stderr
    assert sent == ["caf\ufffd ?", "caf\ufffd \ufffd?"]


def test_prompts_nested_too_deeply_are_a_clear_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("[" * 100_000 + "\n")
    with pytest.raises(RunError, match="nest too deeply"):
        load_prompts(str(path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(RunError, match="no prompts in it"):
        load_prompts(str(empty))


# --- budgets against the densest tokenisers --------------------------------------------------

ADVERSARIAL = {
    "dense": " ".join("a" for _ in range(3000)),
    "cjk": "日本語の文章を読む。" * 400,
    "emoji": "🙂🧪🚀" * 700,
    "numbers": " ".join(str(10 ** 30 + i) for i in range(200)),
}


@pytest.mark.parametrize("count", ["bytes", "words"])
@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_a_query_never_spends_past_max_usd_whatever_the_tokeniser(tmp_path, count, shape):
    limit = 0.02

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(count=count, tokens=600)) as server:
            plan = example_plan(server, "moa", BudgetSpec(max_usd=limit))
            result = await query(plan, ADVERSARIAL[shape], tmp_path / "t.jsonl")
            return server, plan, result

    server, plan, result = arun(main())
    assert billed_usd(server, plan) <= limit
    assert result.cost_usd == pytest.approx(billed_usd(server, plan))
    # Nothing failed for budget alone: it answered, or was refused before any call.
    assert result.ok or not server.requests, result.errors


def test_a_run_never_spends_past_max_usd_total_with_dense_prompts(tmp_path):
    total = 0.15
    prompts = [ADVERSARIAL[k] + f" #{i}" for i in range(6) for k in sorted(ADVERSARIAL)]
    items = [PromptItem(str(i), (p,), "prompt", {"prompt": p}) for i, p in enumerate(prompts)]

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(count="bytes", tokens=600)) as server:
            plan = example_plan(server, "moa_lite", parallel=64)
            async with Runner(plan, environ=ENV, max_usd_total=total) as runner:
                state = await runner.run_batch(items, str(tmp_path / "a.jsonl"), concurrency=8)
            return server, plan, state

    server, plan, state = arun(main())
    assert billed_usd(server, plan) <= total
    assert state.ok > 0 and state.failed == 0  # admitted queries were never left half-paid


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=3000))
def test_hypothesis_any_prompt_stays_within_its_budget(prompt):
    limit = 0.004

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(count="bytes", tokens=200)) as server:
            plan = example_plan(server, "moa_lite", BudgetSpec(max_usd=limit))
            result = await query(plan, prompt)
            return server, plan, result

    server, plan, result = arun(main())
    assert billed_usd(server, plan) <= limit
    assert result.ok or not server.requests, result.errors


def test_usage_reported_past_the_bounds_is_booked_and_named(tmp_path):
    """A server claiming a million completion tokens for max_tokens 50: the claim is booked
    (the ledger then stops what it must) and recorded as an error, never silently."""
    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(
                claim_usage={"prompt_tokens": 10, "completion_tokens": 1_000_000})) as server:
            plan = solo_plan(server, max_tokens=50)
            return await query(plan, "Hi", tmp_path / "t.jsonl")

    result = arun(main())
    assert result.completion_tokens == 1_000_000
    assert result.cost_usd == pytest.approx(1_000_010 / 1e6)
    assert any("usage past the request's bounds: 1,000,000 completion tokens for max_tokens 50"
               in e for e in result.errors)
    [call] = [r for r in read_trace(tmp_path / "t.jsonl") if r["type"] == "call"]
    assert "usage past the request's bounds" in call["error"]


# --- bounded responses -----------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
def test_a_flood_past_max_tokens_is_cut_and_not_retried(stream):
    """300 MB would be accepted before; now the attempt stops near its bound (1 MiB + 1 KiB
    a token), fails as too_large, and is not retried."""
    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(
                flood_bytes=20_000_000, ignore_stream=not stream)) as server:
            import aiohttp
            async with aiohttp.ClientSession() as session:
                client = OpenAICompatibleClient(
                    session, server.provider_spec(max_retries=2), moac_secret())
                request = ChatRequest("m", [{"role": "user", "content": "hi"}],
                                      _sampling(100), stream=stream)
                with pytest.raises(MalformedResponse) as caught:
                    await client.chat(request)
            return server, caught.value

    server, error = arun(main())
    assert error.what == "too_large" and not error.retryable
    assert len(server.requests) == 1 and len(error.attempts) == 1
    assert response_limit(100) < 2 * 1024 * 1024


def test_an_answer_longer_than_max_tokens_can_be_is_refused():
    """Within the byte bound, but more text than 50 tokens can hold (16 bytes a token)."""
    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(
                flood_bytes=10_000, ignore_stream=True)) as server:
            import aiohttp
            async with aiohttp.ClientSession() as session:
                client = OpenAICompatibleClient(session, server.provider_spec(), moac_secret())
                with pytest.raises(MalformedResponse, match="ignored max_tokens"):
                    await client.chat(ChatRequest("m", [{"role": "user", "content": "hi"}],
                                                  _sampling(50)))

    arun(main())


@pytest.mark.parametrize("stream", [True, False])
def test_an_html_page_with_status_200_says_what_came_back(stream):
    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(html_200=True)) as server:
            import aiohttp
            async with aiohttp.ClientSession() as session:
                client = OpenAICompatibleClient(session, server.provider_spec(), moac_secret())
                with pytest.raises(MalformedResponse) as caught:
                    await client.chat(ChatRequest("m", [{"role": "user", "content": "hi"}],
                                                  _sampling(50), stream=stream))
            return caught.value

    error = arun(main())
    assert "got text/html" in str(error) and "502 Bad Gateway" in str(error)
    assert error.what == "not_an_answer"


def moac_secret():
    from pydantic import SecretStr
    return SecretStr(KEY)


def _sampling(max_tokens: int):
    from moac.ir.spec import Sampling
    return Sampling(temperature=0.7, max_tokens=max_tokens)
