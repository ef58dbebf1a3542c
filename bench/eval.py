"""`moac eval` at scale, and what the length-controlled win rate corrects. Prints figures,
asserts nothing.

    python bench/eval.py [--limit N] [--concurrency 32] [--workdir DIR]

Answers: the replay provider (moac/evaluation/replay.py, a process of its own) answers every call with
the model's RECORDED AlpacaEval answer (../shared/data/alpaca_eval/model_outputs beside the checkout), so
lengths are real. Pipelines: bench/route.py's moa5 and lite5 (five recorded proposers; an
aggregator's answer is its own recorded answer, so moa5 answers as single:qwen110 does and
lite5 as single:qwen72), and every recorded model alone (single:MODEL), GPT-4 Turbo included:
its answers ARE the references (the bundled `alpaca_eval` set), a sanity row at exactly 50.

Judge: a scripted judge (tests/fake_openai.py, a process of its own, model "judge-long")
prefers the LONGER of answers A and B; a hash of the two texts (in the order shown) takes 20%
of the calls out of its hands and picks A or B at random; equal lengths: A. It is pure
length bias: judged in both orders, a longer answer scores 0.9 in expectation and a shorter
one 0.1, so the raw win rate is ~10 + 80 x (share of answers longer than the reference),
while a length-free judge would put every pipeline at 50. The LC win rate (AlpacaEval 2.0's
logistic model read at zero length difference) should sit near 50 for every pipeline.

The path is the real one: `moac.cli.main.main(["eval", ...])` over HTTP, three times:
(1) with --record CACHE into a fresh report directory, (2) the same command again (a resume:
it should send nothing), (3) with --replay CACHE into another fresh directory (nothing
sent). Measured: wall time, calls per second of the answering and judging phases (spans of
the traced calls), client CPU per call (time.process_time; the servers are other
processes), peak RSS (ru_maxrss), sizes of what was written, and the requests each server
received (counted by the servers). $/query counts an answer from the cache at its recorded
price, "billed" what was paid. Identical requests (moa5's and single:qwen110's judge calls,
lite5's proposers after moa5's) are answered from the cache in run 1, so a server can
receive fewer requests than the trace has calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from route import DATA, FILES, KEY_VAR, SOURCE  # noqa: E402  (bench/route.py)

JUDGE_ID, JUDGE_VAR = "judge-long", "JUDGE_API_KEY"
NOISE = 0.2
SINGLES = ("qwen110", "qwen72", "llama70", "mixtral", "dbrx", "gpt4o", "gpt4t")
PIPELINES = ["moa5", "lite5"] + [f"single:{m}" for m in SINGLES]
EXTRA = """
model gpt4o = replay "gpt-4o-2024-05-13" {{
  price = $5.00/M
  params = 200B
  context = 128k
  quality = 57.5
}}
model gpt4t = replay "gpt-4-turbo-2024-04-09" {{
  price = $10.00/M
  params = 200B
  context = 128k
  quality = 55.0
}}
provider judging {{
  kind = openai
  base_url = "{judge_url}"
  api_key = env JUDGE_API_KEY
  parallel = {parallel}
  max_retries = 0
  timeout = 120s
}}
model judge = judging "judge-long" {{
  price = $1.00/M
  params = 10B
  context = 128k
  quality = 50
}}
judge long {{
  model = judge
  protocol = pairwise
  max_tokens = 64
}}
"""
_BLOCK = {n: re.compile(rf"\[The Start of Answer {n}\]\n(.*?)\n\[The End of Answer {n}\]", re.S)
          for n in "AB"}
judged = 0


def length_judge(messages) -> str:
    """The longer answer wins; a hash of (A, B) hands NOISE of the calls to chance."""
    global judged
    judged += 1
    text = messages[-1]["content"]
    a, b = (m.group(1) if (m := _BLOCK[n].search(text)) else "" for n in "AB")
    digest = hashlib.sha256(f"{a}\0{b}".encode()).digest()
    if digest[0] < NOISE * 256:
        pick = "A" if digest[1] & 1 else "B"
    else:
        pick = "B" if len(b) > len(a) else "A"
    return f"Answer {pick} is the more thorough of the two.\n[[{pick}]]"


def serve(kind: str) -> None:
    """Child process: run one server, print its URL, answer each stdin line with its request
    count (and misses); end at EOF."""
    async def main():
        if kind == "replay":
            from moac.evaluation.replay import ReplayServer
            server = ReplayServer(DATA)
            count = lambda: f"{server.requests} {server.misses}"  # noqa: E731
        else:
            from fake_openai import FakeOpenAI
            server = FakeOpenAI(keep_requests=False)
            server.responders[JUDGE_ID] = length_judge
            count = lambda: f"{judged} 0"  # noqa: E731
        await server.start()
        print(server.url, flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(count(), flush=True)
        await server.stop()
    asyncio.run(main())


class Child:
    def __init__(self, kind: str):
        self.p = subprocess.Popen([sys.executable, __file__, "--serve", kind], cwd=ROOT,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self.p.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.p.kill()
            raise SystemExit(f"the {kind} server did not start: {self.url!r}")

    def count(self) -> tuple[int, int]:
        self.p.stdin.write("\n")
        self.p.stdin.flush()
        requests, misses = self.p.stdout.readline().split()
        return int(requests), int(misses)

    def close(self) -> None:
        self.p.stdin.close()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()


def trace_size(report: str) -> int:
    path = os.path.join(report, "trace.jsonl")
    return os.path.getsize(path) if os.path.exists(path) else 0


def spans(report: str, offset: int) -> dict:
    """Answer and judge calls the trace gained after byte ``offset``, and the summed spans
    (first start to last end) of each answering run and of each judged pipeline."""
    groups: dict[tuple[str, str], list] = {}
    with open(os.path.join(report, "trace.jsonl"), "rb") as handle:
        handle.seek(offset)
        records = [json.loads(line) for line in handle if b'"type":"call"' in line]
    for r in records:
        judge = r["pipeline"].startswith("judge:")
        key = ("judge", r["query_id"].split("/")[0]) if judge else ("answer", r["run_id"])
        g = groups.setdefault(key, [0, r["started_at"], r["ended_at"]])
        g[0] += 1
        g[1], g[2] = min(g[1], r["started_at"]), max(g[2], r["ended_at"])
    out = {}
    for phase in ("answer", "judge"):
        gs = [g for k, g in groups.items() if k[0] == phase]
        out[phase] = (sum(g[0] for g in gs), sum(g[2] - g[1] for g in gs))
    return out


def rss_now() -> float:
    """Resident memory now in MB (Linux /proc; NaN elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def eval_once(label, source, report, cache_flag, cache, args, replay, judge) -> dict:
    import moac.cli.main as cli
    before = replay.count()[0], judge.count()[0]
    argv = ["eval", source, "--pipelines", ",".join(PIPELINES), "--prompts", "alpaca_eval",
            "--judge", "long", "--report", report, "--concurrency", str(args.concurrency),
            cache_flag, cache] + (["--limit", str(args.limit)] if args.limit else [])
    out, err = io.StringIO(), io.StringIO()
    offset, cpu, wall = trace_size(report), time.process_time(), time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak, now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss_now()
    (ra, ma), (rj, _) = replay.count(), judge.count()
    if code != 0:
        print(f"  [{label}] moac eval exited {code}; its stderr ends:\n    "
              + "\n    ".join(err.getvalue().strip().splitlines()[-6:]))
    cached = [ln for ln in err.getvalue().splitlines() if "moac: cache" in ln]
    return {"label": label, "code": code, "wall": wall, "cpu": cpu, "rss": peak, "now": now,
            "calls": spans(report, offset), "sent": (ra - before[0], rj - before[1]),
            "misses": ma, "report": du(report), "cache_mb": os.path.getsize(cache) / 1e6,
            "cache_line": cached[-1].removeprefix("moac: ") if cached else "-"}


def main(args) -> None:
    missing = [n for n in FILES if not (DATA / "model_outputs" / f"{n}.json").is_file()]
    if missing:
        print(f"skipped: recorded answers not found in {DATA / 'model_outputs'} "
              f"({', '.join(missing)})")
        return
    os.environ.setdefault(KEY_VAR, "replay-bench-key")
    os.environ.setdefault(JUDGE_VAR, "judge-bench-key")
    replay, judge = Child("replay"), Child("judge")
    try:
        print(f"replay server {replay.url}, length judge {judge.url} (processes of their own);"
              f" AlpacaEval {args.limit or 805} instructions, concurrency {args.concurrency}")
        print(f"pipelines: {', '.join(PIPELINES)}")
        with tempfile.TemporaryDirectory() as scratch:
            work = args.workdir or scratch
            source = os.path.join(work, "eval.moa")
            parallel = 6 * args.concurrency
            Path(source).write_text(SOURCE.format(url=replay.url, parallel=parallel)
                                    + EXTRA.format(judge_url=judge.url, parallel=parallel))
            cache, first, fresh = (os.path.join(work, n) for n in ("c.sqlite", "rep1", "rep2"))
            runs = [eval_once("1 record", source, first, "--record", cache, args, replay, judge),
                    eval_once("2 resume", source, first, "--record", cache, args, replay, judge),
                    eval_once("3 replay", source, fresh, "--replay", cache, args, replay, judge)]
            docs = [json.loads(Path(d, "report.json").read_text()) for d in (first, fresh)]
            files = {p.name: p.stat().st_size for p in Path(first).iterdir() if p.is_file()}
            lengths = {}
            for name in PIPELINES:
                rows = [json.loads(ln) for ln in open(Path(first, "judgments",
                                                           name.replace(":", "_") + ".jsonl"))]
                rows = [r for r in rows if r.get("parsed")]
                n = len(rows)
                longer = sum(r["candidate_chars"] > r["reference_chars"] for r in rows) / n
                equal = sum(r["candidate_chars"] == r["reference_chars"] for r in rows) / n
                lengths[name] = (sum(r["candidate_chars"] for r in rows) / n,
                                 sum(r["reference_chars"] for r in rows) / n, longer,
                                 100 * (0.9 * longer + 0.5 * equal + 0.1 * (1 - longer - equal)))
    finally:
        replay.close()
        judge.close()

    print("\nthe runs (moac.cli.main.main in this process; servers count what they received):")
    print(f"  {'run':<9} {'exit':>4} {'wall s':>7} {'ans calls':>9} {'ans/s':>6} "
          f"{'judge calls':>11}"
          f" {'judge/s':>7} {'CPU s':>6} {'CPU ms/call':>11} {'peak RSS':>8} {'RSS after':>9}"
          f" {'sent ans':>8} {'sent judge':>10} {'report MB':>9}")
    for r in runs:
        (na, ta), (nj, tj) = r["calls"]["answer"], r["calls"]["judge"]
        per = f"{r['cpu'] / (na + nj) * 1000:.3f}" if na + nj else "-"
        print(f"  {r['label']:<9} {r['code']:>4} {r['wall']:>7.2f} {na:>9} "
              f"{(na / ta if ta else 0):>6.0f} {nj:>11} {(nj / tj if tj else 0):>7.0f} "
              f"{r['cpu']:>6.2f} {per:>11} {r['rss']:>6.0f}MB {r['now']:>7.0f}MB "
              f"{r['sent'][0]:>8} {r['sent'][1]:>10} {r['report'] / 1e6:>9.1f}")
    for r in runs:
        print(f"  {r['label']}: {r['cache_line']}; cache file {r['cache_mb']:.1f} MB")
    print("  report files (run 1): " + ", ".join(f"{k} {v / 1e3:,.0f} kB"
                                                 for k, v in sorted(files.items())))
    print(f"  replay server answered {runs[-1]['misses']} request(s) with an error overall")

    print("\nwin rates against GPT-4 Turbo under the length judge (a length-free judge: 50):")
    print(f"  {'pipeline':<15} {'judged':>6} {'chars':>6} {'ref':>6} {'longer':>6} "
          f"{'expected':>8} {'raw win rate (95% CI)':>22} {'LC win rate (95% CI)':>21}"
          f" {'length coef':>11} {'$/query':>8} {'billed':>8}")
    for row in docs[0]["pipelines"]:
        name = row["pipeline"]
        cand, ref, longer, expected = lengths[name]
        wi, li = row["win_rate_interval"], row["lc_interval"] or [float("nan")] * 2
        print(f"  {name:<15} {row['judged']:>6} {cand:>6.0f} {ref:>6.0f} {longer:>6.1%} "
              f"{expected:>8.1f} {row['win_rate']:>6.1f} ({wi[0]:>5.1f}-{wi[1]:>5.1f})"
              f"  {row['lc_win_rate']:>6.1f} ({li[0]:>5.1f}-{li[1]:>5.1f}) "
              f"{row['length_coef']:>11.2f} {row['usd_per_query']:>8.5f} "
              f"{usd(row.get('billed_usd_per_query', row['usd_per_query'])):>8}")
    pairs = list(zip(*(d["pipelines"] for d in docs)))
    point = max(abs(a[k] - b[k]) for a, b in pairs for k in ("win_rate", "lc_win_rate",
                                                             "length_coef"))
    bounds = max(abs(x - y) for a, b in pairs for k in ("win_rate_interval", "lc_interval")
                 for x, y in zip(a[k], b[k]))
    print(f"  expected: 0.9 x longer + 0.5 x equal + 0.1 x shorter (each order: the longer "
          f"wins {100 - 50 * NOISE:.0f}%)\n  replayed report (run 3) vs recorded (run 1): "
          f"win/LC/coef differ by at most {point:.1e}, interval bounds by at most "
          f"{bounds:.2f} points; $/query equal: "
          f"{all(a['usd_per_query'] == b['usd_per_query'] for a, b in pairs)}, billed: "
          + " ".join(usd(b.get("billed_usd_per_query")) for _, b in pairs))


def usd(value) -> str:
    return "-" if value is None else f"{value:.5f}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N instructions")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workdir", help="keep the reports and cache here (default: a "
                        "temporary directory)")
    parser.add_argument("--serve", choices=("replay", "judge"), help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed.serve)
    else:
        main(parsed)
