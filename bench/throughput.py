"""Throughput at a provider's rate limit: prints figures, asserts nothing.

    python bench/throughput.py [--only NAME ...] [--baseline] [--latency-ms 50]

MoA-Lite batches (examples/moa_lite.moa: six proposers and an aggregator, 7 calls a query)
at concurrency 16 against the tests' fake server (tests/fake_openai.py, in a process of its
own, answers of 20 tokens after 50 ms: cheap to serve, so that the limit binds) enforcing a limit as
providers do (tests/fake_ratelimit.py: per-second buckets, OpenAI's x-ratelimit-* headers
on every answer, 429 with Retry-After past the limit). For each scenario: queries answered,
wall time against the time the limit allows (its calls at the limit's rate, the first
second's burst free), and the share of requests refused. The goal: every query answered,
within 1.15 x of what the limit allows, under 5 % refused.

``--baseline`` also runs what the reference implementation does (every call sent at once
and, on a 429, retried after Retry-After or a second, blindly), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402

import moac  # noqa: E402
from moac.run import PromptItem, Runner  # noqa: E402

KEY = "sk-bench-throughput-0123456789"
CALLS_PER_QUERY = 7


@dataclass(frozen=True)
class Scenario:
    name: str
    rpm: float
    queries: int
    headers: bool = True
    tpm: float | None = None


SCENARIOS = (
    Scenario("300rpm", 300, 30),
    Scenario("300rpm-no-headers", 300, 30, headers=False),
    Scenario("1200rpm", 1200, 80),
    Scenario("1200rpm-no-headers", 1200, 80, headers=False),
    Scenario("6000rpm", 6000, 300),
    Scenario("6000rpm-no-headers", 6000, 300, headers=False),
    # Tokens bind first: each call is charged its prompt and max_tokens when it starts.
    Scenario("tokens-300k-tpm", 6000, 20, tpm=300_000),
)


def plan_for(url: str):
    plan = moac.compile_file(ROOT / "examples" / "moa_lite.moa").plan("moa_lite")
    providers = plan.graph.graph["providers"]
    plan.graph.graph["providers"] = {
        name: spec.model_copy(update={"base_url": url, "api_key_env": "BENCH_KEY",
                                      "parallel": 64, "rpm": None, "tpm": None})
        for name, spec in providers.items()}
    return plan


def allowed_s(s: Scenario, calls: int, tokens: float) -> float:
    """Seconds the limit needs for ``calls`` requests (``tokens`` of them), the first
    second's burst free."""
    by_requests = max(calls - s.rpm / 60, 0) / (s.rpm / 60)
    by_tokens = max(tokens - s.tpm / 60, 0) / (s.tpm / 60) if s.tpm else 0.0
    return max(by_requests, by_tokens)


async def moac_batch(plan, queries: int, out: Path) -> tuple[int, float]:
    items = [PromptItem(str(i), (f"Question {i}: explain rate limits.",), "prompt",
                        {"prompt": f"Question {i}"}) for i in range(queries)]
    async with Runner(plan, environ={"BENCH_KEY": KEY}) as runner:
        started = time.monotonic()
        state = await runner.run_batch(items, str(out), concurrency=16)
        return state.ok, time.monotonic() - started


async def blind_batch(url: str, plan, queries: int) -> tuple[int, float]:
    """The reference's way: a query's proposers at once, then its aggregator; a 429 is
    retried after its Retry-After (or a second), up to 20 times."""
    calls = [c for c in plan.calls() if c.fallback_for is None]
    proposers = [plan.models[c.model].model_id for c in calls if c.layer_index == 0]
    aggregator = plan.models[calls[-1].model].model_id
    headers = {"Authorization": f"Bearer {KEY}"}
    gate = asyncio.Semaphore(16)

    async def call(session, model: str, content: str, max_tokens: int) -> str | None:
        for _ in range(20):
            async with session.post(url + "/chat/completions", headers=headers, json={
                    "model": model, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": content}]}) as response:
                if response.status == 429:
                    wait = float(response.headers.get("Retry-After", "1"))
                    await asyncio.sleep(wait)
                    continue
                body = await response.json()
                return body["choices"][0]["message"]["content"]
        return None

    async def query(session, i: int) -> bool:
        async with gate:
            prompt = f"Question {i}: explain rate limits."
            answers = await asyncio.gather(*[call(session, m, prompt, 512) for m in proposers])
            if sum(a is not None for a in answers) == 0:
                return False
            final = await call(session, aggregator, prompt + "\n" + "\n".join(
                a for a in answers if a), 2048)
            return final is not None

    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        done = await asyncio.gather(*[query(session, i) for i in range(queries)])
        return sum(done), time.monotonic() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def fake_provider(s: Scenario, latency_s: float):
    """The fake server in a process of its own (so its CPU is not the client's), limited
    as the scenario says; yields its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.fake_openai", "--port", str(port), "--api-key", KEY,
            "--latency-ms", str(latency_s * 1000), "--tokens", "20", "--rpm", str(s.rpm)]
    if s.tpm:
        argv += ["--tpm", str(s.tpm)]
    if not s.headers:
        argv.append("--no-rate-headers")
    server = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # "fake OpenAI server at ..."
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(timeout=10)


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as response:
        return json.load(response)["rate_limit"]


def run(s: Scenario, *, latency_s: float, baseline: bool) -> None:
    for who in ("moac", "blind") if baseline else ("moac",):
        with fake_provider(s, latency_s) as url:
            plan = plan_for(url)
            with tempfile.TemporaryDirectory() as tmp:
                if who == "moac":
                    ok, wall = asyncio.run(moac_batch(plan, s.queries, Path(tmp) / "a.jsonl"))
                else:
                    ok, wall = asyncio.run(blind_batch(url, plan, s.queries))
            limit = stats(url)
        calls = s.queries * CALLS_PER_QUERY
        # Tokens charged per query: each call's prompt and max_tokens (512 a proposer, 2,048
        # the aggregator), the aggregator's prompt holding the six answers.
        tokens = s.queries * (6 * (512 + 30) + 2048 + 6 * 20 + 60)
        need = allowed_s(s, calls, tokens)
        refused, sent = limit["refused"], limit["admitted"] + limit["refused"]
        print(f"{s.name:<20} {who:<6} {ok:>4}/{s.queries:<4} answered  {wall:6.1f} s = "
              f"{wall / need if need else float('nan'):4.2f} x the {need:5.1f} s the limit "
              f"allows  {refused:>5} of {sent:>5} requests refused "
              f"({100 * refused / max(sent, 1):4.1f} %)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="scenario names: " + ", ".join(
        s.name for s in SCENARIOS))
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    for s in SCENARIOS:
        if args.only and s.name not in args.only:
            continue
        run(s, latency_s=args.latency_ms / 1000, baseline=args.baseline)


if __name__ == "__main__":
    main()
