"""Executor benchmark against the fake OpenAI server: prints figures, asserts nothing.

    python bench/executor.py [--latency-ms 100] [--concurrency 64] [--limit N]

The server (tests/fake_openai.py) runs in a process of its own, answering every call after a
fixed latency, so that the CPU time measured here is the client's alone.

1. One query of the paper's MoA (examples/moa.moa: 6 proposers, 6 refiners, 1 aggregator;
   13 calls in 3 stages, the fallback unused) and of a 19-call variant (three layers of six
   and the aggregator): wall time against the critical path (the stages times the fixed
   latency), cold (new connections) and warm. Target: within 5% plus 20 ms.
2. The 805 AlpacaEval instructions (``instruction`` fields of
   ../shared/data/alpaca_eval/model_outputs/gpt-4o-2024-05-13.json beside the checkout; 805 synthetic prompts
   if that file is missing) through MoA-Lite (7 calls each) at concurrency 64, answers and a
   trace written as `moac run --prompts` writes them: calls per second, client CPU
   milliseconds per call (``time.process_time``; target under 1 ms) and peak memory
   (``ru_maxrss``; target under 300 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import moac  # noqa: E402
from moac.run import PromptItem, Runner  # noqa: E402
from moac.ir.spec import ProviderSpec  # noqa: E402

ALPACA = ROOT.parent / "shared" / "data" / "alpaca_eval" / "model_outputs" / "gpt-4o-2024-05-13.json"
KEY = "sk-bench-0000000000000000"
ENV = {"FAKE_OPENAI_KEY": KEY}
NINETEEN = """
import "moa.moa"

pipeline moa19 from moa {
  layer refine2 = [qwen110, qwen72, wizardlm, llama70, mixtral, dbrx] (min_ok = 4)
}
"""


def start_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--port", "0",
         "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"the fake server did not start: {line!r}")
    return process, line.strip().split()[-1]


def at_server(plan, url: str, parallel: int):
    plan.graph.graph["providers"] = {
        name: ProviderSpec(name=name, kind="openai", base_url=url, api_key_env="FAKE_OPENAI_KEY",
                           parallel=parallel, timeout_s=60.0, connect_timeout_s=5.0,
                           read_timeout_s=30.0, max_retries=2)
        for name in plan.providers}
    return plan


def prompts() -> tuple[list[str], str]:
    if ALPACA.is_file():
        rows = json.loads(ALPACA.read_text())
        return [row["instruction"] for row in rows], f"AlpacaEval ({ALPACA.name})"
    return ([f"Synthetic instruction {i}: explain topic {i} in two paragraphs." for i in
             range(805)], "805 synthetic prompts (AlpacaEval file not found)")


async def one_query(plan, latency_s: float, label: str) -> None:
    stages = len(plan.layers)
    calls = sum(len(layer.nodes) for layer in plan.layers[:-1]) + 1
    async with Runner(plan, environ=ENV) as runner:
        for when in ("cold", "warm", "warm"):
            start = time.perf_counter()
            result = await runner.run("What is a Mixture-of-Agents?", on_delta=lambda t: None)
            wall = time.perf_counter() - start
            ideal = stages * latency_s
            target = ideal * 1.05 + 0.020
            print(f"  {label} ({calls} calls, {stages} stages), {when}: wall {wall * 1000:.1f} ms; "
                  f"critical path {ideal * 1000:.0f} ms ({stages} x {latency_s * 1000:.0f} ms), "
                  f"as measured {result.critical_path_s * 1000:.1f} ms; overhead "
                  f"{(wall - ideal) * 1000:+.1f} ms; target <= {target * 1000:.0f} ms: "
                  f"{'met' if wall <= target else 'MISSED'} ({result.status})")


async def batch(plan, texts: list[str], concurrency: int, workdir: str) -> None:
    items = [PromptItem(str(i), (text,), "instruction", {"instruction": text})
             for i, text in enumerate(texts)]
    out = os.path.join(workdir, "answers.jsonl")
    trace = os.path.join(workdir, "trace.jsonl")
    async with Runner(plan, environ=ENV, trace_path=trace) as runner:
        cpu, wall = time.process_time(), time.perf_counter()
        state = await runner.run_batch(items, out, concurrency=concurrency)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    calls = sum(1 for line in open(trace) if '"type":"call"' in line)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  {state.ok} answered, {state.failed} failed, {calls} calls in {wall:.2f} s: "
          f"{calls / wall:,.0f} calls/s, {state.ok / wall:.1f} queries/s")
    print(f"  client CPU {cpu:.2f} s: {cpu / calls * 1000:.3f} ms per call (target < 1 ms: "
          f"{'met' if cpu / calls < 0.001 else 'MISSED'})")
    print(f"  peak memory (ru_maxrss) {peak_mb:.0f} MB (target < 300 MB: "
          f"{'met' if peak_mb < 300 else 'MISSED'}); trace {os.path.getsize(trace) / 1e6:.1f} MB, "
          f"answers {os.path.getsize(out) / 1e6:.1f} MB")


async def main(args) -> None:
    latency_s = args.latency_ms / 1000
    server, url = start_server(args.latency_ms)
    try:
        print(f"fake server at {url} (its own process), {args.latency_ms:g} ms per call")
        examples = ROOT / "examples"
        moa = at_server(moac.compile_file(examples / "moa.moa").plan("moa"), url, 64)
        with tempfile.TemporaryDirectory() as workdir:
            nineteen = Path(workdir) / "moa19.moa"
            for name in ("catalog.moa", "moa.moa"):
                (Path(workdir) / name).write_text((examples / name).read_text())
            nineteen.write_text(NINETEEN)
            moa19 = at_server(moac.compile_file(nineteen).plan("moa19"), url, 64)
            print("one query:")
            await one_query(moa, latency_s, "paper MoA")
            await one_query(moa19, latency_s, "MoA, 3 layers of 6")
            texts, source = prompts()
            texts = texts[:args.limit] if args.limit else texts
            print(f"batch: {len(texts)} prompts from {source} through MoA-Lite at concurrency "
                  f"{args.concurrency}:")
            lite = at_server(moac.compile_file(examples / "moa_lite.moa").plan("moa_lite"), url,
                             6 * args.concurrency)
            await batch(lite, texts, args.concurrency, workdir)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    asyncio.run(main(parser.parse_args()))
