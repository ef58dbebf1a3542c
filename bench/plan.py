"""Planner benchmark: prints figures, asserts nothing.

    python bench/plan.py [--repeat N]

- time to the exact plan for the paper's MoA (6 agents x 2 layers + aggregator: "6 x 3") at
  a few budgets, best of N;
- the same for a generated pipeline of 4 layers x 12 distinct agents + aggregator (and 3 x 12),
  with the method used and, if the search stopped, its gap to the proven upper bound;
- time to compute the frontier of the MoA (every sub-plan enumerated).
Targets (issue 3): the MoA plan under 50 ms; the large plan and the frontier under 2 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import moac  # noqa: E402
from moac.ir.spec import BudgetSpec  # noqa: E402
from planner import estimate, frontier, optimize  # noqa: E402


def best_of(repeat: int, action):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return min(times), result


def generated(agents: int = 12, layers: int = 4) -> str:
    lines = ["provider p {", "  kind = openai", '  base_url = "http://127.0.0.1:8000/v1"',
             "  parallel = 8", "}", ""]
    for m in range(agents):
        lines += [f'model m{m} = p "org/model-{m}" {{', f"  price = ${0.3 + 0.15 * m:.2f}/M",
                  f"  params = {20 + 10 * m}B", "  context = 128k",
                  f"  speed = 0.4s ttft, {30 + 5 * (m % 5)} tok/s", f"  quality = {22 + 2.5 * m}",
                  f"  length = {300 + 17 * m} tok", "}", ""]
    lines += ["pipeline big {", "  max_tokens = 512"]
    for layer in range(layers):
        members = ", ".join(f"m{(a + layer) % agents}" for a in range(agents))
        lines.append(f"  layer l{layer} = [{members}] (min_ok = 2)")
    lines += ["  aggregate m11 (max_tokens = 1024) fallback m5", "}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")

    moa = moac.compile_file(ROOT / "examples" / "moa.moa").plan("moa")
    print("exact plan, paper's MoA (6 x 3), best of", args.repeat)
    for budget in (BudgetSpec(max_usd=0.02), BudgetSpec(max_usd=0.01),
                   BudgetSpec(max_latency_s=30), BudgetSpec(max_usd=0.03, mode="worst")):
        seconds, found = best_of(args.repeat, lambda b=budget: optimize(moa, b))
        print(f"  {_budget(budget):28} {seconds * 1000:8.1f} ms  quality {found.quality:5.1f}  "
              f"{found.method}")

    for layers in (4, 3):
        big = moac.compile_string(generated(12, layers), "big.moa").plan("big")
        full = estimate(big)
        print(f"plan, {layers} layers x 12 agents + aggregator (full plan ${full.usd:.3f}, "
              f"{full.latency_s:.0f}s)")
        for share in (1.2, 0.5, 0.2, 0.05):
            budget = BudgetSpec(max_usd=full.usd * share)
            seconds, found = best_of(1, lambda b=budget: optimize(big, b))
            print(f"  {_budget(budget) + f' ({share:.0%})':28} {seconds * 1000:8.1f} ms  "
                  f"quality {found.quality:5.1f}  {found.method}")

    seconds, front = best_of(max(args.repeat // 2, 1), lambda: frontier(moa, 256))
    print(f"frontier, paper's MoA: {front.subplans:,} sub-plans, {len(front.pareto)} "
          f"Pareto-optimal, {seconds * 1000:.1f} ms")


def _budget(budget: BudgetSpec) -> str:
    parts = []
    if budget.max_usd is not None:
        parts.append(f"max_usd ${budget.max_usd:.4f}")
    if budget.max_latency_s is not None:
        parts.append(f"max_latency {budget.max_latency_s:g}s")
    return ", ".join(parts) + f" [{budget.mode}]"


if __name__ == "__main__":
    main()
