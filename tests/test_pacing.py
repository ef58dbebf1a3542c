"""Pacing at a provider's rate limit: the header parser, the pacer's arithmetic (a fake
clock), and batches against the real fake server enforcing a limit as providers do
(tests/fake_ratelimit.py): every query answered, few requests refused, no slot idle, a 429
never a model's failure, two processes on one key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import Behavior, FakeOpenAI, serve_in_thread
from fake_ratelimit import RateLimit
from test_executor import ENV, KEY, arun, example_plan

from moac.providers.constants import LEARNED_RATE_MARGIN
from moac.providers.pacing import Pacer, pacer_for
from moac.providers.ratelimits import Limit, parse_duration, parse_rate_limits
from moac.run import PromptItem, Runner
from moac.traces.trace import read_trace

ROOT = Path(__file__).resolve().parent.parent


# --- what the headers say --------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("6m0s", 360.0), ("1s", 1.0), ("20ms", 0.02), ("2m59.56s", 179.56), ("7.66s", 7.66),
    ("1h2m", 3720.0), ("0.5", 0.5), ("0s", 0.0),
])
def test_durations_as_providers_write_them(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "-1s", "1x", "nan", "inf", "m"])
def test_a_duration_that_does_not_parse_is_absent_not_a_guess(text):
    assert parse_duration(text) is None


def test_openai_headers_with_missing_and_broken_fields():
    full = parse_rate_limits({
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "2s"},
        now_wall=0)
    assert full.requests == Limit(500, 499, 0.12)
    assert full.tokens == Limit(30000, 29000, 2.0)
    no_reset = parse_rate_limits({"x-ratelimit-limit-requests": "60",
                                  "x-ratelimit-remaining-requests": "10"}, now_wall=0)
    assert no_reset.requests == Limit(60, 10, None) and no_reset.tokens is None
    broken = parse_rate_limits({"x-ratelimit-limit-requests": "lots",
                                "x-ratelimit-remaining-requests": "3"}, now_wall=0)
    assert not broken.known
    assert not parse_rate_limits({}, now_wall=0).known


def test_anthropic_reset_times_and_the_tighter_token_limit():
    limits = parse_rate_limits({
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "25",
        "anthropic-ratelimit-requests-reset": "2026-12-03T12:00:30Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "1000"},
        now_wall=1796299200.0)  # 2026-12-03T12:00:00Z
    assert limits.requests == Limit(50, 25, 30.0)
    assert limits.tokens.limit == 8000  # output tokens are nearer their limit


# --- the pacer's arithmetic ------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def headers(limit: float, remaining: float, reset: str) -> dict:
    return {"x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": reset}


def test_the_rate_is_learned_from_headers_and_spent_smoothly():
    clock = Clock()
    pacer = Pacer("p", clock=clock)
    assert pacer.delay(clock.now) == 0  # nothing known: unpaced
    # 600 rpm, one used, whole again in 100 ms: 10 a second.
    pacer.observe(parse_rate_limits(headers(600, 599, "100ms"), now_wall=0))
    assert pacer.requests.rate == pytest.approx(10 * LEARNED_RATE_MARGIN)
    starts = []
    for _ in range(40):
        wait = pacer.delay(clock.now)
        clock.now += wait
        pacer.take(clock.now)
        starts.append(clock.now)
    # After the first second's burst, starts are spaced at the rate, never bunched.
    gaps = [b - a for a, b in zip(starts[12:], starts[13:])]
    assert all(gap == pytest.approx(1 / pacer.requests.rate) for gap in gaps)
    assert starts[-1] - starts[0] >= (40 - pacer.requests.burst) / pacer.requests.rate - 1e-9


def test_a_falling_remaining_share_slows_the_pace():
    clock = Clock()
    pacer = Pacer("p", clock=clock)
    pacer.observe(parse_rate_limits(headers(600, 590, "1s"), now_wall=0))
    full = pacer.requests.rate
    pacer.observe(parse_rate_limits(headers(600, 60, "54s"), now_wall=0))  # a tenth left
    assert pacer.requests.rate == pytest.approx(full * 0.2, rel=0.01)


def test_aimd_without_headers_halves_on_a_429_and_grows_back():
    clock = Clock()
    pacer = Pacer("p", clock=clock)
    for _ in range(20):  # 10 starts a second for two seconds
        pacer.take(clock.now)
        clock.now += 0.1
    pacer.refused(retry_after=0.5)
    assert pacer.requests.rate == pytest.approx(5.0, rel=0.1)
    assert pacer.delay(clock.now) == pytest.approx(0.5)  # the pause Retry-After asked
    assert pacer.delay(clock.now, paused=False) < 0.5    # a refused call's own retry
    for _ in range(100):
        pacer.succeeded()
    assert 4.75 * 3 > pacer.requests.rate > 4.75 * 2


def test_a_429_with_headers_halves_the_learned_rate_until_answers_grow_it_back():
    clock = Clock()
    pacer = Pacer("p", clock=clock)
    learned = parse_rate_limits(headers(1200, 1199, "50ms"), now_wall=0)
    pacer.observe(learned)
    full = pacer.requests.rate
    pacer.refused(retry_after=None)
    pacer.observe(learned)
    assert pacer.requests.rate == pytest.approx(full / 2)
    for _ in range(10 * 10):  # ten seconds' worth of answers at about half the rate
        pacer.succeeded()
    pacer.observe(learned)
    assert pacer.requests.rate == pytest.approx(full, rel=0.05)
    assert pacer.factor <= 1.0


def test_an_unknown_key_gets_a_few_starts_then_a_slow_start_without_headers():
    clock = Clock()
    pacer = Pacer("p", clock=clock, discover=True)
    for _ in range(8):
        assert pacer.delay(clock.now) == 0
        pacer.take(clock.now)
    assert pacer.delay(clock.now) == float("inf")  # until the key's first answer
    pacer.observe(parse_rate_limits({}, now_wall=0))  # it came, and said nothing
    assert pacer.slow_start and pacer.requests.rate == 8.0
    clock.now += 1.0
    pacer.succeeded()
    assert pacer.requests.rate == 16.0  # doubled after a second without a 429
    pacer.succeeded()
    assert pacer.requests.rate == 16.0  # once a second, not once an answer
    clock.now += 1.0
    pacer.refused(retry_after=0.2)      # the first 429 ends slow start: AIMD from here
    assert not pacer.slow_start and pacer.requests.rate == pytest.approx(8.0)
    refused_at = clock.now
    clock.now += 0.3
    pacer.refused(retry_after=0.2, started=refused_at - 0.1)  # was on its way already
    assert pacer.requests.rate == pytest.approx(8.0)


def test_catalog_ceilings_bound_what_headers_allow():
    clock = Clock()
    pacer = Pacer("p", rpm=120, clock=clock)
    pacer.observe(parse_rate_limits(headers(6000, 5999, "10ms"), now_wall=0))
    assert pacer.requests.rate == pytest.approx(2.0)
    pacer.set_ceilings(None, None)  # a later run without the ceiling
    pacer.observe(parse_rate_limits(headers(6000, 5999, "10ms"), now_wall=0))
    assert pacer.requests.rate == pytest.approx(100 * LEARNED_RATE_MARGIN)


def test_one_pacer_per_endpoint_and_key_in_the_process():
    clock = Clock()
    a = pacer_for("http://h/v1/", "key-one-123456", name="a", clock=clock)
    assert pacer_for("http://h/v1", "key-one-123456", name="b", clock=clock) is a
    assert pacer_for("http://h/v1", "key-two-123456", name="a", clock=clock) is not a
    assert "key-one" not in repr(vars(a))


# --- batches against a limited provider --------------------------------------------------------

def run_batch(server: FakeOpenAI, tmp_path: Path, queries: int, *, concurrency: int = 16):
    plan = example_plan(server, "moa_lite", parallel=64, max_retries=2)
    items = [PromptItem(str(i), (f"prompt {i}",), "prompt", {"prompt": f"prompt {i}"})
             for i in range(queries)]

    async def go():
        async with Runner(plan, environ=ENV, trace_path=tmp_path / "t.jsonl") as runner:
            started = time.monotonic()
            state = await runner.run_batch(items, str(tmp_path / "a.jsonl"),
                                           concurrency=concurrency)
            return state, time.monotonic() - started

    return arun(go())


@pytest.mark.parametrize("rpm, queries, headers", [
    (1200, 12, True),   # generous: 84 calls, 20 a second
    (300, 4, True),     # tight: 28 calls, 5 a second
    (600, 6, False),    # no headers at all: found by AIMD
])
def test_every_query_is_answered_at_the_limit_with_few_refusals(tmp_path, rpm, queries,
                                                                 headers):
    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(latency_s=0.02)) as server:
            server.rate_limit = RateLimit(rpm, headers=headers)
            state, wall = await _in_thread(run_batch, server, tmp_path, queries)
            return state, wall, server.rate_limit

    state, wall, limit = arun(main())
    calls = queries * 7  # six proposers and the aggregator
    assert state.ok == queries and state.failed == 0
    assert limit.admitted == calls
    assert limit.refused <= max(3, 0.1 * calls) if headers else limit.refused <= 0.3 * calls
    # Pacing costs time, and no more than it must: well within twice what the limit
    # allows (the first second's burst is free) plus the answers' own latency.
    allowed = max(calls - rpm / 60, 0) / (rpm / 60)
    assert wall <= 2 * allowed + 3
    waits = [r["wait_s"] for r in read_trace(tmp_path / "t.jsonl") if r["type"] == "call"]
    assert any(w > 0 for w in waits) and all(w >= 0 for w in waits)


async def _in_thread(function, *args):
    import asyncio
    return await asyncio.to_thread(function, *args)


def test_a_429_is_never_a_models_failure_nor_a_quorums(tmp_path):
    """Every proposer's first request refused, and one model's first three (as many in a
    row as a cool-down needs), with max_retries = 0: the layer keeps its full quorum, the
    aggregator answers, and nothing cools down."""
    refusal = Behavior.rate_limited(retry_after=None, retry_after_ms=50)

    async def main():
        async with FakeOpenAI(api_key=KEY, default=Behavior(latency_s=0.01)) as server:
            plan = example_plan(server, "moa_lite", parallel=64, max_retries=0)
            server.script(*[refusal] * 6)
            server.script(*[refusal] * 3, model=plan.models["llama70"].model_id)
            async with Runner(plan, environ=ENV, trace_path=tmp_path / "t.jsonl") as runner:
                result = await runner.run("a question")
                cooling = [c.limiter._cooling for c in runner.clients.values()]
            return result, server, cooling

    result, server, cooling = arun(main())
    assert result.ok and result.answer
    assert sum(1 for r in server.requests if r.status == 429) == 9
    calls = [r for r in read_trace(tmp_path / "t.jsonl") if r["type"] == "call"]
    last = {r["node"]: r for r in calls}
    assert len(last) == 7 and all(r["status"] == "ok" for r in last.values())
    assert max(r["attempt"] for r in calls) >= 4  # llama70: three refusals, then its answer
    assert not any(cooling)


def test_two_processes_on_one_key_stay_under_its_limit(tmp_path):
    """Two `moac run --prompts` batches at once against one key limited to 600 rpm: they
    share it without talking to each other, from its remaining counts and its 429s."""
    catalog = (ROOT / "examples" / "catalog.moa").read_text()
    with serve_in_thread(api_key=KEY, default=Behavior(latency_s=0.02)) as server:
        server.rate_limit = RateLimit(600)
        catalog = re.sub(r'base_url = "[^"]*"', f'base_url = "{server.url}"', catalog)
        catalog = re.sub(r"\n\s*rpm = \d+", "", catalog)
        (tmp_path / "catalog.moa").write_text(catalog)
        for name in ("moa.moa", "moa_lite.moa"):
            (tmp_path / name).write_text((ROOT / "examples" / name).read_text())
        env = {**os.environ, "TOGETHER_API_KEY": KEY, "OPENAI_API_KEY": KEY}
        procs = []
        for side in ("a", "b"):
            prompts = tmp_path / f"{side}.jsonl"
            prompts.write_text("".join(json.dumps({"instruction": f"{side} question {i}"}) + "\n"
                                       for i in range(6)))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "moac", "run", "moa_lite.moa", "-p", "moa_lite",
                 "--prompts", prompts.name, "--out", f"{side}.answers.jsonl",
                 "--concurrency", "16"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
        outputs = [p.communicate(timeout=120) for p in procs]
        limit = server.rate_limit
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "6 answered" in err
    assert limit.admitted == 2 * 6 * 7
    # Each process learns the limit alone and then finds the other by its 429s: a few
    # refusals while they do, few once they have (the second half of the requests).
    assert limit.refused <= 2 * 8
    later = [admitted for _, admitted in limit.events[len(limit.events) // 2:]]
    assert later.count(False) <= 0.1 * len(later)
