"""What the command modules share: exit codes, usage errors, and the flags and values that
several commands read (budgets, response caches, amounts, durations, paths)."""

from __future__ import annotations

import argparse
import os
import sys

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit code 2."""



def add_cache_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--record", metavar="CACHE.sqlite",
                       help="store every answer in this response cache (and answer repeats "
                            "from it)")
    group.add_argument("--replay", metavar="CACHE.sqlite",
                       help="answer only from this response cache: no key, no network, "
                            "nothing billed; a request it lacks fails the run")


def open_cache(args):
    """The response cache the flags name and its mode, or (None, None)."""
    if not (args.record or args.replay):
        return None, None
    from moac.run.cache import ResponseCache
    if args.replay:
        return ResponseCache(existing_path(args.replay), create=False), "replay"
    return ResponseCache(args.record), "record"


def cache_report(cache, mode) -> int:
    """Print what the cache did; EXIT_PROBLEMS when a replay missed a request."""
    if cache is None:
        return EXIT_OK
    stats = cache.stats
    print(f"moac: cache {mode}: {stats.hits:,} answered from the cache, {stats.stored:,} "
          f"recorded, {stats.misses:,} not in it", file=sys.stderr)
    if mode == "replay" and stats.misses:
        print(f"moac: error: --replay: {stats.misses:,} request"
              f"{'s' if stats.misses != 1 else ''} had no recorded answer (record them with "
              "--record first); the answers above are incomplete", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


def add_budget_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("budget (overrides the file's; prunes the pipeline)")
    group.add_argument("--max-usd", metavar="X", help="dollars per query: '$0.05' or 0.05")
    group.add_argument("--max-latency", metavar="S", help="seconds per query: 30s, 500ms, 30")
    group.add_argument("--max-tflops", metavar="T", help="TFLOPs per query: 5000")
    group.add_argument("--budget-mode", choices=("expected", "worst"),
                       help="bound the expected case or the worst (every answer at max_tokens)")


def pruned_to_budget(plan):
    """The plan itself when it fits its budget (or has none); else the best sub-plan that
    fits, with the planner's report on stderr; None (after saying why) when nothing fits."""
    if not plan.budget.bounded or plan_fits(plan):
        return plan
    from planner import NothingFits, prune, render
    try:
        plan = prune(plan)
    except NothingFits as error:
        print(f"moac: error: {error}", file=sys.stderr)
        return None
    print(render(plan.annotations["planner"]), end="", file=sys.stderr)
    return plan


def plan_fits(plan) -> bool:
    from planner import estimate, fits
    return fits(estimate(plan), plan.budget)


def budget_override(args):
    """The flags that were given, as a BudgetSpec that sets only those (for merging)."""
    from moac.ir.spec import BudgetSpec
    values = {}
    if args.max_usd is not None:
        values["max_usd"] = amount(args.max_usd, "--max-usd", prefix="$")
    if args.max_latency is not None:
        values["max_latency_s"] = duration(args.max_latency)
    if args.max_tflops is not None:
        values["max_tflops"] = amount(args.max_tflops, "--max-tflops", suffix="tflops")
    if args.budget_mode is not None:
        values["mode"] = args.budget_mode
    return BudgetSpec(**values) if values else None


def amount(text: str, flag: str, prefix: str = "", suffix: str = "") -> float:
    raw = text.strip().lower()
    if prefix and raw.startswith(prefix):
        raw = raw[len(prefix):]
    if suffix and raw.endswith(suffix):
        raw = raw[:-len(suffix)]
    try:
        value = float(raw.strip())
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        example = {"--max-usd": "'$0.05'", "--max-usd-total": "'$5'",
                   "--max-tflops": "5000"}.get(flag, "30")
        hint = ""
        if prefix == "$" and _shell_ate_a_dollar(text):
            hint = (f" (the shell may have eaten a '$': unquoted, $0 becomes the shell's "
                    f"name and $1-$9 nothing; quote the amount, {flag} {example}, or leave "
                    "the '$' out)")
        raise UsageError(f"{flag} expects a non-negative number like {example}, got "
                         f"'{text}'{hint}")
    return value


def _shell_ate_a_dollar(text: str) -> bool:
    """Whether an amount looks like what a shell leaves of ``$0.05`` or ``$5``: nothing, or
    a word (the shell's or script's name) where the digits after the ``$`` were."""
    raw = text.strip()
    return raw == "" or (not raw[:1].isdigit() and raw[:1] not in "$.+-" or
                         raw.startswith("-") and not raw[1:2].isdigit())


def duration(text: str) -> float:
    raw = text.strip().lower()
    scale = 1.0
    if raw.endswith("ms"):
        raw, scale = raw[:-2], 0.001
    elif raw.endswith("s"):
        raw = raw[:-1]
    try:
        value = float(raw.strip()) * scale
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        raise UsageError(f"--max-latency expects a duration like 30s, 500ms or 30, got '{text}'")
    return value


def token_count(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 1:
        raise UsageError(f"{flag} expects a positive whole number of tokens, got '{text}'")
    return value


def existing_path(path: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    return path


def emit(text: str, output: str | None) -> None:
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


def print_diagnostics(diagnostics) -> None:
    for diagnostic in diagnostics:
        print(diagnostic.render(), file=sys.stderr)
