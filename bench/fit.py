"""Fitting queries to their budget and contexts: prints figures, asserts nothing.

    python bench/fit.py [--prompts 100] [--max-usd 0.05] [--count bytes|fake] [--seed 0]
                        [--no-search]

The paper's MoA (examples/moa.moa: 6 proposers, 6 refiners, an aggregator and its
fallback) answers prompts of mixed length, 100 to 8,000 words (log-uniform; one in ten
CJK, one in ten numbers), under a per-query ``--max-usd``, against the tests' fake server
(tests/fake_openai.py, in this process) which

- answers 400 words a call, as long as the catalog's typical answers (~400 tokens),
- counts prompt tokens as ``--count`` says: ``bytes`` (default: a token a UTF-8 byte, the
  densest any tokeniser counts and what the budget's holds assume) or ``fake`` (characters
  over four, about what a real tokeniser makes of English),
- refuses, as providers do, a request past a model's declared context (400
  ``context_length_exceeded``).

Printed: queries answered; refused up front (failed before any call: nothing spent);
failed after spending (the goal is 0); the mean number of agents the start fit kept (of the
13 declared) and of calls made; dollars spent (and the most any query spent); requests the
server refused for their context (the goal is 0). ``--no-search`` is the baseline: the
planner's search at query start is skipped (contexts and the smallest plan are still checked
there), leaving the run time fit alone to keep the query within its budget.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import moac  # noqa: E402
from fake_openai import Behavior, FakeOpenAI  # noqa: E402
from moac.ir.spec import BudgetSpec  # noqa: E402
from moac.run import Runner  # noqa: E402

KEY = "sk-bench-fit-0000000000000000"
VOCABULARY = ("the", "budget", "of", "a", "query", "is", "what", "its", "user", "will",
              "spend", "on", "mixture", "agents", "context", "window", "answers", "layer")


def prompt_of(words: int, rng: random.Random) -> tuple[str, str]:
    kind = rng.choices(["english", "cjk", "numbers"], weights=[8, 1, 1])[0]
    if kind == "cjk":  # a character a word: about as many tokens, three bytes each
        text = "".join(rng.choice("予算文脈混合代理人回答層問題") for _ in range(words))
    elif kind == "numbers":
        text = " ".join(str(rng.randrange(10 ** 9)) for _ in range(words))
    else:
        text = " ".join(rng.choice(VOCABULARY) for _ in range(words))
    return kind, "Summarise this document:\n\n" + text


async def bench(args) -> None:
    if args.no_search:
        import moac.run.start_fit as start_fit
        start_fit._shrink = lambda *_: None
    rng = random.Random(args.seed)
    lengths = [round(100 * (80 ** rng.random())) for _ in range(args.prompts)]
    prompts = [prompt_of(n, rng) for n in lengths]
    async with FakeOpenAI(api_key=KEY, keep_requests=False,
                          default=Behavior(count=args.count, tokens=400)) as server:
        program = moac.compile_file(ROOT / "examples" / "moa.moa")
        plan = program.plan("moa", BudgetSpec(max_usd=args.max_usd))
        plan.graph.graph["providers"] = {
            # Timeouts and retries generous: a loaded machine's slow connection is not what
            # this measures.
            name: server.provider_spec(name, parallel=64, timeout_s=120.0, read_timeout_s=60.0,
                                       connect_timeout_s=30.0, max_retries=2)
            for name in plan.providers}
        for model in plan.models.values():
            server.context_limits[model.model_id] = model.context_tokens
        started = time.perf_counter()
        async with Runner(plan, environ={"FAKE_OPENAI_KEY": KEY}) as runner:
            results = await runner.run_many([p for _, p in prompts],
                                            concurrency=args.concurrency)
        seconds = time.perf_counter() - started
        refused_for_context = len(server.context_refused)
    answered = [r for r in results if r.ok]
    up_front = [r for r in results if not r.ok and r.started_calls == 0 and r.cost_usd == 0]
    after = [r for r in results if not r.ok and r not in up_front]
    ran = [r for r in results if r.started_calls]
    kept = [r.fitted["agents"] if r.fitted else 13 for r in ran]
    why = Counter(r.errors[0].split(":", 1)[0] for r in up_front)
    by_kind = Counter(kind for (kind, _), r in zip(prompts, results) if r.ok)
    shrunk = sum(1 for r in results if r.fitted)
    bounds = Counter(("max_latency" if "max_latency" in o else "dollars")
                     for r in results if r.fitted for o in r.fitted["over"])
    bounds["contexts"] = sum(1 for r in results if r.fitted and any(
        g.split(": ", 1)[-1].startswith("context:") for g in r.fitted["gave_up"]))
    at_run_time = sum(1 for r in ran for s in r.skipped
                      if not s.reason.startswith(("fit:", "context:")))
    print(f"bench/fit.py: {args.prompts} prompts of {min(lengths):,} to {max(lengths):,} words "
          f"through the paper's MoA, max_usd ${args.max_usd:g}, the fake counting "
          f"{'a token a byte' if args.count == 'bytes' else 'four characters a token'}"
          f"{', without the search at query start' if args.no_search else ''}, {seconds:.1f}s")
    print(f"  answered                 {len(answered):>5}   "
          f"({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})")
    print(f"  refused up front         {len(up_front):>5}   "
          f"({', '.join(f'{k} {v}' for k, v in sorted(why.items())) or 'none'})")
    print(f"  failed after spending    {len(after):>5}   (goal 0)")
    for result in after[:5]:
        print(f"    {result.query_id}: {'; '.join(result.errors[:2])[:200]}")
    if kept:
        print(f"  agents kept at start     {sum(kept) / len(kept):>8.2f} of 13 (mean over the "
              f"{len(ran)} that ran; {shrunk} shrunk: "
              f"{', '.join(f'{k} {v}' for k, v in sorted(bounds.items()))})")
        print(f"  calls made               {sum(r.started_calls for r in ran) / len(ran):>8.2f}"
              f" a query ({at_run_time} calls left out at run time in all)")
    spent = sum(r.cost_usd for r in results)
    most = max((r.cost_usd for r in results), default=0.0)
    print(f"  dollars spent            ${spent:>8.4f}   (the most by one query ${most:.4f}; "
          f"over max_usd: {sum(1 for r in results if r.cost_usd > args.max_usd + 1e-12)})")
    print(f"  requests refused for their context by the server: {refused_for_context} "
          "(goal 0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--max-usd", type=float, default=0.05)
    parser.add_argument("--count", choices=("bytes", "fake"), default="bytes")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-search", action="store_true",
                        help="the baseline: no planner search at query start")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
