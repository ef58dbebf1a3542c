"""``moac run``, ``moac eval``, ``moac trace summarize``, ``moac calibrate`` and ``moac
fit-router``: the commands that call models or read what calls recorded."""

from __future__ import annotations

import os
import sys

from moac.text import dollars
from moac.cli.common import (
    EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, UsageError, add_budget_flags, add_cache_flags, amount,
    budget_override, cache_report, emit, existing_path, open_cache,
)


def add_run_commands(commands) -> None:
    run_ = commands.add_parser("run", help="run a pipeline or a route on a prompt or a file "
                                           "of prompts")
    run_.add_argument("file", metavar="FILE")
    run_.add_argument("--pipeline", "-p", metavar="NAME")
    given = run_.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompt", metavar="TEXT",
                       help="one prompt (- reads it from stdin); the answer streams to stdout")
    given.add_argument("--prompts", metavar="FILE.jsonl",
                       help="JSONL or a JSON array of items with 'instruction', 'prompt' or "
                            "'turns'; answered in parallel, resumable")
    run_.add_argument("--out", metavar="ANSWERS.jsonl",
                      help="answers file (default for --prompts: PROMPTS.PIPELINE.answers.jsonl)")
    run_.add_argument("--trace", metavar="TRACES.jsonl", help="append a trace of every call here")
    run_.add_argument("--concurrency", type=int, metavar="N",
                      help="queries in flight at once with --prompts (default 8)")
    run_.add_argument("--max-usd-total", metavar="X",
                      help="dollars for the whole run; no query starts once it is reached")
    add_cache_flags(run_)
    add_budget_flags(run_)
    run_.set_defaults(handler=cmd_run)

    evaluate = commands.add_parser(
        "eval", help="run pipelines on a prompt set, judge every answer, report quality "
                     "against cost")
    evaluate.add_argument("file", metavar="FILE")
    evaluate.add_argument("--pipelines", required=True, metavar="A,B,...",
                          help="pipelines, routes, or single:MODEL, comma-separated")
    evaluate.add_argument("--prompts", required=True, metavar="SET",
                          help="alpaca_eval, mt_bench, or a JSONL/JSON file of prompts")
    evaluate.add_argument("--judge", metavar="NAME",
                          help="a judge of the file (default: its only one)")
    evaluate.add_argument("--limit", type=int, metavar="N", help="only the first N prompts")
    evaluate.add_argument("--report", default="eval-report", metavar="DIR",
                          help="where answers, judgments, traces and the report go "
                               "(default: eval-report); running again resumes")
    evaluate.add_argument("--concurrency", type=int, metavar="N",
                          help="queries (and judge calls) in flight at once (default 8)")
    evaluate.add_argument("--max-usd-total", metavar="X",
                          help="dollars for the whole evaluation, answers and judging: no "
                               "query or judge call starts once it is reached")
    add_cache_flags(evaluate)
    evaluate.set_defaults(handler=cmd_eval)

    calibrate = commands.add_parser(
        "calibrate", help="refit models' answer lengths, speeds and quality from traces; "
                          "write a .moa catalog to import")
    calibrate.add_argument("traces", nargs="+", metavar="TRACES.jsonl")
    calibrate.add_argument("-o", "--output", metavar="PROFILES.moa",
                           help="write the catalog here (default: standard output)")
    calibrate.add_argument("--run", metavar="RUN_ID", help="only this run (default: all)")
    calibrate.set_defaults(handler=cmd_calibrate)

    fit = commands.add_parser(
        "fit-router", help="fit the learned route policy from traces where two pipelines "
                           "were judged on the same queries")
    fit.add_argument("traces", nargs="+", metavar="TRACES.jsonl")
    fit.add_argument("--larger", required=True, metavar="PIPELINE")
    fit.add_argument("--smaller", required=True, metavar="PIPELINE")
    fit.add_argument("-o", "--output", required=True, metavar="ROUTER.json")
    fit.add_argument("--judge", metavar="NAME",
                     help="whose verdicts to learn from, when the traces hold several")
    fit.set_defaults(handler=cmd_fit_router)

    trace = commands.add_parser("trace", help="read traces written by moac run --trace")
    trace.set_defaults(handler=lambda args: trace.print_help(sys.stderr) or EXIT_USAGE)
    trace_commands = trace.add_subparsers(title="trace commands", metavar="COMMAND")
    summarize = trace_commands.add_parser(
        "summarize", help="cost, latency percentiles and failures per model and per layer")
    summarize.add_argument("traces", nargs="+", metavar="TRACES.jsonl")
    summarize.add_argument("--run", metavar="RUN_ID", help="only this run (default: all)")
    summarize.set_defaults(handler=cmd_trace_summarize)


def cmd_run(args) -> int:
    """Budget flags reuse ``add_budget_flags``/``budget_override``: they bound each query,
    and each query's plan is fit to them when it starts, with its real prompt
    (:mod:`moac.run.start_fit`; ``moac compile`` prunes for an assumed prompt length). On a
    route the router keeps to them query by query."""
    import asyncio

    from moac.compiler import compile_file
    from moac.constants import DEFAULT_RUN_CONCURRENCY
    from moac.run import Runner, default_answers_path, load_prompts
    from moac.ir.spec import RouteSpec
    from moac.text import from_argv, from_bytes
    program = compile_file(existing_path(args.file))
    selected = program.select(args.pipeline)
    concurrency = DEFAULT_RUN_CONCURRENCY if args.concurrency is None else args.concurrency
    if concurrency < 1:
        raise UsageError(f"--concurrency expects a positive whole number, got {concurrency}")
    total = None
    if args.max_usd_total is not None:
        total = amount(args.max_usd_total, "--max-usd-total", prefix="$")
    if isinstance(selected, RouteSpec):
        plan = program.route_plan(selected.name, budget_override(args))
    else:
        plan = program.plan(selected.name, budget_override(args))
    try:
        items = None
        if args.prompts is not None:
            items = load_prompts(existing_path(args.prompts))
        elif args.prompt == "-":
            args.prompt = from_bytes(sys.stdin.buffer.read())
        else:
            args.prompt = from_argv(args.prompt)
        if items is None and not args.prompt.strip():
            raise UsageError("--prompt is empty")
        cache, mode = open_cache(args)
        runner = Runner(plan, trace_path=args.trace, source_file=args.file,
                        max_usd_total=total, cache=cache, cache_mode=mode)
        # (the Runner reads the API keys: a missing one fails before any call)
        try:
            if items is None:
                code = asyncio.run(_run_prompt(runner, args.prompt, args.out))
            else:
                out = args.out or default_answers_path(args.prompts, plan.pipeline)
                code = asyncio.run(_run_prompts(runner, items, out, concurrency))
        finally:
            if cache is not None:
                cache.close()
        return max(code, cache_report(cache, mode))
    except _run_errors() as error:
        return _run_failed(error)


def _run_errors() -> tuple[type[Exception], ...]:
    """What stops a run or an evaluation with a one-line message (imported only when one
    was raised: the except clause evaluates this after the fact)."""
    from moac.run.cache import CacheError
    from moac.providers.errors import ProviderError
    from moac.run import RunError
    return (RunError, ProviderError, CacheError)


def _run_failed(error: Exception) -> int:
    from moac.providers.errors import MissingApiKey
    message = error.message if isinstance(error, MissingApiKey) else str(error)
    print(f"moac: error: {message}", file=sys.stderr)
    return EXIT_PROBLEMS


class _Progress:
    """While the proposers work, nothing reaches stdout: on a terminal, one status line on
    stderr (the stage, its calls done, what was spent, the time), redrawn in place and
    wiped when the answer starts to stream. Not on a pipe or a file: those get only the
    summary line."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.shown = False

    def __call__(self, p) -> None:
        if not self.live:
            return
        self.stream.write(f"\r\x1b[Kmoac: {p.stage} ({p.stage_number}/{p.stages}) · "
                          f"{p.done}/{p.calls} call{'s' if p.calls != 1 else ''} done · "
                          f"{dollars(p.cost_usd)} · {p.elapsed_s:.1f}s")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


class _Stdout:
    """Streams the answer to stdout; a reader that leaves (a closed pipe) stops the
    streaming, not the run. After a restart, the answer starts again on a fresh line."""

    def __init__(self, progress: _Progress | None = None) -> None:
        self.progress = progress
        self.broken = False
        self.column = 0  # characters since the last newline
        try:
            sys.stdout.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass

    def write(self, text: str) -> None:
        if self.broken or not text:
            return
        if self.progress is not None:
            self.progress.clear()
            self.progress.live = False  # the answer has the terminal now
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError):
            self.broken = True
            try:  # no "Exception ignored ... BrokenPipeError" when Python exits
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return
        newline = text.rfind("\n")
        self.column = len(text) - newline - 1 if newline >= 0 else self.column + len(text)

    def restart(self, node: str, reason: str) -> None:
        if self.column:
            self.write("\n")
        print(f"moac: {node}: {reason}; the answer starts over", file=sys.stderr, flush=True)


async def _run_prompt(runner, prompt: str, out: str | None) -> int:
    from moac.run import PromptItem, summary_line
    progress = _Progress()
    stdout = _Stdout(progress)
    try:
        async with runner:
            result = await runner.run(prompt, on_delta=stdout.write, on_restart=stdout.restart,
                                      on_progress=progress)
            if out:
                item = PromptItem("0", (prompt,), "prompt", {"prompt": prompt})
                with open(out, "ab") as handle:
                    handle.write(runner.answer_line(item, result.status, [result]))
    finally:  # the answer ends its line, even when interrupted
        progress.clear()
        if stdout.column:
            stdout.write("\n")
    for decision in result.decisions:
        print(f"moac: route {result.route}: {decision['policy']}: {decision['reason']}",
              file=sys.stderr)
    for error in result.errors:
        print(f"moac: error: {error}", file=sys.stderr)
    print(summary_line(result), file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_PROBLEMS


async def _run_prompts(runner, items, out: str, concurrency: int) -> int:
    import time

    from moac.run import stderr_progress
    start = time.monotonic()
    async with runner:
        state = await runner.run_batch(items, out, concurrency=concurrency,
                                       progress=stderr_progress())
    if state.before:
        print(f"moac: {state.before} of {len(items)} already answered in {out}",
              file=sys.stderr)
    if state.recovered:
        print(f"moac: {state.recovered} call{'s' if state.recovered != 1 else ''} taken back "
              f"from the journal of an interrupted run ({dollars(state.recovered_usd)} not "
              "paid again)", file=sys.stderr)
    if state.stopped:
        print(f"moac: stopped: {state.stopped}; {state.not_run} not run (run again to "
              "resume)", file=sys.stderr)
    cut = f" ({state.cut} cut at max_tokens)" if state.cut else ""
    print(f"moac: {state.ok} answered{cut}, {state.failed} failed · {dollars(state.cost_usd)} · "
          f"{time.monotonic() - start:.1f}s · answers in {out}", file=sys.stderr)
    _print_errors(state.errors)
    return EXIT_OK if state.failed == 0 and state.not_run == 0 else EXIT_PROBLEMS


def _print_errors(errors, shown: int = 10) -> None:
    """Each distinct error of a batch once, with the number of items it failed."""
    if not errors:
        return
    print("moac: the failures, by cause:", file=sys.stderr)
    common = errors.most_common()
    for error, count in common[:shown]:
        print(f"moac:   {count:>5} × {error}", file=sys.stderr)
    if len(common) > shown:
        print(f"moac:   ... and {len(common) - shown} other errors (all in the answers file)",
              file=sys.stderr)


def cmd_eval(args) -> int:
    import asyncio

    from moac.compiler import SelectionError, compile_file
    from moac.constants import DEFAULT_RUN_CONCURRENCY
    from moac.evaluation.evaluate import EvalSettings, evaluate, resolve
    from moac.evaluation.prompt_sets import load_prompt_set
    from moac.evaluation.report import write_report
    from moac.run import stderr_progress
    program = compile_file(existing_path(args.file))
    if args.judge is None:
        if len(program.judges) != 1:
            known = ", ".join(program.judges) or "none declared"
            raise UsageError(f"choose a judge with --judge ({known})")
        args.judge = next(iter(program.judges))
    if args.judge not in program.judges:
        known = ", ".join(program.judges) or "none declared"
        raise SelectionError(f"no judge named '{args.judge}' (known: {known})")
    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise UsageError("--pipelines expects distinct names separated by commas")
    for name in names:
        resolve(program, name)  # an unknown name is a usage error before anything runs
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit expects a positive whole number, got {args.limit}")
    concurrency = DEFAULT_RUN_CONCURRENCY if args.concurrency is None else args.concurrency
    if concurrency < 1:
        raise UsageError(f"--concurrency expects a positive whole number, got {concurrency}")
    ledger = None
    if args.max_usd_total is not None:
        from moac.run.ledger import BudgetLedger
        ledger = BudgetLedger(amount(args.max_usd_total, "--max-usd-total", prefix="$"),
                              name="run", label="max_usd_total")
    printers: dict = {}

    def progress(name, state):
        if name not in printers:
            print(f"moac: answering with {name}", file=sys.stderr)
            printers[name] = stderr_progress()
        printers[name](state)

    def judging(name, done, total):
        # A line at the first verdict, each tenth and the last: enough to see it move.
        if done == 1 or done == total or done * 10 // total != (done - 1) * 10 // total:
            print(f"moac: judging {name}: {done}/{total}", file=sys.stderr)

    cache = mode = None
    try:
        prompts = load_prompt_set(args.prompts).limited(args.limit)
        cache, mode = open_cache(args)
        settings = EvalSettings(program, names, prompts, program.judges[args.judge],
                                args.report, concurrency, cache=cache, cache_mode=mode,
                                progress=progress, judging=judging, run_ledger=ledger)
        runs, judge_run = asyncio.run(evaluate(settings))
        document = write_report(args.report, runs, settings, judge_run)
    except _run_errors() as error:
        return _run_failed(error)
    finally:
        if cache is not None:
            cache.close()
    sys.stdout.write(_eval_table(document))
    print(f"moac: report in {os.path.join(args.report, 'report.md')} (and report.json, "
          "quality_cost.svg, trace.jsonl)", file=sys.stderr)
    incomplete = any(r["failed"] or r["judge_failed"] or r["answered"] + r["failed"]
                     < document["items"] for r in document["pipelines"])
    if ledger is not None:
        print(f"moac: spent ${ledger.spent_usd:.4f} of --max-usd-total "
              f"${ledger.max_usd:.4f}" + (" (reached: the report covers what was answered "
                                          "and judged; run again with more to resume)"
                                          if incomplete else ""), file=sys.stderr)
    return max(EXIT_PROBLEMS if incomplete else EXIT_OK, cache_report(cache, mode))


def _eval_table(document) -> str:
    """The per-pipeline table, then a line on each pipeline's unparsed verdicts (what the
    judge wrote instead) and on predictions that are unknown."""
    from moac.evaluation.report import predicted_text, unparsed_note
    pairwise = document["judge"]["protocol"] == "pairwise"
    lines = [f"{'pipeline':<20} {'quality':>8} {'95% CI':>13} {'predicted':>9} "
             f"{'$/query':>10} {'judged':>7} {'unparsed':>8} {'failed':>6}"]
    for r in document["pipelines"]:
        interval = r.get("lc_interval") if pairwise else r.get("score_interval")
        ci = f"{interval[0]:.1f}-{interval[1]:.1f}" if interval and interval[0] is not None \
            else "-"
        quality = "-" if r["quality"] is None else f"{r['quality']:.1f}"
        cost = "-" if r["usd_per_query"] is None else f"${r['usd_per_query']:.5f}"
        lines.append(f"{r['pipeline']:<20} {quality:>8} {ci:>13} "
                     f"{predicted_text(r['predicted']):>9} {cost:>10} "
                     f"{r['judged']:>7} {r.get('unparsed', 0):>8} "
                     f"{r['failed'] + r['judge_failed']:>6}")
    what = "LC win rate vs the reference (%)" if pairwise else "mean score (1-10)"
    lines.append(f"quality: {what}; predicted: the planner's LC estimate")
    for r in document["pipelines"]:
        note = unparsed_note(r, document["judge"])
        if note:
            lines.append(note)
    unknown = sorted({m for r in document["pipelines"]
                      for m in r["predicted"].get("unknown_quality", ())})
    if unknown:
        lines.append(f"predicted unknown: {', '.join(unknown)} declare"
                     f"{'s' * (len(unknown) == 1)} no `quality`")
    return "\n".join(lines) + "\n"


def cmd_calibrate(args) -> int:
    from moac.evaluation.calibrate import CalibrationError, calibrate
    from moac.evaluation.calibrate_render import render_moa, report
    paths = [existing_path(p) for p in args.traces]
    if args.output and os.path.abspath(args.output) in {os.path.abspath(p) for p in paths}:
        raise UsageError(f"-o {args.output} would overwrite a trace")
    try:
        result = calibrate(paths, run_id=args.run)
    except CalibrationError as error:
        print(f"moac: error: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    emit(render_moa(result), args.output)
    print(report(result), end="", file=sys.stdout if args.output else sys.stderr)
    return EXIT_OK


def cmd_fit_router(args) -> int:
    import json

    from moac.traces.trace import read_trace
    from planner.learned import NothingParsed, examples_from_records, fit_router
    if args.larger == args.smaller:
        raise UsageError("--larger and --smaller must name two pipelines")
    paths = [existing_path(p) for p in args.traces]
    if os.path.abspath(args.output) in {os.path.abspath(p) for p in paths}:
        raise UsageError(f"-o {args.output} would overwrite a trace")
    records = [r for p in paths for r in read_trace(p)]
    try:
        examples = examples_from_records(records, args.larger, args.smaller, args.judge)
        router, fitted = fit_router(examples, args.larger, args.smaller)
    except NothingParsed as error:  # the suggestion is a better judge, not the same again
        print(f"moac: error: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    except ValueError as error:
        hint = "; give --judge NAME" if "several judges" in str(error) else \
            f" (judge both with `moac eval --pipelines {args.larger},{args.smaller}`)"
        print(f"moac: error: {error}{hint}", file=sys.stderr)
        return EXIT_PROBLEMS
    emit(json.dumps(router.to_dict(), indent=2) + "\n", args.output)
    sys.stdout.write(fitted.render(args.larger, args.smaller))
    print(f"moac: router written to {args.output}; use it with `policy = [learned]` and "
          f'`router = "{os.path.basename(args.output)}"` in a route', file=sys.stderr)
    return EXIT_OK


def cmd_trace_summarize(args) -> int:
    from moac.traces.summarize import render_summary, summarize_files
    summary = summarize_files([existing_path(p) for p in args.traces], run_id=args.run)
    if not summary.runs and not summary.queries and not summary.models:
        print("moac: error: no trace records found in " + ", ".join(args.traces)
              + (f" for run {args.run}" if args.run else ""), file=sys.stderr)
        return EXIT_PROBLEMS
    sys.stdout.write(render_summary(summary))
    return EXIT_OK
