"""Compile-time benchmark: prints figures, asserts nothing.

    python bench/compile.py [--repeat N]

- warm in-process check of each example (parser already built), best of N;
- a generated file with 2,000 agents (40 pipelines x 2 layers x 25 agents), parse and check;
- cold `moac check` wall time in a fresh process, best of N.
Targets (issue 2): an example under 10 ms warm, 2,000 agents under 1 s, cold CLI under 400 ms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import moac  # noqa: E402
from moac.lang.parser import parse  # noqa: E402


def best_of(repeat: int, action) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def generated_source(pipelines: int = 40, layers: int = 2, agents: int = 25) -> str:
    lines = ['provider p {', '  kind = openai', '  base_url = "http://127.0.0.1:8000/v1"',
             '}', '']
    for m in range(10):
        lines += [f'model m{m} = p "org/model-{m}" {{', '  price = $0.90/M', '  params = 70B',
                  '  context = 128k', '  speed = 0.4s ttft, 40 tok/s',
                  f'  quality = {30 + m}', '  length = 400 tok', '}', '']
    for i in range(pipelines):
        lines.append(f"pipeline p{i} {{")
        lines.append("  temperature = 0.7")
        lines.append("  max_tokens = 256")
        for layer in range(layers):
            members = ", ".join(f"m{(i + layer + a) % 10} (seed = {a})" for a in range(agents))
            lines.append(f"  layer l{layer} = [{members}] (min_ok = 3)")
        lines.append("  aggregate m0 (max_tokens = 1024)")
        lines.append("}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    examples = sorted((ROOT / "examples").glob("*.moa"))
    moac.compile_file(examples[0])  # build (or load) the parser once

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print("warm in-process check (parse + imports + check), best of", args.repeat)
    for path in examples:
        seconds = best_of(args.repeat, lambda p=path: moac.check_file(p))
        print(f"  {path.relative_to(ROOT)!s:28} {seconds * 1000:7.2f} ms")

    source = generated_source()
    agents = source.count("(seed =")
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "generated.moa"
        big.write_text(source)
        parse_s = best_of(max(args.repeat // 2, 1), lambda: parse(source, str(big)))
        check_s = best_of(max(args.repeat // 2, 1), lambda: moac.compile_file(big))
        plan_s = best_of(max(args.repeat // 2, 1),
                         lambda: moac.compile_file(big).plan("p0"))
    print(f"generated file: {agents:,} agents, {len(source) / 1024:.0f} KB")
    print(f"  parse only                   {parse_s * 1000:7.1f} ms")
    print(f"  parse + check (all)          {check_s * 1000:7.1f} ms")
    print(f"  parse + check + lower p0     {plan_s * 1000:7.1f} ms")

    command = [sys.executable, "-m", "moac", "check", str(ROOT / "examples" / "moa.moa")]
    subprocess.run(command, capture_output=True, check=True)  # warm the parser cache file
    cold = best_of(args.repeat, lambda: subprocess.run(command, capture_output=True,
                                                       check=True))
    baseline = best_of(args.repeat, lambda: subprocess.run([sys.executable, "-c", "pass"],
                                                           capture_output=True, check=True))
    print(f"cold `moac check examples/moa.moa` (new process), best of {args.repeat}:")
    print(f"  wall time                    {cold * 1000:7.1f} ms "
          f"(bare python start-up {baseline * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
