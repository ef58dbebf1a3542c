"""Routing benchmark on recorded answers: what each route policy sends to the full MoA and what
it costs per query, against always-MoA and always-Lite. Prints figures, asserts nothing.

    python bench/route.py [--limit N] [--concurrency 64]

The replay provider (moac/evaluation/replay.py, in a process of its own so that the client's CPU is not
mixed with the server's) answers every call with the model's RECORDED AlpacaEval answer
(../shared/data/alpaca_eval/model_outputs beside the checkout; cut at max_tokens x 4 characters, usage =
characters / 4), so the dollars are those of real answer lengths at the catalogue's prices.

The paper's WizardLM-2 has no recorded answers, and standing in another model's answers for it
would duplicate an answer and inflate agreement, so both pipelines use the five recorded
proposers (Qwen1.5-110B/72B, Llama-3-70B, Mixtral-8x22B, DBRX; profiles copied from
examples/catalog.moa): moa5 = propose [5] -> refine [5] -> aggregate qwen110; lite5 = moa5
without refine, aggregated by qwen72 (MoA-Lite's aggregator).

Real runs through moac's Runner over the instructions: (a) always moa5, (b) always lite5,
(c) the route [moa5, lite5] with policy agreement at planner.constants.
DEFAULT_AGREEMENT_THRESHOLD, (d) the route with policy preroute, share 0.5. Replies are
deterministic and the early exit makes exactly lite5's calls (the continuation moa5's), so a
query's cost under any threshold is its cost in (a) or (b): the sweeps combine (c)'s measured
agreement (or the pre-route decision, taken from the text alone) with (a)/(b)'s costs, and
(c) and (d) check that accounting against what they measured. Quality figures are the
planner's PREDICTIONS (planner.quality); no judge sees these answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import moac  # noqa: E402
from moac.ir.prompts import messages_tokens  # noqa: E402
from moac.run import PromptItem, Runner  # noqa: E402
from moac.traces.trace import read_trace  # noqa: E402
from planner.constants import DEFAULT_AGREEMENT_THRESHOLD  # noqa: E402
from planner.preroute import default_model  # noqa: E402
from planner.quality import MoaQualityModel  # noqa: E402
from planner.route import assess, choose_before_calls  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "alpaca_eval"
FILES = ("Qwen1.5-110B-Chat", "Qwen1.5-72B-Chat", "Meta-Llama-3-70B-Instruct",
         "Mixtral-8x22B-Instruct-v0.1", "dbrx-instruct")
KEY_VAR = "REPLAY_API_KEY"
ENV = {KEY_VAR: "replay-bench-key"}
SOURCE = """
provider replay {{
  kind = openai
  base_url = "{url}"
  api_key = env REPLAY_API_KEY
  parallel = {parallel}
  max_retries = 0
  timeout = 120s
}}
model qwen110 = replay "Qwen/Qwen1.5-110B-Chat" {{
  price = $1.80/M
  params = 111B
  context = 32k
  speed = 0.5s ttft, 30 tok/s
  quality = 43.9
  length = 408 tok
}}
model qwen72 = replay "Qwen/Qwen1.5-72B-Chat" {{
  price = $0.90/M
  params = 72B
  context = 32k
  speed = 0.4s ttft, 40 tok/s
  quality = 36.6
  length = 387 tok
}}
model llama70 = replay "meta-llama/Llama-3-70b-chat-hf" {{
  price = $0.90/M
  params = 70B
  context = 8k
  speed = 0.3s ttft, 60 tok/s
  quality = 34.4
  length = 480 tok
}}
model mixtral = replay "mistralai/Mixtral-8x22B-Instruct-v0.1" {{
  price = $1.20/M
  params = 39B active, 141B total
  context = 64k
  speed = 0.4s ttft, 60 tok/s
  quality = 30.9
  length = 361 tok
}}
model dbrx = replay "databricks/dbrx-instruct" {{
  price = $1.20/M
  params = 36B active, 132B total
  context = 32k
  speed = 0.4s ttft, 60 tok/s
  quality = 25.4
  length = 363 tok
}}
pipeline moa5 {{
  temperature = 0.7
  max_tokens = 512
  layer propose = [qwen110, qwen72, llama70, mixtral, dbrx]
  layer refine = [qwen110, qwen72, llama70, mixtral, dbrx] (min_ok = 4)
  aggregate qwen110 (max_tokens = 2048) fallback qwen72 (max_tokens = 2048)
}}
pipeline lite5 from moa5 {{
  without refine
  aggregate qwen72 (max_tokens = 2048)
}}
route agree {{
  candidates = [moa5, lite5]
  policy = [budget, agreement]
}}
route pre {{
  candidates = [moa5, lite5]
  policy = [budget, preroute]
  share = 0.5
}}
"""


def start_server() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "moac.evaluation.replay", "--port", "0", "--data-dir", str(DATA)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"the replay server did not start: {line!r}")
    return process, line.strip().split()[-1]


async def run(plan, items, workdir: str, label: str, concurrency: int) -> dict:
    """Answer ``items`` with ``plan`` (a Plan or a RoutePlan); what its trace says."""
    trace = os.path.join(workdir, f"{label}.trace.jsonl")
    async with Runner(plan, environ=ENV, trace_path=trace) as runner:
        cpu, wall = time.process_time(), time.perf_counter()
        await runner.run_batch(items, os.path.join(workdir, f"{label}.answers.jsonl"),
                               concurrency=concurrency)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    records = read_trace(trace)
    queries = {r["query_id"]: r for r in records if r["type"] == "query"}
    routes = [r for r in records if r["type"] == "route"]
    return {"label": label, "wall": wall, "cpu": cpu,
            "calls": sum(r["type"] == "call" for r in records),
            "cost": {q: r["cost_usd"] for q, r in queries.items()},
            "pipeline": {q: r["pipeline"] for q, r in queries.items()},
            "bad": sum(r["status"] != "ok" or r["failures"] > 0 for r in queries.values()),
            "score": {r["query_id"]: r["numbers"]["score"] for r in routes
                      if r["policy"] == "agreement" and "score" in r["numbers"]},
            "pre": {r["query_id"]: r["chosen"] for r in routes if r["policy"] == "preroute"}}


def mix_cost(ids, to_full, full: dict, lite: dict) -> float:
    return float(np.mean([full[q] if to_full(q) else lite[q] for q in ids]))


def verify(label: str, ran: dict, chosen: dict, full: dict, lite: dict, t=None) -> None:
    """Mean cost by the rule (``chosen``) against the run's; per query, its cost against
    (a)/(b)'s cost of the pipeline it actually ran."""
    ids = list(chosen)
    computed = mix_cost(ids, lambda q: chosen[q], full, lite)
    measured = float(np.mean([ran["cost"][q] for q in ids]))
    differ = [q for q in ids if (ran["pipeline"][q] == "moa5") != chosen[q]]
    edge = sum(ran["score"].get(q) == t for q in differ)
    worst = max(abs(ran["cost"][q] - (full if ran["pipeline"][q] == "moa5" else lite)[q])
                for q in ids)
    print(f"  {label}: computed ${computed:.6f}/query, measured ${measured:.6f}/query, "
          f"difference ${computed - measured:+.2e}\n    choices differing from the rule: "
          f"{len(differ)}/{len(ids)}" + (f" ({edge} with a trace score equal to t: the trace "
          "rounds scores to 4 decimals, the router compares them unrounded)" if edge else "")
          + f"; per-query cost vs (a)/(b) for the pipeline run: largest difference ${worst:.1e}")


async def main(args) -> None:
    missing = [n for n in FILES if not (DATA / "model_outputs" / f"{n}.json").is_file()]
    if missing:
        print(f"skipped: recorded answers not found in {DATA / 'model_outputs'} "
              f"({', '.join(missing)})")
        return
    rows = json.loads((DATA / "model_outputs" / f"{FILES[0]}.json").read_text("utf-8"))
    texts = [row["instruction"] for row in rows][:args.limit or None]
    items = [PromptItem(str(i), (t,), "instruction", {"instruction": t})
             for i, t in enumerate(texts)]
    ids = [item.id for item in items]
    server, url = start_server()
    try:
        program = moac.compile_string(SOURCE.format(url=url, parallel=5 * args.concurrency))
        moa5, lite5 = program.plan("moa5"), program.plan("lite5")
        agree, pre = program.route_plan("agree"), program.route_plan("pre")
        print(f"replay server at {url} (its own process); {len(items)} AlpacaEval instructions,"
              f" concurrency {args.concurrency}")
        print("pipelines: 5-proposer variants of the paper's MoA / MoA-Lite (WizardLM-2 has no "
              "recorded answers; a stand-in's copies would inflate agreement):\n"
              "  moa5  = [qwen110 qwen72 llama70 mixtral dbrx] -> refine [same 5] -> qwen110\n"
              "  lite5 = [qwen110 qwen72 llama70 mixtral dbrx] -> qwen72")
        with tempfile.TemporaryDirectory() as workdir:
            runs = {}
            for label, plan in (("always moa5", moa5), ("always lite5", lite5),
                                (f"agreement {DEFAULT_AGREEMENT_THRESHOLD:g}", agree),
                                ("preroute share 0.5", pre)):
                runs[label] = await run(plan, items, workdir, label.replace(" ", "_"),
                                        args.concurrency)
    finally:
        server.terminate()
        server.wait(10)
    a, b, c, d = runs.values()
    full, lite = a["cost"], b["cost"]
    print("\nreal runs (Runner -> replay server):")
    print(f"  {'run':<20} {'queries':>7} {'failed':>6} {'calls':>6} {'wall s':>7} {'calls/s':>8}"
          f" {'CPU ms/call':>11} {'$/query':>9} {'to moa5':>7}")
    for r in runs.values():
        share = np.mean([r["pipeline"][q] == "moa5" for q in ids])
        print(f"  {r['label']:<20} {len(r['cost']):>7} {r['bad']:>6} {r['calls']:>6} "
              f"{r['wall']:>7.2f} {r['calls'] / r['wall']:>8.0f} "
              f"{r['cpu'] / r['calls'] * 1000:>11.3f} {np.mean(list(r['cost'].values())):>9.5f} "
              f"{share:>7.1%}")
    scores = np.array([c["score"][q] for q in ids])
    p = np.percentile(scores, [5, 25, 50, 75, 95])
    print(f"\nagreement of the 5 proposers' answers (as the route measured it, answers cut at "
          f"512 tokens): mean {scores.mean():.3f}\n  p5 {p[0]:.3f}  p25 {p[1]:.3f}  "
          f"p50 {p[2]:.3f}  p75 {p[3]:.3f}  p95 {p[4]:.3f}")
    quality = MoaQualityModel()
    q_full, q_lite = quality.predict(moa5), quality.predict(lite5)
    cost_full, cost_lite = np.mean([full[q] for q in ids]), np.mean([lite[q] for q in ids])
    print(f"\npredicted quality (planner.quality, a PREDICTION: no judge verdicts here): "
          f"moa5 {q_full:.1f}, lite5 {q_lite:.1f}")
    print(f"always moa5 ${cost_full:.5f}/query, always lite5 ${cost_lite:.5f}/query "
          f"(lite5 = {cost_lite / cost_full:.1%} of moa5)")

    def table(title: str, rows_) -> None:
        print(f"\n{title}\n  {'setting':<26} {'to moa5':>7} {'$/query':>9} {'vs moa5':>8} "
              f"{'pred. Q of mix':>14}")
        for setting, to_full in rows_:
            share = float(np.mean([to_full(q) for q in ids]))
            cost = mix_cost(ids, to_full, full, lite)
            print(f"  {setting:<26} {share:>7.1%} {cost:>9.5f} {cost / cost_full - 1:>+8.1%} "
                  f"{share * q_full + (1 - share) * q_lite:>14.1f}")

    thresholds = np.round(np.arange(0.30, 0.6001, 0.025), 3)
    table("agreement sweep (to moa5 when score < t; costs from (a)/(b)):",
          [("always lite5", lambda q: False)] +
          [(f"t = {t:.3f}" + (" (default)" if t == DEFAULT_AGREEMENT_THRESHOLD else ""),
            lambda q, t=t: c["score"][q] < t) for t in thresholds] +
          [("always moa5", lambda q: True)])
    print("\nverification (computed from (a)/(b) costs vs measured in the route runs):")
    verify(f"agreement t={DEFAULT_AGREEMENT_THRESHOLD:g}", c,
           {q: c["score"][q] < DEFAULT_AGREEMENT_THRESHOLD for q in ids}, full, lite,
           DEFAULT_AGREEMENT_THRESHOLD)

    model, budget = default_model(), pre.budget
    assessed: dict[int, list] = {}

    def preroute_choices(**setting) -> dict[str, bool]:
        route = pre.route.model_copy(update=setting)
        out = {}
        for q, text in zip(ids, texts):
            tokens = messages_tokens([{"role": "user", "content": text}])
            if tokens not in assessed:
                assessed[tokens] = assess(pre.plans, tokens, budget, quality)
            out[q] = choose_before_calls(route, assessed[tokens], text, model).target == "moa5"
        return out

    verify("preroute share=0.5", d, preroute_choices(target_share=0.5), full, lite)
    sample = choose_before_calls(pre.route.model_copy(update={"target_share": None,
                                                              "usd_per_point": 1.0}),
                                 assess(pre.plans, 64, budget, quality), texts[0], model)
    numbers = sample.decisions[-1].numbers
    fair = numbers["extra_usd"] / numbers["average_gain"]  # $/point buying the average gain
    shares = [round(s, 1) for s in np.arange(0.1, 0.91, 0.1)]
    per_point = [fair * f for f in (0.5, 0.9, 0.95, 1.0, 1.05, 1.1, 2.0)]
    table(f"pre-route sweep (decided from the text alone; estimated extra "
          f"${numbers['extra_usd']:.4f} for {numbers['average_gain']:.1f} predicted points "
          "at a 64-token prompt):",
          [(f"share = {s:.1f}", preroute_choices(target_share=s).get) for s in shares] +
          [(f"usd_per_point = ${v:.5f}",
            preroute_choices(target_share=None, usd_per_point=v).get) for v in per_point])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N instructions")
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
