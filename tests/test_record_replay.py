"""``moac run --record`` then ``--replay`` over a real local server: the same answers, nothing
sent, nothing billed, no key needed; a request never recorded fails the run loudly."""

from __future__ import annotations

import asyncio
import json

import pytest
from fake_openai import FakeOpenAI

import moac.cli.main as cli
from moac.traces.trace import read_trace

KEY = "sk-test-replay-0123456789abcdef"


def pipeline_file(tmp_path, url: str) -> str:
    path = tmp_path / "p.moa"
    path.write_text(f'''
provider p {{
  kind = openai
  base_url = "{url}"
  api_key = env FAKE_OPENAI_KEY
  max_retries = 0
}}
model a = p "m-a" {{
  price = $1.00/M
  params = 10B
  context = 32k
}}
model b = p "m-b" {{
  price = $2.00/M
  params = 20B
  context = 32k
}}
pipeline two {{
  max_tokens = 50
  layer propose = [a x 2, b]
  aggregate b
}}
''')
    return str(path)


def run_cli(argv: list[str]) -> int:
    return cli.main(argv)


def test_record_then_replay_answers_the_same_and_costs_nothing(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": i, "prompt": f"question {i}"})
                                 for i in range(3)) + "\n")
    cache = str(tmp_path / "cache.sqlite")

    async def record():
        async with FakeOpenAI(api_key=KEY) as server:
            path = pipeline_file(tmp_path, server.url)
            monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
            code = await asyncio.to_thread(run_cli, [
                "run", path, "--prompts", str(prompts), "--out", str(tmp_path / "rec.jsonl"),
                "--trace", str(tmp_path / "rec-trace.jsonl"), "--record", cache])
            return code, len(server.requests), path

    code, sent, path = asyncio.run(record())
    assert code == 0 and sent == 3 * 4  # two copies of a are two requests, not one
    assert "0 answered from the cache, 12 recorded" in capsys.readouterr().err

    # The server is gone and the key unset: replay needs neither.
    monkeypatch.delenv("FAKE_OPENAI_KEY")
    code = run_cli(["run", path, "--prompts", str(prompts), "--out",
                    str(tmp_path / "rep.jsonl"), "--trace", str(tmp_path / "rep-trace.jsonl"),
                    "--replay", cache])
    assert code == 0, capsys.readouterr().err
    recorded = [json.loads(line) for line in open(tmp_path / "rec.jsonl")]
    replayed = [json.loads(line) for line in open(tmp_path / "rep.jsonl")]
    assert [r["output"] for r in replayed] == [r["output"] for r in recorded]
    assert all(r["cost_usd"] > 0 for r in recorded)
    assert all(r["cost_usd"] == 0 for r in replayed)
    calls = [r for r in read_trace(tmp_path / "rep-trace.jsonl") if r["type"] == "call"]
    assert len(calls) == 12 and all(c["cost_usd"] == 0 and c["tflops"] == 0 for c in calls)
    assert KEY not in open(cache, "rb").read().decode("latin-1")


def test_a_replay_miss_fails_the_run_and_names_the_model(tmp_path, capsys):
    cache = tmp_path / "cache.sqlite"
    from moac.run.cache import ResponseCache
    ResponseCache(cache).close()  # an empty cache
    path = pipeline_file(tmp_path, "http://127.0.0.1:9/v1")
    code = run_cli(["run", path, "--prompt", "hello", "--replay", str(cache)])
    err = capsys.readouterr().err
    assert code == 1
    assert "no recorded answer for this request (model m-a)" in err
    assert "--replay: 4 requests had no recorded answer" in err or \
        "had no recorded answer" in err


def test_replay_of_a_missing_or_foreign_file_is_an_error(tmp_path, capsys):
    path = pipeline_file(tmp_path, "http://127.0.0.1:9/v1")
    assert run_cli(["run", path, "--prompt", "hi", "--replay", str(tmp_path / "nope")]) == 2
    foreign = tmp_path / "foreign.sqlite"
    foreign.write_bytes(b"not a database at all" * 10)
    assert run_cli(["run", path, "--prompt", "hi", "--replay", str(foreign)]) == 1
    assert "is not a moac response cache" in capsys.readouterr().err


def test_a_cheaper_pipeline_recorded_after_the_full_one_pays_only_for_what_it_changes(
        tmp_path, monkeypatch, capsys):
    """MoA-Lite after MoA, both --record into one cache: the proposers' answers are reused
    and only Lite's own aggregator call is sent (its max_tokens differs from every call of
    the full run; an identical request would have been reused too)."""
    cache = str(tmp_path / "cache.sqlite")

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            path = tmp_path / "p.moa"
            path.write_text(open(pipeline_file(tmp_path, server.url)).read() + '''
pipeline full {
  max_tokens = 50
  layer propose = [a, b]
  layer refine = [a, b]
  aggregate b
}
pipeline lite from full {
  without refine
  aggregate a (max_tokens = 60)
}
''')
            monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
            sent = []
            for name in ("full", "lite"):
                before = len(server.requests)
                code = await asyncio.to_thread(run_cli, [
                    "run", str(path), "-p", name, "--prompt", "hello", "--record", cache])
                assert code == 0
                sent.append([r.body["model"] for r in server.requests[before:]])
            return sent

    full, lite = asyncio.run(main())
    assert sorted(full) == ["m-a", "m-a", "m-b", "m-b", "m-b"]
    assert lite == ["m-a"]  # the two proposers came from the cache


def test_a_run_the_budget_clamped_replays_whole(tmp_path):
    """Recording, the budget clamps the third proposer's max_tokens (each proposer's worst
    case is $0.050 and its cost $0.008: the first two take turns holding it, the third finds
    room for 43 tokens only; the start fit keeps all three, their expected $0.026 fitting);
    replaying, the cached answers are counted at their recorded price, so the same
    calls are made and found."""
    import moac
    from moac.run.cache import ResponseCache
    from moac.run import Runner

    def source(url: str) -> str:
        return f'''
provider p {{
  kind = openai
  base_url = "{url}"
  api_key = env FAKE_OPENAI_KEY
  max_retries = 0
}}
model a = p "m-a" {{
  price = $10/M in, $1000/M out
  params = 10B
  context = 32k
  length = 8 tok
}}
model b = p "m-b" {{
  price = $0.01/M
  params = 10B
  context = 32k
}}
pipeline three {{
  max_tokens = 50
  layer propose = a x 3 (seed = 1)
  aggregate b
}}
budget {{
  max_usd = $0.06
}}
'''

    async def record(cache):
        async with FakeOpenAI(api_key=KEY) as server:
            plan = moac.compile_string(source(server.url)).plan("three")
            async with Runner(plan, environ={"FAKE_OPENAI_KEY": KEY}, cache=cache,
                              cache_mode="record") as runner:
                result = await runner.run("hello")
            return result, [r.body["max_tokens"] for r in server.requests]

    async def replay(cache):
        plan = moac.compile_string(source("http://127.0.0.1:9/v1")).plan("three")
        async with Runner(plan, environ={}, cache=cache, cache_mode="replay") as runner:
            return await runner.run("hello")

    with ResponseCache(tmp_path / "c.sqlite") as cache:
        first, sent = asyncio.run(record(cache))
        assert first.ok and sorted(sent)[0] < 50  # the budget clamped one call
    with ResponseCache(tmp_path / "c.sqlite", create=False) as cache:
        again = asyncio.run(replay(cache))
        assert cache.stats.misses == 0, again.errors
    assert again.ok and again.answer == first.answer
    assert again.cost_usd == 0 and again.cached_usd == pytest.approx(first.cost_usd)
